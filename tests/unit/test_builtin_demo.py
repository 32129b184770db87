"""`builtin:demo`: the synthetic benchmark the bundled demo models were trained on, by name; bundled models use it
when no data is given. The check is the model itself: it is accurate there and near chance on the default spec."""
import json
from pathlib import Path

import pytest
import torch

from vitscope.data import open_dataset
from vitscope.models.bundled import BUNDLED_DIR, DEMO_DATA, is_bundled
from vitscope.models.loading import load_model


def _accuracy(model, spec):
    from vitscope.models.preprocess import PreprocessConfig, Preprocessor

    pcfg = model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)
    ds = open_dataset(spec, transform=Preprocessor(pcfg))
    hits = n = 0
    with torch.inference_mode():
        for x, y, _ in ds.batches(batch_size=64):
            hits += int((model(x).argmax(-1) == y).sum())
            n += len(y)
    return hits / n


def test_demo_spec_is_the_training_spec_of_both_models():
    for name in ("demo-vit", "demo-vit-reg4"):
        trained_on = json.loads((BUNDLED_DIR / name / "config.json").read_text())["extra"]["train_config"]["data"]
        assert trained_on.rsplit(",n=", 1)[0] == DEMO_DATA


def test_builtin_demo_options_and_errors():
    ds = open_dataset("builtin:demo?n=24,split=val")
    assert len(ds) == 24
    assert len(open_dataset("builtin:demo")) == 512
    with pytest.raises(ValueError, match="accepted: n, per_class, split"):
        open_dataset("builtin:demo?size=32")


def test_demo_model_accurate_on_builtin_demo_and_near_chance_elsewhere():
    model = load_model("demo-vit").eval()
    assert is_bundled(model) and not is_bundled(load_model("demo-vit", pretrained=False))
    assert _accuracy(model, "builtin:demo?n=128") > 0.8
    assert _accuracy(model, "synthetic:n=128,split=test") < 0.35


def test_hf_dataset_offline_is_one_line_at_once(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ValueError, match="not in the local cache") as e:
        open_dataset("hf:vitscope-test/no-such-dataset")
    assert "\n" not in str(e.value) and time.time() - t0 < 30


def test_mistyped_synthetic_option_lists_every_key():
    with pytest.raises(ValueError) as e:
        open_dataset("synthetic:sise=32")
    for key in ("size", "classes", "difficulty", "n", "split", "noise"):
        assert key in str(e.value).split("accepted: ")[1]


def test_bomb_warning_becomes_a_named_skip(tmp_path, monkeypatch, recwarn):
    from PIL import Image

    from vitscope.data.decode import ImageDecodeError, load_image

    p = tmp_path / "big.png"
    Image.new("RGB", (120, 100)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)          # 12,000 px: Pillow warns (below 2x)
    with pytest.raises(ImageDecodeError, match="big.png is too large"):
        load_image(p)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_default_data_only_for_bundled_models(tmp_path, monkeypatch):
    from vitscope.cli.common import default_data

    monkeypatch.chdir(tmp_path)
    assert default_data(["demo-vit", "demo-vit-reg4"], None, quiet=True) == "builtin:demo"
    assert default_data(["demo-vit", "vit-b16"], None, quiet=True) is None
    assert default_data(["demo-vit"], "synthetic:n=8", quiet=True) == "synthetic:n=8"
    (tmp_path / "demo-vit").mkdir()                       # a local folder of that name wins over the bundled one
    assert default_data(["demo-vit"], None, quiet=True) is None
