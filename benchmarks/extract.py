"""Feature-extraction throughput and memory: vitscope's store writer vs a plain forward and the alternatives.

    .venv/bin/python benchmarks/extract.py [--images 256] [--rounds 3] [--rss 2000,8000] [--quick] [--device cpu]

ViT-S/16 with random weights (ViTConfig(embed_dim=384, depth=12, num_heads=6, patch_size=16, img_size=224)),
batch 32, 224 px. In one run, side by side (methods interleaved round by round, the order rotating every round;
min / median / max over rounds per method, and each ratio taken round by round, since the machine may be
shared and noisy):

- vitscope plain forward: ``model(x)`` under inference_mode over the same DataLoader;
- vitscope extraction: ``extract_features`` of CLS + patch mean of ``resid_post`` for all 12 blocks, written to
  an on-disk store (store creation, weights hash and fsync per batch included);
- the same extraction with ``set_linear_impl("torch")``: ``F.linear`` kernels, as transformers runs, instead
  of the default oneDNN kernels with fused bias + GELU (CPU float32 only; ``vitscope.models.kernels``);
- transformers ``ViTModel(..., output_hidden_states=True)`` (same architecture, SDPA attention) followed by the
  same reductions, copied into a preallocated NumPy array in memory (no disk: favourable to it);
- timm ``forward_intermediates`` + the same reductions, when timm is importable.

Then the peak resident memory (VmHWM) of an extraction of 2,000 and 8,000 images, each in its own
subprocess, images generated on the fly, next to a plain forward's (``--quick``: 200 and 800 images and one
short round). The children run with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=131072``) so that
RSS follows live memory; ``--default-malloc`` measures with glibc's dynamic threshold, whose peaks wobble by
about 10% from run to run whatever the image count.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from _spread import header, interleave, ratio_spread, ratio_text, row  # noqa: E402

from _memory import peak_rss_mb  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

BATCH = 32
SIZE = 224


class PoolData(torch.utils.data.Dataset):
    """``n`` items cycling over a few fixed random images (no decoding cost: we measure the model side)."""

    def __init__(self, n: int, pool: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.pool = torch.randn(pool, 3, SIZE, SIZE, generator=g)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.pool[i % len(self.pool)], -1, i


class FreshData(torch.utils.data.Dataset):
    """``n`` distinct images generated from their index (memory use independent of n)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)), -1, i


def vit_s16():
    from vitscope import HookedViT, ViTConfig

    torch.manual_seed(0)
    return HookedViT(ViTConfig(embed_dim=384, depth=12, num_heads=6, patch_size=16, img_size=224)).eval()


def loader(ds):
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=0)


