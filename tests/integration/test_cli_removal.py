"""`vitscope removal` and `vitscope probe-tokens` end to end on the synthetic benchmark, and their one-line errors."""
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vitscope import HookedViT, ViTConfig
from vitscope.cli.main import app, main
from vitscope.models.loading import save_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)                       # tiny models: threads only add overhead on a busy machine
    yield
    torch.set_num_threads(before)

runner = CliRunner()
SYN = "synthetic:size=32,classes=4,difficulty=easy"


def _tiny(tmp, name, **kw):
    torch.manual_seed(0)
    cfg = ViTConfig(**{**dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=4), **kw})
    folder = tmp / name
    save_model(HookedViT(cfg), folder)
    return str(folder)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_removal")
    flat = tmp / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(flat / f"img{k}.png")
    return {"tmp": tmp, "flat": str(flat),
            "late": _tiny(tmp, "late", depth=3, num_registers=2, register_location="end", register_block=1,
                          cls_block=2),
            "plain": _tiny(tmp, "plain"),
            "headless": _tiny(tmp, "headless", head="none")}


def run(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
    if result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_removal_end_to_end(env):
    out = env["tmp"] / "removal"
    text = run("removal", "-m", env["late"], "-m", env["plain"], "-d", f"{SYN},n=12,split=test",
               "--probe-data", f"{SYN},n=16,split=val", "--step", "5", "--random-orders", "2", "--seed", "3",
               "--batch-size", "5", "-o", out, "--formats", "png,svg", "-q")
    assert "removal curves" in text and "chefer" in text and "random" in text and text.count("\n") == 1
    auc = pd.read_parquet(out / "removal_auc.parquet")
    assert set(auc["model"]) == {"late", "plain"}
    assert set(auc["order"]) == {"grads", "chefer", "probe", "random"}
    assert set(auc["metric"]) == {"auc_seed", "auc_trapezoid"}
    assert auc["value"].between(0, 1).all()
    curves = pd.read_csv(out / "removal_curves.csv")
    late = curves[(curves["model"] == "late") & (curves["seed"].isna())]
    assert sorted(late["removed"].unique()) == [0, 5, 10, 15]                      # 16 patches, every 5th, 15
    assert sorted(curves["seed"].dropna().unique()) == [3, 4]
    for name in ("removal_late.png", "removal_late.svg", "removal_late.json", "removal_plain.png",
                 "importance_late_grads.npy", "importance_plain_probe.npy"):
        assert (out / name).exists(), name
    imp = np.load(out / "importance_late_chefer.npy")
    assert imp.shape == (12, 16) and np.isfinite(imp).all()


def test_probe_tokens_end_to_end(env):
    out = env["tmp"] / "probes"
    text = run("probe-tokens", "-m", env["late"], "--train-data", f"{SYN},n=24,split=val",
               "-d", f"{SYN},n=8,split=test", "--sites", "hs,attn", "-o", out, "-q")
    assert "per-token ridge probes" in text and text.count("\n") == 1
    df = pd.read_parquet(out / "token_probes.parquet")
    assert {"model", "site", "block", "position", "token", "task", "metric", "value"} <= set(df.columns)
    assert set(df["site"]) == {"resid_post", "attn_out"}
    per_block = df[(df["site"] == "resid_post") & (df["metric"] == "accuracy")].groupby("block").size()
    assert per_block.to_dict() == {0: 16, 1: 18, 2: 19}                           # registers at 1, CLS at 2
    assert (out / "probe_tokens_late_resid_post.png").exists()
    acc = np.load(out / "probe_tokens_late_attn_out.accuracy.npy")
    assert acc.shape == (3, 19) and np.isnan(acc[0, 0]) and np.isfinite(acc[2]).all()   # CLS absent at block 0
    assert np.load(out / "rank_sum_late.npy").shape == (8, 16)


def _fails(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["vitscope", *[str(a) for a in args]])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: ")
    return err[0]


def test_bad_input_is_one_clear_line(env, monkeypatch, capsys):
    out = env["tmp"] / "bad"
    msg = _fails(monkeypatch, capsys, "removal", "-m", env["plain"], "-d", env["flat"], "-o", out, "-q")
    assert "needs class labels" in msg and "synthetic" in msg
    msg = _fails(monkeypatch, capsys, "removal", "-m", env["headless"], "-d", f"{SYN},n=4", "-o", out, "-q")
    assert "no classification head" in msg
    msg = _fails(monkeypatch, capsys, "removal", "-m", env["plain"], "-d", f"{SYN},n=4", "--orders", "probe",
                 "-o", out, "-q")
    assert "--probe-data" in msg
    msg = _fails(monkeypatch, capsys, "removal", "-m", env["plain"], "-o", out, "-q")
    assert "--data" in msg
    msg = _fails(monkeypatch, capsys, "removal", "-m", env["plain"], "-d",
                 "synthetic:size=32,classes=8,n=16", "-o", out, "-q")
    assert "head has 4 classes" in msg
    msg = _fails(monkeypatch, capsys, "probe-tokens", "-m", env["plain"], "--train-data", env["flat"],
                 "-d", f"{SYN},n=4", "-o", out, "-q")
    assert "needs class labels" in msg
    msg = _fails(monkeypatch, capsys, "probe-tokens", "-m", env["plain"], "-d", f"{SYN},n=4", "-o", out, "-q")
    assert "--train-data" in msg


def test_report_section_runs_on_labelled_synthetic_images(tmp_path):
    from vitscope.models import PreprocessConfig

    torch.manual_seed(0)
    classes = ["circle", "square", "triangle", "cross", "ring", "star", "crescent", "diamond"]
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=8,
                    num_registers=1, register_block=1, meta={"classes": classes})
    folder = tmp_path / "tiny"
    save_model(HookedViT(cfg, PreprocessConfig(input_size=32, crop_pct=1.0)), folder)
    out = tmp_path / "rep"
    run("report", "--model", folder, "--data", "synthetic:size=32,n=40,split=test", "--out", out,
        "--n-images", "4", "--n-eval", "40", "--quiet", "--analyses", "removal")
    text = (out / "report.html").read_text()
    assert "status-ok" in text and "Token removal curves" in text and "auc_trapezoid" in text
    assert list(out.rglob("removal_curves.png"))
