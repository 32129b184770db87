"""Keypoint-correspondence pairs (SPair-style): two views of one *figure*, a fixed arrangement of shapes.

A figure of category ``c`` has four parts at its top, left, right and bottom: the shapes ``c + j * step``
(j = 0..3, modulo the number of classes, ``step = max(1, n_classes // 4)``, so the parts spread evenly over the
classes and differ whenever there are at least four); each part is one object of the classification set (its class
colour, shading and stripes, with its luminance set against the background as in every other image). The keypoints
are the parts' centres (centre of mass of each part's mask), id ``j`` for part ``j``: the same semantic point in
every image of the category, like "left wheel" in SPair-71k.

The two views of a pair differ as two photographs of one kind of object do: another background, clutter and noise;
the figure turned (up to ``rotation`` degrees), rescaled (up to ``scale`` times) and moved (up to ``shift`` of the
image side); each part turned and stretched a little on its own, and coloured afresh against the new background.
A figure spans about two thirds of the image side (so PCK@0.1 of its box is several pixels), while each part has a
radius of about a tenth of the side (the size of the bundled demo models' smallest training objects).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitscope.data.synthetic.config import SynthConfig
from vitscope.data.synthetic.objects import random_look
from vitscope.data.synthetic.render import add_clutter, background, box_of, draw_object, finish, grid
from vitscope.data.synthetic.shapes import SHAPES, Pose

PAIR_KEY = 40
# part centres in the figure's frame (radius 1, v up): top, left, right, bottom
FIGURE_LAYOUT = np.array([[0.0, 0.7], [-0.7, 0.0], [0.7, 0.0], [0.0, -0.7]])
PART_POSITIONS = ("top", "left", "right", "bottom")
PART_RADIUS = 0.3                 # a part's radius, as a fraction of the figure's radius
FIGURE_RADIUS = (0.32, 0.38)      # the figure's radius, as a fraction of the image side (source view)


@dataclass
class FigureView:
    """One view: image (S, S, 3) uint8; mask (S, S) bool (all parts); keypoints (P, 2) float (x, y) in pixels,
    row j = part j; box (x0, y0, x1, y1) of the mask, exclusive ends; pose (cx, cy, radius, angle) of the figure."""

    image: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray
    box: tuple[int, int, int, int]
    pose: tuple[float, float, float, float]


@dataclass
class PairSample:
    """Pair ``k``: category index and name, the class of each part, the source and target views."""

    category: int
    name: str
    parts: list[int]
    src: FigureView
    trg: FigureView


def figure_parts(cfg: SynthConfig, category: int) -> list[int]:
    """Classes of the parts (top, left, right, bottom) of a category's figure."""
    step = max(1, cfg.n_classes // len(FIGURE_LAYOUT))
    return [(category + j * step) % cfg.n_classes for j in range(len(FIGURE_LAYOUT))]


def figure_name(category: int) -> str:
    """The SPair category name of a figure: ``figure_<shape of its top part>``."""
    return f"figure_{SHAPES[category]}"


def _extent(cfg: SynthConfig) -> float:
    """Farthest reach of a part from the figure's centre, in figure radii."""
    return float(np.max(np.linalg.norm(FIGURE_LAYOUT, axis=1)) + PART_RADIUS * (1.0 + cfg.stretch))


def draw_figure(cfg: SynthConfig, rng: np.random.Generator, parts: list[int], cx: float, cy: float, radius: float,
                angle: float) -> FigureView:
    """Draw the figure with centre (cx, cy), radius and turn (radians) on a fresh background."""
    size = cfg.size
    img = background(rng, size, cfg.texture)
    add_clutter(rng, img, cfg.clutter, max_radius=0.06 * size)
    bg_mean = img.reshape(-1, 3).mean(0)
    c, s = np.cos(angle), np.sin(angle)
    xs, ys = grid(size)
    full = np.zeros((size, size), dtype=bool)
    kps = []
    for (u, v), label in zip(FIGURE_LAYOUT * radius, parts):
        pose = Pose(cx + c * u - s * v, cy - (s * u + c * v), PART_RADIUS * radius,
                    angle + np.deg2rad(rng.uniform(-0.5, 0.5) * cfg.rotation),
                    *rng.uniform(1 - cfg.stretch, 1 + cfg.stretch, size=2))
        mask, _ = draw_object(img, SHAPES[label], pose, random_look(rng, cfg, label, bg_mean))
        full |= mask
        kps.append([xs[mask].mean(), ys[mask].mean()] if mask.any() else [pose.cx, pose.cy])
    return FigureView(finish(img, rng, cfg.noise), full, np.asarray(kps, dtype=np.float64), box_of(full),
                      (float(cx), float(cy), float(radius), float(angle)))


def pair_sample(cfg: SynthConfig, k: int, rotation: float = 20.0, scale: float = 1.15,
                shift: float = 0.1) -> PairSample:
    """Pair ``k``: category ``k % n_classes``; the target view turned by up to ``rotation`` degrees, its radius
    multiplied by up to ``scale`` (or divided), its centre moved by up to ``shift`` x the image side."""
    if scale < 1:
        raise ValueError(f"scale must be at least 1 (1: no change of size), got {scale}")
    size = cfg.size
    rng = cfg.rng(PAIR_KEY, k)
    category = k % cfg.n_classes
    parts = figure_parts(cfg, category)
    reach = _extent(cfg)
    r0 = rng.uniform(*FIGURE_RADIUS) * size
    a0 = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation))
    c0 = rng.uniform(reach * r0, size - reach * r0, size=2)
    r1 = min(r0 * np.exp(rng.uniform(-1, 1) * np.log(scale)), 0.49 * size / reach)
    a1 = a0 + np.deg2rad(rng.uniform(-rotation, rotation))
    c1 = np.clip(c0 + rng.uniform(-shift, shift, size=2) * size, reach * r1, size - reach * r1)
    views = [draw_figure(cfg, cfg.rng(PAIR_KEY, k, j), parts, cx, cy, r, a)
             for j, ((cx, cy), r, a) in enumerate(((c0, r0, a0), (c1, r1, a1)))]
    return PairSample(category, figure_name(category), parts, *views)
