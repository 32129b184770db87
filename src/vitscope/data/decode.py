"""Robust image decoding: every common mode becomes RGB, EXIF orientation is applied, errors are one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """A file could not be decoded as an image; the message names the file and the reason."""


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


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB with its EXIF orientation applied; a clear ImageDecodeError otherwise.

    Accepts RGB, RGBA, greyscale, palette, CMYK, 16-bit and EXIF-rotated files. Pillow's
    decompression-bomb guard stays on.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image file not found: {p}")
    if p.is_dir():
        raise ImageDecodeError(f"{p} is a folder, expected an image file")
    if p.stat().st_size == 0:
        raise ImageDecodeError(f"{p} is empty (0 bytes)")
    try:
        with Image.open(p) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"{p} is too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(f"{p} is not an image Pillow can read") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{p} could not be decoded: {e}") from e
