"""`vitscope synth --like SPEC` writes the benchmark with the settings of a data spec (the demo models' data)."""
import json

import pytest
from typer.testing import CliRunner

from vitscope.bundled import DEMO_DATA
from vitscope.cli.main import app
from vitscope.data.spec import parse_spec, synthetic_config


def _written(tmp_path, *args):
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--formats", "imagefolder", "--train-per-class",
                                 "1", "--val-per-class", "1", "-q", *args])
    assert r.exit_code == 0, r.output
    return json.loads((tmp_path / "out" / "synth.json").read_text())["config"]


def test_like_demo_writes_the_demo_settings(tmp_path):
    cfg = _written(tmp_path, "--like", "builtin:demo")
    spec = parse_spec(DEMO_DATA)[2]                      # every setting the demo spec names, as written there
    for k, v in spec.items():
        key = {"classes": "n_classes"}.get(k, k)
        assert str(cfg[key]) == v or float(cfg[key]) == float(v), (k, cfg[key], v)


def test_flags_override_like(tmp_path):
    cfg = _written(tmp_path, "--like", "builtin:demo", "--size", "32", "--seed", "3")
    assert cfg["size"] == 32 and cfg["seed"] == 3 and cfg["jitter"] == 0.0 and cfg["difficulty"] == "easy"


def test_without_like_the_defaults_stay(tmp_path):
    cfg = _written(tmp_path)
    assert (cfg["size"], cfg["n_classes"], cfg["seed"], cfg["difficulty"]) == (64, 8, 0, "medium")


@pytest.mark.parametrize("spec", ["bogus", "builtin:samples", "hf:foo"])
def test_like_needs_a_synthetic_spec(tmp_path, spec):
    with pytest.raises(ValueError, match="not a synthetic data spec"):
        synthetic_config(spec)
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "o"), "--like", spec])
    assert r.exit_code != 0 and not (tmp_path / "o" / "synth.json").exists()
