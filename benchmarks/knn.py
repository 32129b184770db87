"""k-NN speed and memory: vitscope (every k from one top-max(k) pass per block) against the DINO-protocol classifier
run once per block and per k, and against scikit-learn's brute-force cosine KNeighborsClassifier over the same work.

    python benchmarks/knn.py                         # 12 blocks, k = 10..200, 50,000 train / 10,000 test, d = 384
    python benchmarks/knn.py --scale 0.2 --rounds 3  # 10,000 train / 2,000 test (a shared 2-core machine)
    python benchmarks/knn.py --only vitscope         # one method, one round (what the memory subprocesses run)

Features: per block, float32 rows around 1000 class centres, L2-normalised (DINO normalises before its classifier),
generated block by block from a seed, so no method holds more than one block and generation is not timed.
DINO: a transcription of ``eval_knn.knn_classifier`` (test set cut into N // 100-row chunks, ``mm``, ``topk(k)``,
one-hot of the neighbours' labels (chunk * k, C), ``exp(s / T)`` weights, sum, descending sort). scikit-learn:
``KNeighborsClassifier(k, algorithm="brute", metric="cosine", weights=exp((1 - d) / T))``, ``predict_proba``.
Timing rounds are interleaved (vitscope, DINO, scikit-learn, repeated); min / median / max per method and the
ratios of the medians. Peak memory: each method alone in a fresh process (VmHWM), data included.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from _memory import peak_rss_mb  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

KS = (10, 20, 100, 200)
T = 0.07


def block_features(b: int, n_train: int, n_test: int, d: int, n_classes: int, seed: int = 0):
    """Block ``b``: (train (n_train, d), train labels, test (n_test, d), test labels), unit rows, float32."""
    g = torch.Generator().manual_seed(seed * 1000 + b)
    centres = torch.randn(n_classes, d, generator=g)
    ytr = torch.randint(0, n_classes, (n_train,), generator=g)
    yte = torch.randint(0, n_classes, (n_test,), generator=g)
    spread = 1.0 + 0.1 * b
    xtr = torch.nn.functional.normalize(centres[ytr] + spread * torch.randn(n_train, d, generator=g), dim=1)
    xte = torch.nn.functional.normalize(centres[yte] + spread * torch.randn(n_test, d, generator=g), dim=1)
    return xtr, ytr, xte, yte


@torch.no_grad()
def dino_knn(train_features, train_labels, test_features, test_labels, k, temp, num_classes=1000):
    """The DINO protocol classifier as its public code runs it (one k per call)."""
    top1, top5, total = 0.0, 0.0, 0
    train_t = train_features.t()
    n_test = test_labels.shape[0]
    step = n_test // 100
    one_hot = torch.zeros(k, num_classes, device=train_features.device)
    for start in range(0, n_test, step):
        feats = test_features[start:min(start + step, n_test)]
        targets = test_labels[start:min(start + step, n_test)]
        bs = targets.shape[0]
        sim = torch.mm(feats, train_t)
        dist, idx = sim.topk(k, largest=True, sorted=True)
        cand = train_labels.view(1, -1).expand(bs, -1)
        nb = torch.gather(cand, 1, idx)
        one_hot.resize_(bs * k, num_classes).zero_()
        one_hot.scatter_(1, nb.view(-1, 1), 1)
        w = dist.clone().div_(temp).exp_()
        probs = torch.sum(torch.mul(one_hot.view(bs, -1, num_classes), w.view(bs, -1, 1)), 1)
        _, pred = probs.sort(1, True)
        correct = pred.eq(targets.view(-1, 1))
        top1 += correct.narrow(1, 0, 1).sum().item()
        top5 += correct.narrow(1, 0, min(5, k)).sum().item()
        total += bs
    return top1 * 100.0 / total, top5 * 100.0 / total


def run_vitscope(args, blocks) -> tuple[float, dict]:
    from vitscope.analysis.knn import knn_evaluate

    t, res = 0.0, {}
    for b in blocks:
        xtr, ytr, xte, yte = block_features(b, args.n_train, args.n_test, args.dim, args.classes)
        t0 = time.perf_counter()
        r = knn_evaluate(xtr, ytr, xte, yte, KS, T, num_classes=args.classes, count_unvoted=True)
        t += time.perf_counter() - t0
        res[b] = {k: (v["top1"], v["top5"]) for k, v in r.items()}
    return t, res


def run_dino(args, blocks) -> tuple[float, dict]:
    t, res = 0.0, {}
    for b in blocks:
        xtr, ytr, xte, yte = block_features(b, args.n_train, args.n_test, args.dim, args.classes)
        res[b] = {}
        for k in KS:
            t0 = time.perf_counter()
            res[b][k] = dino_knn(xtr, ytr, xte, yte, k, T, args.classes)
            t += time.perf_counter() - t0
    return t, res


def run_sklearn(args, blocks) -> tuple[float, dict]:
    from sklearn.neighbors import KNeighborsClassifier

    t, res = 0.0, {}
    for b in blocks:
        xtr, ytr, xte, yte = (a.numpy() for a in block_features(b, args.n_train, args.n_test, args.dim,
                                                                   args.classes))
        res[b] = {}
        for k in KS:
            t0 = time.perf_counter()
            clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine",
                                       weights=lambda d: np.exp((1.0 - d) / T)).fit(xtr, ytr)
            proba = clf.predict_proba(xte)
            order = clf.classes_[np.argsort(-proba, axis=1, kind="stable")[:, :5]]
            t += time.perf_counter() - t0
            res[b][k] = (100 * float((order[:, 0] == yte).mean()), 100 * float((order == yte[:, None]).any(1).mean()))
    return t, res


METHODS = {"vitscope": run_vitscope, "dino": run_dino, "sklearn": run_sklearn}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply both row counts (default 1: 50,000 / 10,000)")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--only", choices=sorted(METHODS), help="run one method once and print JSON (memory runs)")
    p.add_argument("--skip", default="", help="methods to leave out, comma-separated (e.g. sklearn)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = p.parse_args()
    args.n_train = int(round(args.n_train * args.scale))
    args.n_test = int(round(args.n_test * args.scale))
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = list(range(args.blocks))
    if args.only:
        t, _ = METHODS[args.only](args, blocks)
        print(json.dumps({"method": args.only, "seconds": t, "peak_mb": peak_rss_mb()}))
        return
    methods = [m for m in METHODS if m not in args.skip.split(",")]
    print(f"k-NN: {args.blocks} blocks x k in {KS}, {args.n_train} train / {args.n_test} test rows, d={args.dim}, "
          f"{args.classes} classes, float32 CPU, {torch.get_num_threads()} threads, {args.rounds} rounds")
    times = {m: [] for m in methods}
    results = {}
    for r in range(args.rounds):
        for m in methods:
            t, res = METHODS[m](args, blocks)
            times[m].append(t)
            results[m] = res
            print(f"  round {r + 1} {m:9s} {t:8.2f} s", flush=True)
    # the same numbers: top-1 exactly; top-5 as DINO counts it (zero-vote ties may be ordered differently)
    for m in methods[1:]:
        d1 = max(abs(results[m][b][k][0] - results["vitscope"][b][k][0]) for b in blocks for k in KS)
        d5 = max(abs(results[m][b][k][1] - results["vitscope"][b][k][1]) for b in blocks for k in KS)
        print(f"  largest difference to vitscope, {m}: top-1 {d1:.3f} points, top-5 {d5:.3f} points")
    print(f"{'method':10s} {'min':>9s} {'median':>9s} {'max':>9s}   vs vitscope: median, min, same round")
    med = {m: float(np.median(v)) for m, v in times.items()}
    for m, v in times.items():
        per_round = [a / b for a, b in zip(v, times["vitscope"])]
        print(f"{m:10s} {min(v):9.2f} {med[m]:9.2f} {max(v):9.2f}   {med[m] / med['vitscope']:6.1f}x "
              f"{min(v) / min(times['vitscope']):6.1f}x   " + " ".join(f"{r:.1f}x" for r in per_round))
    if args.no_memory:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    print("peak resident memory, each method alone in a fresh process (data included):")
    for m in methods:
        cmd = [sys.executable, os.path.join(here, "knn.py"), "--only", m, "--scale", str(args.scale),
               "--blocks", str(args.blocks), "--classes", str(args.classes), "--dim", str(args.dim)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        run = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"  {m:10s} {out['peak_mb']:8.0f} MiB   ({out['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
