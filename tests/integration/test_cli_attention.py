"""Every attention command end to end on tiny random models and tiny images written here."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vitscope import HookedViT, ViTConfig
from vitscope.cli.main import app
from vitscope.models.loading import save_model

runner = CliRunner()


def tiny(tmp_path, name, **kw):
    torch.manual_seed(0)
    cfg = ViTConfig(**{**dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10), **kw})
    folder = tmp_path / name
    save_model(HookedViT(cfg), folder)
    return str(folder)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_attention")
    rng = np.random.default_rng(0)
    imgs = []
    for k in range(3):
        p = tmp / f"img{k}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
        imgs.append(str(p))
    (tmp / "broken.jpg").write_bytes(b"not an image")
    return {
        "tmp": tmp, "images": imgs,
        "plain": tiny(tmp, "plain"),
        "late": tiny(tmp, "late", depth=3, num_registers=2, register_location="end", register_block=1, cls_block=2),
        "deep": tiny(tmp, "deep", depth=3, num_registers=1),
    }


def run(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
    if result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def names(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_attention(env):
    out = env["tmp"] / "attn"
    run("attention", *env["images"][:2], env["tmp"] / "broken.jpg", "--model", env["late"], "--out", out,
        "--query", "reg1", "--all-blocks", "--threshold", "0.6", "--formats", "png,svg", "--quiet")
    files = names(out)
    assert "0000_img0_block2_reg1.png" in files and "0000_img0_block2_reg1.svg" in files
    assert "0000_img0_block2_reg1.maps.npy" in files and "0000_img0_block2_reg1.mask.npy" in files
    assert "0001_img1_blocks_reg1.png" in files and "overlays_block2_reg1.png" in files
    assert "skipped.csv" in files                                   # the broken file was left out, not fatal
    maps = np.load(out / "0000_img0_block2_reg1.maps.npy")
    assert maps.shape == (4, 4, 4)
    grid = np.load(out / "0001_img1_blocks_reg1.maps.npy")
    assert grid.shape == (2, 4, 4, 4)                               # registers exist at blocks 1 and 2
    meta = json.loads((out / "0000_img0_block2_reg1.json").read_text())
    assert meta["block"] == 2 and meta["query"] == "reg1"


def test_attention_on_dataset_spec(env):
    out = env["tmp"] / "attn_synth"
    run("attention", "--data", "synthetic:n=3,size=32", "--model", env["plain"], "--random", "--out", out,
        "--query", "1,2", "--heads", "0,3", "--no-overlay", "--quiet")
    assert len([f for f in names(out) if f.startswith("000") and f.endswith("_block1_r1c2.png")]) == 3
    assert np.load(next(out.glob("0000_*_block1_r1c2.maps.npy"))).shape == (2, 4, 4)
    assert "overlays_block1_r1c2.png" in names(out)


def test_token_before_it_enters_is_one_clear_error(env):
    result = runner.invoke(app, ["attention", env["images"][0], "--model", env["late"], "--block", "1",
                                 "--out", str(env["tmp"] / "x")])
    assert isinstance(result.exception, ValueError)
    assert "enters the sequence before block 2" in str(result.exception)
    result = runner.invoke(app, ["tokens-pdf", env["images"][0], "--model", env["late"], "--block", "0",
                                 "--out", str(env["tmp"] / "y")])
    assert isinstance(result.exception, ValueError) and "before block" in str(result.exception)
    assert not (env["tmp"] / "y").exists()


@pytest.mark.parametrize("method,name", [("rollout", "rollout"), ("grad", "grad-rollout"),
                                         ("chefer", "chefer2021-generic"), ("chefer2021-lrp", "chefer2021-lrp")])
def test_rollout(env, method, name):
    out = env["tmp"] / f"rollout_{method}"
    run("rollout", *env["images"], "--model", env["late"], "--out", out, "--method", method,
        "--discard-ratio", "0.5", "--head-fusion", "max", "--quiet")
    maps = np.load(out / f"{name}.maps.npy")
    assert maps.shape == (3, 4, 4) and np.isfinite(maps).all()
    meta = json.loads((out / f"{name}.json").read_text())
    assert meta["method"] == name and (len(meta["targets"]) == 3) == (method != "rollout")


def test_rollout_options_reach_the_library(env):
    """--normalize minmax and --discard-rule vit-explain give what the Python API gives for the same names."""
    from vitscope import load_model
    from vitscope.analysis.attention.rollout import rollout_from_model

    out = env["tmp"] / "rollout_opts"
    run("rollout", env["images"][0], "--model", env["late"], "--out", out, "--discard-ratio", "0.5",
        "--discard-rule", "vit-explain", "--normalize", "minmax", "--quiet")
    model = load_model(env["late"])
    x = model.preprocess([env["images"][0]])
    want = rollout_from_model(model, x, discard_ratio=0.5, normalize="minmax", discard_rule="vit-explain").maps
    np.testing.assert_allclose(np.load(out / "rollout.maps.npy"), want.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="--discard-rule"):
        run("rollout", env["images"][0], "--model", env["late"], "--out", out, "--discard-rule", "x", "--quiet")


@pytest.mark.slow
def test_attention_distance_two_models(env):
    out = env["tmp"] / "dist"
    output = run("attention-distance", "--data", "synthetic:n=5,size=32", "--model", env["plain"], "--model",
                 env["deep"], "--out", out, "--batch-size", "2", "--relative-depth", "--formats", "png,pdf",
                 "--quiet")
    files = names(out)
    for v in ("A", "B"):
        assert f"plain_distance_{v}.png" in files and f"deep_distance_{v}.pdf" in files
        assert f"models_distance_{v}.png" in files
        assert np.load(out / f"deep_distance_{v}.mean.npy").shape == (3, 4)
    import csv

    rows = list(csv.DictReader(open(out / "plain_distance.csv")))
    assert len(rows) == 2 * 2 * 4 and {r["n_images"] for r in rows} == {"5"}
    assert "2 model(s)" in output


@pytest.mark.slow
def test_attention_stats(env):
    out = env["tmp"] / "stats"
    run("attention-stats", *env["images"], "--model", env["late"], "--out", out, "--quiet")
    files = names(out)
    for f in ("std_over_heads.png", "position_std.png", "spatial_to_cls_summary.png", "offsets.png",
              "map_cls.png", "aligned.png", "attention_stats.csv"):
        assert f in files
    assert np.load(out / "aligned.maps.npy").shape == (3, 4, 7, 7)


@pytest.mark.slow
def test_saliency_on_synthetic_and_coco(env):
    out = env["tmp"] / "sal"
    run("saliency", "--data", "synthetic:n=4,size=32", "--model", env["plain"], "--out", out, "--quiet",
        "--mask-rule", "majority")
    files = names(out)
    assert {"iou_cls.png", "iou_mean.png", "iou_centre.png", "saliency_iou.csv"} <= set(files)
    table = np.load(out / "iou_cls.mean.npy")
    assert table.shape == (2, 5)
    # the figure's numbers and the tidy table are written by separate code: they must agree cell by cell
    import pandas as pd

    rows = pd.read_csv(out / "saliency_iou.csv")
    rows = rows[rows["query"] == "cls"]
    for _, r in rows.iterrows():
        col = 4 if r["merged"] else int(r["head"])
        np.testing.assert_allclose(table[int(r["block"]), col], r["iou_mean"], rtol=1e-9, equal_nan=True)
    assert len(rows) == table.size
    # a COCO-format set written by the data package's synthetic writer, read back by the real loader
    from vitscope.data.synthetic import SynthConfig, write

    coco_root = env["tmp"] / "synth"
    write(coco_root, SynthConfig(size=32, n_classes=3, seed=1), formats=["coco"], scenes=3, progress=False)
    ann, img_root = coco_root / "coco" / "annotations" / "instances_synth.json", coco_root / "coco" / "images"
    out2 = env["tmp"] / "sal_coco"
    run("saliency", "--coco", ann, "--image-root", img_root, "--model", env["deep"], "--out", out2, "--quiet",
        "--queries", "cls,mean")
    assert np.load(out2 / "iou_mean.per_image_heads.npy").shape == (3, 3, 4)


def test_video(env):
    from vitscope.analysis.attention.video import write_video

    rng = np.random.default_rng(1)
    src = write_video([rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(5)],
                      env["tmp"] / "clip.mp4", fps=5)
    out = env["tmp"] / "video" / "heat.mp4"
    output = run("video", src, "--model", env["plain"], "--random", "--out", out, "--quiet")
    assert out.exists() and out.stat().st_size > 0
    assert len(list((env["tmp"] / "video" / "heat_frames").glob("*.png"))) == 5
    assert np.load(env["tmp"] / "video" / "heat_summary.maps.npy").shape == (5, 4, 4)
    assert re.search(r"5 frames at 5 fps", output)
    gif = env["tmp"] / "video" / "heat.gif"
    run("video", env["tmp"] / "video" / "heat_frames", "--model", env["plain"], "--out", gif, "--layout", "side",
        "--no-frames", "--quiet")
    assert gif.exists()


@pytest.mark.slow
def test_tokens_pdf(env):
    out = env["tmp"] / "tokens"
    run("tokens-pdf", *env["images"][:2], "--model", env["late"], "--block", "2", "--out", out, "--quiet")
    pdfs = sorted(out.glob("*.pdf"))
    assert len(pdfs) == 2
    assert len(re.findall(rb"/Type\s*/Page\b", pdfs[0].read_bytes())) == 3        # CLS, reg0, reg1
    assert np.load(out / "0000_img0_block2_reg1.maps.npy").shape == (4, 4, 4)


def test_pos_embed(env):
    out = env["tmp"] / "pos"
    run("pos-embed", "--model", env["plain"], "--out", out, "--filters", "6", "--grid", "3,5")
    assert np.load(out / "pos_embed_similarity.similarity.npy").shape == (3, 5, 3, 5)
    assert np.load(out / "patch_filters.filters.npy").shape == (6, 8, 8, 3)
