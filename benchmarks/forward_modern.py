"""Forward throughput of the modern families: vitscope vs timm's own forward of the same weights.

    goldens-venv/bin/python benchmarks/forward_modern.py [--batch 16] [--iters 3] [--rounds 3] [--threads N]

(timm needs torchvision, so this runs in the goldens virtual environment with ``PYTHONPATH=src``; see
CONTRIBUTING.md.) DINOv3-S/16 (RoPE, 4 registers, LayerScale; timm ``vit_small_patch16_dinov3``) and SigLIP-B/16
(attention-pool head; timm ``vit_base_patch16_siglip_224``) at 224 px with random weights, built in timm, saved
with timm's ``save_for_hf`` and loaded with ``vs.load_model(folder)``, so both compute the same function (the
max |diff| of the outputs is printed). The models run in interleaved rounds (the order rotates every round); a
round's rate is the median of ``--iters`` timed batches. Printed per model: min / median / max images/s over the
rounds, and vitscope's rate divided by timm's, round by round (median, with the range in brackets). vitscope
runs twice: with its default linear kernels (on a CPU in float32: oneDNN with bias and activation fused) and with
``set_linear_impl("torch")`` (``F.linear``, timm's kernels), so the two causes of a difference can be told apart.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from _spread import header, interleave, ratio_spread, ratio_text, row  # noqa: E402  (benchmarks/ on sys.path)

MODELS = {"DINOv3-S/16": ("vit_small_patch16_dinov3", dict(num_classes=0, global_pool="token")),
          "SigLIP-B/16": ("vit_base_patch16_siglip_224", dict(num_classes=0))}


def rate(fn, x, iters: int, warmup: int = 1) -> float:
    """Images per second of one round: the median of ``iters`` timed batches after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


def pair(arch: str, kw: dict, size: int):
    """(timm model, vitscope model) with the same random weights."""
    import timm
    from timm.models._hub import save_for_hf

    import vitscope as vs

    torch.manual_seed(0)
    tm = timm.create_model(arch, pretrained=False, img_size=size, **kw).eval()
    with tempfile.TemporaryDirectory() as d:
        save_for_hf(tm, d, model_args=dict(kw, img_size=size), safe_serialization=True)
        model = vs.load_model(d)
    return tm, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the models")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list among {', '.join(MODELS)}")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm

    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"{args.size}px, batch {args.batch}, cpu fp32, torch {torch.__version__}, timm {timm.__version__}, "
          f"threads {torch.get_num_threads()}; {args.rounds} interleaved rounds of {args.iters} batches")
    for label in args.models.split(","):
        arch, kw = MODELS[label]
        tm, model = pair(arch, kw, args.size)
        with torch.inference_mode():
            diff = (tm(x[:2]) - model(x[:2])).abs().max().item()

            def torch_linear(t, m=model):
                m.set_linear_impl("torch")
                try:
                    return m(t)
                finally:
                    m.set_linear_impl("auto")

            runs = {"vitscope": model, "vitscope (F.linear)": torch_linear, "timm": tm}
            rates = interleave({name: (lambda fn=fn: rate(fn, x, args.iters)) for name, fn in runs.items()},
                               args.rounds)
        print(f"\n{label} ({arch}): max |diff| of the outputs {diff:.2e}")
        print(header("model", "img/s", 24, f"{'vitscope / this (range)':>26}"))
        for name, r in rates.items():
            print(row(name, r, 24, "10.2f", f"{ratio_text(*ratio_spread(rates['vitscope'], r)):>26}"))


if __name__ == "__main__":
    main()
