"""`vitscope probe` and `vitscope probe-stats` end to end on stores extracted with the demo model from the
synthetic benchmark."""
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app

FAST = ["--min-steps", "12", "--epochs", "1", "--lrs", "0.01", "--wds", "1e-4,0.1", "--attn-drops", "0", "-q"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    runner = CliRunner()
    for split, n in (("train", 48), ("test", 32)):
        r = runner.invoke(app, ["extract", "-m", "demo-vit", "-d", f"synthetic:n={n},split={split}", "-o",
                                str(root / split), "-l", "all", "-s", "ln2,ln_final", "-t", "cls,mean,all", "-q"])
        assert r.exit_code == 0, r.output
    return root


def test_probe_and_probe_stats_end_to_end(stores):
    runner = CliRunner()
    outs = []
    for ds, seed in (("a", "0"), ("b", "1")):
        out = stores / f"out_{ds}"
        args = ["probe", "--store", str(stores / "train"), "--test-store", str(stores / "test"), "-l", "last", "-l",
                "all", "--dataset", ds, "--seed", seed, "-o", str(out)] + FAST + (["--per-layer"] if ds == "a" else [])
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        outs.append(out)
    res = pd.read_csv(outs[0] / "results.csv")
    assert list(res.columns) == ["model", "dataset", "experiment", "probe", "layer_set", "split", "metric", "value"]
    assert {"last_cls", "last", "all", "layer_0_cls", "layer_final_ap"} <= set(res["experiment"])
    assert (outs[0] / "accuracy_per_layer.png").exists() and (outs[0] / "attention_all.png").exists()
    mean = np.load(outs[0] / "attention_all.mean.npy")
    assert mean.shape == (12, 12) and np.allclose(mean.sum(-1), 1, atol=1e-4)     # 6 blocks -> 12 inputs = 12 heads
    meta = json.loads((outs[0] / "heads" / "linear_last_cls.json").read_text())
    assert meta["kind"] == "linear" and meta["inputs"] == [{"site": "ln_final", "layer": None, "reduction": "cls"}]
    from vitscope.analysis.probes import load_linear_head
    w, b, _ = load_linear_head(outs[0] / "heads" / "linear_last_cls")
    assert w.shape == (8, 64) and b.shape == (8,)
    logits = np.load(outs[0] / "logits" / "attentive_all.npy")
    assert logits.shape == (32, 8)
    r = runner.invoke(app, ["probe-stats", *[str(o / "results.csv") for o in outs], "-o", str(stores / "stats")])
    assert r.exit_code == 0, r.output
    tests = pd.read_csv(stores / "stats" / "wilcoxon_over_datasets.csv")
    assert set(tests["a"]) == {"attentive:all", "linear:all"} and (tests["p_adjusted"] >= tests["p"] - 1e-12).all()
    assert (stores / "stats" / "gains.png").exists()


def test_probe_bad_input_is_one_line(stores):
    runner = CliRunner()
    r = runner.invoke(app, ["probe", "--store", str(stores / "train"), "-l", "evrything", "-o",
                            str(stores / "bad")] + FAST)
    assert r.exit_code == 1 and isinstance(r.exception, ValueError)
    msg = str(r.exception)
    assert "unknown layer set" in msg and "\n" not in msg
