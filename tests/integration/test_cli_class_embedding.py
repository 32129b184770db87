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
    (["logit-lens", "-m", "demo-vit"], "no images"),
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
