"""The synthetic benchmark: deterministic, and its ground truth agrees with the pixels and the geometry."""
from __future__ import annotations

import numpy as np
import pytest

from vitscope.data import open_dataset
from vitscope.data.synthetic import KEYPOINTS, SHAPES, SynthConfig, object_sample
from vitscope.data.synthetic.shapes import Pose, shape_mask, to_image, to_local


def test_same_seed_same_pixels_other_seed_differs():
    a = object_sample(SynthConfig(seed=3), "train", 7)
    b = object_sample(SynthConfig(seed=3), "train", 7)
    c = object_sample(SynthConfig(seed=4), "train", 7)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.image.tobytes() != c.image.tobytes()
    assert object_sample(SynthConfig(seed=3), "val", 7).image.tobytes() != a.image.tobytes()


def test_dataset_spec_options_and_balance():
    ds = open_dataset("synthetic:n=40,size=32,classes=5,seed=1,difficulty=easy", transform=lambda im: np.asarray(im))
    assert len(ds) == 40 and ds.classes == list(SHAPES[:5])
    assert np.bincount(ds.labels).tolist() == [8] * 5
    x, y, i = ds[6]
    assert x.shape == (32, 32, 3) and y == 1 and i == 6
    ref = object_sample(SynthConfig(size=32, n_classes=5, seed=1, difficulty="easy"), "train", 6)
    assert np.array_equal(x, ref.image)


@pytest.mark.parametrize("shape", SHAPES)
def test_local_frame_round_trip_and_areas(shape):
    pose = Pose(30.0, 34.0, 12.0, angle=0.7, stretch_u=1.1, stretch_v=0.9)
    kp = np.array([[0.3, -0.2], [1.0, 0.5]])
    xy = to_image(pose, kp)
    u, v = to_local(pose, xy[:, 0], xy[:, 1])
    np.testing.assert_allclose(np.stack([u, v], 1), kp, atol=1e-9)
    # area of each shape by Monte Carlo in the unit square [-1.2, 1.2]^2 is in a sensible range
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1.2, 1.2, size=(20000, 2))
    frac = shape_mask(shape, pts[:, 0], pts[:, 1]).mean() * 2.4 ** 2 / np.pi
    assert 0.2 < frac < 1.01, (shape, frac)


def test_mask_matches_pixels_and_keypoints_lie_on_the_object():
    cfg = SynthConfig(size=64, difficulty="easy", noise=0.0, clutter=0, texture=0.0)
    for i in range(16):
        s = object_sample(cfg, "train", i)
        assert s.mask.sum() > 50
        # background is flat (texture 0, no noise): pixels off the mask equal the background colour...
        bg = s.image[~s.mask].reshape(-1, 3)
        assert (bg == bg[0]).all()
        # ...and the object pixels differ from it (contrast)
        assert np.abs(s.image[s.mask].astype(int) - bg[0].astype(int)).sum(1).mean() > 20
        assert set(np.unique(s.parts[s.mask])) <= {0, 1, 2, 3} and (s.parts[~s.mask] == -1).all()
        # keypoints: the shape's own points mapped through the pose, each on or at the edge of the mask
        assert len(s.keypoints) == len(KEYPOINTS[s.shape])
        for x, y, vis in s.keypoints:
            if vis:
                win = s.mask[max(0, int(y) - 2): int(y) + 3, max(0, int(x) - 2): int(x) + 3]
                assert win.any(), (s.shape, x, y)
        x0, y0, x1, y1 = s.box
        ys, xs = np.nonzero(s.mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.slow
def test_easy_set_is_learnable_by_a_tiny_vit():
    """300 AdamW steps of a 2-block ViT (16 tokens, width 32) on 1200 easy images: well above chance (0.25)."""
    import torch

    cfg = SynthConfig(size=32, n_classes=4, seed=0, difficulty="easy")

    def split(name, n):
        x = torch.from_numpy(np.stack([object_sample(cfg, name, i).image for i in range(n)]))
        return x.permute(0, 3, 1, 2).float() / 127.5 - 1, torch.arange(n) % cfg.n_classes

    xtr, ytr = split("train", 1200)
    xva, yva = split("val", 200)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and the run does not depend on the core count
    try:
        acc = _train_tiny(xtr, ytr, xva, yva)
    finally:
        torch.set_num_threads(threads)
    assert acc >= 0.40, acc


def _train_tiny(xtr, ytr, xva, yva) -> float:
    import torch

    from vitscope import HookedViT, ViTConfig

    torch.manual_seed(0)
    model = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(xtr), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(xva).argmax(-1) == yva).float().mean())
