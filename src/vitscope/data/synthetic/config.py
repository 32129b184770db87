"""Settings of the synthetic benchmark, with difficulty presets that every setting can override."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from vitscope.data.synthetic.shapes import SHAPES

# noise: std of per-pixel Gaussian noise (image in [0, 1]); clutter: distractor strokes and dots per image;
# texture: amplitude of the background pattern; scale: object radius as a fraction of the image side;
# contrast: least luminance gap between object and background; jitter: how far an object's colour varies
# from its class colour (0: each class has one colour, a shortcut; 1: colours say nothing about the class);
# rotation: largest turn from upright in degrees (180: any); stripes: largest stripe amplitude on the object;
# stretch: largest deformation (each axis scaled within 1 +- stretch).
DIFFICULTY: dict[str, dict[str, Any]] = {
    "easy": dict(noise=0.02, clutter=0, texture=0.15, scale_min=0.30, scale_max=0.42, contrast=0.45, jitter=1.0,
                 rotation=30.0, stripes=0.0, stretch=0.05),
    "medium": dict(noise=0.05, clutter=3, texture=0.35, scale_min=0.22, scale_max=0.42, contrast=0.30, jitter=1.0,
                   rotation=180.0, stripes=0.3, stretch=0.15),
    "hard": dict(noise=0.10, clutter=8, texture=0.60, scale_min=0.14, scale_max=0.42, contrast=0.15, jitter=1.0,
                 rotation=180.0, stripes=0.3, stretch=0.15),
}
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SynthConfig:
    """What the generator draws. ``None`` settings take the value of the ``difficulty`` preset."""

    size: int = 64
    n_classes: int = 8
    seed: int = 0
    difficulty: str = "medium"
    noise: float | None = None
    clutter: int | None = None
    texture: float | None = None
    scale_min: float | None = None
    scale_max: float | None = None
    contrast: float | None = None
    jitter: float | None = None
    rotation: float | None = None
    stripes: float | None = None
    stretch: float | None = None

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTY:
            raise ValueError(f"difficulty must be one of {sorted(DIFFICULTY)}, got {self.difficulty!r}")
        if not 2 <= self.n_classes <= len(SHAPES):
            raise ValueError(f"n_classes must be between 2 and {len(SHAPES)}, got {self.n_classes}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        preset = DIFFICULTY[self.difficulty]
        for k, v in preset.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        object.__setattr__(self, "clutter", int(self.clutter))
        if not 0 < self.scale_min <= self.scale_max <= 0.5:
            raise ValueError(f"need 0 < scale_min <= scale_max <= 0.5, got {self.scale_min}, {self.scale_max}")

    @property
    def classes(self) -> list[str]:
        return list(SHAPES[: self.n_classes])

    def rng(self, *key: int) -> np.random.Generator:
        """The generator of one item: a pure function of the seed and the item's key."""
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), *[int(k) for k in key]]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_options(self, **kw) -> SynthConfig:
        return replace(self, **kw)


_TYPES = {f.name: f.type for f in fields(SynthConfig)}


def option_names() -> list[str]:
    """Every key a ``synthetic:`` spec accepts for the generator (aliases included)."""
    return sorted({*_TYPES, "classes", "image_size", "img_size"})


def config_from_options(options: dict[str, Any]) -> tuple[SynthConfig, dict[str, Any]]:
    """Split ``options`` (strings from a spec, or Python values) into a SynthConfig and the rest."""
    aliases = {"classes": "n_classes", "image_size": "size", "img_size": "size"}
    cfg_kw, rest = {}, {}
    for k, v in options.items():
        k = aliases.get(k, k)
        if k not in _TYPES:
            rest[k] = v
            continue
        t = str(_TYPES[k])
        if isinstance(v, str) and k != "difficulty":
            v = float(v) if "float" in t else int(v)
        cfg_kw[k] = v
    return SynthConfig(**cfg_kw), rest
