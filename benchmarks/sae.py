"""SAE training speed and memory, side by side in one run (min / median / max over interleaved rounds).

1. The grid's training throughput as a fraction of this CPU's GEMM rate for the same matrix shapes: an SAE step is
   six products of (B x d) by (d x w) size (encoder, decoder, and their gradients), so timing those six batched
   products alone is the physical limit of a step.
2. A grid of 8 SAEs (2 widths x 4 k) trained in one pass vs the same 8 trained one after another, the same steps
   (the grid shares the batch reads, the normalisation and the per-step overhead).
3. vitscope's ReLU SAE vs saev's training loop transcribed (its SparseAutoencoder forward, L1 of f_x times decoder
   norms, Adam, parallel-gradient removal and decoder normalisation, a shuffled batch read per step) on the same
   data and shapes.
4. Peak resident memory of training on a store 4x larger (separate processes; the stream holds one chunk).

    PYTHONPATH=src python benchmarks/sae.py [--images 400] [--steps 40] [--rounds 3] [--d 64 --widths 256,512]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _spread import header, interleave, ratio_spread, row  # noqa: E402


def make_store(path: Path, images: int, tokens: int = 64, d: int = 64, seed: int = 0) -> Path:
    from sae_fixtures import write_store

    rng = np.random.default_rng(seed)
    D = rng.normal(size=(256, d)).astype(np.float32)
    x = np.zeros((images, tokens, d), np.float32)
    for i in range(images):
        codes = (rng.random((tokens, 256)) < 0.02) * rng.uniform(0.5, 2, (tokens, 256))
        x[i] = codes @ D + 0.05 * rng.normal(size=(tokens, d))
    return write_store(path, {("resid_post", 3, "patches"): x}, depth=6)


def opts(**kw):
    from vitscope.analysis.sae.train import TrainOptions

    base = dict(blocks="3", arch="topk", width=(256, 512), k=(8, 16, 24, 32), lr=(4e-4,), steps=60,
                batch_size=1024, chunk_images=128, warmup=5, checkpoint_every=10 ** 9, log_every=10 ** 9,
                init_rows=2048)
    base.update(kw)
    return TrainOptions(**base)


def time_train(store, o) -> float:
    from vitscope.analysis.sae.train import Trainer

    tr = Trainer(store, o)
    tr._init()
    t = time.perf_counter()
    tr.run()
    return time.perf_counter() - t


def gemm_seconds(shapes, steps: int, batch: int, d: int) -> float:
    """Time of the six products per step of every SAE of the grid (stacked per width), ``steps`` times."""
    mats = []
    for g, w in shapes:
        x = torch.randn(g, batch, d)
        we = torch.randn(g, d, w)
        z = torch.randn(g, batch, w)
        wd = torch.randn(g, w, d)
        mats.append((x, we, z, wd))
    t = time.perf_counter()
    for _ in range(steps):
        for x, we, z, wd in mats:
            torch.bmm(x, we)                                 # encoder
            torch.bmm(z, wd)                                 # decoder
            torch.bmm(x.transpose(1, 2), z)                  # d W_enc
            torch.bmm(z.transpose(1, 2), x)                  # d W_dec
            torch.bmm(z, wd)                                 # d z through the decoder (B x w by w x d)
            torch.bmm(x, we)                                 # d x back through the encoder (same shape)
    return time.perf_counter() - t


def saev_loop(store_path, steps: int, batch: int, width: int, l1: float = 1e-3, lr: float = 4e-4) -> float:
    """saev's training step transcribed (ReLU SAE, its loss and its updates), batches read at random from the
    memmap as its shuffled loader does."""
    from vitscope.features import open_store

    arr = open_store(store_path)["resid_post", 3, "patches"]
    n, t_, d = arr.shape
    flat = arr.reshape(n * t_, d)
    torch.manual_seed(0)
    W_enc = torch.nn.Parameter(torch.nn.init.kaiming_uniform_(torch.empty(d, width)))
    b_enc = torch.nn.Parameter(torch.zeros(width))
    W_dec = torch.nn.Parameter(torch.nn.init.kaiming_uniform_(torch.empty(width, d)))
    b_dec = torch.nn.Parameter(torch.zeros(d))
    with torch.no_grad():
        W_dec /= W_dec.norm(dim=1, keepdim=True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(steps):
        idx = np.sort(rng.choice(n * t_, batch, replace=False))
        x = torch.from_numpy(np.asarray(flat[idx], dtype=np.float32))
        f_x = torch.relu(x @ W_enc + b_enc)
        x_hat = f_x @ W_dec + b_dec
        mse = ((x_hat - x) ** 2).mean()
        sparsity = l1 * (f_x * W_dec.norm(dim=1)).sum(-1).mean()
        loss = mse + sparsity
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            par = (W_dec.grad * W_dec).sum(-1, keepdim=True)
            W_dec.grad -= par * W_dec
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    return time.perf_counter() - t


def peak_memory(store_path: Path, steps: int) -> float:
    code = (f"import sys; sys.path[:0] = [{str(Path(__file__).resolve().parent)!r}]; "
            "from sae import opts, time_train; from _memory import peak_rss_mb; "
            f"time_train({str(store_path)!r}, opts(width=(256,), k=(16,), steps={steps})); print(peak_rss_mb())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400, help="images of 64 tokens in the store")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--d", type=int, default=64, help="input width (64: demo-vit; 384: ViT-S; 768: ViT-B)")
    ap.add_argument("--widths", default="256,512", help="the grid's two SAE widths")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sae-bench-"))
    d = a.d
    widths = tuple(int(w) for w in a.widths.split(","))
    store = make_store(tmp / "store", a.images, d=d)
    big = make_store(tmp / "store4", 4 * a.images, d=d, seed=1)
    grid = opts(steps=a.steps, width=widths)
    members = [opts(steps=a.steps, width=(w,), k=(k,)) for w in grid.width for k in grid.k]
    bs = grid.batch_size

    res = interleave({
        "grid of 8, one pass": lambda: time_train(store, grid),
        "8 one after another": lambda: sum(time_train(store, o) for o in members),
        "GEMMs of the grid": lambda: gemm_seconds([(len(grid.k), w) for w in widths], a.steps, bs, d),
        "vitscope ReLU SAE (w=512)": lambda: time_train(store, opts(steps=a.steps, arch="relu", width=(512,),
                                                                    l1=(1e-3,))),
        "saev loop (w=512)": lambda: saev_loop(store, a.steps, bs, 512),
    }, a.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.steps} steps of {bs} tokens, "
          f"d={d}; rounds={a.rounds}")
    print(header("", "s"))
    for name, xs in res.items():
        print(row(name, xs, fmt="10.3f"))
    for label, num, den in (("GEMM-rate fraction (GEMMs / grid)", "GEMMs of the grid", "grid of 8, one pass"),
                            ("grid speed-up (sequential / grid)", "8 one after another", "grid of 8, one pass"),
                            ("vitscope vs saev (saev / vitscope)", "saev loop (w=512)", "vitscope ReLU SAE (w=512)")):
        lo, med, hi = ratio_spread(res[num], res[den])
        print(f"{label:<40} min {lo:.2f}  median {med:.2f}  max {hi:.2f}")
    m1, m4 = peak_memory(store, a.steps), peak_memory(big, a.steps)
    print(f"peak RSS: store of {a.images} images {m1:.1f} MiB, 4x larger {m4:.1f} MiB ({100 * (m4 / m1 - 1):+.1f}%)")


if __name__ == "__main__":
    main()
