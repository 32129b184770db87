"""The model-level attention passes on the inputs where slips show: a DIST token and a register before the
patches, a non-square input on a square-configured model (position embeddings resampled), several batches,
bfloat16 and float16 weights.

References are plain loops over the patterns that the model itself computes (captured with ``run_with_cache``),
with token positions written out by hand from the config: CLS, DIST, the register, then the patch grid in
row-major order. Nothing below reads a ``TokenLayout``.
"""
import math

import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention.distance import attention_distance
from vitscope.analysis.attention.relevance import relevance_from_model
from vitscope.analysis.attention.stats import attention_statistics

PATCH = 8
INPUT = (24, 40)                  # non-square: a 3 x 5 grid on a model configured for 32 x 32
GRID = (INPUT[0] // PATCH, INPUT[1] // PATCH)
N_PREFIX = 3                      # CLS, DIST, one register


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=32, patch_size=PATCH, embed_dim=32, depth=3, num_heads=4, num_classes=10,
                    distill_token=True, head="distilled", num_registers=1)
    return HookedViT(cfg).eval().to(dtype)


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, *INPUT, generator=g)
    return x, [x[:2], x[2:4], x[4:]]           # three batches, the last of one image


def model_patterns(model, x):
    """{block: (B, H, T, T) float64} as the model computes them, in its own dtype."""
    names = [f"blocks.{b}.attn.hook_pattern" for b in range(model.cfg.depth)]
    with torch.no_grad():
        _, cache = model.run_with_cache(x.to(model.dtype), names_filter=names)
    return {b: cache[n].double().numpy() for b, n in enumerate(names)}


def positions(variant):
    rows, cols = GRID
    out = []
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        out.append((r / (rows - 1), c / (cols - 1)) if variant == "A" else (r * PATCH, c * PATCH))
    return out


def ref_distance(P, variant):
    """(B, H): A renormalises each patch query over the patch keys, B does not."""
    B, H = P.shape[:2]
    N = GRID[0] * GRID[1]
    pos = positions(variant)
    out = np.zeros((B, H))
    for b in range(B):
        for h in range(H):
            tot = 0.0
            for i in range(N):
                row = [P[b, h, N_PREFIX + i, N_PREFIX + j] for j in range(N)]
                s = sum(row) if variant == "A" else 1.0
                tot += sum(row[j] / s * math.dist(pos[i], pos[j]) for j in range(N))
            out[b, h] = tot / N
    return out


