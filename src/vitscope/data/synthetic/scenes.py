"""Scenes: several shapes per image, drawn back to front, with visible instance masks, parts and keypoints."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitscope.data.synthetic.config import SynthConfig
from vitscope.data.synthetic.objects import keypoints_of, random_look, random_pose
from vitscope.data.synthetic.render import add_clutter, background, box_of, draw_object, finish
from vitscope.data.synthetic.shapes import SHAPES, Pose

SCENE_KEY = 10  # seed-sequence key of scenes (objects use the split codes 0..2)


@dataclass
class SceneSample:
    """A scene with its ground truth; N objects, in drawing order (later ones occlude earlier ones).

    image (S, S, 3) uint8; labels (N,) class indices; masks (N, S, S) bool, the *visible* pixels of each object;
    parts (N, S, S) int8, the visible part index (0..3) of each object, -1 elsewhere; semantic (S, S) int64,
    0 background and label + 1 on each object; boxes (N, 4) int (x0, y0, x1, y1) of the visible masks;
    keypoints: N arrays (K_n, 3) of (x, y, visible); keypoint_ids: N arrays of global semantic ids.
    """

    image: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    parts: np.ndarray
    semantic: np.ndarray
    boxes: np.ndarray
    keypoints: list[np.ndarray]
    keypoint_ids: list[np.ndarray]
    poses: list[Pose]


def scene_sample(cfg: SynthConfig, i: int, size: int | None = None, n_objects: tuple[int, int] = (2, 4)) -> SceneSample:
    """Scene ``i`` of side ``size`` (default twice the image size) with ``n_objects`` (low, high) shapes.
    Centres are drawn apart (by 0.9 x the larger radius) so that occlusion stays partial."""
    rng = cfg.rng(SCENE_KEY, i)
    size = size or 2 * cfg.size
    img = background(rng, size, cfg.texture)
    add_clutter(rng, img, cfg.clutter * 2, max_radius=0.04 * size)
    bg_mean = img.reshape(-1, 3).mean(0)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    labels, full, part_maps, poses = [], [], [], []
    for _ in range(n):
        label = int(rng.integers(cfg.n_classes))
        for _attempt in range(30):
            pose = random_pose(rng, cfg, size, scale=0.55)
            if all(np.hypot(pose.cx - p.cx, pose.cy - p.cy) > 0.9 * max(pose.radius, p.radius) for p in poses):
                break
        look = random_look(rng, cfg, label, bg_mean)
        m, parts = draw_object(img, SHAPES[label], pose, look)
        labels.append(label)
        full.append(m)
        part_maps.append(parts)
        poses.append(pose)
    masks = np.zeros((n, size, size), bool)
    covered = np.zeros((size, size), bool)
    for k in range(n - 1, -1, -1):  # front to back
        masks[k] = full[k] & ~covered
        covered |= full[k]
    semantic = np.zeros((size, size), np.int64)
    for k in range(n):
        semantic[masks[k]] = labels[k] + 1
    parts = np.where(masks, np.stack(part_maps), -1).astype(np.int8)
    kps, ids = [], []
    for k in range(n):
        a, b = keypoints_of(SHAPES[labels[k]], poses[k], size, visible_mask=masks[k])
        kps.append(a)
        ids.append(b)
    return SceneSample(finish(img, rng, cfg.noise), np.asarray(labels, np.int64), masks, parts, semantic,
                       np.array([box_of(m) for m in masks], dtype=np.int64).reshape(-1, 4), kps, ids, poses)
