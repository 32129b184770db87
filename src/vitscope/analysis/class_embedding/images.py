"""vilas2023's images: ImageNet-S with the labels of a classifier's head, optionally the first k images per class."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def imagenet_s_dataset(root: str | Path, classes: Sequence[str], split: str = "validation",
                       per_class: int | None = None, transform=None):
    """An ImageDataset over ImageNet-S images whose class folder (wnid) is one of the head's ``classes``
    (``classes[k]`` = the wnid or folder name of head class k), labelled with that index.

    ``per_class``: keep the first k images of each class folder in natural order (vilas2023: 5). The dataset keeps
    the ImageNet-S structure, so ``metrics.class_token_masks`` reads each image's own-category mask. Folders whose
    wnid is not a head class are left out; none in common is an error.
    """
    from vitscope.data.tasks import load_imagenet_s

    structure = load_imagenet_s(root, split)
    if not structure.categories:
        raise FileNotFoundError(f"no ImageNetS_categories_im*.txt in {root}: the class masks need it")
    index = {str(c): k for k, c in enumerate(classes)}
    keep, labels, seen = [], [], {}
    for i, s in enumerate(structure.samples):
        if s.wnid not in index:
            continue
        seen[s.wnid] = seen.get(s.wnid, 0) + 1
        if per_class is not None and seen[s.wnid] > per_class:
            continue
        keep.append(i)
        labels.append(index[s.wnid])
    if not keep:
        raise ValueError(f"none of the ImageNet-S class folders in {root} ({structure.samples[0].wnid}, ...) is one "
                         f"of the head's classes ({', '.join(map(str, list(classes)[:3]))}, ...); pass the head's "
                         "class list (one wnid per line, line k = class k)")
    all_labels = [-1] * len(structure.samples)
    for i, lab in zip(keep, labels):
        all_labels[i] = lab
    ds = structure.image_dataset(transform, labels=all_labels, classes=list(map(str, classes)))
    return ds.subset(keep)
