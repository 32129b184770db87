"""Instance retrieval in the Revisited Oxford / Paris style: landmarks (one shape instance each, with its own
colour and stripe pattern) seen in queries and in database images of graded difficulty.

- query: several per landmark, each a larger picture (``QUERY_CANVAS`` times the image side) with the landmark
  at the easy views' scale somewhere in it; its box frames the landmark with a margin of context on every side
  (``QUERY_MARGIN`` of the landmark's width or height), so that a query cropped to its box shows the landmark as
  the database shows it, on its background, rather than cut at its outline;
- easy: the landmark in full, slightly turned and rescaled, on another background;
- hard: strongly turned and rescaled, low contrast, noisier, partly covered by an occluder;
- junk: barely visible (mostly outside the frame, or tiny), ignored by every protocol;
- distractors: other instances (same shapes in other colours and patterns, and other shapes).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vitscope.data.synthetic.config import SynthConfig
from vitscope.data.synthetic.objects import render_object_image
from vitscope.data.synthetic.render import Appearance, box_of, contrasting_colour
from vitscope.data.synthetic.shapes import Pose

RETRIEVAL_KEY = 20
QUERY_CANVAS = 1.5          # query side / image side
QUERY_MARGIN = (0.2, 0.35)  # context on each side of the landmark in a query box, as a fraction of its extent


@dataclass
class RetrievalSet:
    """db_images: list of (S, S, 3) uint8; query_images: list of (Q, Q, 3) uint8, Q = round(QUERY_CANVAS * S);
    db_names / query_names (file stems); gnd: one dict per query with ``easy``, ``hard``, ``junk`` (db indices,
    int64 arrays) and ``bbx`` (x0, y0, x1, y1): the landmark with a margin of context, inside the query image;
    db_landmark: landmark of each db image (-1: distractor); query_landmark: landmark of each query."""

    db_images: list[np.ndarray]
    db_names: list[str]
    query_images: list[np.ndarray]
    query_names: list[str]
    gnd: list[dict]
    db_landmark: np.ndarray
    query_landmark: np.ndarray


def _landmark(rng: np.random.Generator, n_classes: int) -> tuple[int, Appearance]:
    label = int(rng.integers(n_classes))
    look = Appearance(tuple(rng.uniform(0.1, 0.95, size=3)), stripe_amp=rng.uniform(0.35, 0.6),
                      stripe_freq=rng.uniform(1.0, 2.5), stripe_angle=rng.uniform(0, np.pi))
    return label, look


def _view(cfg: SynthConfig, rng: np.random.Generator, label: int, look: Appearance, kind: str,
          base_angle: float):
    """One view of a landmark: (image, the ShapeSample before any occluder)."""
    size = cfg.size
    c = cfg
    if kind == "query":  # a larger picture; room for the landmark's box with its widest margin
        r = size * rng.uniform(0.30, 0.38)
        angle = base_angle
        c = replace(cfg, size=int(round(QUERY_CANVAS * size)))
        pad = r * (1 + 2 * QUERY_MARGIN[1])
        centre = rng.uniform(pad, c.size - pad, size=2)
    elif kind == "easy":
        r = size * rng.uniform(0.30, 0.38)
        angle = base_angle + rng.uniform(-0.25, 0.25)
        centre = rng.uniform(r, size - r, size=2)
    elif kind == "hard":
        r = size * rng.uniform(0.18, 0.26) if rng.random() < 0.5 else size * rng.uniform(0.40, 0.46)
        angle = base_angle + rng.choice([-1, 1]) * rng.uniform(0.8, np.pi)
        centre = rng.uniform(min(r, size / 2), max(size - r, size / 2), size=2)
        c = replace(cfg, noise=cfg.noise * 2 + 0.03, contrast=min(cfg.contrast, 0.15), clutter=cfg.clutter + 3)
    elif kind == "junk":
        if rng.random() < 0.5:  # mostly outside the frame
            r = size * 0.4
            side = rng.integers(4)
            off = -0.75 * r
            pos = [size / 2, size / 2]
            pos[side % 2] = off if side < 2 else size - off
            centre = np.array(pos)
        else:  # tiny
            r = size * 0.06
            centre = rng.uniform(r, size - r, size=2)
        angle = base_angle + rng.uniform(-np.pi, np.pi)
    else:
        raise ValueError(kind)
    pose = Pose(float(centre[0]), float(centre[1]), float(r), float(angle), 1.0, 1.0)
    sample = render_object_image(c, rng, label, pose=pose, look=look)
    img = sample.image
    if kind == "hard":  # an occluder over part of the object
        x0, y0, x1, y1 = sample.box
        w, h = max(1, x1 - x0), max(1, y1 - y0)
        ox, oy = int(x0 + rng.uniform(0, 0.6) * w), int(y0 + rng.uniform(0, 0.6) * h)
        img = img.copy()
        colour = rng.uniform(0, 255, size=3).astype(np.uint8)
        img[oy: oy + max(2, int(0.4 * h)), ox: ox + max(2, int(0.4 * w))] = colour
    return img, sample


def query_box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The landmark's tight box widened on each side by ``QUERY_MARGIN`` of its width (left, right) or height
    (top, bottom), kept inside the image: (x0, y0, x1, y1) in whole pixels."""
    x0, y0, x1, y1 = box_of(mask)
    w, h = x1 - x0, y1 - y0
    m = rng.uniform(*QUERY_MARGIN, size=4) * np.array([w, h, w, h])
    b = np.round(np.array([x0, y0, x1, y1]) + np.array([-1, -1, 1, 1]) * m)
    return np.clip(b, 0, [mask.shape[1], mask.shape[0]] * 2).astype(np.float64)


