"""CKA speed and memory: vitscope's layer x layer CKA against a naive Gram-matrix implementation, and minibatch
CKA memory for two dataset sizes.

    python benchmarks/cka.py                       # 12 x 12 linear CKA, n = 10,000, d = 384; minibatch 10k vs 50k
    python benchmarks/cka.py --naive-pairs 3       # naive pairs actually timed (the rest is extrapolated)
    python benchmarks/cka.py --device cuda

Part 1. Twelve random "layers" (n x d, correlated like a residual stream). vitscope: ``cka_matrix`` (unbiased
linear CKA; the feature-space form is chosen automatically, each layer prepared once, i <= j only). Naive: for
each pair build both n x n Gram matrices, U-centre them and take the three inner products (the common public
implementation). The naive run on all 78 unique pairs takes long on a shared CPU, so ``--naive-pairs`` pairs are
timed and the per-pair time is multiplied by 78 (printed as an extrapolation); both give the same numbers, which
is checked on the timed pairs. ``--rounds`` interleaves: each round times the whole vitscope matrix and one naive
pair (cycling through the chosen pairs); min / median / max are printed, and the speed-up per round.

Part 2. ``MinibatchCKA`` over n samples in batches of 256 for 12 layers, features generated batch by batch (as a
model would produce them, nothing kept), each n in a fresh process; the peak resident memory (VmHWM) of the
two runs is printed side by side.
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

from vitscope.analysis.similarity import MinibatchCKA, cka_matrix
from vitscope.analysis.similarity.cka import center_gram

from _memory import peak_rss_mb  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _spread import header, interleave, ratio_spread, ratio_text, row  # noqa: E402


def make_layers(n: int, d: int, n_layers: int, seed: int = 0, device="cpu") -> list[torch.Tensor]:
    """A residual-stream-like stack: each layer = previous + a random update (float32, like stored features)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    out = []
    for _ in range(n_layers):
        w = torch.randn(d, d, generator=g) / d ** 0.5
        x = x + 0.5 * torch.tanh(x @ w)
        out.append(x.clone().to(device))
    return out


def naive_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Build both n x n Gram matrices for this pair, U-centre, three inner products (unbiased linear CKA)."""
    x, y = x.double(), y.double()
    k, l = x @ x.T, y @ y.T
    kc, lc = center_gram(k), center_gram(l)
    xy, xx, yy = (kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum()
    return float(xy / torch.sqrt(xx * yy))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def part1(args) -> None:
    n, d, L = args.n, args.d, args.layers
    layers = make_layers(n, d, L, device=args.device)
    pairs = [(i, j) for i in range(L) for j in range(i, L)]
    rng = np.random.default_rng(0)
    chosen = [pairs[k] for k in rng.choice(len(pairs), size=min(args.naive_pairs, len(pairs)), replace=False)]
    state = {"m": None, "k": 0, "err": 0.0}

    def fast():
        sync(args.device)
        t0 = time.perf_counter()
        state["m"] = cka_matrix(layers, unbiased=True)
        sync(args.device)
        return time.perf_counter() - t0

    def naive():                                  # one pair per round, extrapolated to every unique pair
        i, j = chosen[state["k"] % len(chosen)]
        state["k"] += 1
        sync(args.device)
        t0 = time.perf_counter()
        v = naive_cka(layers[i], layers[j])
        sync(args.device)
        dt = time.perf_counter() - t0
        if state["m"] is not None:
            state["err"] = max(state["err"], abs(v - state["m"][i, j]))
        return dt * len(pairs)

    t = interleave({"vitscope cka_matrix (feature-space form)": fast,
                    "naive n x n Gram matrices": naive}, max(args.rounds, 1))
    print(f"[1] {L}x{L} unbiased linear CKA, n={n}, d={d}, float64, device={args.device}, "
          f"torch threads={torch.get_num_threads()}, {args.rounds} interleaved rounds")
    print(header("method (seconds for the whole matrix)", "s", 44, f"{'naive / this':>22}"))
    for name, v in t.items():
        print(row(name, v, 44, "10.2f", f"{ratio_text(*ratio_spread(t['naive n x n Gram matrices'], v)):>22}"))
    print(f"    naive: one pair timed per round, x {len(pairs)} unique pairs (extrapolated); target speed-up >= 20x; "
          f"max |difference| on timed pairs {state['err']:.1e}")


def child(n: int, batch: int, d: int, L: int) -> None:
    """One minibatch run; prints JSON with time and peak RSS (this process only)."""
    base = peak_rss_mb()
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(d, d, generator=g) / d ** 0.5 for _ in range(L)]
    mb = MinibatchCKA()
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        b = min(batch, n - s)
        if b < 4:
            break
        x = torch.randn(b, d, generator=g)
        feats = []
        for w in ws:                                                                   # "layers" of this batch
            x = x + 0.5 * torch.tanh(x @ w)
            feats.append(x)
        mb.update(feats)
    m = mb.compute()
    dt = time.perf_counter() - t0
    peak = peak_rss_mb()
    print(json.dumps({"n": mb.n_samples, "batches": mb.n_batches, "seconds": dt, "peak_rss_mb": peak,
                      "rss_before_mb": base, "cka_0_11": float(m[0, L - 1])}))


def part2(args) -> None:
    res = []
    for n in args.mb_n:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--batch", str(args.batch),
                              "--d", str(args.d), "--layers", str(args.layers)],
                             capture_output=True, text=True, check=True, env={**os.environ})
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"[2] MinibatchCKA, {args.layers} layers, d={args.d}, batches of {args.batch} (fresh process per n)")
    for r in res:
        print(f"    n={r['n']:>7,}  batches={r['batches']:>4}  time={r['seconds']:7.2f} s  "
              f"peak RSS={r['peak_rss_mb']:7.1f} MiB  (after imports {r['rss_before_mb']:.1f} MiB)")
    a, b = res[0], res[-1]
    print(f"    n ratio {b['n'] / a['n']:.1f}x -> peak RSS ratio {b['peak_rss_mb'] / a['peak_rss_mb']:.3f}x, "
          f"time ratio {b['seconds'] / a['seconds']:.2f}x; keeping the features instead would take "
          f"{b['n'] * args.d * args.layers * 4 / 2**20:,.0f} MiB (float32) for n={b['n']:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples for the 12 x 12 matrix")
    ap.add_argument("--d", type=int, default=384, help="feature width")
    ap.add_argument("--layers", type=int, default=12, help="layers")
    ap.add_argument("--naive-pairs", type=int, default=3, help="distinct naive pairs cycled through over the rounds")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--mb-n", type=int, nargs="+", default=[10_000, 50_000], help="minibatch dataset sizes")
    ap.add_argument("--batch", type=int, default=256, help="minibatch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip", choices=["1", "2"], help="skip part 1 or 2")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.batch, args.d, args.layers)
        return
    if args.skip != "1":
        part1(args)
    if args.skip != "2":
        part2(args)


if __name__ == "__main__":
    main()
