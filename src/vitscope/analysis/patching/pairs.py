"""Clean / corrupted input pairs: two image files, a synthetic image and its edited copy, or images with a
built-in corruption (:mod:`vitscope.analysis.patching.corrupt`), preprocessed for one model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitscope.analysis.patching.corrupt import apply_corruption, parse_corruption, parse_region


@dataclass
class PatchPairs:
    """``clean`` and ``corrupted`` (P, 3, H, W), preprocessed for the model; ``labels`` (P,) the true classes
    (None: the clean prediction is the class measured); ``changed`` (P, rows, cols) the share of each patch where
    the two inputs differ, where it is known (synthetic edits, region corruptions); ``names``: what each pair is."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    labels: torch.Tensor | None = None
    changed: np.ndarray | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    description: str = ""

    def __post_init__(self) -> None:
        if self.clean.ndim == 3:
            self.clean = self.clean[None]
        if self.corrupted.ndim == 3:
            self.corrupted = self.corrupted[None]
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(f"clean and corrupted inputs must have the same shape, got {tuple(self.clean.shape)} "
                             f"and {tuple(self.corrupted.shape)}; patching compares positions one to one")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels).long().reshape(-1)
            if self.labels.shape[0] != self.clean.shape[0]:
                raise ValueError(f"{self.labels.shape[0]} labels for {self.clean.shape[0]} pairs")

    def __len__(self) -> int:
        return self.clean.shape[0]

    def to(self, device, dtype=None) -> "PatchPairs":
        return dataclasses.replace(self, clean=self.clean.to(device, dtype), corrupted=self.corrupted.to(device, dtype),
                                   labels=None if self.labels is None else self.labels.to(device))


def _pcfg(model):
    from vitscope.models.preprocess import PreprocessConfig

    return model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)


def _is_image_like(x) -> bool:
    """One image: an image file's path (by its extension), a PIL image, an array or a (3, H, W) tensor."""
    if isinstance(x, (str, Path)):
        from vitscope.data.decode import is_image_file

        return is_image_file(x)
    return isinstance(x, (Image.Image, np.ndarray)) or (isinstance(x, torch.Tensor) and x.ndim == 3)


