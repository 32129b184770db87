"""Integrated Gradients and SmoothGrad: vitscope's batched implementation against Captum's default, same inputs.

Captum needs torchvision, so run this in the goldens virtual environment (see CONTRIBUTING.md) with vitscope's
source on the path:

    PYTHONPATH=src goldens-venv/bin/python benchmarks/attribution.py --n 8 --rounds 5

Both run on the bundled demo model (64 px, patch 8, width 64, 6 blocks) over the same images of builtin:demo.
Integrated Gradients: Captum's ``IntegratedGradients.attribute`` with its defaults (Gauss-Legendre, every step in
one batch) and vitscope's ``integrated_gradients`` (the same rule, the same batching choice); SmoothGrad: Captum's
``NoiseTunnel(Saliency)`` (all copies in one batch) and vitscope's ``noise_tunnel``, with the same seed so the noise
and the numbers are the same. Rounds are interleaved (which side runs first alternates); min / median / max seconds per call and the ratio of the
medians (Captum / vitscope: > 1 means vitscope is faster) are printed, with the largest difference of the
attributions.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="images per call")
    ap.add_argument("--steps", type=int, default=64, help="Integrated Gradients steps")
    ap.add_argument("--samples", type=int, default=16, help="SmoothGrad noisy copies")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    import vitscope as vs
    from vitscope.analysis.attribution_maps.gradients import integrated_gradients, noise_tunnel
    from vitscope.features.access import image_batches, open_dataset_any

    model = vs.load_model("demo-vit", device=a.device)
    (x,), y, _ = next(iter(image_batches([model], open_dataset_any("builtin:demo"), a.n, a.n)))
    x, y = x.to(a.device), y.to(a.device)
    base = -torch.ones_like(x)                                         # black for the demo's mean = std = 0.5
    ig, nt = IntegratedGradients(model), NoiseTunnel(Saliency(model))

    cases = {
        "integrated gradients": (
            lambda: ig.attribute(x, baselines=base, target=y, n_steps=a.steps),
            lambda: integrated_gradients(model, x, y, baseline="black", steps=a.steps).attributions),
        "smoothgrad": (
            lambda: (torch.manual_seed(0), nt.attribute(x, nt_type="smoothgrad", nt_samples=a.samples, stdevs=0.15,
                                                        target=y))[1],
            lambda: noise_tunnel(model, x, y, "smoothgrad", a.samples, 0.15, seed=0).attributions),
    }
    print(f"demo-vit, {a.n} images of builtin:demo, {a.steps} IG steps, {a.samples} SmoothGrad copies, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    print(f"{'method':22s} {'captum s (min/med/max)':>26s} {'vitscope s (min/med/max)':>26s} {'ratio':>7s} "
          f"{'max |diff|':>11s}")
    for name, (ref, ours) in cases.items():
        tr, to = [], []
        ra, oa = ref(), ours()                                         # warm-up, and the numbers compared
        diff = float((ra - oa).abs().max())
        for r in range(a.rounds):                                      # interleaved, the order alternating
            for fn, times in ((ref, tr), (ours, to)) if r % 2 == 0 else ((ours, to), (ref, tr)):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        fmt = lambda v: f"{min(v):.2f}/{statistics.median(v):.2f}/{max(v):.2f}"  # noqa: E731
        print(f"{name:22s} {fmt(tr):>26s} {fmt(to):>26s} {statistics.median(tr) / statistics.median(to):6.2f}x "
              f"{diff:11.2e}")


if __name__ == "__main__":
    main()
