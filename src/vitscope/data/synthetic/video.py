"""Short clips of moving, turning and deforming shapes with per-frame object masks (DAVIS-style ids)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitscope.data.synthetic.config import SynthConfig
from vitscope.data.synthetic.objects import keypoints_of, random_angle, random_look
from vitscope.data.synthetic.render import background, draw_object, finish
from vitscope.data.synthetic.shapes import SHAPES, Pose, keypoint_ids

VIDEO_KEY = 30


@dataclass
class VideoSample:
    """frames (T, S, S, 3) uint8; masks (T, S, S) uint8 object ids (0 background, k = object k, later objects
    in front); labels (K,) class of object k+1; keypoints (T, K) list of (K_k, 3) arrays; keypoint_ids: K arrays."""

    frames: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    keypoints: list[list[np.ndarray]]
    keypoint_ids: list[np.ndarray]


def video_sample(cfg: SynthConfig, i: int, n_frames: int = 12, n_objects: int = 2, size: int | None = None,
                 speed: float = 0.04, deform: float = 0.25) -> VideoSample:
    """Clip ``i``: ``n_objects`` shapes drift (``speed`` x size per frame, bouncing off the borders), turn, and
    stretch periodically by up to ``deform``; the background stays, the noise changes every frame."""
    rng = cfg.rng(VIDEO_KEY, i)
    size = size or 2 * cfg.size
    bg = background(rng, size, cfg.texture)
    bg_mean = bg.reshape(-1, 3).mean(0)
    objs = []
    for _ in range(n_objects):
        label = int(rng.integers(cfg.n_classes))
        r = rng.uniform(cfg.scale_min, cfg.scale_max) * size * 0.5
        objs.append(dict(
            label=label, r=r, pos=rng.uniform(r, size - r, size=2), vel=rng.normal(0, 1, 2),
            angle=random_angle(rng, cfg), spin=rng.uniform(-0.2, 0.2), phase=rng.uniform(0, 2 * np.pi),
            look=random_look(rng, cfg, label, bg_mean)))
        o = objs[-1]
        o["vel"] = o["vel"] / max(np.linalg.norm(o["vel"]), 1e-9) * speed * size
    frames, masks, kps = [], [], []
    for t in range(n_frames):
        img = bg.copy()
        ids = np.zeros((size, size), np.uint8)
        poses = []
        for k, o in enumerate(objs):
            s = deform * np.sin(2 * np.pi * t / max(n_frames, 2) + o["phase"])
            pose = Pose(float(o["pos"][0]), float(o["pos"][1]), o["r"], o["angle"] + o["spin"] * t, 1 + s, 1 - s / 2)
            m, _ = draw_object(img, SHAPES[o["label"]], pose, o["look"])
            ids[m] = k + 1
            poses.append(pose)
        kps.append([keypoints_of(SHAPES[o["label"]], p, size, visible_mask=ids == k + 1)[0]
                    for k, (o, p) in enumerate(zip(objs, poses))])
        frames.append(finish(img, rng, cfg.noise))
        masks.append(ids)
        for o in objs:  # move, bouncing off the borders
            o["pos"] = o["pos"] + o["vel"]
            for d in range(2):
                if o["pos"][d] < o["r"] or o["pos"][d] > size - o["r"]:
                    o["vel"][d] = -o["vel"][d]
                    o["pos"][d] = np.clip(o["pos"][d], o["r"], size - o["r"])
    return VideoSample(np.stack(frames), np.stack(masks), np.array([o["label"] for o in objs], np.int64), kps,
                       [keypoint_ids(SHAPES[o["label"]]) for o in objs])

