"""The SPair-style pairs of the synthetic benchmark: two views of one figure, keypoints at the parts' centres."""
from __future__ import annotations

import numpy as np
import pytest

from vitscope.data import tasks
from vitscope.data.synthetic import SynthConfig, pair_sample, write
from vitscope.data.synthetic.pairs import FIGURE_LAYOUT, figure_parts

CFG = SynthConfig(size=64, n_classes=8, seed=3, difficulty="easy")


def _similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Least-squares b ~ s R a + t (Umeyama): (scale, angle in degrees, largest residual in pixels)."""
    ma, mb = a.mean(0), b.mean(0)
    A, B = a - ma, b - mb
    u, sv, vt = np.linalg.svd(B.T @ A)
    d = np.sign(np.linalg.det(u @ vt))
    D = np.diag([1.0, d])
    R = u @ D @ vt
    s = float((sv * np.diag(D)).sum() / (A ** 2).sum())
    resid = np.linalg.norm(B - s * A @ R.T, axis=1).max()
    return s, float(np.degrees(np.arctan2(R[1, 0], R[0, 0]))), float(resid)


def test_same_seed_same_pair_other_seed_differs():
    a, b = pair_sample(CFG, 5), pair_sample(CFG, 5)
    for v, w in ((a.src, b.src), (a.trg, b.trg)):
        np.testing.assert_array_equal(v.image, w.image)
        np.testing.assert_array_equal(v.keypoints, w.keypoints)
    c = pair_sample(CFG.with_options(seed=4), 5)
    assert not np.array_equal(a.src.image, c.src.image)
    assert a.name == c.name == "figure_star" and a.parts == c.parts  # pair 5 is of category 5 whatever the seed


@pytest.mark.parametrize("k", range(8))
def test_views_are_a_moderate_similarity_apart(k):
    p = pair_sample(CFG, k)
    s, angle, resid = _similarity(p.src.keypoints, p.trg.keypoints)
    assert 1 / 1.15 - 0.03 < s < 1.15 + 0.03
    assert abs(angle) < 20 + 3                      # y points down in images: the sign does not matter here
    assert resid < 0.1 * 2 * p.trg.pose[2]          # each part turns and stretches a little on its own
    assert np.linalg.norm(p.src.keypoints.mean(0) - p.trg.keypoints.mean(0)) < 0.1 * np.sqrt(2) * CFG.size + 2
    assert not np.array_equal(p.src.image, p.trg.image)


@pytest.mark.parametrize("k", range(8))
def test_keypoint_j_is_the_centre_of_part_j(k):
    """In the figure's own frame (from the pose drawn), keypoint j sits at layout position j, inside the box."""
    for v in (pair_sample(CFG, k).src, pair_sample(CFG, k).trg):
        cx, cy, r, a = v.pose
        dx, dy = (v.keypoints[:, 0] - cx) / r, -(v.keypoints[:, 1] - cy) / r
        local = np.stack([np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy], 1)
        assert np.abs(local - FIGURE_LAYOUT).max() < 0.15
        x0, y0, x1, y1 = v.box
        assert ((v.keypoints >= [x0, y0]) & (v.keypoints <= [x1, y1])).all()
        assert 0.4 * CFG.size < max(x1 - x0, y1 - y0) <= CFG.size       # the figure fills much of the image


def test_parts_differ_with_four_classes_or_more():
    for n in range(4, 11):
        cfg = SynthConfig(n_classes=n)
        for c in range(n):
            parts = figure_parts(cfg, c)
            assert len(set(parts)) == 4 and parts[0] == c
    with pytest.raises(ValueError, match="scale"):
        pair_sample(CFG, 0, scale=0.5)


def test_written_pairs_read_back(tmp_path):
    write(tmp_path, CFG, formats=["spair"], pairs=10)
    ds = tasks.load_spair(tmp_path / "spair")
    assert len(ds) == 10 and ds.categories == sorted(f"figure_{s}" for s in CFG.classes)
    for k, pair in enumerate(ds):
        p = pair_sample(CFG, k)
        assert pair.category == p.name and pair.kps_ids.tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(pair.src_kps, p.src.keypoints)
        np.testing.assert_allclose(pair.trg_kps, p.trg.keypoints)
        np.testing.assert_array_equal(pair.trg_bbox, [p.trg.box[0], p.trg.box[1], p.trg.box[2] - 1, p.trg.box[3] - 1])
        assert pair.src_size == pair.trg_size == (64, 64)
