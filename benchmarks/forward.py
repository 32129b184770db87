"""Plain forward throughput: vitscope vs transformers' ViTModel (and timm when importable), same weights.

    .venv/bin/python benchmarks/forward.py [--batch 32] [--iters 5] [--rounds 2] [--size 224] [--threads N] [--device cpu|cuda] [--dtype fp32|bf16]

ViT-S/16 with random weights, built in transformers, saved with save_pretrained and loaded into vitscope,
so every model computes the same function. Each model runs in turn, repeated, and the best-of-N
images/s is printed side by side with ratios (the machine is shared and noisy: read the ratios).
vitscope runs twice: with its default linear kernels (on a CPU in float32: oneDNN with the bias and GELU
fused, see ``vitscope.models.kernels``) and with ``set_linear_impl("torch")`` (``F.linear``, the kernels
transformers uses), so the two causes of a difference can be told apart.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch


def best_rate(fn, x, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return x.shape[0] / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the models; best counts")
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
        rates = {name: 0.0 for name in runs}
        for _ in range(args.rounds):             # interleaved rounds, best per model: fair on a noisy machine
            for name, fn in runs.items():
                rates[name] = max(rates[name], best_rate(fn, x, args.iters))
    print(f"ViT-S/16 {args.size}px, batch {args.batch}, {args.device} {args.dtype}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; same weights (max |diff| of CLS tokens {diff:.2e})")
    base = rates["vitscope"]
    print(f"{'model':<24}{'img/s':>10}{'vitscope / this':>18}")
    for name, r in rates.items():
        print(f"{name:<24}{r:>10.1f}{base / r:>18.2f}x")


if __name__ == "__main__":
    main()