# ----------------------------------------------------------------------------- the contenders
class Clock:
    """Wall time and CPU time of this process (all threads, the writer thread included)."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def run_plain(model, ds, device) -> Clock:
    with Clock() as c, torch.inference_mode():
        for x, _, _ in loader(ds):
            model(x.to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return c


def run_extract(model, ds, device, linear_impl: str = "auto") -> Clock:
    from vitscope.features import extract_features

    model.set_linear_impl(linear_impl)
    with tempfile.TemporaryDirectory(dir=os.environ.get("VITSCOPE_BENCH_TMP")) as d, Clock() as c:
        extract_features(model, ds, os.path.join(d, "store"), layers="all", sites="resid_post",
                         tokens="cls,mean", batch_size=BATCH, num_workers=0, device=device, progress=False)
    model.set_linear_impl("auto")
    return c


def make_hf(device):
    from transformers import ViTConfig as HFConfig
    from transformers import ViTModel

    torch.manual_seed(0)
    cfg = HFConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                   image_size=SIZE, patch_size=16, layer_norm_eps=1e-6)
    try:
        m = ViTModel(cfg, add_pooling_layer=False, attn_implementation="sdpa")
    except TypeError:
        m = ViTModel(cfg, add_pooling_layer=False)
    return m.to(device).eval()


def run_hf(hf, ds, device) -> Clock:
    out = np.zeros((len(ds), 12, 2, 384), dtype=np.float32)
    with Clock() as c, torch.inference_mode():
        for x, _, idx in loader(ds):
            hs = hf(pixel_values=x.to(device), output_hidden_states=True).hidden_states[1:]   # 12 x (B, 197, 384)
            red = torch.stack([torch.stack([h[:, 0], h[:, 1:].mean(1)], 1) for h in hs], 1)  # B, 12, 2, 384
            out[idx.numpy()] = red.cpu().numpy()
    return c


def make_timm(device):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).to(device).eval()


def run_timm(tm, ds, device) -> Clock:
    out = np.zeros((len(ds), 12, 2, 384), dtype=np.float32)
    with Clock() as c, torch.inference_mode():
        for x, _, idx in loader(ds):
            inter = tm.forward_intermediates(x.to(device), indices=12, output_fmt="NLC", intermediates_only=True,
                                             return_prefix_tokens=True)                      # 12 x (patches, prefix)
            red = torch.stack([torch.stack([pre[:, 0], p.mean(1)], 1) for p, pre in inter], 1)
            out[idx.numpy()] = red.cpu().numpy()
    return c


# ----------------------------------------------------------------------------- peak memory (child process)
def rss_child(n: int, device: str, plain: bool = False) -> None:
    from vitscope.features import extract_features

    model = vit_s16()
    with tempfile.TemporaryDirectory(dir=os.environ.get("VITSCOPE_BENCH_TMP")) as d:
        t0 = time.perf_counter()
        if plain:
            run_plain(model, FreshData(n), torch.device(device))
            size = 0
        else:
            store = extract_features(model, FreshData(n), os.path.join(d, "store"), layers="all",
                                     sites="resid_post", tokens="cls,mean", batch_size=BATCH, num_workers=0,
                                     device=device, progress=False)
            size = store.nbytes
        sec = time.perf_counter() - t0
    print(json.dumps({"n": n, "peak_rss_mb": peak_rss_mb(), "seconds": sec, "store_mb": size / 2**20}))


def measure_rss(n: int, device: str, fixed_malloc: bool, plain: bool = False) -> dict:
    env = dict(os.environ)
    if fixed_malloc:
        # glibc raises its mmap threshold dynamically, so freed activation buffers stay in the heap and the
        # peak RSS wobbles by +-10% from run to run; a fixed threshold makes RSS follow live memory
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    cmd = [sys.executable, __file__, "--rss-child", str(n), "--device", device] + (["--plain"] if plain else [])
    p = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="images per round and method (multiple of 32)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--rss", default="2000,8000", help="image counts for the peak-memory runs")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 images, 1 round, RSS at 200 and 800")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-rss", action="store_true", help="only the throughput comparison")
    ap.add_argument("--default-malloc", action="store_true",
                    help="measure peak RSS with glibc's default (dynamic) mmap threshold: noisier by +-10%%")
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child is not None:
        return rss_child(args.rss_child, args.device, plain=args.plain)
    if args.quick:
        args.images, args.rounds, args.rss = 64, 1, "200,800"
    device = torch.device(args.device)
    print(f"ViT-S/16 random weights, batch {BATCH}, {SIZE} px, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.images} images x {args.rounds} rounds", flush=True)

    model = vit_s16().to(device)
    ds = PoolData(args.images)
    methods = {"vitscope forward": lambda: run_plain(model, ds, device),
               "vitscope extract -> disk": lambda: run_extract(model, ds, device),
               "vitscope extract -> disk (F.linear)": lambda: run_extract(model, ds, device, "torch")}
    try:
        hf = make_hf(device)
        methods["transformers hidden_states + reductions"] = lambda: run_hf(hf, ds, device)
    except ImportError as e:
        print(f"(transformers not importable: {e})")
    try:
        tm = make_timm(device)
        methods["timm forward_intermediates + reductions"] = lambda: run_timm(tm, ds, device)
    except ImportError:
        print("(timm not importable: skipped)")
    warm = PoolData(BATCH)
    run_plain(model, warm, device)
    if "transformers hidden_states + reductions" in methods:
        run_hf(hf, warm, device)
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    n = len(ds)

    def timed(name):
        def fn():
            c = methods[name]()
            cpu.setdefault(name, []).append(c.cpu / n * 1000)
            print(f"  {name:<42} {n / c.wall:7.2f} img/s  {c.cpu / n * 1000:7.1f} CPU-ms/img", flush=True)
            return n / c.wall
        return fn

    rates = interleave({name: timed(name) for name in methods}, args.rounds)
    fw, ex = "vitscope forward", "vitscope extract -> disk"
    print("\nthroughput: img/s over rounds; CPU-ms/img is the process CPU time (all threads), which contention")
    print("from other jobs disturbs much less than wall time. Ratios are taken round by round: median (min-max).")
    print(header("method", "img/s", 42, f"{'vs forward':>22}{'CPU-ms/img med':>16}{'extract faster by (wall)':>26}"))
    for name, r in rates.items():
        print(row(name, r, 42, "10.2f", f"{ratio_text(*ratio_spread(r, rates[fw])):>22}"
                                        f"{np.median(cpu[name]):16.1f}{ratio_text(*ratio_spread(rates[ex], r)):>26}"))
    lo, med, hi = ratio_spread(rates[ex], rates[fw])
    clo, cmed, chi = ratio_spread(cpu[fw], cpu[ex])
    print(f"extraction / plain forward = {med:.3f} ({lo:.3f}-{hi:.3f}) by wall, {cmed:.3f} ({clo:.3f}-{chi:.3f}) "
          f"by CPU time (target >= 0.9)")
    if args.skip_rss:
        return
    fixed = not args.default_malloc
    print("\npeak resident memory (VmHWM) of an extraction, each in its own process, images generated on the fly"
          + (" (MALLOC_MMAP_THRESHOLD_=131072)" if fixed else " (default malloc)"))
    counts = [int(n) for n in args.rss.split(",")]
    rows = [measure_rss(n, args.device, fixed) for n in counts]
    for r in rows:
        print(f"  {r['n']:>6} images: peak RSS {r['peak_rss_mb']:8.1f} MB, {r['seconds']:7.1f} s "
              f"({r['n'] / r['seconds']:.1f} img/s), store {r['store_mb']:.1f} MB")
    ref = measure_rss(min(counts[0], 10 * BATCH), args.device, fixed, plain=True)
    print(f"  reference: plain forward over {ref['n']} images: peak RSS {ref['peak_rss_mb']:.1f} MB")
    if len(rows) == 2:
        a, b = rows[0]["peak_rss_mb"], rows[1]["peak_rss_mb"]
        print(f"  difference {abs(b - a) / a * 100:.1f}% for {rows[1]['n'] / rows[0]['n']:.0f}x the images "
              "(target < 10%)")


if __name__ == "__main__":
    main()
