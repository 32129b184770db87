"""The shape classes of the synthetic benchmark: geometry, parts and keypoints in the object's own frame.

Every shape lives in local coordinates (u, v) where the object's radius is 1 and v points up. A pose maps
image pixels to local coordinates (:func:`to_local`). Parts are the four sectors around the local axes
("right", "top", "left", "bottom"), shaded differently so that an object's orientation, and therefore its
keypoints, can be seen even on round shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent", "diamond", "hexagon", "heart")
PART_NAMES = ("right", "top", "left", "bottom")
N_PARTS = len(PART_NAMES)
PART_SHADE = np.array([1.0, 0.78, 0.58, 0.88])  # brightness factor of each part


def _regular(n: int, radius: float = 1.0, start_deg: float = 90.0) -> np.ndarray:
    a = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    a = np.deg2rad(90.0 + 180.0 * np.arange(2 * points) / points)
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon, vectorised over pixels (poly: K, 2)."""
    inside = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    k = len(poly)
    for a in range(k):
        (x1, y1), (x2, y2) = poly[a], poly[(a + 1) % k]
        crosses = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


_CRESCENT_CUT = (0.45, 0.75)  # centre offset and radius of the circle cut out of the disc
_hu = (1 - _CRESCENT_CUT[1] ** 2 + _CRESCENT_CUT[0] ** 2) / (2 * _CRESCENT_CUT[0])
_CRESCENT_HORNS = np.array([[_hu, np.sqrt(1 - _hu ** 2)], [_hu, -np.sqrt(1 - _hu ** 2)]])

_POLYGONS = {
    "square": np.array([[0.75, 0.75], [-0.75, 0.75], [-0.75, -0.75], [0.75, -0.75]]),
    "triangle": _regular(3),
    "star": _star(),
    "diamond": np.array([[0.0, 1.0], [-0.6, 0.0], [0.0, -1.0], [0.6, 0.0]]),
    "hexagon": _regular(6, start_deg=0.0),
}

# keypoints in local coordinates; the index in each array is the keypoint's semantic id within its class
KEYPOINTS: dict[str, np.ndarray] = {
    "circle": np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]),
    "square": np.vstack([_POLYGONS["square"], [[0.0, 0.0]]]),
    "triangle": np.vstack([_POLYGONS["triangle"], [[0.0, 0.0]]]),
    "cross": np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]),
    "ring": np.array([[0.775, 0.0], [0.0, 0.775], [-0.775, 0.0], [0.0, -0.775]]),
    "star": _POLYGONS["star"][::2].copy(),
    "crescent": np.vstack([_CRESCENT_HORNS, [[-1.0, 0.0]]]),
    "diamond": _POLYGONS["diamond"].copy(),
    "hexagon": _POLYGONS["hexagon"].copy(),
    "heart": np.array([[0.0, -1.0], [0.0, 0.55], [-0.62, 0.9], [0.62, 0.9]]),
}
KEYPOINT_OFFSETS = dict(zip(SHAPES, np.cumsum([0] + [len(KEYPOINTS[s]) for s in SHAPES])[:-1].tolist()))
N_KEYPOINT_IDS = sum(len(KEYPOINTS[s]) for s in SHAPES)  # global semantic keypoint ids 0 .. N-1


def keypoint_ids(name: str) -> np.ndarray:
    """Global semantic ids of a shape's keypoints (unique across shapes)."""
    return (KEYPOINT_OFFSETS[name] + np.arange(len(KEYPOINTS[name]))).astype(np.int64)


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of the shape at local coordinates (u, v)."""
    r2 = u * u + v * v
    if name == "circle":
        return r2 <= 1.0
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if name == "crescent":
        off, rad = _CRESCENT_CUT
        return (r2 <= 1.0) & ((u - off) ** 2 + v * v > rad * rad)
    if name == "heart":  # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled to radius ~1
        x, y = u * 1.15, v * 1.15 + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
    if name in _POLYGONS:
        return _inside_polygon(u, v, _POLYGONS[name])
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")


def part_index(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Part of each local point: 0 right, 1 top, 2 left, 3 bottom (sectors of 90 degrees around the axes)."""
    phi = np.degrees(np.arctan2(v, u))
    return (((phi + 45.0) % 360.0) // 90.0).astype(np.int64)


@dataclass(frozen=True)
class Pose:
    """Where an object sits: centre (x, y) in pixels, radius in pixels, rotation (radians, counter-clockwise),
    and a deformation (stretch along local u and v)."""

    cx: float
    cy: float
    radius: float
    angle: float = 0.0
    stretch_u: float = 1.0
    stretch_v: float = 1.0


def to_local(pose: Pose, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image pixel coordinates (x right, y down) -> the object's local (u, v)."""
    dx = (xs - pose.cx) / pose.radius
    dy = -(ys - pose.cy) / pose.radius  # v points up
    c, s = np.cos(pose.angle), np.sin(pose.angle)
    u = (c * dx + s * dy) / pose.stretch_u
    v = (-s * dx + c * dy) / pose.stretch_v
    return u, v


def to_image(pose: Pose, uv: np.ndarray) -> np.ndarray:
    """Local points (K, 2) -> image pixel coordinates (K, 2) as (x, y); the inverse of :func:`to_local`."""
    u = uv[:, 0] * pose.stretch_u
    v = uv[:, 1] * pose.stretch_v
    c, s = np.cos(pose.angle), np.sin(pose.angle)
    dx = c * u - s * v
    dy = s * u + c * v
    return np.stack([pose.cx + dx * pose.radius, pose.cy - dy * pose.radius], axis=1)
