"""Drawing: textured backgrounds, clutter, shaded objects with their masks, noise.

Images are float (H, W, 3) in [0, 1] until :func:`finish` quantises them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitscope.data.synthetic.shapes import PART_SHADE, Pose, part_index, shape_mask, to_local

_LUMA = np.array([0.299, 0.587, 0.114])
BACKGROUNDS = ("gradient", "stripes", "noise", "checker")


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (size, size)."""
    c = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(c, c)


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small (g, g) grid to (size, size)."""
    g = a.shape[0]
    t = np.linspace(0, g - 1, size)
    rows = np.stack([np.interp(t, np.arange(g), a[:, j]) for j in range(g)], axis=1)  # size, g
    return np.stack([np.interp(t, np.arange(g), rows[i]) for i in range(size)], axis=0)


def background(rng: np.random.Generator, size: int, texture: float, kind: str | None = None) -> np.ndarray:
    """A textured background: a base colour plus a pattern of amplitude ``texture``."""
    xs, ys = grid(size)
    base = rng.uniform(0.2, 0.8, size=3)
    kind = kind or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    a = rng.uniform(0, 2 * np.pi)
    proj = (np.cos(a) * xs + np.sin(a) * ys) / size  # 0..~1.4 along a random direction
    if kind == "gradient":
        pat = proj / 1.42
    elif kind == "stripes":
        pat = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * proj + rng.uniform(0, 2 * np.pi))
    elif kind == "noise":
        pat = _upsample(rng.uniform(0, 1, size=(int(rng.integers(3, 9)),) * 2), size)
    elif kind == "checker":
        cell = size / rng.uniform(3, 8)
        pat = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(np.float64)
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    tint = rng.uniform(0.5, 1.0, size=3) * rng.choice([-1.0, 1.0])
    img = base[None, None, :] + texture * (pat[..., None] - 0.5) * tint[None, None, :]
    return np.clip(img, 0.0, 1.0)


def add_clutter(rng: np.random.Generator, img: np.ndarray, n: int, max_radius: float) -> None:
    """Draw ``n`` distractors in place: thin strokes and small dots (never one of the shape classes)."""
    size = img.shape[0]
    xs, ys = grid(size)
    for _ in range(n):
        colour = rng.uniform(0, 1, size=3)
        if rng.random() < 0.5:  # a stroke: points within w/2 of a segment
            p = rng.uniform(0, size, size=2)
            q = p + rng.normal(0, size / 4, size=2)
            d = q - p
            t = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
            dist2 = (xs - p[0] - t * d[0]) ** 2 + (ys - p[1] - t * d[1]) ** 2
            m = dist2 <= (rng.uniform(0.5, 1.2)) ** 2
        else:  # a dot
            c = rng.uniform(0, size, size=2)
            r = rng.uniform(1.0, max(1.5, max_radius))
            m = (xs - c[0]) ** 2 + (ys - c[1]) ** 2 <= r * r
        img[m] = colour


def luminance(c: np.ndarray) -> float:
    return float(np.asarray(c) @ _LUMA)


def contrasting_colour(rng: np.random.Generator, colour: np.ndarray, against: np.ndarray,
                       contrast: float) -> np.ndarray:
    """Shift ``colour`` in luminance so it differs from ``against`` by at least ``contrast``."""
    delta = luminance(colour) - luminance(against)
    sign = np.sign(delta) if delta != 0 else rng.choice([-1.0, 1.0])
    if abs(delta) < contrast:
        if luminance(against) + sign * contrast > 1.0 or luminance(against) + sign * contrast < 0.0:
            sign = -sign
        colour = colour + (sign * contrast - delta)
    return np.clip(colour, 0.0, 1.0)


@dataclass(frozen=True)
class Appearance:
    """How an object is filled: its colour and a stripe pattern (amplitude, cycles per radius, angle)."""

    colour: tuple[float, float, float]
    stripe_amp: float = 0.0
    stripe_freq: float = 1.5
    stripe_angle: float = 0.0


def draw_object(img: np.ndarray, shape: str, pose: Pose, look: Appearance) -> tuple[np.ndarray, np.ndarray]:
    """Paint one object in place; returns its full mask (H, W) bool and part map (H, W) int (-1 outside)."""
    xs, ys = grid(img.shape[0])
    u, v = to_local(pose, xs, ys)
    mask = shape_mask(shape, u, v)
    parts = np.where(mask, part_index(u, v), -1)
    if mask.any():
        shade = PART_SHADE[parts[mask]]
        if look.stripe_amp > 0:
            w = np.cos(look.stripe_angle) * u[mask] + np.sin(look.stripe_angle) * v[mask]
            shade = shade * (1.0 - look.stripe_amp * (0.5 + 0.5 * np.sin(2 * np.pi * look.stripe_freq * w)))
        img[mask] = np.clip(np.asarray(look.colour)[None, :] * shade[:, None], 0.0, 1.0)
    return mask, parts


def finish(img: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Add Gaussian pixel noise and quantise to uint8."""
    if noise > 0:
        img = img + rng.normal(0.0, noise, size=img.shape)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1) of a mask, x1 and y1 exclusive; (0, 0, 0, 0) when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
