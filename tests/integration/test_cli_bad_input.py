"""Bad and empty input on the command line: one line on stderr, a non-zero exit, no traceback, before any work;
and a small seeded fuzz over commands and option values (exit 0 with output, or one clear line)."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "VITSCOPE_DEBUG": ""}
SAMPLES = Path(__file__).resolve().parents[2] / "src" / "vitscope" / "assets" / "samples"


CWD = None                                              # relative --out paths land here, not in the checkout


@pytest.fixture(scope="module", autouse=True)
def _cwd(tmp_path_factory):
    global CWD
    CWD = tmp_path_factory.mktemp("cwd")


def run(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "vitscope", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=CWD)


def one_line_error(r, *needles):
    assert r.returncode not in (0, None), r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.lstrip().startswith(("features:", "0%"))
             and "it/s]" not in ln and "batch/s]" not in ln and "img/s]" not in ln]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    (d / "a.jpg").write_text("not an image")
    (d / "b.png").write_bytes(b"")
    (d / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    return d


def test_head_past_the_last():
    one_line_error(run("attention", SAMPLES / "cat.jpg", "-m", "demo-vit", "--heads", "0,9", "-o", "/dev/null/x"),
                   "--heads", "8 heads")


@pytest.mark.parametrize("args,needle", [
    (("attention", SAMPLES / "cat.jpg", "-m", "demo-vit", "--threshold", "1.5"), "--threshold"),
    (("attention", SAMPLES / "cat.jpg", "-m", "demo-vit", "--heads", "a"), "--heads"),
    (("attention", SAMPLES / "cat.jpg", "-m", "demo-vit", "--limit", "0"), "--limit"),
    (("attention-distance", "-d", str(SAMPLES), "-m", "demo-vit", "--limit", "-3"), "--limit"),
    (("cluster", "-m", "demo-vit", "-d", "synthetic:n=16", "--k", "0"), "--k"),
    (("extract", "-m", "demo-vit", "-d", "synthetic:n=4", "-o", "x", "--weights", "w.pth", "--random"), "--random"),
    (("report", "-m", "demo-vit", "-d", "synthetic:n=4", "--n-images", "0"), "--n-images"),
    (("extract", "-m", "demo-vit-reg4", "-d", "synthetic:n=4", "-o", "x", "-t", "cls"), "--tokens mean"),
])
def test_option_ranges_named(args, needle, tmp_path):
    one_line_error(run(*args), needle)


@pytest.mark.parametrize("cmd", [
    ("attention", "-m", "demo-vit"), ("rollout", "-m", "demo-vit"), ("attention-distance", "-m", "demo-vit"),
    ("attention-stats", "-m", "demo-vit"), ("tokens-pdf", "-m", "demo-vit-reg4", "--block", "-1"),
    ("report", "-m", "demo-vit"), ("cka", "-m", "demo-vit"),
])
def test_no_usable_image_is_an_error(cmd, broken, tmp_path):
    r = run(*cmd, "-d", str(broken), "-o", tmp_path / "out")
    one_line_error(r, "no usable image" if cmd[0] != "report" else "could be decoded")


def test_version_and_help_have_no_raw_types():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("vitscope ")
    h = run("attention", "--help")
    assert h.returncode == 0 and "<bool>" not in h.stdout and "--quiet" in h.stdout


def test_late_cls_cluster_figure_uses_model_blocks(tmp_path):
    import json

    import numpy as np
    import pandas as pd

    r = run("cluster", "-m", "demo-vit-reg4", "-d", "synthetic:n=32", "--k", "4", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "CLS enters at block 6" in r.stderr
    df = pd.read_csv(tmp_path / "cluster_cls.csv")
    assert df["block"].tolist() == [6, 7]
    assert np.load(tmp_path / "cluster_cls.demo-vit-reg4.blocks.npy").tolist() == [6, 7]
    assert json.loads((tmp_path / "cluster_cls.json").read_text())["models"] == ["demo-vit-reg4"]


def test_cluster_curves_figure_x_is_the_block_index():
    import numpy as np

    from vitscope.viz.similarity import plot_cluster_curves

    fig = plot_cluster_curves({"m": {"nmi": [0.1, 0.2], "ari": [0.0, 0.1], "purity": [0.3, 0.4]}}, blocks=[6, 7])
    for ax in fig.axes:
        np.testing.assert_array_equal(ax.lines[0].get_xdata(), [6, 7])


FUZZ_COMMANDS = [
    ("attention", [SAMPLES / "cat.jpg"]), ("rollout", [SAMPLES / "cat.jpg"]), ("attention-distance", ["-d", SAMPLES]),
    ("attention-stats", ["-d", SAMPLES]), ("tokens-pdf", [SAMPLES / "cat.jpg"]), ("pos-embed", []),
    ("cluster", ["-d", "synthetic:n=16"]), ("cka", ["-d", "synthetic:n=8"]), ("rsa", ["-d", "synthetic:n=8"]),
]
FUZZ_VALUES = ["0", "-1", "1", "2", "abc", "1.5", "", "999"]
FUZZ_OPTIONS = {"attention": ["--block", "--limit", "--heads", "--threshold", "--alpha", "--batch-size"],
                "rollout": ["--discard-ratio", "--limit", "--batch-size"],
                "attention-distance": ["--limit", "--batch-size"], "attention-stats": ["--limit", "--batch-size"],
                "tokens-pdf": ["--block", "--limit"], "pos-embed": [], "cluster": ["--k", "--limit", "--batch-size"],
                "cka": ["--limit", "--batch-size"], "rsa": ["--limit", "--batch-size"]}


@pytest.mark.slow
def test_fuzz_commands_end_cleanly(tmp_path, broken):
    rng = random.Random(0)
    for trial in range(10):
        cmd, base = FUZZ_COMMANDS[trial % len(FUZZ_COMMANDS)]
        args = [cmd, *base, "-m", "demo-vit", "-o", tmp_path / f"o{trial}"]
        opts = FUZZ_OPTIONS[cmd]
        if opts:
            args += [rng.choice(opts), rng.choice(FUZZ_VALUES)]
        if trial % 5 == 4 and "-d" in args:
            args[args.index("-d") + 1] = broken
        r = run(*args)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        if r.returncode != 0:
            # our one line (possibly after a progress bar's carriage return) or click's usage error box
            assert "error:" in r.stderr or "Usage:" in r.stderr, (args, r.stderr)
            assert sum("error:" in ln for ln in r.stderr.splitlines()) <= 1, (args, r.stderr)
        else:
            assert any((tmp_path / f"o{trial}").rglob("*")), (args, "exit 0 without output")


def test_bundled_model_without_data_uses_builtin_demo(tmp_path):
    r = run("cluster", "-m", "demo-vit", "--k", "8", "--limit", "64", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "using builtin:demo" in r.stderr
    best = float(r.stdout.split("best NMI ")[1].split()[0])
    assert best > 0.5                      # the trained model separates its own classes
