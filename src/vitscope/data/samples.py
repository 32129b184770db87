"""A few real photographs, available offline, for demos and tests (licences in ``assets/samples/SOURCES.md``).

>>> from vitscope.data.samples import sample_image, sample_paths
>>> sample_image("cat").size
(385, 256)
>>> open_dataset("builtin:samples")            # all of them as a dataset
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from vitscope.data.decode import load_image

_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "samples"
SHIPPED = ("astronaut", "cat", "coffee", "rocket")


def _hopper() -> Path | None:
    try:
        from matplotlib import cbook

        p = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception:  # matplotlib without its sample data
        return None
    return p if p.is_file() else None


def sample_paths() -> dict[str, Path]:
    """name -> file of every sample photograph available here (the shipped ones, plus ``hopper`` from matplotlib)."""
    out = {n: _ASSETS / f"{n}.jpg" for n in SHIPPED if (_ASSETS / f"{n}.jpg").is_file()}
    h = _hopper()
    if h is not None:
        out["hopper"] = h
    if not out:
        raise FileNotFoundError(f"the sample photographs are missing from {_ASSETS}; reinstall vitscope")
    return out


def sample_image(name: str) -> Image.Image:
    """One sample photograph as an RGB PIL image."""
    paths = sample_paths()
    if name not in paths:
        raise KeyError(f"no sample image {name!r}; available: {', '.join(paths)}")
    return load_image(paths[name])


class SampleSource:
    """The sample photographs as a dataset source (no labels), in name order."""

    def __init__(self) -> None:
        items = sorted(sample_paths().items())
        self.names = [n for n, _ in items]
        self.paths = [str(p) for _, p in items]
        self.ids = self.paths
        import numpy as np

        self.labels = np.full(len(items), -1, dtype=np.int64)
        self.classes: list[str] = []
        self.description = "built-in sample photographs"

    def load(self, i: int) -> Image.Image:
        return load_image(self.paths[i])
