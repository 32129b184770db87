"""COCO instances (``instances_val2017.json``): per image, its instance masks, categories and boxes.

Masks come from pycocotools (polygons, compressed and uncompressed RLE), the reference decoder; it is the
optional extra ``coco`` (``pip install 'vitscope[coco]'``).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitscope.data.tasks.base import TaskImages, require


def _coco_api():
    try:
        from pycocotools.coco import COCO
    except ImportError as e:
        raise RuntimeError("reading COCO annotations needs pycocotools: pip install 'vitscope[coco]'") from e
    return COCO


@dataclass
class InstanceSample:
    """One image and its instances.

    path: image file; image_id: COCO id; height, width: from the json; masks (N, H, W) bool;
    category_ids (N,) int; boxes (N, 4) float as (x0, y0, x1, y1) in pixels; iscrowd (N,) bool;
    category_names: list of N names.
    """

    image_id: int
    path: str
    height: int
    width: int
    masks: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    iscrowd: np.ndarray
    category_names: list[str]

    def foreground(self, include_crowd: bool = False) -> np.ndarray:
        """Union of the object masks (H, W) bool: the ground truth of saliency IoU."""
        keep = np.ones(len(self.masks), bool) if include_crowd else ~self.iscrowd
        if not keep.any():
            return np.zeros((self.height, self.width), bool)
        return self.masks[keep].any(0)


class CocoInstances(TaskImages):
    """A COCO instances file with its image folder; ``ds[i]`` is an :class:`InstanceSample` (ids in ascending order)."""

    def __init__(self, annotation_file: str | Path, image_root: str | Path, categories: list[int] | None = None,
                 require_annotations: bool = False) -> None:
        annotation_file = require(Path(annotation_file), "COCO annotation file")
        self.image_root = require(Path(image_root), "COCO image folder")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = _coco_api()(str(annotation_file))
        cats = self.coco.loadCats(self.coco.getCatIds())
        self.categories = {int(c["id"]): c["name"] for c in cats}
        self.supercategories = {int(c["id"]): c.get("supercategory", "") for c in cats}
        ids = sorted(self.coco.getImgIds())
        if categories is not None:
            keep = set()
            for c in categories:
                keep |= set(self.coco.getImgIds(catIds=[c]))
            ids = [i for i in ids if i in keep]
        if require_annotations:
            ids = [i for i in ids if self.coco.getAnnIds(imgIds=[i], iscrowd=None)]
        self.image_ids = ids
        self.category_filter = categories
        self.description = f"COCO {annotation_file.name} ({len(ids)} images)"

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_paths(self) -> list[str]:
        return [str(self.image_root / self.coco.imgs[i]["file_name"]) for i in self.image_ids]

    def __getitem__(self, i: int) -> InstanceSample:
        img_id = self.image_ids[i]
        info = self.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[img_id], catIds=self.category_filter or [], iscrowd=None))
        with warnings.catch_warnings():  # pycocotools' own NumPy 2 deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            masks = [self.coco.annToMask(a).astype(bool) for a in anns]
        masks = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float64).reshape(-1, 4)
        cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
        return InstanceSample(img_id, str(self.image_root / info["file_name"]), h, w, masks, cats, boxes,
                              np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                              [self.categories[int(c)] for c in cats])


    def masks(self, i: int, level: str = "object") -> tuple[list[np.ndarray], list[int]]:
        """Image ``i``'s non-crowd instance masks and their category ids (COCO has objects, not parts)."""
        if level != "object":
            raise ValueError(f"COCO instances have object masks only, not {level!r}; use PartImageNet for parts")
        s = self[i]
        keep = ~s.iscrowd
        return list(s.masks[keep]), [int(c) for c in s.category_ids[keep]]


def load_coco(annotation_file: str | Path, image_root: str | Path, categories: list[int] | None = None,
              require_annotations: bool = False) -> CocoInstances:
    """Read a COCO instances json; ``categories`` keeps images (and instances) of those category ids only."""
    return CocoInstances(annotation_file, image_root, categories, require_annotations)
