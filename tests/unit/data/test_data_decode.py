"""The decoding policy: awkward files decode to RGB, bad ones fail with a kind; Pillow's bomb guard stays on."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import png_bomb_bytes, rgb_array, save_rgb
from PIL import Image

from vitscope.data.decode import ImageDecodeError, decode_image, load_image


def test_good_kinds_decode_to_rgb(mixed_folder):
    root, bad, good = mixed_folder
    for name, size in good.items():
        img = load_image(root / name)
        assert img.mode == "RGB", name
        assert img.size == size, name


def test_bad_kinds_raise_with_their_kind(mixed_folder):
    root, bad, _ = mixed_folder
    for name, kind in bad.items():
        with pytest.raises(ImageDecodeError) as e:
            load_image(root / name)
        assert e.value.kind == kind, (name, str(e.value))
        assert name in str(e.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png")


def test_exif_orientation_matches_a_manual_rotation(tmp_path):
    from conftest import exif_rotated_jpeg

    p = exif_rotated_jpeg(tmp_path / "r.jpg")
    raw = np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)     # stored landscape, 20 x 30
    shown = np.asarray(load_image(p), dtype=np.int16)                   # orientation 6: rotate 90 clockwise
    assert shown.shape == (30, 20, 3)
    assert np.abs(shown - np.rot90(raw, k=-1)).mean() < 1.0


def test_palette_and_16bit_values(tmp_path):
    a16 = np.full((4, 4), 65535, np.uint16)
    Image.fromarray(a16).save(tmp_path / "w.png")
    assert np.asarray(load_image(tmp_path / "w.png")).min() == 255
    arr = rgb_array(8, 8)
    pal = Image.fromarray(arr).convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "p.png")), np.asarray(pal.convert("RGB")))


def test_bomb_guard_stays_on_and_lowered_limit(tmp_path, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS is not None
    with pytest.raises(ImageDecodeError) as e:
        decode_image(png_bomb_bytes(), "bomb.png")
    assert e.value.kind == "too_large"
    # a real (small) image over a lowered limit is refused the same way
    p = save_rgb(tmp_path / "big.png", 100, 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError) as e:
        load_image(p)
    assert e.value.kind == "too_large"


def test_decode_bytes_equals_file(tmp_path):
    p = save_rgb(tmp_path / "x.png")
    np.testing.assert_array_equal(np.asarray(decode_image(p.read_bytes(), "x")), rgb_array())
    with pytest.raises(ImageDecodeError):
        decode_image(b"", "empty")


def test_error_pickles_with_kind():
    import pickle

    e = pickle.loads(pickle.dumps(ImageDecodeError("x is bad", "truncated")))
    assert e.kind == "truncated" and str(e) == "x is bad"
