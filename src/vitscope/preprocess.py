"""Eval preprocessing without torchvision: short-side resize, centre crop, normalise (timm's eval transform).

A model's config carries its :class:`PreprocessConfig`; datasets use :class:`Preprocessor` as their transform. It
sits below both ``vitscope.models`` and ``vitscope.data`` (also importable as ``vitscope.models.preprocess``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitscope.data.decode import to_pil

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)      # the original ViT / AugReg: inputs in [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)

_INTERP = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model expects its images: resize the short side to ``input/crop_pct``, crop the centre, normalise."""

    input_size: tuple[int, int] | int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        size = self.input_size
        object.__setattr__(self, "input_size", (size, size) if isinstance(size, int) else tuple(size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize the short side to ``floor(size / crop_pct)`` (aspect kept) and crop the centre to ``input_size``."""
    th, tw = cfg.input_size
    scale_size = math.floor(max(th, tw) / cfg.crop_pct)
    w, h = img.size
    if w <= h:
        nw, nh = scale_size, int(scale_size * h / w)
    else:
        nh, nw = scale_size, int(scale_size * w / h)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _INTERP[cfg.interpolation])
    left = int(round((nw - tw) / 2.0))
    top = int(round((nh - th) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def to_tensor(img: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor (3, H, W)."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0  # 3, H, W
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (arr - mean) / std


class Preprocessor:
    """Callable transform ``image -> (3, H, W)`` tensor for one PreprocessConfig (picklable for DataLoader workers)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg

    def __call__(self, item) -> torch.Tensor:
        return to_tensor(resize_crop(to_pil(item), self.cfg), self.cfg)


def preprocess(images, cfg: PreprocessConfig) -> torch.Tensor:
    """One image or a list of PIL images / arrays / paths -> a batch (B, 3, H, W)."""
    if isinstance(images, (Image.Image, str, Path)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        images = [images]
    tf = Preprocessor(cfg)
    return torch.stack([tf(im) for im in images])
