"""Task formats of the papers' benchmarks, each read into one documented structure.

| loader | format | returns |
|---|---|---|
| :func:`load_coco` | COCO instances json (polygon and RLE masks) | :class:`CocoInstances` of :class:`InstanceSample` |
| :func:`load_partimagenet` | PartImageNet (COCO-style parts) | :class:`PartImageNet` of :class:`PartSample` |
| :func:`load_imagenet_s` | ImageNet-S (mask PNGs, id = R + 256 G) | :class:`ImageNetS` of :class:`SemanticSample` |
| :func:`load_davis` | DAVIS-2017 (JPEGImages / Annotations / ImageSets) | :class:`Davis` of :class:`DavisSequence` |
| :func:`load_spair` | SPair-71k (pair json with keypoints and boxes) | :class:`SPair` of :class:`SPairPair` |
| :func:`load_revisited` | Revisited Oxford / Paris (``gnd_*.pkl``, safe unpickling) | :class:`Revisited` |

Every structure also gives ``image_dataset(transform)``: its images as an ImageDataset, for feature extraction.
"""
from vitscope.data.tasks.coco import CocoInstances, InstanceSample, load_coco
from vitscope.data.tasks.davis import Davis, DavisSequence, load_davis
from vitscope.data.tasks.imagenet_s import ImageNetS, SemanticSample, load_imagenet_s
from vitscope.data.tasks.partimagenet import PartImageNet, PartSample, load_partimagenet
from vitscope.data.tasks.revisited import Revisited, RevisitedQuery, UnsafePickleError, load_revisited, safe_load_pickle
from vitscope.data.tasks.spair import SPair, SPairPair, load_spair



def load_segmentation(coco=None, partimagenet=None, image_root=None):
    """Exactly one of a COCO instances json or a PartImageNet annotation json, with its image folder (what the
    CLI's ``--coco`` / ``--partimagenet`` and ``--image-root`` name) -> the loaded structure."""
    if (coco is None) == (partimagenet is None):
        raise ValueError("give exactly one of --coco or --partimagenet")
    if image_root is None:
        raise ValueError("--coco / --partimagenet need --image-root (the folder of the images)")
    return load_coco(coco, image_root) if coco is not None else load_partimagenet(partimagenet, image_root)


__all__ = ["CocoInstances", "Davis", "DavisSequence", "ImageNetS", "InstanceSample", "PartImageNet", "PartSample",
           "Revisited", "RevisitedQuery", "SPair", "SPairPair", "SemanticSample", "UnsafePickleError", "load_coco",
           "load_davis", "load_imagenet_s", "load_partimagenet", "load_revisited", "load_segmentation", "load_spair",
           "safe_load_pickle"]
