"""PartImageNet: COCO-style json where every annotation is one *part* (categories like "Quadruped Head",
supercategory "Quadruped"); images are ImageNet files named ``<wnid>_<n>.JPEG``."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitscope.data.tasks.base import TaskImages
from vitscope.data.tasks.coco import CocoInstances


@dataclass
class PartSample:
    """One image and its parts.

    part_masks (N, H, W) bool; part_ids (N,) the part category ids; part_names (N names, e.g. "Fish Tail");
    supercategory: the object's super-category ("" when the image has no part); wnid: the ImageNet class
    taken from the file name (``n01440764_10043.JPEG`` -> ``n01440764``), or "".
    """

    image_id: int
    path: str
    height: int
    width: int
    part_masks: np.ndarray
    part_ids: np.ndarray
    part_names: list[str]
    supercategory: str
    wnid: str

    def object_mask(self) -> np.ndarray:
        """The object as the union of its parts (H, W) bool."""
        return self.part_masks.any(0) if len(self.part_masks) else np.zeros((self.height, self.width), bool)

    def part_map(self) -> np.ndarray:
        """(H, W) int64: the part id of each pixel, -1 on the background (later parts drawn over earlier ones)."""
        out = np.full((self.height, self.width), -1, dtype=np.int64)
        for m, c in zip(self.part_masks, self.part_ids):
            out[m] = c
        return out


class PartImageNet(TaskImages):
    """``ds[i]`` is a :class:`PartSample`; ``part_categories`` maps id -> (name, supercategory)."""

    def __init__(self, annotation_file: str | Path, image_root: str | Path,
                 supercategories: list[str] | None = None) -> None:
        self.coco = CocoInstances(annotation_file, image_root)
        self.part_categories = {k: (v, self.coco.supercategories[k]) for k, v in self.coco.categories.items()}
        ids = self.coco.image_ids
        if supercategories is not None:
            wanted = set(supercategories)
            cats = [k for k, (_, s) in self.part_categories.items() if s in wanted]
            keep = set()
            for c in cats:
                keep |= set(self.coco.coco.getImgIds(catIds=[c]))
            ids = [i for i in ids if i in keep]
        self.coco.image_ids = ids
        self.description = f"PartImageNet {Path(annotation_file).name} ({len(ids)} images)"

    @property
    def supercategories(self) -> list[str]:
        return sorted({s for _, s in self.part_categories.values()})

    def __len__(self) -> int:
        return len(self.coco)

    def image_paths(self) -> list[str]:
        return self.coco.image_paths()

    def __getitem__(self, i: int) -> PartSample:
        s = self.coco[i]
        supers = {self.part_categories[int(c)][1] for c in s.category_ids}
        name = Path(s.path).name
        m = re.match(r"(n\d{8})_", name)
        wnid = m.group(1) if m else ""
        return PartSample(s.image_id, s.path, s.height, s.width, s.masks, s.category_ids, s.category_names,
                          sorted(supers)[0] if supers else "", wnid)


    def masks(self, i: int, level: str = "object") -> tuple[list[np.ndarray], list[int]]:
        """Image ``i``'s object (the union of its parts, labelled by the index of its super-category in
        ``supercategories``) or its parts (labelled by part category id)."""
        s = self[i]
        if level == "part":
            return list(s.part_masks), [int(c) for c in s.part_ids]
        if level != "object":
            raise ValueError(f"level must be 'object' or 'part', got {level!r}")
        if not len(s.part_masks):
            return [], []
        return [s.object_mask()], [self.supercategories.index(s.supercategory)]


def load_partimagenet(annotation_file: str | Path, image_root: str | Path,
                      supercategories: list[str] | None = None) -> PartImageNet:
    """Read a PartImageNet split (e.g. ``test.json`` with ``images/test``); optionally keep some super-categories."""
    return PartImageNet(annotation_file, image_root, supercategories)
