"""`vitscope patch` / `ablate` / `composition` on the command line: outputs written, and bad input (the same file
twice, images of different sizes, a class not in the head, a site the model lacks, a position outside the grid,
...) is one line on stderr with a non-zero exit."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ENV = {**os.environ, "VITSCOPE_DEBUG": "", "OMP_NUM_THREADS": "1"}


def run(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "vitscope", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=cwd)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from vitscope.data.spec import parse_spec
    from vitscope.data.synthetic.config import config_from_options
    from vitscope.data.synthetic.edits import edited_pair
    from vitscope.models.bundled import DEMO_DATA

    d = tmp_path_factory.mktemp("pair")
    cfg, _ = config_from_options(parse_spec(DEMO_DATA)[2])
    p = edited_pair(cfg, "test", 3)                                   # a cross, and the same image with a ring
    Image.fromarray(p.clean.image).save(d / "clean.png")
    Image.fromarray(p.corrupted.image).save(d / "corrupted.png")
    Image.fromarray(p.clean.image[:56]).save(d / "short.png")
    return d


def one_line_error(r, *needles):
    assert r.returncode not in (0, None), r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.slow
def test_patch_two_files_writes_the_table_and_the_figure(images, tmp_path):
    r = run("patch", "-m", "demo-vit", images / "clean.png", images / "corrupted.png", "--site", "resid_pre",
            "--metric", "logit-diff:cross,ring", "-o", tmp_path / "o", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "largest effect" in r.stdout
    t = pd.read_csv(tmp_path / "o" / "patching.csv")
    assert set(t["quantity"]) == {"logit_diff_3_4"}
    cells = t[t["metric"] == "effect"]
    assert len(cells) == 6 * 65 and (tmp_path / "o" / "patching_resid_pre.png").exists()
    block0 = cells[(cells["block"] == 0) & (cells["token"] == "patch")]
    top = block0.loc[block0["value"].abs().idxmax()]
    mask = np.asarray(Image.open(images / "clean.png")) != np.asarray(Image.open(images / "corrupted.png"))
    rows, cols = np.nonzero(mask.any(-1))
    assert rows.min() // 8 <= top["row"] <= rows.max() // 8 and cols.min() // 8 <= top["col"] <= cols.max() // 8


@pytest.mark.slow
@pytest.mark.parametrize("args, needles", [
    (("{clean}", "{clean}"), ("same file", "--corrupt blur:0.5")),
    (("{clean}", "{short}"), ("64x64", "64x56", "same size")),
    (("{clean}", "{corrupted}", "--metric", "logit-diff:cat,ring"), ("class 'cat' is not in the head", "circle")),
    (("{clean}", "{corrupted}", "--site", "resid"), ("--site must be one of resid_pre", "did you mean 'resid_pre'")),
    (("{clean}", "--corrupt", "blur:0.5", "--region", "6:10,0:2"), ("region '6:10,0:2'", "rows 0..7")),
    (("{clean}", "{corrupted}", "--patches", "2,8"), ("patches '2,8'", "column 8 outside", "columns 0..7")),
    (("{clean}",), ("give two images",)),
    (("{clean}", "{corrupted}", "--receivers", "7.q"), ("block 7 does not exist",)),
    (("{clean}", "--corrupt", "fog:2"), ("--corrupt: unknown corruption 'fog:2'",)),
    (("{clean}", "missing.png"), ("image file not found: missing.png",)),
])
def test_bad_input_is_one_line(args, needles, images, tmp_path):
    paths = {k: images / f"{k}.png" for k in ("clean", "corrupted", "short")}
    args = [a.format(**paths) for a in args]
    one_line_error(run("patch", "-m", "demo-vit", *args, "-o", tmp_path / "o", "-q", cwd=tmp_path), *needles)


@pytest.mark.slow
def test_ablate_bad_method_is_one_line(tmp_path):
    one_line_error(run("ablate", "-m", "demo-vit", "-d", "builtin:demo?n=8", "--method", "medain", "-q",
                       cwd=tmp_path), "--method must be one of zero, mean, resample", "did you mean 'mean'")
