"""Label propagation and the DAVIS-2017 scorer against slow references written from the definitions."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope.analysis.video_segmentation import (
    davis_f, davis_j, davis_statistics, davis_table, dino_frame_size, evaluate_sequence, norm_mask,
    propagate_labels, soft_to_ids,
)


# ----------------------------------------------------------------------------- references (plain loops)
def loop_j(p, g):
    inter = union = 0
    for y in range(p.shape[0]):
        for x in range(p.shape[1]):
            inter += bool(p[y, x]) and bool(g[y, x])
            union += bool(p[y, x]) or bool(g[y, x])
    return 1.0 if union == 0 else inter / union


def loop_boundary(m):
    H, W = m.shape
    b = np.zeros((H, W), bool)
    for y in range(H):
        for x in range(W):
            nbrs = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            b[y, x] = any(yy < H and xx < W and m[yy, xx] != m[y, x] for yy, xx in nbrs)
    return b


def loop_f(p, g, bound_th=0.008):
    H, W = p.shape
    r = math.ceil(bound_th * math.sqrt(H * H + W * W)) if bound_th < 1 else int(bound_th)
    bp, bg = loop_boundary(p.astype(bool)), loop_boundary(g.astype(bool))

    def near(b, y, x):  # is there a boundary pixel of b within the disk of radius r around (y, x)?
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                yy, xx = y + dy, x + dx
                if dy * dy + dx * dx <= r * r and 0 <= yy < H and 0 <= xx < W and b[yy, xx]:
                    return True
        return False

    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    prec = sum(near(bg, y, x) for y, x in zip(*np.nonzero(bp))) / n_p
    rec = sum(near(bp, y, x) for y, x in zip(*np.nonzero(bg))) / n_g
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def dino_propagation_loop(feats, first, n_last=7, radius=12, topk=5, temperature=0.1):
    """DINO's label propagation transcribed with a plain loop over target tokens (independent of the code)."""
    T, h, w, D = feats.shape
    f = feats.double() / feats.double().norm(dim=-1, keepdim=True)
    C = int(first.max()) + 1
    soft = [F.one_hot(first.long(), C).permute(2, 0, 1).double()]
    for t in range(1, T):
        ctx = [0] + list(range(max(1, t - n_last), t))
        out = torch.zeros(C, h, w, dtype=torch.float64)
        for i in range(h):
            for j in range(w):
                cands = []
                for c in ctx:
                    for y in range(h):
                        for x in range(w):
                            ok = radius <= 0 or (abs(y - i) <= radius and abs(x - j) <= radius)
                            a = math.exp(float(f[t, i, j] @ f[c, y, x]) / temperature) if ok else 0.0
                            cands.append((a, c, y, x))
                vals = sorted((a for a, *_ in cands), reverse=True)
                thr = vals[min(topk, len(vals)) - 1]
                kept = [(a, c, y, x) for a, c, y, x in cands if a >= thr]
                s = sum(a for a, *_ in kept)
                for a, c, y, x in kept:
                    out[:, i, j] += a / s * soft[c][:, y, x]
        soft.append(out)
    return torch.stack(soft)


# ----------------------------------------------------------------------------- J and F
def test_j_edge_cases():
    z = np.zeros((6, 7), bool)
    full = np.ones((6, 7), bool)
    one = z.copy()
    one[2, 3] = True
    assert davis_j(z, z) == 1.0
    assert davis_j(full, full) == 1.0
    assert davis_j(z, full) == 0.0
    assert davis_j(one, full) == pytest.approx(1 / 42)
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, g = rng.random((9, 11)) < 0.4, rng.random((9, 11)) < 0.5
        assert davis_j(p, g) == pytest.approx(loop_j(p, g))


@pytest.mark.parametrize("case", ["empty", "full", "single", "border", "corner", "random"])
def test_f_against_loop(case):
    H, W = 40, 50
    g = np.zeros((H, W), bool)
    g[10:25, 12:30] = True
    p = np.zeros((H, W), bool)
    if case == "full":
        p[:] = True
    elif case == "single":
        p[20, 20] = True
    elif case == "border":
        p[0:18, 0:W] = True
        g = np.zeros((H, W), bool)
        g[0:15, 5:W] = True
    elif case == "corner":
        p[H - 1, W - 1] = True                 # the bottom-right pixel is never a boundary: an empty boundary
    elif case == "random":
        rng = np.random.default_rng(1)
        p = rng.random((H, W)) < 0.3
    assert davis_f(p, g) == pytest.approx(loop_f(p, g), abs=1e-12)
    assert davis_f(p, g, bound_th=2) == pytest.approx(loop_f(p, g, bound_th=2), abs=1e-12)


def test_f_known_values():
    z = np.zeros((8, 8), bool)
    full = np.ones((8, 8), bool)
    assert davis_f(z, z) == 1.0
    assert davis_f(full, full) == 1.0          # the image border is not a boundary
    assert davis_f(full, z) == 1.0
    sq = z.copy()
    sq[2:5, 2:5] = True
    assert davis_f(sq, sq) == 1.0
    assert davis_f(sq, z) == 0.0


# ----------------------------------------------------------------------------- statistics and sequences
def loop_decay(v):
    N = len(v)
    edges = [int(np.round(1 + i * (N - 1) / 4 + 1e-10)) - 1 for i in range(5)]
    first = [v[k] for k in range(edges[0], edges[1] + 1)]
    last = [v[k] for k in range(edges[3], edges[4] + 1)]
    return np.nanmean(first) - np.nanmean(last)


