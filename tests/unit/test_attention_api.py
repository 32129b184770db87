"""The same names in Python as on the command line: patterns from a run_with_cache cache, variant B's patch size
from the model's layout, spatial_to_token exported. Checked against loops written from the definitions."""
import math

import numpy as np
import pytest
import torch

import vitscope.analysis.attention as A
from vitscope import HookedViT, ViTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=(24, 40), patch_size=8, embed_dim=16, depth=3, num_heads=2,
                               num_classes=4, num_registers=1)).eval()


def test_patterns_from_cache(model):
    x = torch.randn(2, 3, 24, 40)
    _, cache = model.run_with_cache(x, names_filter="blocks.*.attn.hook_pattern")
    pats = A.patterns_from_cache(cache)
    ref = A.collect_patterns(model, x)
    assert list(pats) == [0, 1, 2]
    for b in ref:
        assert torch.equal(pats[b], ref[b])
    assert list(A.patterns_from_cache(cache, blocks=[2, 0])) == [0, 2]
    lays = {b: model.token_layout(b) for b in pats}
    assert torch.equal(A.attention_rollout(pats, lays), A.attention_rollout(ref, lays))
    with pytest.raises(ValueError, match="missing"):
        A.patterns_from_cache({"blocks.0.attn.hook_pattern": ref[0]}, blocks=[1])
    with pytest.raises(ValueError, match="no attention pattern"):
        A.patterns_from_cache({"blocks.0.hook_resid_post": ref[0]})


def test_variant_b_takes_the_patch_size_from_the_layout(model):
    x = torch.randn(2, 3, 24, 40)
    P = A.collect_patterns(model, x)[1]
    lay = model.token_layout(1)
    assert lay.patch_size == 8
    got = A.mean_attention_distance(P, lay, variant="B")
    rows, cols = lay.grid
    p0 = lay.patches.start
    for b in range(2):
        for h in range(2):
            tot = 0.0
            for q in range(rows * cols):
                for k in range(rows * cols):
                    dy, dx = 8 * (q // cols - k // cols), 8 * (q % cols - k % cols)
                    tot += float(P[b, h, p0 + q, p0 + k]) * math.hypot(dy, dx)
            assert float(got[b, h]) == pytest.approx(tot / (rows * cols), rel=1e-5)
    acc = A.MeanAttentionDistance(3, 2, "B")
    acc.update(1, P, lay)
    np.testing.assert_allclose(acc.compute()[1], got.double().mean(0).numpy(), rtol=1e-6)


def test_spatial_to_token_is_exported(model):
    x = torch.randn(1, 3, 24, 40)
    P = A.collect_patterns(model, x)[0]
    lay = model.token_layout(0)
    reg = lay.registers[0]
    got = A.spatial_to_token(P, lay, reg)
    want = P[:, :, lay.patches, reg].double().mean(-1)
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-6)
