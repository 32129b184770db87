"""Probe benchmarks: tuning linear probes on 13 layers x 21 configurations batched vs one after another, and the
attentive probe's training throughput over 24 inputs.

    python benchmarks/probes.py [--scale 1.0] [--steps 1000] [--rounds 1] [--threads 1]

Part 1: 13 layers x 21 (lr, weight decay) configurations, N training rows of width 384, 100 classes, the same steps:
``train_linear_grid`` (one computation) vs ``train_probe`` on each of the 273 probes in turn (``--sequential-sample``
of them timed and scaled to 273 when the full loop is too slow); test accuracies of the timed probes compared.
Part 2: the attentive probe over 24 inputs (width 384) of N rows: training images per second (one configuration,
and the 21-configuration grid batched).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from vitscope.analysis.probes import AttentiveGrid, TrainConfig, grid, linear_logits, train_linear_grid, train_probe
from vitscope.analysis.probes.train import build_seeded, predict


def _data(L, n, d, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(L, c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = centers[:, y] * 0.15 + torch.randn(L, n, d, generator=g)
    x = x / x.norm(dim=-1, keepdim=True)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="share of the 10,000 rows used")
    ap.add_argument("--steps", type=int, default=1000, help="optimiser steps per probe")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sequential-sample", type=int, default=273, help="probes timed one after another (scaled to 273)")
    ap.add_argument("--skip-attentive", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    L, D, C = 13, 384, 100
    n = int(10000 * a.scale)
    x, y = _data(L, n + 2000, D, C)
    xtr, ytr, xte, yte = x[:, :n], y[:n], x[:, n:], y[n:]
    configs = grid()
    lrs, wds = [c[0] for c in configs], [c[1] for c in configs]
    bs = 2048 if n >= 10240 else max(17, n // 5)
    nb = -(-n // bs)
    cfg = TrainConfig(epochs=max(1, a.steps // nb), min_steps=a.steps, batch_size=bs)
    print(f"linear: {L} layers x {len(configs)} configs, {n} rows x {D}, {C} classes, batch {bs}, "
          f">= {a.steps} steps, {a.threads} thread(s)")
    k = min(a.sequential_sample, L * len(configs))
    pairs = [(l, g) for l in range(L) for g in range(len(configs))]
    pick = pairs[:: max(1, len(pairs) // k)][:k]
    t_b, t_s = [], []
    for _ in range(a.rounds):                                   # interleaved rounds
        t0 = time.perf_counter()
        W, b, info = train_linear_grid(xtr, ytr, lrs, wds, cfg, C, batch_size=bs)
        t_b.append(time.perf_counter() - t0)
        acc_b = (linear_logits(xte, W, b).argmax(-1) == yte).float().mean(-1)          # L, G
        t0 = time.perf_counter()
        diffs = []
        for l, g in pick:
            m = build_seeded(lambda: nn.Linear(D, C), cfg.seed)
            train_probe(m, xtr[l], ytr, cfg.with_(lr=lrs[g], weight_decay=wds[g]), C, batch_size=bs)
            acc = float((predict(m, xte[l]).argmax(-1) == yte).float().mean())
            diffs.append(abs(acc - float(acc_b[l, g])))
        t_s.append((time.perf_counter() - t0) * len(pairs) / len(pick))
    fmt = lambda v: f"min {min(v):.1f} s, median {statistics.median(v):.1f} s, max {max(v):.1f} s"
    print(f"  batched (1 computation):   {fmt(t_b)}  ({info['steps']} steps)")
    print(f"  one after another (x{len(pairs)}): {fmt(t_s)}" + (f"  ({len(pick)} timed, scaled)" if k < len(pairs) else ""))
    print(f"  speed-up: {statistics.median(t_s) / statistics.median(t_b):.1f}x; test accuracy difference: max "
          f"{100 * max(diffs):.3f} points over {len(pick)} probes; batched mean accuracy {100 * float(acc_b.mean()):.1f}%")
    if a.skip_attentive:
        return
    T = 24
    xa = _data(1, n, D, C, seed=1)[0][0][:, None].expand(n, T, D).contiguous() + 0.05 * torch.randn(n, T, D)
    steps = max(20, a.steps // 20)
    cfg_a = TrainConfig(epochs=1, min_steps=steps, batch_size=bs)
    for G in (1, len(configs)):
        g = AttentiveGrid(D, T, C, G, seed=0)
        t0 = time.perf_counter()
        info = g.fit(xa, ytr, lrs[:G], wds[:G], cfg_a, batch_size=bs)
        dt = time.perf_counter() - t0
        imgs = info["steps"] * bs
        print(f"attentive, {T} inputs x {D}, {T} heads, {G} config(s): {info['steps']} steps of {bs} in {dt:.1f} s -> "
              f"{imgs / dt:,.0f} images/s ({imgs * G / dt:,.0f} probe-images/s)")


if __name__ == "__main__":
    main()
