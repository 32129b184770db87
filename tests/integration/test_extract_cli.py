"""`vitscope extract` end to end: a saved model, a folder with a corrupt file, read back vs run_with_cache."""
import sys

import numpy as np
import pytest
from _extract_fixtures import make_inputs
from typer.testing import CliRunner

import vitscope
import vitscope.features as vf
from vitscope.cli.main import app, main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("cli"))


def test_cli_extract_reads_back_what_the_model_computes(inputs, tmp_path):
    model_dir, imgs, files = inputs
    out = tmp_path / "store"
    res = CliRunner().invoke(app, ["extract", "--model", str(model_dir), "--data", str(imgs), "--out", str(out),
                                   "--layers", "0,-1", "--sites", "resid_post,ln2", "--tokens", "cls,mean,registers",
                                   "--batch-size", "4", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "extracted 14 images (1 skipped)" in res.output
    store = vf.open(out)
    assert store.layers == [0, 2] and [r["index"] for r in store.skipped] == [7]
    m = vitscope.load_model(str(model_dir))
    x = m.preprocess([str(f) for f in files])                        # the 14 good files, in dataset order
    _, cache = m.run_with_cache(x, names_filter=["blocks.0.hook_resid_post", "blocks.2.ln2.hook_normalized"])
    valid = store.valid
    for site, hook, layer in [("resid_post", "blocks.0.hook_resid_post", 0), ("ln2", "blocks.2.ln2.hook_normalized", 2)]:
        t = cache[hook].numpy()                                      # [CLS] [REG] patches
        np.testing.assert_allclose(store[site, layer, "cls"][valid], t[:, 0], atol=1e-5)
        np.testing.assert_allclose(store[site, layer, "registers"][valid], t[:, 1:2], atol=1e-5)
        np.testing.assert_allclose(store[site, layer, "mean"][valid], t[:, 2:].mean(1), atol=1e-5)
    assert store.labels.tolist() == [0] * 7 + [-1] + [1] * 7
    assert store.preprocessing["input_size"] == [32, 32] and store.model["weights_hash_source"] == "meta"
    # the same command again: nothing left to do; --quiet prints nothing
    res = CliRunner().invoke(app, ["extract", "-m", str(model_dir), "-d", str(imgs), "-o", str(out), "-l", "0,-1",
                                   "-s", "resid_post,ln2", "-t", "cls,mean,registers", "-b", "4", "-w", "0", "-q"])
    assert res.exit_code == 0 and res.output.strip() == ""


def test_cli_refuses_a_store_of_other_weights(inputs, tmp_path, monkeypatch, capsys):
    model_dir, imgs, _ = inputs
    out = tmp_path / "store"
    args = ["vitscope", "extract", "-m", str(model_dir), "-d", str(imgs), "-o", str(out), "-l", "1", "-t", "cls",
            "-b", "8", "-w", "0", "-q"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None)
    monkeypatch.setattr(sys, "argv", args + ["--random"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "different weights" in err and "--no-resume" in err
    monkeypatch.setattr(sys, "argv", args[:-1] + ["-t", "attention"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1 and "unknown token reduction" in capsys.readouterr().err
