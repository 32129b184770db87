"""DAVIS-2017 (semi-supervised): ``JPEGImages/<res>/<seq>/00000.jpg``, ``Annotations/<res>/<seq>/00000.png``
(palette PNGs whose index is the object id: 0 background, 1..K objects, 255 void) and
``ImageSets/2017/<split>.txt`` (one sequence name per line)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitscope.data.decode import load_image
from vitscope.data.folders import natural_key
from vitscope.data.tasks.base import TaskImages, require

VOID = 255


def read_palette_mask(path: str | Path) -> np.ndarray:
    """A DAVIS annotation PNG -> (H, W) uint8 object ids (the palette indices, not colours)."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{path} is a {im.mode} image; DAVIS annotations are palette (P) PNGs of object ids")
        return np.array(im, dtype=np.uint8)


def davis_palette() -> list[int]:
    """The usual DAVIS colour palette (PASCAL VOC colours), flattened for ``Image.putpalette``."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_palette_mask(ids: np.ndarray, path: str | Path) -> None:
    im = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="P")
    im.putpalette(davis_palette())
    im.save(path)


@dataclass
class DavisSequence:
    """One video: ``frame_paths`` (T), ``mask_paths`` (files present; in val every frame has one),
    ``n_objects`` (max id of the first mask, ignoring void)."""

    name: str
    frame_paths: list[str]
    mask_paths: list[str]
    n_objects: int

    def __len__(self) -> int:
        return len(self.frame_paths)

    def frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8."""
        return np.stack([np.asarray(load_image(p)) for p in self.frame_paths])

    def masks(self) -> np.ndarray:
        """(T_masks, H, W) uint8 object ids (0 background, 255 void)."""
        return np.stack([read_palette_mask(p) for p in self.mask_paths])

    def first_mask(self) -> np.ndarray:
        return read_palette_mask(self.mask_paths[0])


class Davis(TaskImages):
    """``ds[i]`` is a :class:`DavisSequence`; ``ds.sequence(name)`` by name."""

    def __init__(self, root: str | Path, split: str = "val", resolution: str = "480p", year: str = "2017",
                 sequences: list[str] | None = None) -> None:
        root = require(Path(root), "DAVIS folder")
        jpeg = require(root / "JPEGImages" / resolution, "DAVIS frame folder")
        ann = require(root / "Annotations" / resolution, "DAVIS annotation folder")
        if sequences is None:
            lst = require(root / "ImageSets" / year / f"{split}.txt", "DAVIS sequence list")
            sequences = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
        self.sequences = []
        for name in sequences:
            fdir = require(jpeg / name, f"frames of sequence {name!r}")
            frames = sorted((str(p) for p in fdir.glob("*.jpg")), key=natural_key)
            mdir = ann / name
            masks = sorted((str(p) for p in mdir.glob("*.png")), key=natural_key) if mdir.is_dir() else []
            if not frames:
                raise ValueError(f"sequence {name!r} has no frames in {fdir}")
            if not masks:
                raise ValueError(f"sequence {name!r} has no annotation in {ann / name}")
            first = read_palette_mask(masks[0])
            n_obj = int(first[first != VOID].max()) if (first != VOID).any() else 0
            self.sequences.append(DavisSequence(name, frames, masks, n_obj))
        self.description = f"DAVIS-{year} {split} {resolution} ({len(self.sequences)} sequences)"

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> DavisSequence:
        return self.sequences[i]

    def sequence(self, name: str) -> DavisSequence:
        for s in self.sequences:
            if s.name == name:
                return s
        raise KeyError(f"no sequence {name!r}; have {', '.join(s.name for s in self.sequences)}")

    def image_paths(self) -> list[str]:
        return [p for s in self.sequences for p in s.frame_paths]


def load_davis(root: str | Path, split: str = "val", resolution: str = "480p", year: str = "2017",
               sequences: list[str] | None = None) -> Davis:
    """Read DAVIS sequences listed in ``ImageSets/<year>/<split>.txt`` (or the ``sequences`` given)."""
    return Davis(root, split, resolution, year, sequences)
