"""ImageNet-S semantic masks: ``<split>-segmentation/<wnid>/<name>.png`` next to ``<split>/<wnid>/<name>.JPEG``.

A mask is an RGB PNG whose class id is ``R + 256 * G`` (919 > 255 classes): 0 is "other" (background),
1000 is "ignore"; id k >= 1 is line k of ``ImageNetS_categories_im{50,300,919}.txt`` (wnids).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitscope.data.decode import is_image_file
from vitscope.data.folders import natural_key
from vitscope.data.tasks.base import TaskImages, require

IGNORE = 1000
OTHER = 0


def decode_mask(path: str | Path) -> np.ndarray:
    """An ImageNet-S mask PNG -> (H, W) int64 class ids (R + 256 G)."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int64)
    return a[..., 0] + 256 * a[..., 1]


def encode_mask(ids: np.ndarray) -> Image.Image:
    """(H, W) class ids -> the RGB PNG image ImageNet-S stores (R = id % 256, G = id // 256, B = 0)."""
    ids = np.asarray(ids, dtype=np.int64)
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


@dataclass
class SemanticSample:
    """One image: path, mask_path, wnid (its folder), and ``mask()`` -> (H, W) int64 ids (0 other, 1000 ignore)."""

    path: str
    mask_path: str
    wnid: str

    def mask(self) -> np.ndarray:
        return decode_mask(self.mask_path)

    def object_mask(self) -> np.ndarray:
        """Pixels of any class (not other, not ignore)."""
        m = self.mask()
        return (m != OTHER) & (m != IGNORE)


class ImageNetS(TaskImages):
    """``ds[i]`` is a :class:`SemanticSample`; ``categories[k-1]`` is the wnid of class id k (when known)."""

    def __init__(self, root: str | Path, split: str = "validation", categories: str | Path | None = None) -> None:
        root = require(Path(root), "ImageNet-S folder")
        seg = require(root / f"{split}-segmentation", "ImageNet-S mask folder")
        img_dir = root / split
        masks = sorted((p for p in seg.rglob("*.png")), key=lambda p: natural_key(p.relative_to(seg).as_posix()))
        if not masks:
            raise ValueError(f"no mask PNGs in {seg}")
        self.samples = []
        for m in masks:
            rel = m.relative_to(seg).with_suffix("")
            folder = img_dir / rel.parent
            cands = sorted(p for p in folder.glob(rel.name + ".*") if is_image_file(p)) if folder.is_dir() else []
            img = cands[0] if cands else folder / (rel.name + ".JPEG")
            self.samples.append(SemanticSample(str(img), str(m), rel.parent.name))
        if categories is None:
            found = sorted(root.glob("ImageNetS_categories_im*.txt"))
            categories = found[0] if found else None
        self.categories = ([ln.strip() for ln in Path(categories).read_text().splitlines() if ln.strip()]
                           if categories is not None else [])
        self.description = f"ImageNet-S {root.name}/{split} ({len(self.samples)} images)"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> SemanticSample:
        return self.samples[i]

    def image_paths(self) -> list[str]:
        return [s.path for s in self.samples]

    def class_id(self, wnid: str) -> int:
        """The mask id of a wnid (1-based line of the categories file)."""
        if wnid not in self.categories:
            raise KeyError(f"{wnid} is not in the ImageNet-S categories file")
        return self.categories.index(wnid) + 1


def load_imagenet_s(root: str | Path, split: str = "validation", categories: str | Path | None = None) -> ImageNetS:
    """Read an ImageNet-S folder (``ImageNetS919``, ``ImageNetS50``, ...) for a split
    (``validation``, ``test``, ``train-semi``)."""
    return ImageNetS(root, split, categories)
