"""Mean attention distance (variants A and B): loop references, known answers, streaming == all at once."""
import math

import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention import distance as D
from vitscope.analysis.attention.maps import collect_patterns

CONFIGS = {
    "plain": dict(),
    "registers": dict(num_registers=3),
    "late": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
    "distilled": dict(distill_token=True, head="distilled"),
}


def make_model(kind, seed=0, img=32, **kw):
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=img, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10,
                    **{**CONFIGS[kind], **kw})
    return HookedViT(cfg).eval()


def random_pattern(B, H, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, T, generator=g) * 2).softmax(-1)


def ref_distance(P, layout, variant, patch_size):
    """Straight from the definitions, with loops."""
    P = P.double().numpy()
    B, H = P.shape[:2]
    rows, cols = layout.grid
    p0, N = layout.patches.start, layout.n_patches

    def pos(i):
        r, c = divmod(i, cols)
        if variant == "A":
            return r / max(rows - 1, 1), c / max(cols - 1, 1)
        return r * patch_size, c * patch_size

    out = np.zeros((B, H))
    for b in range(B):
        for h in range(H):
            tot = 0.0
            for i in range(N):
                row = [P[b, h, p0 + i, p0 + j] for j in range(N)]
                s = sum(row) if variant == "A" else 1.0
                s = s if s != 0 else 1.0
                pi = pos(i)
                tot += sum(row[j] / s * math.dist(pi, pos(j)) for j in range(N))
            out[b, h] = tot / N
    return out


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.parametrize("B", [1, 4])
def test_distance_matches_reference(kind, variant, B):
    model = make_model(kind)
    for block in range(3):
        lay = model.token_layout(block)
        P = random_pattern(B, 4, lay.n_tokens, seed=block + B)
        got = D.mean_attention_distance(P, lay, variant, patch_size=8)
        np.testing.assert_allclose(got.double().numpy(), ref_distance(P, lay, variant, 8), rtol=1e-5, atol=1e-6)


def test_non_square_grid_reference():
    model = make_model("registers", img=(24, 40))
    lay = model.token_layout(1)
    assert lay.grid == (3, 5)
    P = random_pattern(2, 4, lay.n_tokens, seed=7)
    for v in ("A", "B"):
        np.testing.assert_allclose(D.mean_attention_distance(P, lay, v, 8).double().numpy(),
                                   ref_distance(P, lay, v, 8), rtol=1e-5)


def mean_pairwise(grid, variant, patch):
    rows, cols = grid
    pts = [(r, c) for r in range(rows) for c in range(cols)]
    scale = (max(rows - 1, 1), max(cols - 1, 1)) if variant == "A" else (1 / patch, 1 / patch)
    d = [math.dist((a[0] / scale[0], a[1] / scale[1]), (b[0] / scale[0], b[1] / scale[1])) for a in pts for b in pts]
    return sum(d) / len(d)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_known_answers(kind):
    model = make_model(kind)
    lay = model.token_layout(2)
    T, N = lay.n_tokens, lay.n_patches
    diag = torch.eye(T).expand(2, 4, T, T)
    for v in ("A", "B"):
        assert torch.allclose(D.mean_attention_distance(diag, lay, v, 8), torch.zeros(2, 4))
    uni = torch.full((2, 4, T, T), 1.0 / T)
    a = D.mean_attention_distance(uni, lay, "A", 8)
    assert torch.allclose(a.double(), torch.full((2, 4), mean_pairwise(lay.grid, "A", 8), dtype=torch.float64))
    b = D.mean_attention_distance(uni, lay, "B", 8)        # not renormalised: only N of the T shares land on patches
    assert torch.allclose(b.double(), torch.full((2, 4), N / T * mean_pairwise(lay.grid, "B", 8), dtype=torch.float64))
    # all attention on CLS / registers: variant A counts the row as 0 (walmer2023's empty-row rule)
    if lay.prefix:
        P = torch.zeros(1, 4, T, T)
        P[..., lay.prefix[0]] = 1.0
        assert torch.equal(D.mean_attention_distance(P, lay, "A", 8), torch.zeros(1, 4))


def test_streaming_equals_all_at_once():
    model = make_model("late")
    lays = {b: model.token_layout(b) for b in range(3)}
    pats = {b: random_pattern(10, 4, lays[b].n_tokens, seed=b) for b in range(3)}
    for v in ("A", "B"):
        acc = D.MeanAttentionDistance(3, 4, v, patch_size=8)
        for lo, hi in [(0, 3), (3, 4), (4, 10)]:
            for b in range(3):
                acc.update(b, pats[b][lo:hi], lays[b])
        full = np.stack([D.mean_attention_distance(pats[b], lays[b], v, 8).double().numpy() for b in range(3)], 1)
        np.testing.assert_allclose(acc.compute(), full.mean(0), rtol=1e-6)
        np.testing.assert_allclose(acc.std(), full.std(0), rtol=1e-4, atol=1e-7)
        assert acc.n_images == 10


def test_model_pass_equals_functional_and_handles_tuples():
    model = make_model("late", seed=1)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)]
    batches = [(xs[0], torch.zeros(3), torch.arange(3)), (xs[1], torch.zeros(2), torch.arange(2))]
    acc = D.attention_distance(model, batches, progress=False)
    x = torch.cat(xs)
    P = collect_patterns(model, x)
    for v in ("A", "B"):
        want = np.stack([D.mean_attention_distance(P[b], model.token_layout(b), v, 8).double().numpy()
                         for b in range(3)], 1).mean(0)
        np.testing.assert_allclose(acc[v].compute(), want, rtol=1e-5)
    assert acc["A"].n_images == 5


def test_errors():
    model = make_model("plain")
    lay = model.token_layout(0)
    with pytest.raises(ValueError, match="variant must be"):
        D.mean_attention_distance(torch.rand(1, 1, 17, 17), lay, "C")
    import dataclasses

    hand = dataclasses.replace(lay, patch_size=None)                  # a layout built without a model
    with pytest.raises(ValueError, match="measures pixels"):
        D.MeanAttentionDistance(3, 4, "B").update(0, torch.rand(1, 4, 17, 17), hand)
    with pytest.raises(ValueError, match="expected a batch tensor"):
        D.images_of("nope")
