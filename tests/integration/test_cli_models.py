"""`vitscope models` and `vitscope inspect` through typer's CliRunner (no network)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import vitscope as vs
from vitscope.cli.main import app
from vitscope.models.loading import DownloadError
from vitscope.models.registry import list_models

runner = CliRunner()


def test_models_lists_the_registry():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["name", "family", "size", "input", "aliases", "weights"]
    for e in list_models():
        row = next(line for line in lines if line.startswith(e.name + " "))
        assert e.family in row.split() and e.size in row.split()
    dv2 = next(line for line in lines if line.startswith("vit_small_patch14_dinov2.lvd142m "))
    assert " 518 " in dv2 and "hub:timm/vit_small_patch14_dinov2.lvd142m" in dv2
    moco = next(line for line in lines if line.startswith("vit_base_patch16_224.mocov3_300ep "))
    assert "url:https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar" in moco


def test_models_family_filter_and_json():
    r = runner.invoke(app, ["models", "--family", "clip", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["size"] for x in rows] == ["B/32", "B/16", "L/14", "L/14-336"]
    assert all(x["family"] == "clip" and x["mean"][0] == pytest.approx(0.48145466) for x in rows)
    assert rows[3]["input_size"] == 336
    r = runner.invoke(app, ["models", "-f", "mae"])
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 2 + 3
    r = runner.invoke(app, ["models", "--family", "resnet"])
    assert r.exit_code != 0 and "families:" in str(r.exception)


def _tiny_folder(tmp_path, **kw):
    cfg = vs.ViTConfig(**{**dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10),
                          **kw})
    torch.manual_seed(0)
    m = vs.HookedViT(cfg, vs.PreprocessConfig(input_size=32))
    return vs.save_model(m, tmp_path / "tiny"), m


def test_inspect_a_local_folder_with_late_cls_and_registers(tmp_path):
    # cls-register's layout: 2 registers appended before block 1, CLS prepended before block 2
    folder, m = _tiny_folder(tmp_path, num_registers=2, register_location="end", register_block=1, cls_block=2)
    r = runner.invoke(app, ["inspect", str(folder), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["parameters"] == sum(p.numel() for p in m.parameters())
    assert d["meta"]["weights_sha256"] and d["config"]["cls_block"] == 2
    # layout written from the definition: 16 patches; +2 registers from block 1; +CLS from block 2
    blocks = [(row["blocks"], row["n_tokens"]) for row in d["layout"]]
    assert blocks == [([0, 0], 16), ([1, 1], 18), ([2, 3], 19)]
    last = d["layout"][-1]
    assert (last["cls"], last["registers"], last["patches"], last["grid"]) == (0, [17, 18], [1, 17], [4, 4])
    h = d["hooks"]
    assert h["blocks.0.attn.hook_pattern"] == [1, 4, 16, 16]
    assert h["blocks.1.attn.hook_pattern"] == [1, 4, 18, 18]
    assert h["blocks.2.attn.hook_q"] == [1, 19, 4, 8]
    assert h["blocks.2.mlp.hook_pre"] == [1, 19, 128]
    assert h["hook_embed"] == [1, 16, 32] and h["hook_logits"] == [1, 10] and h["hook_pooled"] == [1, 32]
    assert list(h)[0] == "hook_embed"                       # in the order the forward reaches them


def test_inspect_text_output(tmp_path):
    folder, _ = _tiny_folder(tmp_path, distill_token=True, head="distilled")
    r = runner.invoke(app, ["inspect", str(folder), "--input-size", "48"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "blocks 0-3" in out and "T=38" in out and "CLS@0, DIST@1, patches@2..37 (6x6)" in out
    assert "blocks.2.attn.hook_pattern" in out and "(1, 4, 38, 38)" in out
    assert "hook_pooled_dist" in out and "distill_token: True" in out


@pytest.mark.slow
def test_inspect_random_registry_model():
    r = runner.invoke(app, ["inspect", "dinov2-vits14-reg4", "--random", "--input-size", "224"])
    assert r.exit_code == 0, r.output
    # 1 CLS + 4 registers + 16x16 patches; DINOv2-S: 6 heads of 64
    assert "blocks 0-12" in r.output and "T=261" in r.output
    assert "CLS@0, registers@1..4 (4), patches@5..260 (16x16)" in r.output
    assert "(1, 6, 261, 261)" in r.output and "(1, 261, 6, 64)" in r.output and "(1, 261, 1536)" in r.output


def test_inspect_offline_is_one_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = runner.invoke(app, ["inspect", "vit-b16"])
    assert r.exit_code != 0 and isinstance(r.exception, DownloadError)
    assert "--random" in str(r.exception) and "--weights PATH" in str(r.exception)


@pytest.mark.slow
def test_cli_prints_one_line_and_exits_1(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "VITSCOPE_DEBUG": ""}
    p = subprocess.run([sys.executable, "-m", "vitscope", "inspect", "clip-b16"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 1
    first = p.stderr.strip().splitlines()[0]
    assert first.startswith("error: could not download the weights of timm/vit_base_patch16_clip_224.openai")
    assert "Traceback" not in p.stderr


def test_docs_registry_table_is_current():
    from pathlib import Path

    from vitscope.cli.models import models_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    assert doc.rstrip().endswith(models_markdown().rstrip()), \
        "docs/models.md is stale: regenerate its table with `vitscope models --markdown`"
    r = runner.invoke(app, ["models", "--markdown"])
    assert r.exit_code == 0 and r.output.strip() == models_markdown().strip()
