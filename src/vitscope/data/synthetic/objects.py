"""One labelled object per image: the classification set, with its mask, parts and keypoints."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vitscope.data.synthetic.config import SPLITS, SynthConfig
from vitscope.data.synthetic.render import (Appearance, add_clutter, background, box_of, contrasting_colour,
                                            draw_object, finish)
from vitscope.data.synthetic.shapes import KEYPOINTS, SHAPES, Pose, keypoint_ids, to_image

# one colour per class, used only when jitter < 1 (a deliberate colour shortcut)
CLASS_COLOURS = np.array([
    [0.90, 0.20, 0.20], [0.20, 0.60, 0.90], [0.95, 0.80, 0.10], [0.30, 0.80, 0.30], [0.70, 0.30, 0.85],
    [0.95, 0.55, 0.15], [0.10, 0.75, 0.75], [0.85, 0.40, 0.60], [0.55, 0.45, 0.25], [0.40, 0.40, 0.95],
])


@dataclass
class ShapeSample:
    """A synthetic image with its ground truth.

    image (H, W, 3) uint8; label: class index; mask (H, W) bool; parts (H, W) int8, -1 outside the object,
    else 0 right, 1 top, 2 left, 3 bottom; keypoints (K, 3) float (x, y, visible) in pixels;
    keypoint_ids (K,) the global semantic ids (same id = same point of the same class in every image);
    box (x0, y0, x1, y1) of the mask, exclusive ends.
    """

    image: np.ndarray
    label: int
    shape: str
    mask: np.ndarray
    parts: np.ndarray
    keypoints: np.ndarray
    keypoint_ids: np.ndarray
    box: tuple[int, int, int, int]
    pose: Pose


def object_colour(rng: np.random.Generator, cfg: SynthConfig, label: int, bg: np.ndarray) -> np.ndarray:
    c = (1.0 - cfg.jitter) * CLASS_COLOURS[label] + cfg.jitter * rng.uniform(0, 1, size=3)
    return contrasting_colour(rng, c, bg, cfg.contrast)


def keypoints_of(shape: str, pose: Pose, size: int,
                 visible_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (K, 3) as (x, y, visible) and their global ids; visible = inside the image (and, with
    ``visible_mask``, on a visible pixel of the object or next to one)."""
    xy = to_image(pose, KEYPOINTS[shape])
    vis = (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
    if visible_mask is not None:
        for k in np.nonzero(vis)[0]:
            x, y = int(xy[k, 0]), int(xy[k, 1])
            vis[k] = bool(visible_mask[max(0, y - 1): y + 2, max(0, x - 1): x + 2].any())
    return np.concatenate([xy, vis[:, None].astype(np.float64)], axis=1), keypoint_ids(shape)


def random_angle(rng: np.random.Generator, cfg: SynthConfig) -> float:
    """A turn from upright within +-``cfg.rotation`` degrees."""
    return float(np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation)))


def random_look(rng: np.random.Generator, cfg: SynthConfig, label: int, bg_mean: np.ndarray) -> Appearance:
    return Appearance(tuple(object_colour(rng, cfg, label, bg_mean)), stripe_amp=rng.uniform(0, cfg.stripes),
                      stripe_freq=rng.uniform(0.8, 2.0), stripe_angle=rng.uniform(0, np.pi))


def random_pose(rng: np.random.Generator, cfg: SynthConfig, size: int | None = None, scale: float = 1.0) -> Pose:
    """Radius in the config's scale range (times ``scale``), inside the image, turned and stretched per the config."""
    size = size or cfg.size
    r = rng.uniform(cfg.scale_min, cfg.scale_max) * size * scale
    cx, cy = rng.uniform(r, size - r, size=2)
    return Pose(cx, cy, r, random_angle(rng, cfg), *rng.uniform(1 - cfg.stretch, 1 + cfg.stretch, size=2))


def render_object_image(cfg: SynthConfig, rng: np.random.Generator, label: int, pose: Pose | None = None,
                        look: Appearance | None = None) -> ShapeSample:
    """Draw one object of class ``label`` on a textured, cluttered, noisy background."""
    shape = SHAPES[label]
    img = background(rng, cfg.size, cfg.texture)
    add_clutter(rng, img, cfg.clutter, max_radius=0.06 * cfg.size)
    pose = pose or random_pose(rng, cfg)
    if look is None:
        look = random_look(rng, cfg, label, img.reshape(-1, 3).mean(0))
    mask, parts = draw_object(img, shape, pose, look)
    kps, ids = keypoints_of(shape, pose, cfg.size)
    return ShapeSample(finish(img, rng, cfg.noise), label, shape, mask, parts.astype(np.int8), kps, ids,
                       box_of(mask), pose)


def object_sample(cfg: SynthConfig, split: str, i: int) -> ShapeSample:
    """Sample ``i`` of a split: class ``i % n_classes``, everything else drawn from (seed, split, i)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return render_object_image(cfg, cfg.rng(SPLITS[split], i), i % cfg.n_classes)


class SyntheticSource:
    """The classification set as an ImageDataset source: ``n`` images of ``n_classes`` shapes, made on demand."""

    def __init__(self, cfg: SynthConfig, n: int, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.cfg, self.split, self.n = cfg, split, n
        self.classes = cfg.classes
        self.labels = np.arange(n, dtype=np.int64) % cfg.n_classes
        self.ids = [f"synthetic/{split}/{i:06d}_{self.classes[self.labels[i]]}" for i in range(n)]
        self.paths = self.ids
        self.description = (f"synthetic {split} ({n} images, {cfg.n_classes} classes, {cfg.size} px, "
                            f"{cfg.difficulty}, seed {cfg.seed})")

    def sample(self, i: int) -> ShapeSample:
        return object_sample(self.cfg, self.split, i)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.sample(i).image)
