"""walmer2023's attention statistics against loop references; known answers for the query-centred maps."""
import math

import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention import stats as S
from vitscope.analysis.attention.maps import collect_patterns

CONFIGS = {
    "plain": dict(),
    "registers": dict(num_registers=2),
    "late": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
}


def make_model(kind, seed=0, img=32):
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=img, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10, **CONFIGS[kind])
    return HookedViT(cfg).eval()


def random_pattern(B, H, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, T, generator=g) * 2).softmax(-1)


def patch_block(P, lay):
    p0, N = lay.patches.start, lay.n_patches
    return P.double().numpy()[:, :, p0:p0 + N, p0:p0 + N]


def std_unbiased(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def ref_head_std(P, lay):
    a = patch_block(P, lay)
    B, H, N, _ = a.shape
    return np.array([sum(std_unbiased([a[b, h, i, j] for h in range(H)]) for i in range(N) for j in range(N)) / N ** 2
                     for b in range(B)])


def ref_position_std(P, lay):
    a = patch_block(P, lay)
    B, H, N, _ = a.shape
    return np.array([[sum(std_unbiased([a[b, h, i, j] for i in range(N)]) for j in range(N)) / N for h in range(H)]
                     for b in range(B)])


def ref_spatial_to_cls(P, lay):
    a = P.double().numpy()
    B, H = a.shape[:2]
    p0, N = lay.patches.start, lay.n_patches
    return np.array([[sum(a[b, h, p0 + i, lay.cls] for i in range(N)) / N for h in range(H)] for b in range(B)])


def ref_aligned(P, lay):
    a = patch_block(P, lay)
    B, H, N, _ = a.shape
    rows, cols = lay.grid
    out = np.zeros((B, H, 2 * rows - 1, 2 * cols - 1))
    for b in range(B):
        for h in range(H):
            for q in range(N):
                s = sum(a[b, h, q]) or 1.0
                qi, qj = divmod(q, cols)
                for k in range(N):
                    ki, kj = divmod(k, cols)
                    out[b, h, ki - qi + rows - 1, kj - qj + cols - 1] += a[b, h, q, k] / s
    return out / N


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
def test_statistics_match_reference(kind, B):
    model = make_model(kind)
    for block in range(3):
        lay = model.token_layout(block)
        P = random_pattern(B, 4, lay.n_tokens, seed=block)
        np.testing.assert_allclose(S.head_std(P, lay).numpy(), ref_head_std(P, lay), rtol=1e-4)
        np.testing.assert_allclose(S.position_std(P, lay).numpy(), ref_position_std(P, lay), rtol=1e-4)
        np.testing.assert_allclose(S.aligned_attention(P, lay).numpy(), ref_aligned(P, lay), atol=1e-6)
        if lay.cls is None:
            assert torch.isnan(S.spatial_to_cls(P, lay)).all()
        else:
            np.testing.assert_allclose(S.spatial_to_cls(P, lay).numpy(), ref_spatial_to_cls(P, lay), rtol=1e-5)


def test_aligned_non_square_reference():
    model = make_model("registers", img=(24, 40))
    lay = model.token_layout(0)
    P = random_pattern(2, 4, lay.n_tokens, seed=3)
    np.testing.assert_allclose(S.aligned_attention(P, lay).numpy(), ref_aligned(P, lay), atol=1e-6)


def shifted_pattern(lay, dr, dc, B=1, H=4):
    """Each patch query attends to the patch (dr, dc) away (itself where that falls off the grid)."""
    T = lay.n_tokens
    rows, cols = lay.grid
    P = torch.zeros(B, H, T, T)
    for q in range(lay.n_patches):
        i, j = divmod(q, cols)
        ti, tj = i + dr, j + dc
        k = ti * cols + tj if (0 <= ti < rows and 0 <= tj < cols) else q
        P[:, :, lay.patches.start + q, lay.patches.start + k] = 1.0
    for t in lay.prefix:
        P[:, :, t, t] = 1.0
    return P


def test_offsets_known_answers():
    model = make_model("plain")
    lay = model.token_layout(0)
    al = S.aligned_attention(shifted_pattern(lay, 0, 0), lay)
    d, cx, cy = S.attention_offset(al)
    assert np.allclose(d, 0) and not S.offset_heads(al).any()
    assert np.allclose(al[0, 0, 3, 3].item(), 1.0)          # a delta at the centre of the 7 x 7 grid
    al = S.aligned_attention(shifted_pattern(lay, 0, 1), lay)    # "look right" heads
    d, cx, cy = S.attention_offset(al)
    assert S.offset_heads(al).all()
    assert (cx > 0).all() and np.allclose(cy, 0)
    # 12 of the 16 queries look one column right (offset x = 1/3 on [-1, 1]), 4 at themselves
    assert np.allclose(cx, 12 / 16 * (2 * 4 / 6 - 1))
    al = S.aligned_attention(shifted_pattern(lay, -1, 0), lay)   # "look up": negative y
    _, cx, cy = S.attention_offset(al)
    assert (cy < 0).all() and np.allclose(cx, 0)


def test_uniform_attention_known_answers():
    model = make_model("plain")
    lay = model.token_layout(0)
    T = lay.n_tokens
    P = torch.full((2, 4, T, T), 1.0 / T)
    assert torch.allclose(S.head_std(P, lay), torch.zeros(2))
    assert torch.allclose(S.position_std(P, lay), torch.zeros(2, 4))
    assert torch.allclose(S.spatial_to_cls(P, lay), torch.full((2, 4), 1.0 / T))


def test_streaming_stats_equal_all_at_once():
    model = make_model("late", seed=2)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 32, generator=g)]
    res = S.attention_statistics(model, xs, progress=False)
    P = collect_patterns(model, torch.cat(xs))
    for b in range(3):
        lay = model.token_layout(b)
        np.testing.assert_allclose(res["head_std"][b], S.head_std(P[b], lay).mean().item(), rtol=1e-5)
        np.testing.assert_allclose(res["position_std"][b], S.position_std(P[b], lay).mean(0).numpy(), rtol=1e-5)
        np.testing.assert_allclose(res["aligned"][b], S.aligned_attention(P[b], lay).mean(0).numpy(), atol=1e-6)
        np.testing.assert_allclose(res["map_mean"][b], P[b][:, :, lay.patches, lay.patches].mean(2)
                                   .reshape(5, 4, 4, 4).mean(0).numpy(), atol=1e-6)
        if lay.cls is None:
            assert np.isnan(res["spatial_to_cls"][b]).all() and np.isnan(res["map_cls"][b]).all()
        else:
            np.testing.assert_allclose(res["spatial_to_cls"][b], S.spatial_to_cls(P[b], lay).mean(0).numpy(),
                                       rtol=1e-5)
    assert int(res["n_images"]) == 5
    assert res["offset"].shape == (3, 4) and res["offset_head"].dtype == bool
