"""What every task structure shares: its image files, and a way to run them through the dataset interface."""
from __future__ import annotations

from pathlib import Path

from vitscope.data.datasets import ImageDataset
from vitscope.data.folders import FileSource


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else one clear FileNotFoundError naming what was expected there."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


class TaskImages:
    """Mixin: ``image_paths()`` (subclasses define it) -> ``image_dataset(transform)``.

    Structures with segmentations also define ``masks(i, level)`` -> (list of (H, W) bool masks, their integer
    labels), ``level`` "object" or "part": what dense clustering reads.
    """

    description = "task images"

    def image_paths(self) -> list[str]:
        raise NotImplementedError

    def image_dataset(self, transform=None, on_error: str = "skip", labels=None, classes=None) -> ImageDataset:
        """The structure's images, in its order, as an ImageDataset (sample i = item i of the structure)."""
        src = FileSource(self.image_paths(), labels, classes, description=self.description, task=self)
        return ImageDataset(src, transform=transform, on_error=on_error)
