"""Robust image decoding: every common mode becomes RGB, EXIF orientation is applied, errors are one line.

``load_image(path)`` reads a file, ``decode_image(data, name)`` reads bytes (tar members, HF datasets).
Both raise :class:`ImageDecodeError` whose ``kind`` says what went wrong, so a run can skip the file and
report it (see :mod:`vitscope.data.skip`). Pillow's decompression-bomb guard stays on.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# file name endings treated as images when a folder is scanned (lower case)
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
})

# the values ImageDecodeError.kind takes
DECODE_ERROR_KINDS = ("missing", "folder", "empty", "not_image", "truncated", "too_large", "corrupt")


class ImageDecodeError(ValueError):
    """A file could not be decoded as an image; the message names the file and the reason.

    ``kind`` is one of :data:`DECODE_ERROR_KINDS` (``"corrupt"`` when nothing more precise is known).
    """

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # keep ``kind`` when the error crosses a DataLoader worker boundary
        return (type(self), (self.args[0] if self.args else "", self.kind))


def is_image_file(path: str | Path) -> bool:
    """True when the name ends with a known image extension (case-insensitive); hidden files are not images."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: 16-bit and float greyscale are rescaled, alpha is dropped, CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            arr = arr / 65535.0 * 255.0
        elif hi > lo:
            arr = (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _decode(src, name: str) -> Image.Image:
    """Open ``src`` (a path or a binary file object) with Pillow, fully decoded, as RGB; errors named after ``name``."""
    try:
        with warnings.catch_warnings():
            # Pillow's bomb *warning* (between MAX_IMAGE_PIXELS and twice that) becomes a skip naming the file,
            # not two raw lines on the terminal
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{name} is too large to decode safely ({e})", "too_large") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(f"{name} is not an image Pillow can read", "not_image") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e)
        kind = "truncated" if "truncated" in msg.lower() else "corrupt"
        raise ImageDecodeError(f"{name} could not be decoded: {msg}", kind) from e


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB with its EXIF orientation applied; a clear ImageDecodeError otherwise.

    Accepts RGB, RGBA, greyscale, palette, CMYK, 16-bit and EXIF-rotated files. Pillow's
    decompression-bomb guard stays on. A missing file raises FileNotFoundError.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image file not found: {p}")
    if p.is_dir():
        raise ImageDecodeError(f"{p} is a folder, expected an image file", "folder")
    if p.stat().st_size == 0:
        raise ImageDecodeError(f"{p} is empty (0 bytes)", "empty")
    return _decode(p, str(p))


def decode_image(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Decode encoded image bytes (a tar member, a HF dataset cell) like :func:`load_image` decodes a file."""
    if not data:
        raise ImageDecodeError(f"{name} is empty (0 bytes)", "empty")
    return _decode(io.BytesIO(data), name)


def to_pil(item) -> Image.Image:
    """A PIL image, a path or an (H, W[, C]) array (uint8, or floats in [0, 1]) -> an RGB PIL image."""
    if isinstance(item, Image.Image):
        return item.convert("RGB") if item.mode != "RGB" else item
    if isinstance(item, (str, Path)):
        return load_image(item)
    if isinstance(item, np.ndarray):
        a = item
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.max() <= 1.0:
                a = a * 255.0
            a = np.clip(a, 0, 255).astype(np.uint8)
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        return Image.fromarray(a[..., :3])
    raise TypeError(f"expected a PIL image, a path or an (H, W, C) array, got {type(item).__name__}")
