"""Streamed logit lens (every block, every token, block output + attention + MLP branches) on the demo model:
peak resident memory for two dataset sizes (each in a fresh process), and time against a plain forward of the
same images (interleaved rounds, min / median / max).

    python benchmarks/logit_lens.py                       # 2,000 and 8,000 images, 3 timing rounds
    python benchmarks/logit_lens.py --sizes 500,2000 --rounds 2

Images: 256 held-out images of the demo benchmark, preprocessed once and cycled, so that decoding is not timed.
Per-image values (ranks, true-class logits, top-5) are recorded to files in a temporary folder, as
`vitscope logit-lens` does; the summaries every metric needs stay in memory (fixed size).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCH = 256


def setup(threads: int):
    import torch

    from vitscope.data import open_dataset
    from vitscope.models.loading import load_model
    from vitscope.models.preprocess import Preprocessor
    from vitscope.report.demo import held_out_spec

    torch.set_num_threads(threads)
    model = load_model("demo-vit").eval()
    ds = open_dataset(held_out_spec(BATCH), transform=Preprocessor(model.preprocess_cfg))
    x, y, _ = next(iter(ds.batches(BATCH)))
    return model, x, y


def batches(x, y, n: int):
    for start in range(0, n, BATCH):
        b = min(BATCH, n - start)
        yield x[:b], y[:b]


def run_lens(model, x, y, n: int, folder: str) -> float:
    from vitscope.analysis.class_embedding import logit_lens

    t = time.perf_counter()
    res = logit_lens(model, batches(x, y, n), sites=("resid", "attn", "mlp"), topk=5, record=folder)
    assert res.n_images == n
    return time.perf_counter() - t


def run_forward(model, x, y, n: int) -> float:
    import torch

    t = time.perf_counter()
    with torch.inference_mode():
        for xb, _ in batches(x, y, n):
            model(xb)
    return time.perf_counter() - t


def child(n: int, threads: int) -> None:
    from _memory import peak_rss_mb

    model, x, y = setup(threads)
    base = peak_rss_mb()
    with tempfile.TemporaryDirectory() as d:
        secs = run_lens(model, x, y, n, d)
        size = sum(f.stat().st_size for f in Path(d).glob("*.bin"))
    print(json.dumps({"n": n, "seconds": secs, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base,
                      "record_mb": size / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,8000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", type=int, default=None)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child, a.threads)
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    print(f"streamed logit lens, demo-vit (6 blocks, 65 tokens, 8 classes), sites resid+attn+mlp, top-5, "
          f"batch {BATCH}, {a.threads} thread(s)")
    mem = {}
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--threads", str(a.threads)],
                             capture_output=True, text=True, check=True)
        mem[n] = json.loads(out.stdout.strip().splitlines()[-1])
    print("\npeak resident memory (fresh process each)")
    print(f"{'images':>8} {'peak RSS MiB':>13} {'before lens':>12} {'record on disk MiB':>19} {'seconds':>8}")
    for n, m in mem.items():
        print(f"{n:>8} {m['peak_rss_mb']:>13.1f} {m['rss_before_mb']:>12.1f} {m['record_mb']:>19.1f} "
              f"{m['seconds']:>8.2f}")
    lo, hi = mem[sizes[0]]["peak_rss_mb"], mem[sizes[-1]]["peak_rss_mb"]
    print(f"peak RSS {sizes[-1]} / {sizes[0]} images: {hi / lo:.3f} (difference {100 * (hi - lo) / lo:+.1f}%)")

    model, x, y = setup(a.threads)
    n = sizes[0]
    t_lens, t_fwd = [], []
    with tempfile.TemporaryDirectory() as d:
        run_forward(model, x, y, BATCH)                                          # warm-up
        for _ in range(a.rounds):                                                # interleaved rounds
            t_fwd.append(run_forward(model, x, y, n))
            t_lens.append(run_lens(model, x, y, n, d))
    ratios = [lens / fwd for lens, fwd in zip(t_lens, t_fwd)]
    print(f"\ntime, {n} images, {a.rounds} interleaved rounds (min / median / max seconds)")
    for name, ts in (("plain forward", t_fwd), ("streamed logit lens", t_lens)):
        print(f"{name:>20}: {min(ts):.2f} / {statistics.median(ts):.2f} / {max(ts):.2f}")
    print(f"{'lens / forward':>20}: {min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}")


if __name__ == "__main__":
    main()
