"""What bounds a TopK SAE step on this CPU: each pass of a step over a stack of G SAEs timed alone, side by side in
one run (min / median / max over interleaved rounds, milliseconds per call).

The rows: one batched product of the step's size (B x d by d x w; a step does five), the top-k over every latent
of every token, the scatter of the k values into dense (G, B, w) latents, one elementwise pass over them (ReLU), and
the sparse decoder's forward pass (``embedding_bag`` over the k rows per token, which replaces a product), and the
decoder's gradient as scattered row updates against the dense product (why the backward pass stays dense). The last
line prints top-k's time in products.

    PYTHONPATH=src python benchmarks/sae_step_parts.py [--d 64 --width 512 --k 32 --members 4 --batch 1024]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _spread import header, interleave, ratio_spread, row  # noqa: E402


def timed(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--members", type=int, default=4, help="SAEs in the stack (G)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    from vitscope.analysis.sae.models import sparse_decode

    g, b, d, w, k = a.members, a.batch, a.d, a.width, a.k
    torch.manual_seed(0)
    x, W_enc, W_dec = torch.randn(g, b, d), torch.randn(g, d, w), torch.randn(g, w, d)
    pre = torch.bmm(x, W_enc)
    vals, idx = pre.topk(k, dim=-1)
    vals = vals.relu()
    grad = torch.randn(g, b, d)                                      # the gradient of the reconstruction
    z = torch.zeros_like(pre).scatter_(-1, idx, vals)
    flat = (idx + torch.arange(g).view(g, 1, 1) * w).reshape(-1)
    res = interleave({
        "one product (B x d by d x w)": lambda: timed(lambda: torch.bmm(x, W_enc), a.reps),
        f"top-{k} of {w} per token": lambda: timed(lambda: pre.topk(k, dim=-1, sorted=False), a.reps),
        "scatter into dense latents": lambda: timed(lambda: torch.zeros_like(pre).scatter_(-1, idx, vals), a.reps),
        "one elementwise pass (ReLU)": lambda: timed(lambda: pre.relu(), a.reps),
        "sparse decode (forward)": lambda: timed(lambda: sparse_decode(vals, idx, W_dec), a.reps),
        "decoder gradient, scattered rows": lambda: timed(lambda: torch.zeros(g * w, d).index_add_(
            0, flat, (vals.reshape(g * b, k, 1) * grad.reshape(g * b, 1, d)).reshape(-1, d)), a.reps),
        "decoder gradient, dense product": lambda: timed(lambda: torch.bmm(z.transpose(1, 2), grad), a.reps),
    }, a.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; G={g} B={b} d={d} w={w} k={k}; "
          f"{a.rounds} rounds")
    print(header("", "ms"))
    for name, xs in res.items():
        print(row(name, xs))
    lo, med, hi = ratio_spread(res[f"top-{k} of {w} per token"], res["one product (B x d by d x w)"])
    print(f"top-k / one product: min {lo:.1f}  median {med:.1f}  max {hi:.1f}")


if __name__ == "__main__":
    main()
