"""Plain forward throughput: vitscope vs transformers' ViTModel (and timm when importable), same weights.

    .venv/bin/python benchmarks/forward.py [--batch 32] [--iters 5] [--rounds 5] [--size 224] [--threads N] [--device cpu|cuda] [--dtype fp32|bf16]

ViT-S/16 with random weights, built in transformers, saved with save_pretrained and loaded into vitscope,
so every model computes the same function. The models run in interleaved rounds (the order rotates every
round); a round's rate is the median of ``--iters`` timed batches. Printed per model: min / median / max
images/s over the rounds, and vitscope's rate divided by this model's, taken round by round (median, with
the range over rounds in brackets), so a difference can be told from the machine's noise.
vitscope runs twice: with its default linear kernels (on a CPU in float32: oneDNN with the bias and GELU
fused, see ``vitscope.models.kernels``) and with ``set_linear_impl("torch")`` (``F.linear``, the kernels
transformers uses), so the two causes of a difference can be told apart.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from _spread import header, interleave, ratio_spread, ratio_text, row  # noqa: E402  (benchmarks/ on sys.path)


def rate(fn, x, iters: int, warmup: int = 1) -> float:
    """Images per second of one round: the median of ``iters`` timed batches after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the models")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    from transformers import ViTConfig as HFConfig, ViTModel

    from vitscope.models.converters.hf import load_hf_folder

    torch.manual_seed(0)
    hf = ViTModel(HFConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                           image_size=args.size, patch_size=16, layer_norm_eps=1e-6), add_pooling_layer=False)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        vs = load_hf_folder(d)
    hf = hf.to(args.device, dtype).eval()
    vs = vs.to(args.device, dtype).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device, dtype=dtype)

    runs = {}
    with torch.inference_mode():
        diff = (hf(x).last_hidden_state[:, 0] - vs.forward_features(x)[:, 0]).abs().max().item()
        runs["vitscope"] = lambda t: vs(t)

        def torch_linear(t):
            vs.set_linear_impl("torch")
            try:
                return vs(t)
            finally:
                vs.set_linear_impl("auto")

        runs["vitscope (F.linear)"] = torch_linear
        runs["transformers (sdpa)"] = lambda t: hf(t)
        try:
            import timm

            tm = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                                   img_size=args.size).to(args.device, dtype).eval()
            runs["timm"] = lambda t: tm(t)
        except ImportError:
            pass
        rates = interleave({name: (lambda fn=fn: rate(fn, x, args.iters)) for name, fn in runs.items()},
                           args.rounds)
    print(f"ViT-S/16 {args.size}px, batch {args.batch}, {args.device} {args.dtype}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; same weights (max |diff| of CLS tokens {diff:.2e}); "
          f"{args.rounds} interleaved rounds of {args.iters} batches")
    print(header("model", "img/s", 24, f"{'vitscope / this (range)':>26}"))
    for name, r in rates.items():
        print(row(name, r, 24, "10.1f", f"{ratio_text(*ratio_spread(rates['vitscope'], r)):>26}"))


if __name__ == "__main__":
    main()