def _is_pair(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2 and all(
        isinstance(d, (str, Path)) or _is_image_like(d) for d in x)


def _to_input(model, img) -> torch.Tensor:
    """One image (path, PIL, uint8 array, or a preprocessed (3, H, W) tensor) -> (1, 3, H, W)."""
    if isinstance(img, torch.Tensor):
        return img[None].float()
    if isinstance(img, (str, Path)):
        from vitscope.data.decode import load_image

        img = load_image(img)
    return model.preprocess([img])


def _raw_size(img) -> tuple[int, int] | None:
    if isinstance(img, (str, Path)):
        with Image.open(img) as im:
            return im.size
    if isinstance(img, Image.Image):
        return img.size
    if isinstance(img, np.ndarray):
        return img.shape[1], img.shape[0]
    return None


def load_pair(model, clean, corrupted, label: int | None = None) -> PatchPairs:
    """Two images (paths, PIL images or arrays) of the same size, as one pair; one line when they are the same file
    or differ in size."""
    for p in (clean, corrupted):
        if isinstance(p, (str, Path)) and not Path(p).exists():
            raise FileNotFoundError(f"image file not found: {p}")
    if isinstance(clean, (str, Path)) and isinstance(corrupted, (str, Path)):
        if Path(clean).resolve() == Path(corrupted).resolve():
            raise ValueError(f"clean and corrupted are the same file ({clean}); patching needs two different inputs: "
                             "give an edited copy, or one image with --corrupt blur:0.5")
    a, b = _raw_size(clean), _raw_size(corrupted)
    if a is not None and b is not None and a != b:
        raise ValueError(f"the clean image is {a[0]}x{a[1]} pixels but the corrupted one is {b[0]}x{b[1]}; patching "
                         "compares the same positions, so give a corrupted copy of the same size")
    names = [f"{Path(clean).name} / {Path(corrupted).name}"] if isinstance(clean, (str, Path)) else ["pair 0"]
    return PatchPairs(_to_input(model, clean), _to_input(model, corrupted),
                      None if label is None else torch.tensor([label]), names=names, description="image pair")


def changed_patches(model, mask: np.ndarray) -> np.ndarray:
    """A pixel mask of the raw image (H, W) -> the share of each patch of the model input it covers (rows, cols),
    through the model's own resize and crop."""
    from vitscope.models.preprocess import resize_crop

    cfg = dataclasses.replace(_pcfg(model), interpolation="nearest")
    m = np.asarray(resize_crop(Image.fromarray(mask.astype(np.uint8) * 255), cfg)) > 127     # H, W
    p = model.cfg.patch_size
    rows, cols = m.shape[0] // p, m.shape[1] // p
    return m[:rows * p, :cols * p].reshape(rows, p, cols, p).mean(axis=(1, 3))


def synthetic_source(data):
    """The :class:`~vitscope.data.synthetic.SyntheticSource` behind a spec or dataset, or None."""
    from vitscope.data.synthetic.objects import SyntheticSource
    from vitscope.features.access import open_dataset_any

    try:
        ds = open_dataset_any(data)
    except (ValueError, FileNotFoundError):
        return None
    src = getattr(ds, "source", ds)
    while not isinstance(src, SyntheticSource) and hasattr(src, "source"):
        src = src.source
    return src if isinstance(src, SyntheticSource) else None


def synthetic_pairs(model, data: Any = "builtin:demo", n: int = 8, new_label: int | None = None,
                    start: int = 0) -> PatchPairs:
    """``n`` images of a synthetic dataset (spec or opened) and their edited copies (the object swapped for
    ``new_label``'s shape, default the next class): pairs that differ in one object, with the changed patches."""
    from vitscope.data.synthetic.edits import edited_pair

    src = synthetic_source(data)
    if src is None:
        raise ValueError(f"the edit corruption needs synthetic data (synthetic:... or builtin:demo), got {data!r}; "
                         "for other images give the clean and the corrupted file")
    if n < 1:
        raise ValueError(f"need at least one pair, got n={n}")
    clean, corr, labels, changed, names = [], [], [], [], []
    for i in range(start, start + n):
        p = edited_pair(src.cfg, src.split, i, new_label)
        clean.append(_to_input(model, p.clean.image))
        corr.append(_to_input(model, p.corrupted.image))
        labels.append(p.clean.label)
        changed.append(changed_patches(model, p.changed))
        names.append(f"{src.split} {i}: {p.clean.shape} -> {p.corrupted.shape}")
    return PatchPairs(torch.cat(clean), torch.cat(corr), torch.tensor(labels), np.stack(changed), names,
                      description=f"{n} synthetic pairs ({src.description}) differing in one object")


def make_pairs(model, data, corrupt: str | None = None, region: str | None = None, limit: int | None = None,
               seed: int = 0) -> PatchPairs:
    """What :func:`~vitscope.analysis.patching.evaluate` patches, from its ``data``:

    * a :class:`PatchPairs` (used as is);
    * without ``corrupt``: ``(clean, corrupted)`` (two images: paths, PIL images, arrays, or preprocessed tensors)
      or a list of such pairs;
    * with ``corrupt``: one image, a list of images, a (P, 3, H, W) tensor, or a dataset (spec or opened; its first
      ``limit`` images, default 8), corrupted by ``corrupt`` (``edit`` for synthetic data; ``blur:S``, ``noise:S``,
      ``replace[:PATH]``) within ``region``.
    """
    if isinstance(data, PatchPairs):
        return data
    grid = model.cfg.grid
    if corrupt is None:
        if _is_pair(data):
            return load_pair(model, *data)
        if isinstance(data, (tuple, list)) and data and all(_is_pair(d) for d in data):
            parts = [load_pair(model, *d) for d in data]
            return PatchPairs(torch.cat([p.clean for p in parts]), torch.cat([p.corrupted for p in parts]),
                              names=[n for p in parts for n in p.names], description=f"{len(parts)} image pairs")
        raise ValueError("patching needs (clean, corrupted) images, a list of such pairs, or images with a corruption "
                         "(corrupt='blur:0.5', 'noise:0.2', 'replace:OTHER', or 'edit' on synthetic data)")
    kind, value = parse_corruption(corrupt)
    if kind == "edit":
        new = None if value is None else _class_of(model, value)
        return synthetic_pairs(model, data, n=limit or 8, new_label=new)
    clean, labels, names, desc = _images(model, data, limit)
    reg = parse_region(region, (clean.shape[-2] // model.cfg.patch_size, clean.shape[-1] // model.cfg.patch_size)
                       if clean.ndim == 4 else grid)
    other = None
    if kind == "replace":
        if value is not None:
            other = _to_input(model, value).expand_as(clean)
        elif clean.shape[0] > 1:
            other = clean.roll(1, dims=0)                          # each image takes the previous image's patches
    corr = apply_corruption(clean, kind, value, model.cfg.patch_size, _pcfg(model).std, reg, seed, other)
    rows, cols = clean.shape[-2] // model.cfg.patch_size, clean.shape[-1] // model.cfg.patch_size
    changed = np.broadcast_to((reg if reg is not None else np.ones((rows, cols), bool)).astype(np.float64),
                              (clean.shape[0], rows, cols)).copy()
    return PatchPairs(clean, corr, labels, changed, names, description=f"{desc}, corrupted by {corrupt}"
                      + (f" in patches {region}" if reg is not None else ""))


def _class_of(model, value: str) -> int:
    from vitscope.analysis.patching.sites import class_index

    return class_index(model, value)


def _images(model, data, limit: int | None) -> tuple[torch.Tensor, torch.Tensor | None, list[str], str]:
    """(images (P, 3, H, W), labels or None, names, description) of one image, a list, a tensor or a dataset."""
    if isinstance(data, torch.Tensor) and data.ndim == 4:
        x = data[:limit] if limit else data
        return x.float(), None, [f"image {i}" for i in range(x.shape[0])], f"{x.shape[0]} images"
    if _is_image_like(data):
        data = [data]
    if isinstance(data, (list, tuple)) and all(_is_image_like(d) for d in data):
        items = list(data)[:limit] if limit else list(data)
        x = torch.cat([_to_input(model, d) for d in items])
        names = [Path(d).name if isinstance(d, (str, Path)) else f"image {i}" for i, d in enumerate(items)]
        return x, None, names, f"{len(items)} image(s)"
    from vitscope.data.datasets import ImageDataset
    from vitscope.features.access import open_dataset_any
    from vitscope.models.preprocess import Preprocessor

    ds = open_dataset_any(data)
    if not isinstance(ds, ImageDataset):
        raise ValueError(f"expected images, a (P, 3, H, W) tensor or a dataset, got {type(data).__name__}")
    ds = ImageDataset(ds.source, transform=Preprocessor(_pcfg(model)), on_error=ds.on_error)
    sub = ds.subset(range(min(limit or 8, len(ds))))
    xs, ys, idx = [], [], []
    for x, y, i in sub.batches(batch_size=64):                  # unreadable files are skipped (ds.skipped)
        xs.append(x.float())
        ys.append(y)
        idx.append(i)
    if not xs:
        raise ValueError(f"none of the first {len(sub)} images of the dataset could be decoded")
    y = torch.cat(ys)
    names = [str(sub.ids[int(i)]) for i in torch.cat(idx)]
    return (torch.cat(xs), y if bool((y >= 0).all()) else None, names,
            f"{len(names)} images of {ds.description}")