def retrieval_set(cfg: SynthConfig, n_landmarks: int = 6, easy: int = 3, hard: int = 6, junk: int = 2,
                  distractors: int = 12, queries_per_landmark: int = 3) -> RetrievalSet:
    """``queries_per_landmark`` queries per landmark (as Revisited Oxford / Paris have several); each landmark's
    easy, hard and junk views plus ``distractors`` in a shuffled database."""
    if queries_per_landmark < 1:
        raise ValueError(f"queries_per_landmark must be at least 1, got {queries_per_landmark}")
    rng = cfg.rng(RETRIEVAL_KEY, n_landmarks, easy, hard, junk, distractors, queries_per_landmark)
    marks = [_landmark(rng, cfg.n_classes) for _ in range(n_landmarks)]
    angles = rng.uniform(0, 2 * np.pi, size=n_landmarks)
    items: list[tuple[np.ndarray, int, str]] = []  # image, landmark, kind
    queries, bbxs, qmarks = [], [], []
    for m, ((label, look), a) in enumerate(zip(marks, angles)):
        for _ in range(queries_per_landmark):
            qimg, qs = _view(cfg, rng, label, look, "query", a)
            queries.append(qimg)
            bbxs.append(query_box(rng, qs.mask))
            qmarks.append(m)
        for kind, n in (("easy", easy), ("hard", hard), ("junk", junk)):
            for _ in range(n):
                items.append((_view(cfg, rng, label, look, kind, a)[0], m, kind))
    for _ in range(distractors):
        if rng.random() < 0.5:  # same shape as a landmark, another look
            label = marks[int(rng.integers(n_landmarks))][0]
            look = _landmark(rng, cfg.n_classes)[1]
        else:
            label, look = _landmark(rng, cfg.n_classes)
        look = replace(look, colour=tuple(contrasting_colour(rng, np.asarray(look.colour), np.full(3, 0.5), 0.0)))
        items.append((_view(cfg, rng, label, look, "easy", rng.uniform(0, 2 * np.pi))[0], -1, "distractor"))
    order = rng.permutation(len(items))
    items = [items[k] for k in order]
    views = {(m, kind): np.array([i for i, it in enumerate(items) if it[1] == m and it[2] == kind], dtype=np.int64)
             for m in range(n_landmarks) for kind in ("easy", "hard", "junk")}
    gnd = [{**{kind: views[m, kind].copy() for kind in ("easy", "hard", "junk")}, "bbx": b}
           for m, b in zip(qmarks, bbxs)]
    return RetrievalSet([it[0] for it in items], [f"db_{i:05d}" for i in range(len(items))], queries,
                        [f"query_{q:03d}" for q in range(len(queries))], gnd,
                        np.array([it[1] for it in items], dtype=np.int64), np.array(qmarks, dtype=np.int64))
