"""`vitscope logit-lens`, `memories`, `perturb` end to end on the synthetic benchmark with the demo model."""
from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app
from vitscope.report.demo import held_out_spec

runner = CliRunner()
DATA = held_out_spec(24)


def run(*args):
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def test_logit_lens_command(tmp_path):
    out = run("logit-lens", "-m", "demo-vit", "-d", DATA, "-o", str(tmp_path), "-q", "--permutations", "20")
    assert "identifiable patch tokens at the last block" in out and "random weights" in out
    sub = tmp_path / "demo-vit"
    for stem in ("identifiability_evolution", "change_rates", "residual_match", "class_context"):
        assert (sub / f"{stem}.png").exists() and (sub / f"{stem}.csv").exists()
    df = pd.read_parquet(tmp_path / "logit_lens.parquet")
    assert {"model", "block", "task", "metric", "value"} <= set(df.columns)
    evo = df[(df.metric == "identifiability") & (df.site == "resid") & (df.token == "patches")]
    assert len(evo) == 6 and evo["p_value"].notna().all()
    assert set(df.metric) >= {"token_rate", "image_rate", "accuracy", "block_change", "attn_change",
                              "match_attn", "class_minus_context_score"}


def test_memories_and_perturb_commands(tmp_path):
    out = run("memories", "-m", "demo-vit", "-d", DATA, "-o", str(tmp_path / "m"), "-q", "--permutations", "20")
    assert "class-value agreement" in out
    df = pd.read_csv(tmp_path / "m" / "memories.csv")
    assert set(df.metric) >= {"class_value_agreement", "key_value_agreement", "compositionality"}
    out = run("perturb", "-m", "demo-vit", "-d", held_out_spec(12), "-o", str(tmp_path / "p"), "-q")
    assert "self_only" in out and "no_context" in out
    df = pd.read_csv(tmp_path / "p" / "perturbation.csv")
    assert set(df.perturbation) == {"none", "self_only", "no_cls", "no_context", "no_class"}
    assert (tmp_path / "p" / "demo-vit" / "perturbation.png").exists()


@pytest.mark.parametrize("args, msg", [
    (["logit-lens", "-m", "demo-vit", "--random"], "no images"),
    (["perturb", "-m", "demo-vit", "-d", "synthetic:n=16,size=64,classes=10"], "head predicts 8 classes"),
    (["memories", "-m", "demo-vit", "-d", "FLAT"], "has no class labels"),
])
def test_bad_input_is_one_line(args, msg, tmp_path, capsys):
    from vitscope.cli.main import main
    import sys

    import numpy as np
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(flat / f"{i}.png")
    args = [str(flat) if a == "FLAT" else a for a in args]
    old = sys.argv
    sys.argv = ["vitscope", *args, "-o", str(tmp_path / "out")]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = old
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert msg in err and err.count("error:") == 1


def test_logit_lens_on_imagenet_s_with_own_category_masks(tmp_path):
    """vilas2023's data layout: ImageNet-S folders labelled by the head's classes, first N images per class, masks of
    each image's own category (written by the synthetic benchmark in the ImageNet-S format)."""
    import numpy as np

    from vitscope.analysis.attention.saliency import mask_to_token_grid
    from vitscope.analysis.class_embedding import class_token_masks
    from vitscope.analysis.class_embedding.images import imagenet_s_dataset
    from vitscope.data.spec import parse_spec
    from vitscope.data.synthetic.config import config_from_options
    from vitscope.data.synthetic.write import write
    from vitscope.data.tasks.imagenet_s import decode_mask
    from vitscope.models.loading import load_model
    from vitscope.report.demo import DEMO_DATA

    cfg, _ = config_from_options(parse_spec(DEMO_DATA)[2])
    write(tmp_path / "synth", cfg, formats=["imagenet_s"], semantic_images=24)
    root = tmp_path / "synth" / "imagenet-s"
    model = load_model("demo-vit")
    ds = imagenet_s_dataset(root, model.cfg.meta["classes"], per_class=2)
    assert len(ds) == 16 and np.bincount(ds.labels).tolist() == [2] * 8
    got = class_token_masks(ds, range(len(ds)), model.cfg.grid, model.preprocess_cfg)
    for i in range(len(ds)):
        ids = decode_mask(ds.source.base.task[ds.source.indices[i]].mask_path)
        ref = mask_to_token_grid(ids == ds.labels[i] + 1, model.cfg.grid, model.preprocess_cfg, "majority")
        assert np.array_equal(got[i], ref.reshape(-1))
    out = run("logit-lens", "-m", "demo-vit", "--imagenet-s", str(root), "--per-class", "2", "-o",
              str(tmp_path / "ll"), "-q", "--permutations", "10", "--sites", "resid", "--no-random-baseline")
    assert "over 16 images" in out
    assert (tmp_path / "ll" / "demo-vit" / "class_context.csv").exists()
