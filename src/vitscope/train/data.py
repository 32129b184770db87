"""Datasets for training: open a spec, split it, decode every image once to a uint8 tensor at the model size.

Training reads a :func:`vitscope.data.open_dataset` dataset (the image before its transform, ``ds.load(i)``)
or any indexable object with ``classes`` whose items start with (image, label). Images that cannot be
decoded are left out. Images become uint8 tensors (3, S, S) (short side resized to S, centre
crop); augmentations then run on whole batches (:mod:`vitscope.train.augment`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from vitscope.data.decode import to_pil
from vitscope.preprocess import PreprocessConfig, resize_crop


def open_training_dataset(spec):
    """A dataset object from a spec string (``vitscope.data.open_dataset``) or the object itself."""
    if not isinstance(spec, str):
        return spec
    try:
        from vitscope.data import open_dataset
    except ImportError as e:  # the data package predates open_dataset
        raise ValueError(f"cannot open dataset {spec!r}: vitscope.data.open_dataset is not available") from e
    return open_dataset(spec)


def dataset_classes(ds) -> list[str]:
    classes = getattr(ds, "classes", None)
    if not classes:
        raise ValueError("the training dataset has no classes (an unlabelled dataset cannot train a classifier); "
                         "use a folder with one sub-folder per class, a list file with labels, or synthetic:...")
    return [str(c) for c in classes]


def dataset_labels(ds) -> np.ndarray:
    """Every item's label, from ``ds.labels`` when present (no decoding), else by reading the items."""
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [ds[i][1] for i in range(len(ds))]
    labels = np.asarray([-1 if v is None else int(v) for v in labels], dtype=np.int64)
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} training items have no label; training needs a label per image")
    return labels


def split_indices(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, held-out) split: about ``fraction`` of every class is held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        held.extend(idx[:k].tolist())
    held = np.sort(np.asarray(held, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), held)
    if len(train) == 0 or len(held) == 0:
        raise ValueError(f"cannot split {len(labels)} items with fraction {fraction}: one side would be empty")
    return train, held


def _fetch(ds, i: int):
    """The raw image of item ``i`` (PIL or tensor), or None when it cannot be decoded (left out)."""
    if hasattr(ds, "load"):                       # vitscope ImageDataset / source: the image before any transform
        from vitscope.data.decode import ImageDecodeError

        try:
            return ds.load(int(i))
        except (ImageDecodeError, FileNotFoundError):
            return None
    image = ds[int(i)][0]
    return None if type(image).__name__ == "SkipRecord" else image


def _collate(items):
    good = [it for it in items if it is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good], dtype=torch.long)


def to_uint8(image, size: tuple[int, int]) -> torch.Tensor:
    """One image (PIL, path, array, or a float/uint8 tensor (3, H, W)) -> uint8 tensor (3, *size)."""
    if isinstance(image, torch.Tensor):
        t = image
        if t.dtype != torch.uint8:
            t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
        if tuple(t.shape[-2:]) != tuple(size):
            t = torch.nn.functional.interpolate(t[None].float(), size=size, mode="bilinear", antialias=True,
                                                align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        return t
    img = image if isinstance(image, Image.Image) else to_pil(image)
    img = resize_crop(img.convert("RGB"), PreprocessConfig(input_size=size, crop_pct=1.0))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # 3, H, W


class ImageTensors(torch.utils.data.Dataset):
    """``ds[indices[i]]`` as (uint8 image (3, *size), label); optionally all decoded once into memory."""

    def __init__(self, ds, indices: Sequence[int], labels: np.ndarray, size: tuple[int, int]) -> None:
        self.ds, self.indices, self.size = ds, np.asarray(indices, dtype=np.int64), tuple(size)
        self.labels = torch.as_tensor(labels[self.indices])
        self.cache: torch.Tensor | None = None
        self.skipped: list[int] = []

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        """(uint8 image, label), or None for an image that cannot be decoded."""
        if self.cache is not None:
            return self.cache[i], int(self.labels[i])
        image = _fetch(self.ds, self.indices[i])
        return None if image is None else (to_uint8(image, self.size), int(self.labels[i]))

    def nbytes(self) -> int:
        return len(self) * 3 * self.size[0] * self.size[1]

    def preload(self, progress: bool = False, desc: str = "decoding") -> None:
        """Decode every image once (small datasets: the demo's synthetic set takes a few MB)."""
        from tqdm.auto import tqdm

        out = torch.empty(len(self), 3, *self.size, dtype=torch.uint8)
        good = torch.ones(len(self), dtype=torch.bool)
        for i in tqdm(range(len(self)), desc=desc, disable=not progress, leave=False):
            item = self[i]
            if item is None:
                good[i] = False
            else:
                out[i] = item[0]
        if not good.all():                        # undecodable files are left out
            self.skipped = [int(self.indices[i]) for i in torch.nonzero(~good).flatten()]
            self.indices, self.labels, out = self.indices[good.numpy()], self.labels[good], out[good]
        self.cache = out

    def batches(self, batch_indices: Sequence[Sequence[int]], num_workers: int = 0):
        """Yield (uint8 images (b, 3, H, W), labels (b,)) for each list of positions."""
        if self.cache is not None:
            for b in batch_indices:
                b = torch.as_tensor(list(b), dtype=torch.long)
                yield self.cache[b], self.labels[b]
            return
        loader = torch.utils.data.DataLoader(self, batch_sampler=[list(b) for b in batch_indices],
                                             num_workers=num_workers, collate_fn=_collate)
        for x, y in loader:
            if len(y):
                yield x, y
