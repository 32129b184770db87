"""SPair keypoint transfer: PCK, letterbox geometry, matching against a full-upsampling reference, the sample."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope.analysis.correspondence import (
    inside, letterbox_geometry, letterbox_points, match_keypoints, pck, sample_pairs, threshold_length,
)


def test_pck_strict_at_threshold():
    gt = np.array([[10.0, 10.0], [10.0, 10.0], [0.0, 0.0]])
    pred = np.array([[13.0, 14.0], [13.0, 13.9], [0.0, 0.0]])   # distances 5, < 5, 0
    assert pck(pred, gt, 50.0, 0.1).tolist() == [False, True, True]
    assert pck(pred, gt, np.array([60.0, 50.0, 1.0]), 0.1).tolist() == [True, True, True]
    with pytest.raises(ValueError):
        pck(pred[:2], gt, 50.0, 0.1)


def test_pck_against_loop():
    rng = np.random.default_rng(0)
    p, g = rng.uniform(0, 50, (30, 2)), rng.uniform(0, 50, (30, 2))
    for a in (0.1, 0.05, 0.01):
        ref = [((p[i, 0] - g[i, 0]) ** 2 + (p[i, 1] - g[i, 1]) ** 2) ** 0.5 < a * 200 for i in range(30)]
        assert pck(p, g, 200, a).tolist() == ref


def test_letterbox_geometry():
    assert letterbox_geometry(500, 375, 224) == (224 / 500, (224, 168), (0, 28))
    s, (nw, nh), (ox, oy) = letterbox_geometry(300, 451, 224)
    assert (nw, nh) == (round(224 * 300 / 451), 224) and ox == (224 - nw) // 2 and oy == 0
    # 224 * 5 / 16 = 70.0 exactly; 224 * 3 / 64 = 10.5 -> round half to even = 10
    assert letterbox_geometry(64, 3, 224)[1] == (224, 10)
    kp = letterbox_points([[0, 0], [500, 375]], 500, 375, 224)
    assert np.allclose(kp, [[0, 28], [224, 196]])
    assert threshold_length([10, 20, 110, 70], 500, 375, 224) == pytest.approx(100 * 224 / 500)


def reference_match(src_tok, trg_tok, kps, p):
    """walmer2023 as written: normalise tokens, upsample both maps to pixels, dot products with every target
    pixel, argmax (first on ties)."""
    def up(t):
        t = F.normalize(torch.as_tensor(t).double(), dim=-1).permute(2, 0, 1)[None]
        return F.interpolate(t, scale_factor=p, mode="bilinear", align_corners=False)[0]   # D, H, W
    S, T = up(src_tok), up(trg_tok)
    out = []
    for x, y in kps:
        d = S[:, min(int(np.round(y)), S.shape[1] - 1), int(np.trunc(x))]
        score = torch.einsum("d,dhw->hw", d, T)
        out.append(score)
    return out


def test_matching_against_full_upsampling():
    torch.manual_seed(0)
    h = w = 6
    p = 4
    src, trg = torch.randn(h, w, 16), torch.randn(h, w, 16)
    rng = np.random.default_rng(0)
    kps = np.c_[rng.uniform(0, w * p, 20), rng.uniform(0, h * p, 20)]
    kps[0] = [5.0, 23.5]                      # the last pixel row after rounding (the seed fails here)
    pred = match_keypoints(src, trg, kps, p)
    scores = reference_match(src, trg, kps, p)
    for (x, y), s in zip(pred, scores):
        assert float(s[y, x]) == pytest.approx(float(s.max()), abs=1e-5)


def test_self_match_at_token_centres():
    torch.manual_seed(1)
    tok = torch.randn(5, 5, 32)
    p = 8
    centres = np.array([[i * p + p / 2, j * p + p / 2] for i in range(1, 4) for j in range(1, 4)])
    pred = match_keypoints(tok, tok, centres, p)
    assert np.all(np.abs(pred - centres) <= 1)


def test_keypoints_outside():
    k = np.array([[-1.0, 5.0], [5.0, 5.0], [224.0, 3.0], [3.0, 223.9]])
    assert inside(k, (224, 224)).tolist() == [False, True, False, True]


@dataclass
class P:
    name: str
    category: str


def test_sample_independent_of_order_and_seeded():
    pairs = [P(f"{i:03d}", c) for c in ("cat", "dog", "bus") for i in range(30)]
    a = sample_pairs(pairs, 5, seed=1)
    b = sample_pairs(list(reversed(pairs)), 5, seed=1)
    assert [(p.category, p.name) for p in a] == [(p.category, p.name) for p in b]
    assert len(a) == 15 and len({(p.category, p.name) for p in a}) == 15
    # a category's sample does not depend on which other categories exist
    only_dog = sample_pairs([p for p in pairs if p.category == "dog"], 5, seed=1)
    assert [p.name for p in only_dog] == [p.name for p in a if p.category == "dog"]
    assert [p.name for p in sample_pairs(pairs, 5, seed=2)] != [p.name for p in a]
    assert len(sample_pairs(pairs[:3], 20)) == 3
    assert len(sample_pairs(pairs[:3], 20, with_replacement=True)) == 20
