"""Validation of the images the web app receives: one readable message for every bad upload, never a crash.

An upload is read only from inside the app's own temporary folder. It is refused with :class:`UploadError`
(a ``ValueError`` whose message says what was expected and how to fix it) when it is empty, larger than
``max_bytes``, not an image Pillow can read, larger than ``max_pixels`` (checked from the header, before
decoding, so a decompression bomb never reaches memory) or in a mode that cannot be turned into RGB. 16-bit,
greyscale, palette, alpha and CMYK images are converted to RGB by :func:`vitscope.data.decode.to_rgb`.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from vitscope.data.decode import to_rgb

MAX_BYTES = 20 * 1024 * 1024          # 20 MiB per upload
MAX_PIXELS = 40_000_000               # 40 megapixels (Pillow's own bomb guard starts at 89 M)
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "MPO")


class UploadError(ValueError):
    """An upload the app cannot use; the message is shown in the page."""


def _inside(path: Path, roots) -> bool:
    return any(path == r or r in path.parents for r in roots)


def check_path(path: str | Path, roots) -> Path:
    """The resolved ``path`` when it lies inside one of ``roots``; UploadError otherwise (nothing is read)."""
    p = Path(path).resolve()
    if not _inside(p, [Path(r).resolve() for r in roots]):
        raise UploadError("the app reads only files uploaded to it; upload the image through the page")
    if not p.is_file():
        raise UploadError("the uploaded file is gone; upload it again")
    return p


def open_upload(path: str | Path, roots, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Validate and decode one uploaded file to an RGB PIL image (EXIF orientation applied)."""
    p = check_path(path, roots)
    size = p.stat().st_size
    if size == 0:
        raise UploadError("the file is empty (0 bytes); upload a PNG, JPEG or WebP image")
    if size > max_bytes:
        raise UploadError(f"the file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB. "
                          f"Upload a smaller image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(p)
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            if isinstance(e, UnidentifiedImageError):
                raise UploadError("the file is not an image (expected PNG, JPEG, WebP, BMP, GIF or TIFF)") from None
            raise UploadError(f"the image has too many pixels to decode safely; the limit is "
                              f"{max_pixels / 1e6:.0f} megapixels. Downscale it first") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise UploadError(f"the file could not be read as an image ({e})") from None
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise UploadError(f"the image is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); the limit is "
                                  f"{max_pixels / 1e6:.0f} megapixels. Downscale it first")
            if w == 0 or h == 0:
                raise UploadError("the image has no pixels")
            if img.format not in FORMATS:
                raise UploadError(f"{img.format or 'this'} images are not accepted; upload a PNG, JPEG or WebP image")
            try:
                img.load()
                img = ImageOps.exif_transpose(img)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise UploadError("the image has too many pixels to decode safely") from None
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise UploadError(f"the image is truncated or corrupt ({e}); upload it again or re-save it") from None
            mode = img.mode
            try:
                rgb = to_rgb(img)
            except (OSError, ValueError) as e:
                raise UploadError(f"images in mode {mode} cannot be converted to RGB ({e}); re-save it as an RGB "
                                  f"PNG or JPEG") from None
    return rgb


class ImageCache:
    """Decoded uploads by (path, size, mtime): moving a slider does not decode the file again."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, roots, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
        p = check_path(path, roots)
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns, max_bytes, max_pixels)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        img = open_upload(p, roots, max_bytes, max_pixels)
        with self._lock:
            self._items[key] = img
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return img
