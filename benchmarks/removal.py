"""Token-removal curves: one forward pass per curve and number of removed patches (the loop over
``correct_after_removal``) against every curve of a step stacked into one batched pass (``correct_after_removals``,
what ``removal_curves`` runs), on a bundled demo model, in interleaved rounds. Both give the same counts (checked).

    python benchmarks/removal.py [--model demo-vit] [--images 64] [--step 4] [--random-orders 10] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitscope.analysis.class_embedding.importance import importance, importance_order, random_orders
from vitscope.analysis.class_embedding.removal import (DIRECTIONS, correct_after_removal, correct_after_removals,
                                                       removal_steps)
from vitscope.data import open_dataset
from vitscope.models.loading import load_model
from vitscope.models.preprocess import Preprocessor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo-vit")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--step", type=int, default=4)
    ap.add_argument("--random-orders", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model).eval()
    ds = open_dataset(f"builtin:demo?n={a.images},split=test", transform=Preprocessor(model.preprocess_cfg))
    x, y, _ = next(iter(ds.batches(a.images)))
    N = model.token_layout(0).n_patches
    removed = removal_steps(N, a.step)
    curves = [(importance_order(importance(model, x, y, o)), d) for o in ("grads", "chefer") for d in DIRECTIONS]
    curves += [(r, "negative") for r in random_orders(N, a.random_orders, 0)]
    with torch.inference_mode():
        base = model(x).argmax(-1) == y

    def loop():
        return torch.stack([correct_after_removal(model, x, y, o, removed, d, base) for o, d in curves])

    def stacked():
        return correct_after_removals(model, x, y, curves, removed, base)

    assert torch.equal(loop(), stacked()), "the stacked passes must give the loop's counts"
    times: dict[str, list[float]] = {"loop": [], "stacked": []}
    for _ in range(a.rounds):
        for name, fn in (("loop", loop), ("stacked", stacked)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"{a.model}: {a.images} images, {len(removed)} patch counts x {len(curves)} curves, {a.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    ref = statistics.median(times["stacked"])
    for name, ts in times.items():
        print(f"{name:8s} min {min(ts):7.2f} s  median {statistics.median(ts):7.2f} s  max {max(ts):7.2f} s  "
              f"median / stacked {statistics.median(ts) / ref:5.2f}")


if __name__ == "__main__":
    main()