# tolerances: the references are float64 loops over the same patterns; a pass that reduced bfloat16 / float16
# patterns in their own precision (rounding ~4e-3 / 5e-4) would be far outside these.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_attention_distance_through_the_model(dtype):
    model = make_model(dtype)
    x, batches = inputs()
    acc = attention_distance(model, batches, progress=False)
    P = model_patterns(model, x)
    for v in ("A", "B"):
        ref = np.stack([ref_distance(P[b], v) for b in range(3)], 1)                  # images, blocks, heads
        assert acc[v].n_images == 5
        np.testing.assert_allclose(acc[v].compute(), ref.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(acc[v].std(), ref.std(0), rtol=1e-3, atol=1e-6)


def std1(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((v - m) ** 2 for v in xs) / (len(xs) - 1))


def ref_statistics(P):
    """Per image, from the definitions in walmer2023's terms; returns means over images."""
    B, H = P.shape[:2]
    rows, cols = GRID
    N = rows * cols
    a = P[:, :, N_PREFIX:, N_PREFIX:]
    head_std = np.mean([sum(std1([a[b, h, i, j] for h in range(H)]) for i in range(N) for j in range(N)) / N ** 2
                        for b in range(B)])
    pos_std = np.mean([[sum(std1([a[b, h, i, j] for i in range(N)]) for j in range(N)) / N for h in range(H)]
                       for b in range(B)], 0)
    to_cls = np.mean([[sum(P[b, h, N_PREFIX + i, 0] for i in range(N)) / N for h in range(H)] for b in range(B)], 0)
    map_cls = np.mean([[[P[b, h, 0, N_PREFIX + k] for k in range(N)] for h in range(H)] for b in range(B)], 0)
    map_mean = np.mean([[[sum(P[b, h, N_PREFIX + q, N_PREFIX + k] for q in range(N)) / N for k in range(N)]
                         for h in range(H)] for b in range(B)], 0)
    cq = ((rows - 1) // 2) * cols + (cols - 1) // 2
    map_centre = np.mean([[[P[b, h, N_PREFIX + cq, N_PREFIX + k] for k in range(N)] for h in range(H)]
                          for b in range(B)], 0)
    aligned = np.zeros((H, 2 * rows - 1, 2 * cols - 1))
    for b in range(B):
        for h in range(H):
            for q in range(N):
                s = sum(a[b, h, q])
                qi, qj = divmod(q, cols)
                for k in range(N):
                    ki, kj = divmod(k, cols)
                    aligned[h, ki - qi + rows - 1, kj - qj + cols - 1] += a[b, h, q, k] / s / N / B
    g = (H, rows, cols)
    return dict(head_std=head_std, position_std=pos_std, spatial_to_cls=to_cls, map_cls=map_cls.reshape(g),
                map_mean=map_mean.reshape(g), map_centre=map_centre.reshape(g), aligned=aligned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_seed002_statistics_through_the_model(dtype):
    model = make_model(dtype, seed=3)
    x, batches = inputs(seed=2)
    res = attention_statistics(model, batches, grid=GRID, progress=False)
    P = model_patterns(model, x)
    assert int(res["n_images"]) == 5
    for b in range(3):
        ref = ref_statistics(P[b])
        for key, want in ref.items():
            np.testing.assert_allclose(res[key][b], want, rtol=1e-4, atol=1e-7, err_msg=f"{key}, block {b}")


# ----------------------------------------------------------------------------- relevance (Chefer et al. ICCV 2021)
def ref_chefer(model, x, targets):
    """"Generic Attention-model Explainability": R = I; for each block R += mean_h((dA ⊙ A)^+) @ R, where dA is
    the gradient of the target logit with respect to that block's attention probabilities. One image at a time;
    the gradients from autograd, everything else a plain loop. Returns (R (B, T, T), CLS -> patch rows)."""
    depth = model.cfg.depth
    Rs, rows_out = [], []
    for s in range(x.shape[0]):
        kept = {}

        def keep(t, hook):
            kept[int(hook.name.split(".")[1])] = t

        hooks = [(f"blocks.{b}.attn.hook_pattern", keep) for b in range(depth)]
        with torch.enable_grad():
            xi = x[s:s + 1].clone().requires_grad_(True)
            logits = model.run_with_hooks(xi, fwd_hooks=hooks)
            grads = torch.autograd.grad(logits[0, targets[s]], [kept[b] for b in range(depth)])
        A = [kept[b][0].detach().double().numpy() for b in range(depth)]
        G = [g[0].double().numpy() for g in grads]
        H, T, _ = A[0].shape
        R = [[1.0 if i == j else 0.0 for j in range(T)] for i in range(T)]
        for b in range(depth):
            abar = [[sum(max(0.0, G[b][h, i, j] * A[b][h, i, j]) for h in range(H)) / H for j in range(T)]
                    for i in range(T)]
            R = [[R[i][j] + sum(abar[i][k] * R[k][j] for k in range(T)) for j in range(T)] for i in range(T)]
        R = np.array(R)
        Rs.append(R)
        rows_out.append(R[0, N_PREFIX:])                                               # CLS over the patches
    return np.stack(Rs), np.stack(rows_out)


def test_relevance_from_model_matches_the_published_rule():
    model = make_model(seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, *INPUT, generator=g)
    targets = [2, 7, 0]
    maps, R, t = relevance_from_model(model, x, target=targets, method="chefer", normalize=None)
    assert t.tolist() == targets
    want_R, want_rows = ref_chefer(model, x, targets)
    np.testing.assert_allclose(R.double().numpy(), want_R, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps.double().numpy(), want_rows.reshape(3, *GRID), rtol=1e-4, atol=1e-6)
    # max-normalised maps are the same rows divided by their largest entry
    maps_max, _, _ = relevance_from_model(model, x, target=targets, method="chefer")
    np.testing.assert_allclose(maps_max.double().numpy(),
                               (want_rows / want_rows.max(1, keepdims=True)).reshape(3, *GRID), rtol=1e-4, atol=1e-6)


def test_relevance_default_target_is_the_prediction():
    model = make_model(seed=6)
    x = torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        pred = model(x).argmax(-1).tolist()
    _, R, t = relevance_from_model(model, x, method="chefer", normalize=None)
    assert t.tolist() == pred
    np.testing.assert_allclose(R.double().numpy(), ref_chefer(model, x, pred)[0], rtol=1e-4, atol=1e-6)

