"""Cost of the streamed mean-attention-distance pass against a plain forward of the same model.

    python benchmarks/attention_distance.py                 # ViT-S/16 (random init) at 224 px, N = 2000
    python benchmarks/attention_distance.py --n 256 --batch-size 32

Both passes see the same pre-made input batches (decoding is left out, it is the same for both). The plain
forward uses SDPA attention; the distance pass attaches hooks on every ``hook_pattern`` (so the model takes
its explicit attention path) and reduces each pattern to per-image x head distances inside the hook
(variants A and B). A third line times the explicit attention path with a no-op hook, to separate the cost
of materialising the patterns from the cost of reducing them. The passes are timed in alternating rounds so
that machine load hits them alike; the ratio is time / plain-forward time (target for the distance pass: <= 1.5).
"""
from __future__ import annotations

import argparse
import time

import torch

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
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the N images are split over them")
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
    per_round = [n_batches // args.rounds + (1 if r < n_batches % args.rounds else 0) for r in range(args.rounds)]
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
    t_plain = t_expl = t_dist = 0.0
    n_img = 0
    for k in per_round:
        if k == 0:
            continue
        sync(); t0 = time.perf_counter(); plain(k); sync(); t_plain += time.perf_counter() - t0
        sync(); t0 = time.perf_counter(); explicit(k); sync(); t_expl += time.perf_counter() - t0
        sync(); t0 = time.perf_counter(); acc = distance(k); sync(); t_dist += time.perf_counter() - t0
        n_img += k * args.batch_size
        assert acc[variants[0]].n_images == k * args.batch_size
    print(f"model: ViT-S/16 random init, {args.img} px, batch {args.batch_size}, {n_img} images per pass, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    print(f"{'pass':34s} {'seconds':>9s} {'ms/image':>9s} {'ratio':>7s}")
    print(f"{'plain forward (SDPA)':34s} {t_plain:9.2f} {1000 * t_plain / n_img:9.2f} {1.0:7.2f}")
    print(f"{'explicit attention, no reduction':34s} {t_expl:9.2f} {1000 * t_expl / n_img:9.2f} {t_expl / t_plain:7.2f}")
    print(f"{'attention distance (' + '+'.join(variants) + ')':34s} {t_dist:9.2f} {1000 * t_dist / n_img:9.2f} "
          f"{t_dist / t_plain:7.2f}")


if __name__ == "__main__":
    main()
