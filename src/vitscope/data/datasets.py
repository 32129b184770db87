"""One dataset interface for every image collection: ``ds[i] -> (image, label or -1, i)``.

An :class:`ImageDataset` wraps a *source* (a folder, a list file, tar shards, a HF dataset, a video, the
synthetic benchmark; see :func:`vitscope.data.open_dataset`) and applies the bad-file policy:

- ``on_error="skip"`` (default): an item that cannot be decoded comes back as ``(SkipRecord, -1, i)``;
  :func:`collate_skip` drops it from the batch and carries the record in ``batch.skipped``;
  :meth:`ImageDataset.batches` merges those records into ``ds.skipped`` (also from DataLoader workers).
- ``on_error="raise"``: the first bad item raises :class:`~vitscope.data.decode.ImageDecodeError`.

A source is any picklable object with ``ids`` (list of str), ``labels`` (int64 array, -1 = none),
``classes`` (list of str), ``paths`` (list of str) and ``load(i) -> PIL.Image``; it raises
ImageDecodeError or FileNotFoundError for a bad item.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from vitscope.data.decode import ImageDecodeError
from vitscope.data.skip import SkipRecord, check_on_error, skip_summary, write_skip_report


class Batch(tuple):
    """``(images, labels, indices)`` of the good items of a batch; ``skipped`` lists the items left out.

    Unpacks like a plain tuple: ``images, labels, idx = batch``. ``images`` is (B, 3, H, W) (whatever the
    transform returns, stacked), ``labels`` and ``indices`` are int64 tensors of length B. B may be 0 when
    every item of the batch failed; then ``images`` is an empty tensor.
    """

    def __new__(cls, images, labels, indices, skipped: Sequence[SkipRecord] = ()):
        self = super().__new__(cls, (images, labels, indices))
        self.skipped = list(skipped)
        return self

    def __reduce__(self):
        return (Batch, (self[0], self[1], self[2], self.skipped))

    def pin_memory(self, device=None) -> Batch:
        pin = (lambda t: t.pin_memory(device) if device is not None else t.pin_memory())
        images = pin(self[0]) if isinstance(self[0], torch.Tensor) else self[0]
        return Batch(images, pin(self[1]), pin(self[2]), self.skipped)

    def to(self, device) -> Batch:
        images = self[0].to(device) if isinstance(self[0], torch.Tensor) else self[0]
        return Batch(images, self[1].to(device), self[2].to(device), self.skipped)


def collate_skip(items: Sequence[tuple[Any, int, int]]) -> Batch:
    """DataLoader ``collate_fn``: drop failed items (a SkipRecord in the image slot), stack the rest."""
    good = [it for it in items if not isinstance(it[0], SkipRecord)]
    skipped = [it[0] for it in items if isinstance(it[0], SkipRecord)]
    if good:
        images = default_collate([it[0] for it in good])
    else:
        images = torch.empty(0)
    labels = torch.tensor([int(it[1]) for it in good], dtype=torch.long)
    indices = torch.tensor([int(it[2]) for it in good], dtype=torch.long)
    return Batch(images, labels, indices, skipped)


def _default_transform():
    from vitscope.preprocess import PreprocessConfig, Preprocessor

    return Preprocessor(PreprocessConfig())


class ImageDataset(Dataset):
    """A torch Dataset over any image source, in a fixed order, with the sample index kept with every item."""

    def __init__(self, source, transform: Callable[[Image.Image], Any] | None = None, on_error: str = "skip") -> None:
        self.source = source
        self.transform = transform if transform is not None else _default_transform()
        self.on_error = check_on_error(on_error)
        self._skipped: dict[int, SkipRecord] = {}

    # what the samples are
    @property
    def ids(self) -> list[str]:
        """One string per sample: the file path, or a locator such as ``shard.tar#key`` or ``clip.mp4#frame=12``."""
        return self.source.ids

    @property
    def paths(self) -> list[str]:
        """The file each sample comes from (for tar members, HF rows and video frames: the same as ``ids``)."""
        return self.source.paths

    @property
    def labels(self) -> np.ndarray:
        """int64 array, one label per sample; -1 where the source has none."""
        return self.source.labels

    @property
    def classes(self) -> list[str]:
        """Class names, indexed by label; empty when the source has no labels."""
        return self.source.classes

    @property
    def description(self) -> str:
        return getattr(self.source, "description", type(self.source).__name__)

    def __len__(self) -> int:
        return len(self.source.ids)

    def __repr__(self) -> str:
        return (f"ImageDataset({self.description}, {len(self)} images, {len(self.classes)} classes, "
                f"on_error={self.on_error!r})")

    # reading
    def load(self, i: int) -> Image.Image:
        """The decoded RGB image of sample ``i``, before the transform; raises on a bad file."""
        return self.source.load(int(i))

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        try:
            img = self.source.load(i)
        except (ImageDecodeError, FileNotFoundError) as e:
            if self.on_error == "raise":
                raise
            kind = e.kind if isinstance(e, ImageDecodeError) else "missing"
            rec = SkipRecord(i, self.source.ids[i], str(e), kind)
            self._skipped[i] = rec
            return rec, -1, i
        return self.transform(img), int(self.source.labels[i]), i

    # the bad-file policy
    @property
    def skipped(self) -> list[SkipRecord]:
        """Items left out so far (sorted by index), from direct indexing and from :meth:`batches`."""
        return [self._skipped[k] for k in sorted(self._skipped)]

    def record_skips(self, records: Iterable[SkipRecord]) -> None:
        """Merge records that came back from DataLoader workers (``batch.skipped``)."""
        for r in records:
            self._skipped[r.index] = r

    def skip_summary(self, report: str | Path | None = None) -> str:
        return skip_summary(self.skipped, len(self), report)

    def write_skip_report(self, path: str | Path) -> Path:
        return write_skip_report(self.skipped, path)

    # batching
    def dataloader(self, batch_size: int = 64, num_workers: int = 0, **kwargs) -> DataLoader:
        """A DataLoader in dataset order (no shuffling unless asked) that uses :func:`collate_skip`."""
        kwargs.setdefault("shuffle", False)
        if num_workers > 0:
            kwargs.setdefault("persistent_workers", False)
        return DataLoader(self, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip, **kwargs)

    def batches(self, batch_size: int = 64, num_workers: int = 0, progress: bool = False,
                **kwargs) -> Iterator[Batch]:
        """Iterate over non-empty :class:`Batch` es in order; skipped items are merged into ``self.skipped``."""
        loader = self.dataloader(batch_size=batch_size, num_workers=num_workers, **kwargs)
        it: Iterable[Batch] = loader
        if progress:
            from tqdm import tqdm

            it = tqdm(loader, desc="images", unit="batch")
        for batch in it:
            self.record_skips(batch.skipped)
            if len(batch[2]):
                yield batch

    def subset(self, indices: Iterable[int]) -> ImageDataset:
        """A dataset over some samples (new indices 0..n-1; ``ids`` keep naming the files)."""
        return ImageDataset(SubsetSource(self.source, [int(i) for i in indices]), self.transform, self.on_error)


class SubsetSource:
    """Some samples of another source, in the given order."""

    def __init__(self, source, indices: list[int]) -> None:
        n = len(source.ids)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"subset indices out of range for {n} samples: {bad[:5]}")
        self.base = source
        self.indices = indices
        self.ids = [source.ids[i] for i in indices]
        self.paths = [source.paths[i] for i in indices]
        self.labels = np.asarray(source.labels, dtype=np.int64)[indices] if indices else np.zeros(0, np.int64)
        self.classes = source.classes
        self.description = f"subset of {getattr(source, 'description', 'a dataset')}"

    def load(self, i: int) -> Image.Image:
        return self.base.load(self.indices[i])
