"""Cost of the streamed mean-attention-distance pass against a plain forward of the same model.

    python benchmarks/attention_distance.py                 # ViT-S/16 (random init) at 224 px, N = 2000
    python benchmarks/attention_distance.py --n 256 --batch-size 32

Both passes see the same pre-made input batches (decoding is left out, it is the same for both). The plain
forward uses SDPA attention; the distance pass attaches hooks on every ``hook_pattern`` (so the model takes
its explicit attention path) and reduces each pattern to per-image x head distances inside the hook
(variants A and B). A third line times the explicit attention path with a no-op hook, to separate the cost
of materialising the patterns from the cost of reducing them. The passes are timed in interleaved rounds (the
order rotating) so that machine load hits them alike; per pass, min / median / max ms per image over the rounds,
and the ratio time / plain-forward time taken round by round (target for the distance pass: <= 1.5).
"""
from __future__ import annotations

import argparse
import time

import torch

from _spread import header, interleave, ratio_spread, ratio_text, row  # noqa: E402  (benchmarks/ on sys.path)
from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention.distance import attention_distance


def vit_s16(img: int) -> HookedViT:
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=img, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=1000)
    return HookedViT(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images per pass (default 2000)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    ap.add_argument("--img", type=int, default=224, help="input size")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the N images are split over them")
    ap.add_argument("--variants", default="A,B", help="distance variants computed in the pass")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = vit_s16(args.img).to(args.device)
    g = torch.Generator().manual_seed(0)
    n_batches = max(1, args.n // args.batch_size)
    pool = [torch.randn(args.batch_size, 3, args.img, args.img, generator=g).to(args.device) for _ in range(2)]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain(k):
        with torch.inference_mode():
            for i in range(k):
                model(pool[i % 2])

    def explicit(k):                            # the hooked (explicit-softmax) path alone, no reduction
        with torch.inference_mode(), model.hooks([("blocks.*.attn.hook_pattern", lambda t, hook: None)]):
            for i in range(k):
                model(pool[i % 2], stop_at=model.cfg.depth)

    def distance(k):
        return attention_distance(model, (pool[i % 2] for i in range(k)), variants, progress=False)

    plain(1)                                    # warm-up (allocations, kernels)
    distance(1)
    k = max(1, n_batches // args.rounds)                 # batches per pass and round
    n_img = k * args.batch_size

    def ms_per_image(fn):
        def run():
            sync()
            t0 = time.perf_counter()
            fn(k)
            sync()
            return 1000 * (time.perf_counter() - t0) / n_img
        return run

    dist_name = "attention distance (" + "+".join(variants) + ")"
    t = interleave({"plain forward (SDPA)": ms_per_image(plain),
                    "explicit attention, no reduction": ms_per_image(explicit),
                    dist_name: ms_per_image(distance)}, args.rounds)
    print(f"model: ViT-S/16 random init, {args.img} px, batch {args.batch_size}, {n_img} images per pass and round, "
          f"{args.rounds} interleaved rounds, {torch.get_num_threads()} threads, device {args.device}")
    print(header("pass", "ms/image", 34, f"{'time / plain forward':>24}"))
    for name, v in t.items():
        print(row(name, v, 34, "10.2f", f"{ratio_text(*ratio_spread(v, t['plain forward (SDPA)'])):>24}"))


if __name__ == "__main__":
    main()
