"""`vitscope report` on a user's model and images: sections that need labels or masks say why they are skipped."""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vitscope.cli.main import app
from vitscope.models import HookedViT, PreprocessConfig, ViTConfig
from vitscope.models.loading import save_model


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=8,
                    meta={"classes": ["circle", "square", "triangle", "cross", "ring", "star", "crescent", "diamond"]})
    folder = tmp_path_factory.mktemp("m") / "tiny"
    save_model(HookedViT(cfg, PreprocessConfig(input_size=32, crop_pct=1.0)), folder)
    return folder


def _statuses(page):
    text = page.read_text()
    return dict(re.findall(r"<section id='[^']*-([a-z_]+)' class='vs-section status-([a-z]+)'>", text)), text


@pytest.mark.slow
def test_report_on_unlabelled_photos(model_folder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    (photos / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", "--model", str(model_folder), "--data", str(photos), "--out", str(out),
                                   "--n-images", "6", "--n-eval", "12", "--quiet"])
    assert res.exit_code == 0, res.output
    status, text = _statuses(out / "report.html")
    assert status["attention_maps"] == "ok" and status["cka"] == "ok" and status["rollout"] == "ok"
    assert status["accuracy"] == "skipped" and status["clustering"] == "skipped"
    assert status["saliency_iou"] == "skipped" and status["token_pages"] == "skipped"
    assert "skipped: the images have no class labels" in text
    assert "skipped: the images have no object masks" in text
    assert "failed" not in status.values()


@pytest.mark.slow
def test_report_on_synthetic_images_runs_every_section(model_folder, tmp_path):
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", "--model", str(model_folder), "--data",
                                   "synthetic:size=32,n=32,split=test", "--out", str(out), "--n-images", "8",
                                   "--n-eval", "32", "--quiet",
                                   "--analyses", "model_card,accuracy,saliency_iou,clustering"])
    assert res.exit_code == 0, res.output
    status, text = _statuses(out / "report.html")
    assert status == {"model_card": "ok", "accuracy": "ok", "saliency_iou": "ok", "clustering": "ok"}
    assert "Top-1 accuracy" in text and "with random weights" in text


def test_report_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(app, ["report", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0
