"""Bundled demo models load by name, with no network; a local folder of the same name wins."""
import os

import pytest
import torch
from typer.testing import CliRunner

from vitscope import load_model, save_model
from vitscope.cli.main import app
from vitscope.models.bundled import BUNDLED_DIR, bundled_models, bundled_path


def test_bundled_names_load_the_committed_weights():
    assert bundled_models() == ["demo-vit", "demo-vit-reg4"]
    m = load_model("demo-vit-reg4")
    assert m.meta["name"] == "demo-vit-reg4" and m.cfg.num_registers == 4 and not m.training
    assert m.meta["weights_path"] == str(BUNDLED_DIR / "demo-vit-reg4" / "model.safetensors")
    from safetensors.torch import load_file

    stored = load_file(BUNDLED_DIR / "demo-vit-reg4" / "model.safetensors")
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in stored.items() if k in sd)


def test_unknown_or_path_like_names_are_not_bundled():
    assert bundled_path("demo-vit-xl") is None and bundled_path("../models/demo-vit") is None
    with pytest.raises(KeyError):
        load_model("demo-vit-xl")


def test_a_local_folder_of_the_same_name_wins(tmp_path, monkeypatch):
    other = load_model("demo-vit", pretrained=False, seed=3)
    save_model(other, tmp_path / "demo-vit")
    monkeypatch.chdir(tmp_path)
    got = load_model("demo-vit")
    assert torch.equal(got.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)
    assert os.path.realpath(got.meta["source"]).startswith(os.path.realpath(tmp_path))


def test_cli_lists_and_inspects_bundled_models():
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and "demo-vit, demo-vit-reg4" in r.output
    r = CliRunner().invoke(app, ["inspect", "demo-vit-reg4"])
    assert r.exit_code == 0, r.output
    assert "reg" in r.output
