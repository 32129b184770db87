"""Per-token ridge probes: vitscope's closed form batched over token positions against one scikit-learn
``Ridge`` fit per position (what vilas2023 runs, ``solver='lsqr'``, and scikit-learn's default solver).

    python benchmarks/ridge_probes.py                        # 20 positions, 1,000 rows, width 128, 50 classes
    python benchmarks/ridge_probes.py --positions 50 --n 10000 --d 768 --classes 1000   # vilas2023's B/32 size

Each round times, in turn: ``ridge_fit`` on all positions at once (float64), ``RidgeAccumulator`` fed in
batches of 256 rows then solved (the streamed path the commands use), and the loop of scikit-learn fits (one per
position). Rounds are interleaved; min / median / max over rounds are printed with the ratios, and the largest
difference of the weights against the ``cholesky`` loop.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import Ridge

from vitscope.analysis.probes.ridge import RidgeAccumulator, pm1_targets, ridge_fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=20)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    P, n, d, C = args.positions, args.n, args.d, args.classes
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, P, d, generator=g) + torch.randn(1, P, d, generator=g)       # rows, positions, width
    y = torch.randint(0, C, (n,), generator=g)
    Y = pm1_targets(y, C)
    Xp = X.transpose(0, 1).contiguous()                                             # P, n, d

    def batched():
        return ridge_fit(Xp, Y, alpha=1.0).weight

    def streamed():
        acc = RidgeAccumulator(P, d, C, alpha=1.0)
        for s in range(0, n, 256):
            acc.update(X[s:s + 256], y[s:s + 256])
        return acc.solve().weight

    def loop(solver):
        def run():
            Xn, Yn = Xp.numpy().astype(np.float64), Y.numpy()
            return np.stack([Ridge(alpha=1.0, solver=solver).fit(Xn[p], Yn).coef_.T for p in range(P)])
        return run

    runs = {"vitscope ridge_fit (batched)": batched, "vitscope RidgeAccumulator (streamed)": streamed,
            "sklearn Ridge loop, solver=cholesky": loop("cholesky"), "sklearn Ridge loop, solver=lsqr": loop("lsqr")}
    times = {k: [] for k in runs}
    out = {}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t0)
    ref = out["sklearn Ridge loop, solver=cholesky"]
    print(f"{P} positions, {n} rows, width {d}, {C} classes, {args.threads} thread(s), {args.rounds} rounds")
    base = np.median(times["vitscope ridge_fit (batched)"])
    for k, ts in times.items():
        w = out[k].numpy() if isinstance(out[k], torch.Tensor) else out[k]
        diff = float(np.abs(w - ref).max())
        print(f"  {k:40s} min {min(ts):7.3f} s  median {np.median(ts):7.3f} s  max {max(ts):7.3f} s  "
              f"x{np.median(ts) / base:6.1f} of batched   max |dW| vs cholesky {diff:.1e}")


if __name__ == "__main__":
    main()
