"""Edited copies: an image of the classification set and the same image with its object swapped for another
class's shape (same background, clutter, place, size, turn and pixel noise), for activation patching.

The two images differ only on the union of the two objects' masks (:attr:`EditPair.changed`; tested), so the
patch positions that carry the evidence for the clean class are known.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitscope.data.synthetic.config import SPLITS, SynthConfig
from vitscope.data.synthetic.objects import ShapeSample, render_object_image


@dataclass
class EditPair:
    """``clean``: sample ``i`` of the split (class ``i % n_classes``); ``corrupted``: the same image drawn with class
    ``new_label``; ``changed`` (H, W) bool: the pixels where the two can differ (the union of both masks)."""

    clean: ShapeSample
    corrupted: ShapeSample
    changed: np.ndarray


def edited_pair(cfg: SynthConfig, split: str, i: int, new_label: int | None = None) -> EditPair:
    """Sample ``i`` of ``split`` and its copy with the object of class ``new_label`` (default: the next class)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    label = i % cfg.n_classes
    new = (label + 1) % cfg.n_classes if new_label is None else int(new_label)
    if not 0 <= new < cfg.n_classes or new == label:
        raise ValueError(f"new_label must be another class in 0..{cfg.n_classes - 1} (not {label}), got {new_label}")
    # the same generator state for both: background, clutter, pose and noise are drawn identically (the class
    # changes the shape and its colour, not the number of draws)
    clean = render_object_image(cfg, cfg.rng(SPLITS[split], i), label)
    corrupted = render_object_image(cfg, cfg.rng(SPLITS[split], i), new)
    return EditPair(clean, corrupted, clean.mask | corrupted.mask)
