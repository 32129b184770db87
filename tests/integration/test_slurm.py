"""`vitscope run --launcher slurm` on a real (private, one-node) SLURM cluster without accounting: the example
study, made small, submitted without waiting (`--status` shows the queued and running cells), one cell killed
with `scancel` mid-way and resumed by the next run with `--wait`, whose output stays one progress line (no sacct
warnings), and the table equals the local run's."""
import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_cli_experiments import ENV, PLUGIN, cli, start, table

STATE = re.compile(r"^ *(done|running|queued|failed|skipped|to run)  (\S+)", re.M)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "walmer2023_study.yaml"


def small_example(path: Path) -> Path:
    """examples/walmer2023_study.yaml with one model, 24 test and 48 train images, 4 SPair pairs, four of its
    analyses, and the test plugin's feature_mean (which can be held mid-cell)."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg.pop("out")
    cfg["plugins"] = [str(PLUGIN)]
    cfg["models"] = [{"name": "demo-vit"}]
    ds = cfg["datasets"][0]
    ds["data"] = ds["data"].replace("n=512", "n=24")
    ds["train"] = ds["train"].replace("n=2000", "n=48")
    ds["spair"] = ds["spair"].replace("pairs=40", "pairs=4")
    del ds["davis"], ds["revisited"]
    keep = ("attention_distance", "cluster", "knn", "keypoints")
    cfg["analyses"] = [a for a in cfg["analyses"] if a["name"] in keep] + ["feature_mean"]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def status(study: Path, out: Path) -> dict[str, str]:
    """`vitscope run --status`: cell -> state."""
    r = cli("run", study, "--out", out, "--status")
    assert r.exit_code == 0, r.output
    return {m[2]: m[1] for m in STATE.finditer(r.output)}


def wait_for(what, ok, timeout=180):
    t0 = time.time()
    while not ok():
        assert time.time() - t0 < timeout, f"{what} after {timeout} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_example_study_on_slurm_killed_cell_resumed(slurm_cluster, tmp_path):
    study = small_example(tmp_path / "study.yaml")
    out, gate = tmp_path / "slurm-run", tmp_path / "gate"
    gate.write_text("hold")                                         # feature_mean waits mid-cell until killed
    env = {**ENV, **slurm_cluster.env(), "VITSCOPE_TEST_GATE": str(gate)}
    run = start("run", study, "--out", out, "--launcher", "slurm", "--wait", "--time", "10", env=env)
    wait_for("the feature_mean job never started", lambda: Path(f"{gate}.started").exists())
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    [killed] = [c for c in jobs if c.startswith("feature_mean")]
    r = cli("run", study, "--out", out, "--status")                 # while the jobs run
    assert r.exit_code == 0, r.output
    assert STATE.search(r.output) and len(STATE.findall(r.output)) == 5, r.output
    [line] = [ln for ln in r.output.splitlines() if killed in ln]
    assert line.split()[0] == "running" and f"(job {jobs[killed]}" in line, r.output
    # scancel the held cell's job: the waiting run notices without accounting, the other cells finish
    subprocess.run(["scancel", jobs[killed]], check=True)
    gate.unlink()
    o, e = run.communicate(timeout=180)
    assert run.returncode == 1 and "4 run, 1 failed" in o, o + e
    [line] = [ln for ln in o.splitlines() if killed in ln]
    assert line.split()[0] == "error" and f"job {jobs[killed]} ended without a result (CANCELLED)" in line, o
    assert "sacct" not in o + e and "submitit" not in e and "warning" not in e.lower(), e
    for ln in re.split(r"[\r\n]+", e):                  # one progress line, the header and the closing error
        assert not ln.strip() or ln.startswith(("study ", "cells:", "error: 1 cell(s) failed")), e
    assert status(study, out) == {**{c: "done" for c in jobs}, killed: "to run"}
    # the next run (without waiting) submits only the killed cell; --status shows it pending until it is done
    p = start("run", study, "--out", out, "--launcher", "slurm", "--no-wait", "--time", "10", env=env)
    o, e = p.communicate(timeout=120)
    assert p.returncode == 0 and "1 submitted" in o and "4 already done" in o, o + e
    again = json.loads((out / "slurm" / "jobs.json").read_text())[killed]
    assert again != jobs[killed]
    r = cli("run", study, "--out", out, "--status")
    [line] = [ln for ln in r.output.splitlines() if killed in ln]
    assert line.split()[0] in ("queued", "running") and f"(job {again}" in line, r.output
    assert "4 done, " in r.output.splitlines()[-1], r.output
    wait_for("the resubmitted cell never finished", lambda: set(status(study, out).values()) == {"done"})
    local = tmp_path / "local"
    assert cli("run", study, "--out", local, "--threads", "1", "--quiet").exit_code == 0
    pd.testing.assert_frame_equal(table(out), table(local))
