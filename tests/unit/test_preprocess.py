import numpy as np
import pytest
import torch
from PIL import Image

from vitscope import load_image
from vitscope.data.decode import ImageDecodeError
from vitscope.models.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig, preprocess


def _img(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(64, 48), (48, 80), (40, 40)])
def test_matches_transformers_clip_image_processor(size):
    transformers = pytest.importorskip("transformers")
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                           resample=Image.BICUBIC, image_mean=list(CLIP_MEAN),
                                           image_std=list(CLIP_STD), do_convert_rgb=True)
    img = _img(*size)
    ref = proc(images=img, return_tensors="pt")["pixel_values"]
    ours = preprocess(img, PreprocessConfig(input_size=32, crop_pct=1.0, mean=CLIP_MEAN, std=CLIP_STD))
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert (ours - ref).abs().max() < 1e-5


def test_resize_crop_geometry_and_normalisation():
    # a 100 x 50 image with crop_pct 0.5 -> short side 64, crop the centre 32 x 32; value 255 maps to (1-m)/s
    img = Image.new("RGB", (100, 50), (255, 0, 128))
    cfg = PreprocessConfig(input_size=32, crop_pct=0.5, interpolation="nearest")
    x = preprocess([img, np.asarray(img)], cfg)
    assert x.shape == (2, 3, 32, 32)
    expect = (torch.tensor([255, 0, 128]) / 255.0 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(x[0, :, 5, 7], expect)
    torch.testing.assert_close(x[0], x[1])


def _save(tmp_path, name, img, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


def test_load_image_modes(tmp_path):
    rgb = _img(20, 10)
    paths = {
        "rgba": _save(tmp_path, "a.png", rgb.convert("RGBA")),
        "grey": _save(tmp_path, "g.png", rgb.convert("L")),
        "palette": _save(tmp_path, "p.png", rgb.convert("P")),
        "cmyk": _save(tmp_path, "c.jpg", rgb.convert("CMYK")),
        "i16": _save(tmp_path, "i16.png", Image.fromarray((np.arange(200).reshape(10, 20) * 300).astype(np.uint16))),
    }
    for kind, p in paths.items():
        im = load_image(p)
        assert im.mode == "RGB" and im.size == (20, 10), kind
    # 16-bit values are rescaled to 8 bits, not clipped
    a = np.asarray(load_image(paths["i16"]))[..., 0].astype(float)
    np.testing.assert_allclose(a, np.floor(np.arange(200).reshape(10, 20) * 300 / 65535 * 255), atol=1)


def test_load_image_applies_exif_rotation(tmp_path):
    img = _img(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6      # rotate 90 degrees clockwise when displayed
    p = _save(tmp_path, "r.jpg", img, exif=exif)
    assert load_image(p).size == (10, 30)


def test_load_image_errors(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image(tmp_path / "missing.jpg")
