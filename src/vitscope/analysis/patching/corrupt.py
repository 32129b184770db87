"""The built-in corruptions, applied to preprocessed images (P, 3, H, W):

* ``edit``: the synthetic benchmark's edited copy (the object swapped for another class's shape; synthetic data
  only, :mod:`vitscope.data.synthetic.edits`); for any other pair of images give both files;
* ``blur:S``: Gaussian blur with a standard deviation of ``S`` patch widths;
* ``noise:S``: Gaussian noise with a standard deviation of ``S`` in pixel units (images in [0, 1]), seeded;
* ``replace[:PATH]``: the patches taken from another image (``PATH``, or the next image of the data).

``region`` (``"r0:r1,c0:c1"`` in patch rows / columns, ends excluded, or ``"r,c"`` for one patch) limits the
corruption to those patches; the rest of the image stays clean.
"""
from __future__ import annotations

import numpy as np
import torch

CORRUPTIONS = ("edit", "blur", "noise", "replace")


def parse_corruption(spec: str) -> tuple[str, float | str | None]:
    """``"blur:0.5"`` -> ``("blur", 0.5)``; ``"replace:other.jpg"`` -> ``("replace", "other.jpg")``; ``"edit"``."""
    s = str(spec).strip()
    kind, _, arg = s.partition(":")
    kind = kind.strip().lower()
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {s!r}; expected edit, blur:SIGMA (patch widths), noise:STD (pixel "
                         "units) or replace[:PATH]")
    if kind in ("blur", "noise"):
        try:
            v = float(arg)
        except ValueError:
            raise ValueError(f"{kind} takes a number, e.g. '{kind}:0.5', got {s!r}") from None
        if not v > 0 or not np.isfinite(v):
            raise ValueError(f"{kind} strength must be positive, got {s!r}")
        return kind, v
    if kind == "edit":
        return kind, (arg.strip() or None)
    return kind, (arg.strip() or None)


def _span(text: str, n: int | None, axis: str, whole: str, what: str) -> range:
    text = text.strip()
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            lo = int(a) if a.strip() else 0
            hi = int(b) if b.strip() else (n if n is not None else lo + 1)
        else:
            lo = int(text)
            hi = lo + 1
    except ValueError:
        raise ValueError(f"{what} takes patch rows and columns as 'r0:r1,c0:c1' or 'r,c', got {whole!r}") from None
    if not 0 <= lo < hi or (n is not None and hi > n):
        grid = f"the patch grid ({axis} 0..{n - 1})" if n is not None else "the patch grid"
        which = f"{axis[:-1]} {lo}" if hi == lo + 1 else f"{axis} {lo}..{hi - 1}"
        raise ValueError(f"{what} {whole!r}: {which} outside {grid}; give {axis} within it")
    return range(lo, hi)


def parse_region(text: str | None, grid: tuple[int, int] | None, what: str = "region") -> np.ndarray | None:
    """``"r0:r1,c0:c1"`` / ``"r,c"`` -> a (rows, cols) bool mask of patches; None for None / ``"all"``. Without
    ``grid`` only the spelling is checked (None is returned)."""
    if text is None or str(text).strip().lower() in ("", "all"):
        return None
    parts = str(text).split(",")
    if len(parts) != 2:
        raise ValueError(f"{what} takes patch rows and columns as 'r0:r1,c0:c1' or 'r,c', got {text!r}")
    rows, cols = grid if grid is not None else (None, None)
    r, c = _span(parts[0], rows, "rows", text, what), _span(parts[1], cols, "columns", text, what)
    if grid is None:
        return None
    mask = np.zeros(grid, dtype=bool)
    mask[r.start:r.stop, c.start:c.stop] = True
    return mask


def pixel_mask(region: np.ndarray, patch_size: int) -> torch.Tensor:
    """A (rows, cols) patch mask -> (1, 1, H, W) pixel mask."""
    m = np.repeat(np.repeat(region, patch_size, 0), patch_size, 1)
    return torch.from_numpy(m)[None, None]


def blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian blur of each channel (scipy.ndimage, reflected borders)."""
    from scipy.ndimage import gaussian_filter

    arr = x.detach().cpu().double().numpy()
    out = gaussian_filter(arr, sigma=(0, 0, sigma_px, sigma_px), mode="reflect")
    return torch.from_numpy(out).to(x.device, x.dtype)


def add_noise(x: torch.Tensor, std_px: float, std: tuple[float, ...], seed: int) -> torch.Tensor:
    """Gaussian noise of ``std_px`` in pixel units, in the normalised space of the model (divided by ``std``)."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    scale = std_px / torch.tensor(std, dtype=torch.float64)[None, :, None, None]
    return (x.double().cpu() + noise * scale).to(x.device, x.dtype)


def apply_corruption(x: torch.Tensor, kind: str, value, patch_size: int, std: tuple[float, ...] = (0.5, 0.5, 0.5),
                     region: np.ndarray | None = None, seed: int = 0, other: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """The corrupted copy of ``x`` (P, 3, H, W); ``other`` (P, 3, H, W) gives the patches for ``replace``."""
    if kind == "blur":
        out = blur(x, float(value) * patch_size)
    elif kind == "noise":
        out = add_noise(x, float(value), std, seed)
    elif kind == "replace":
        if other is None:
            raise ValueError("replace needs another image: 'replace:PATH', or data with more than one image")
        if other.shape != x.shape:
            raise ValueError(f"replace: the other image is {tuple(other.shape[-2:])} after preprocessing, the clean "
                             f"one {tuple(x.shape[-2:])}")
        out = other.to(x)
    else:
        raise ValueError(f"corruption {kind!r} is not applied to pixels here; see vitscope.data.synthetic.edits")
    if region is not None:
        m = pixel_mask(region, patch_size).to(x.device)
        out = torch.where(m, out, x)
    return out
