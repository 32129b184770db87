"""Small image files for the data tests, written in each bad and awkward form the decoder must handle."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def rgb_array(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save_rgb(path: Path, h=20, w=30, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_array(h, w, seed)).save(path, format=fmt)
    return path


def png_bomb_bytes(width=100_000, height=100_000) -> bytes:
    """A PNG whose header claims width x height pixels (with valid CRCs); the pixel data is never there."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def exif_rotated_jpeg(path: Path, h=20, w=30):
    """A landscape JPEG whose EXIF orientation (6: rotate 90 CW) makes it portrait when displayed."""
    img = Image.fromarray(rgb_array(h, w, 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes())
    return path


def write_mixed_folder(root: Path) -> tuple[dict[str, str], dict[str, tuple]]:
    """Good and bad images side by side. Returns (bad name -> kind, good name -> expected decoded size (w, h))."""
    root.mkdir(parents=True, exist_ok=True)
    good = {}
    save_rgb(root / "a_plain.png"); good["a_plain.png"] = (30, 20)
    save_rgb(root / "b_plain.jpg", seed=1); good["b_plain.jpg"] = (30, 20)
    Image.fromarray(rgb_array()).convert("CMYK").save(root / "c_cmyk.jpg"); good["c_cmyk.jpg"] = (30, 20)
    a16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(a16).save(root / "d_16bit.png"); good["d_16bit.png"] = (30, 20)
    pal = Image.fromarray(rgb_array()).convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    pal.save(root / "e_palette.png", transparency=0); good["e_palette.png"] = (30, 20)
    rgba = np.concatenate([rgb_array(), np.full((20, 30, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(root / "f_rgba.png"); good["f_rgba.png"] = (30, 20)
    exif_rotated_jpeg(root / "g_exif.jpg"); good["g_exif.jpg"] = (20, 30)
    Image.fromarray(rgb_array()[..., 0]).save(root / "h_grey.png"); good["h_grey.png"] = (30, 20)
    bad = {}
    buf = io.BytesIO()
    Image.fromarray(rgb_array(64, 64, 5)).save(buf, format="JPEG")
    (root / "p_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad["p_truncated.jpg"] = "truncated"
    (root / "q_empty.png").write_bytes(b""); bad["q_empty.png"] = "empty"
    (root / "r_text.jpg").write_text("this is not an image\n"); bad["r_text.jpg"] = "not_image"
    (root / "s_bomb.png").write_bytes(png_bomb_bytes()); bad["s_bomb.png"] = "too_large"
    return bad, good


@pytest.fixture
def mixed_folder(tmp_path):
    root = tmp_path / "mixed"
    bad, good = write_mixed_folder(root)
    return root, bad, good