@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_statistics_no_uint8_wrap(n):
    v = np.linspace(1.0, 0.0, n)
    mean, recall, decay = davis_statistics(v)
    assert mean == pytest.approx(v.mean())
    assert recall == pytest.approx(np.mean(v > 0.5))
    assert decay == pytest.approx(loop_decay(v))
    assert np.isfinite(decay)


def test_sequence_first_and_last_not_scored_and_bad_id():
    gt = np.zeros((5, 8, 8), np.uint8)
    gt[:, 2:5, 2:5] = 1
    gt[0, 0, 0] = 255                            # void counts as background
    pred = gt.copy()
    pred[0] = 0                                   # wrong in the first and last frames: not scored
    pred[4] = 0
    pred[pred == 255] = 0
    res = evaluate_sequence(pred, gt)
    assert res["J"].shape == (1, 3)
    assert np.all(res["J"] == 1.0) and np.all(res["F"] == 1.0)
    pred[2, 0, 0] = 2
    with pytest.raises(ValueError, match="object id 2"):
        evaluate_sequence(pred, gt)


def test_one_frame_sequence_and_table():
    gt = np.zeros((1, 6, 6), np.uint8)
    gt[0, 1:3, 1:3] = 1
    res = evaluate_sequence(gt, gt)
    assert res["J"].shape == (1, 0)
    gt2 = np.zeros((4, 6, 6), np.uint8)
    gt2[:, 1:4, 1:4] = 1
    pred2 = gt2.copy()
    pred2[1:3] = 0                               # both scored frames empty -> J = 0, F = 0
    table, rows = davis_table({"one": res, "four": evaluate_sequence(pred2, gt2)})
    assert np.isnan(rows[0]["J-Mean"])
    assert table["J-Mean"] == 0.0 and table["F-Mean"] == 0.0 and table["J&F-Mean"] == 0.0
    assert table["J-Decay"] == 0.0


# ----------------------------------------------------------------------------- propagation
def test_two_frame_video_known_answer():
    """Frame 1 equals frame 0: every token's five best matches (itself and four neighbours of the same colour
    in a two-colour image with orthogonal features) carry its own label."""
    h, w, D = 6, 8, 4
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:, 4:] = 1
    base = torch.zeros(h, w, D)
    base[labels == 0, 0] = 1.0
    base[labels == 1, 1] = 1.0
    feats = torch.stack([base, base])
    soft = propagate_labels(feats, labels)
    assert soft.shape == (2, 2, h, w)
    assert torch.equal(soft[0].argmax(0), labels)
    assert torch.allclose(soft[1], F.one_hot(labels, 2).permute(2, 0, 1).float())


def test_matches_dino_loop_on_random_features():
    torch.manual_seed(0)
    T, h, w, D = 5, 5, 6, 8
    feats = torch.randn(T, h, w, D)
    first = torch.randint(0, 3, (h, w))
    for kw in (dict(n_last=2, radius=2, topk=3), dict(n_last=7, radius=12, topk=5), dict(radius=0, topk=4)):
        ours = propagate_labels(feats, first, **kw)
        ref = dino_propagation_loop(feats, first, **kw)
        assert torch.allclose(ours.double(), ref, atol=1e-5)
        for t in range(1, T):
            assert np.array_equal(soft_to_ids(ours[t], 4), soft_to_ids(ref[t].float(), 4))


def test_ties_at_threshold_are_kept():
    """Constant features: every candidate ties, the protocol keeps them all (a mean over the window)."""
    h, w = 3, 4
    feats = torch.ones(2, h, w, 3)
    first = torch.zeros(h, w, dtype=torch.long)
    first[0, 0] = 1
    soft = propagate_labels(feats, first, radius=1, topk=2)
    ref = dino_propagation_loop(feats, first, radius=1, topk=2)
    assert torch.allclose(soft.double(), ref, atol=1e-6)
    assert soft[1, 1, 0, 0] == pytest.approx(1 / 4)   # (0, 0) sees a 2 x 2 window, one of them labelled 1


def test_one_frame_and_bad_inputs():
    feats = torch.randn(1, 3, 3, 4)
    first = torch.tensor([[0, 1, 1], [0, 0, 2], [0, 0, 0]])
    soft = propagate_labels(feats, first)
    assert soft.shape == (1, 3, 3, 3)
    with pytest.raises(ValueError, match="grid"):
        propagate_labels(feats, first[:2])
    with pytest.raises(ValueError, match="non-negative"):
        propagate_labels(feats, -first)


def test_norm_mask_and_upsampling_against_loop():
    torch.manual_seed(1)
    soft = torch.rand(3, 4, 5)
    soft[2] = 0                                   # a channel with max 0 is left as it is
    out = norm_mask(soft)
    for c in range(3):
        ch = soft[c]
        exp = (ch - ch.min()) / (ch - ch.min()).max() if ch.max() > 0 else ch
        assert torch.allclose(out[c], exp)
    ids = soft_to_ids(soft, 2, (10, 12))
    assert ids.shape == (10, 12) and ids.dtype == np.uint8


def test_dino_frame_size():
    assert dino_frame_size(480, 854) == (480, 832)
    assert dino_frame_size(854, 480) == (832, 480)
    assert dino_frame_size(128, 128, short_side=128) == (128, 128)
