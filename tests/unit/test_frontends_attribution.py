"""The attribution benchmark through the Python API, the command line and a study cell gives the same table;
`vitscope explain` writes one map per image; the report section runs; bad options are one line."""
from __future__ import annotations

import pandas as pd
import pytest

from tests.frontends import assert_same_values, run_cli, study_cell, values
from vitscope.analysis.attribution_maps import ExplainOptions, evaluate

DATA = "builtin:demo?n=8"
KW = dict(methods=("gradcam", "saliency", "rollout"), metrics=("deletion", "insertion", "pointing", "auroc"),
          removal_step=16, limit=3, batch_size=3)


@pytest.mark.slow
def test_attribution_python_cli_and_study_give_the_same_table(tmp_path):
    import vitscope as vs

    api = evaluate({"demo-vit": vs.load_model("demo-vit")}, DATA, ExplainOptions(**KW))
    run_cli("explain-bench", "-m", "demo-vit", "-d", DATA, "--methods", "gradcam,saliency,rollout", "--metrics",
            "deletion,insertion,pointing,auroc", "--removal-step", "16", "--limit", "3", "--batch-size", "3",
            "-o", tmp_path / "cli", "-q")
    cli = pd.read_parquet(tmp_path / "cli" / "attribution-maps.parquet")
    study = (f'study: t\nmodels: [demo-vit]\ndatasets:\n  - {{name: d, data: "{DATA}", limit: 3}}\n'
             "analyses:\n  - {name: attribution-maps, options: {methods: [gradcam, saliency, rollout], "
             "metrics: [deletion, insertion, pointing, auroc], removal_step: 16, batch_size: 3}}\n")
    rows, _ = study_cell(study, "attribution-maps", tmp_path / "study")
    keys = ("method", "metric")
    assert_same_values(values(api.table, keys), values(cli, keys))
    assert_same_values(values(api.table, keys), values(rows, keys))
    assert len(api.table) == 3 * 5 and set(api.table["rank"]) <= {1, 2, 3}
    assert {"attribution_ranking", "attribution_examples", "attribution_curves"} <= set(api.figures())
    assert "best by deletion" in api.summary


def test_explain_writes_a_map_per_image(tmp_path):
    run_cli("explain", "-m", "demo-vit", "-d", DATA, "--limit", "2", "--method", "grad-cam", "--block", "-2",
            "-o", tmp_path, "-q")
    t = pd.read_csv(tmp_path / "explain.csv")
    assert len(t) == 2 and set(t["method"]) == {"gradcam"}
    assert len(list(tmp_path.glob("*_gradcam.png"))) == 2 and len(list(tmp_path.glob("*_gradcam.npy"))) == 2


def test_bad_options_are_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "vitscope", *map(str, args)], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        return lines[0]

    assert "--steps must be an integer >= 2, got 1" in run("explain-bench", "-m", "demo-vit", "-d", DATA,
                                                          "--steps", "1")
    assert "did you mean 'gradcam'" in run("explain", "-m", "demo-vit", "-d", DATA, "--method", "gradcamm")


@pytest.mark.slow
def test_report_section_runs_on_the_demo_model(tmp_path):
    import vitscope as vs
    from vitscope.report.context import ReportContext
    from vitscope.report.sections.attribution_maps import attribution_maps_section

    ctx = ReportContext(vs.load_model("demo-vit"), "builtin:demo?n=16", out_dir=tmp_path, name="demo-vit")
    sec = attribution_maps_section(ctx)
    assert len(sec.figures) == 2 and sec.tables
