"""`vitscope run` / `vitscope results` end to end: failed cells recorded while the others finish, resume after a
process killed mid-cell (SIGKILL), two concurrent runs of one study, and submitit's local executor (real
subprocesses) including a job killed mid-cell and resumed."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app

PLUGIN = Path(__file__).with_name("_experiments_plugin.py")
DATA = "synthetic:n=16,size=64,classes=4"
SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
VOLATILE = ["time", "seconds"]                          # the only columns allowed to differ between runs


def write_study(path: Path, analyses: str, models: str = "[{name: demo-vit, with_random: true}]") -> Path:
    path.write_text(f"""\
study: t
plugins: [{PLUGIN}]
features: {{batch_size: 8}}
models: {models}
datasets:
  - {{name: shapes, data: "{DATA}", train: "{DATA},split=train"}}
analyses:
{analyses}""")
    return path


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "vitscope", *map(str, args)], env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def table(d: Path) -> pd.DataFrame:
    df = pd.read_parquet(d / "results")
    return df.drop(columns=VOLATILE).sort_values(["cell", "block", "metric"]).reset_index(drop=True)


def test_run_records_a_failed_cell_and_finishes_the_others(tmp_path):
    study = write_study(tmp_path / "s.yaml", """\
  - {name: cluster, options: {k: 4}}
  - {name: cluster, label: cluster-k100, options: {k: 100}}
  - {name: cka, options: {tokens: cls}}
  - {name: knn, options: {k: 5}}
""")
    out = tmp_path / "out"
    r = cli("run", study, "--out", out, "--threads", "1", "--quiet")
    assert isinstance(r.exception, RuntimeError) and "2 cell(s) failed (the others finished)" in str(r.exception)
    assert "study t: 9 cells: " in r.output
    df = pd.read_parquet(out / "results")
    st = df.drop_duplicates("cell").set_index("cell")["status"]
    assert st[st.index.str.startswith("cluster-k100")].eq("error").all()
    assert st[st.index.str.startswith("cluster__")].eq("ok").all() and st[st.index.str.startswith("cka")].eq("ok").all()
    assert st[st.index.str.startswith("knn")].eq("ok").all()
    err = df[df["status"] == "error"]
    assert len(err) == 2 and err["error"].str.contains("k=100 clusters need at least k samples").all()
    ok = df[df["status"] == "ok"]
    assert set(ok["model"]) == {"demo-vit", "demo-vit (random)"} and ok["weights_hash"].str.len().eq(64).all()
    assert ok["vitscope_version"].notna().all() and ok["options"].str.contains('"k": 4').any()
    stores = [p for p in (out / "stores").iterdir() if p.is_dir() and "__train__" not in p.name]
    assert len(stores) == 2                                                  # one store per (model, dataset)
    # a second run reruns only the failed / skipped cells
    before = df[df["status"] == "ok"].groupby("cell")["time"].first()
    r = cli("run", study, "--out", out, "--threads", "1", "--quiet")
    assert "7 already done" in r.output and "2 failed" in r.output
    after = pd.read_parquet(out / "results").groupby("cell")["time"].first()
    assert (after[before.index] == before).all()
    r = cli("run", study, "--out", out, "--dry-run")
    assert r.exit_code == 0 and "9 cells, 7 done, 2 to run" in r.output
    # the figures come from the table alone
    r = cli("results", out, "--formats", "png")
    assert r.exit_code == 0, r.output
    assert "error: cluster-k100" in r.output and "figure(s)" in r.output
    assert (out / "figures/per_block/cluster__nmi__shapes.png").exists()
    assert (out / "figures/cka/cka__shapes.png").exists()
    assert (out / "figures/per_block/knn__top1_k5__shapes.png").exists()
    # changing an option makes new cells; the old rows are set aside, never mixed in
    write_study(study, "  - {name: cluster, options: {k: 3}}\n")
    r = cli("run", study, "--out", out, "--threads", "1", "--quiet")
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out / "results")
    assert set(df["options"].str.extract(r'"k": (\d+)')[0]) == {"3"} and len(set(df["cell"])) == 2
    assert len(list((out / "superseded").glob("*.parquet"))) == 9


@pytest.mark.slow
def test_resume_after_a_killed_cell_gives_the_uninterrupted_table(tmp_path):
    analyses = """\
  - {name: cluster, options: {k: 4}}
  - feature_mean
  - {name: cka, options: {tokens: mean}}
"""
    study = write_study(tmp_path / "s.yaml", analyses, models="[demo-vit]")
    gate = tmp_path / "gate"
    gate.write_text("hold")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = start("run", study, "--out", killed, "--quiet", env={"VITSCOPE_TEST_GATE": str(gate)})
    t0 = time.time()
    while not Path(f"{gate}.started").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 120, "the cell never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)                       # mid-cell: the analysis is running, its lock held
    proc.wait()
    locks = list((killed / "locks").glob("feature_mean*.lock"))
    assert len(locks) == 1                                   # left behind by the dead process
    assert {p.name.split("__")[0] for p in (killed / "results").glob("*.parquet")} == {"cluster"}
    gate.unlink()
    r = cli("run", study, "--out", killed, "--quiet", "--threads", "1")
    assert r.exit_code == 0 and "2 run, 1 already done" in r.output, r.output
    assert cli("run", study, "--out", clean, "--quiet", "--threads", "1").exit_code == 0
    pd.testing.assert_frame_equal(table(killed), table(clean))
    assert not list((killed / "locks").glob("*.lock"))


@pytest.mark.slow
def test_two_concurrent_runs_write_each_row_once(tmp_path):
    """One run in this process, one with two worker processes (--jobs 2), started together."""
    study = write_study(tmp_path / "s.yaml", "  - feature_mean\n  - {name: feature_mean, label: fm2, "
                                             "options: {scale: 2.0}}\n")
    out, log = tmp_path / "out", tmp_path / "runs.log"
    env = {"VITSCOPE_TEST_LOG": str(log), "VITSCOPE_TEST_SLEEP": "0.5"}
    procs = [start("run", study, "--out", out, "--quiet", *extra, env=env) for extra in ([], ["--jobs", "2"])]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(ran) == len(set(ran)) == 4                     # every cell ran exactly once, in one of the two runs
    df = pd.read_parquet(out / "results")
    assert df.duplicated(["cell", "block", "metric"]).sum() == 0 and df["cell"].nunique() == 4
    a = df[df["analysis"] == "feature_mean"].set_index(["model", "block"])["value"]
    b = df[df["analysis"] == "fm2"].set_index(["model", "block"])["value"]
    assert (b / a).round(6).eq(2.0).all()                     # both cells of one model read the same store
    assert len(list((out / "stores").iterdir())) == 2 * 2     # 2 stores (+ their lock files): one per model


@pytest.mark.slow
def test_submitit_local_launcher_with_a_job_killed_and_resumed(tmp_path, monkeypatch):
    analyses = "  - {name: feature_mean}\n  - {name: cluster, options: {k: 4}}\n"
    study = write_study(tmp_path / "s.yaml", analyses, models="[demo-vit]")
    gate = tmp_path / "gate"
    gate.write_text("selfkill")                               # the feature_mean job SIGKILLs itself mid-cell
    for k, v in ENV.items():                                  # the jobs inherit this environment
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("VITSCOPE_TEST_GATE", str(gate))
    out = tmp_path / "out"
    r = cli("run", study, "--out", out, "--launcher", "submitit-local", "--time", "10", "--quiet")
    assert isinstance(r.exception, RuntimeError) and "1 cell(s) failed" in str(r.exception), r.output
    assert "1 run, 1 failed" in r.output
    assert any((out / "slurm").iterdir())                     # submitit's job folders and logs
    assert [p.name.split("__")[0] for p in (out / "results").glob("*.parquet")] == ["cluster"]
    gate.unlink()
    r = cli("run", study, "--out", out, "--launcher", "submitit-local", "--time", "10", "--quiet")
    assert r.exit_code == 0, r.output
    assert "1 run, 1 already done" in r.output
    clean = tmp_path / "clean"
    assert cli("run", study, "--out", clean, "--quiet", "--threads", "1").exit_code == 0
    pd.testing.assert_frame_equal(table(out), table(clean))


@pytest.mark.slow
def test_store_extraction_under_torchrun_with_two_processes(tmp_path, monkeypatch):
    """features: {nproc_per_node: 2}: the cell's store is extracted by `torchrun --nproc_per_node=2 -m vitscope
    extract` (two CPU ranks on gloo) and the table equals a run that extracts in-process."""
    study = write_study(tmp_path / "s.yaml", "  - {name: cluster, options: {k: 4}}\n", models="[demo-vit]")
    study.write_text(study.read_text().replace("features: {batch_size: 8}", "features: {batch_size: 4}").replace(
        f'data: "{DATA}", train', f'data: "{DATA}", limit: 14, train'))
    for k, v in ENV.items():                                  # the torchrun processes inherit this environment
        monkeypatch.setenv(k, v)
    two, one = tmp_path / "two", tmp_path / "one"
    r = cli("run", study, "--out", two, "--quiet", "--threads", "1", "--nproc-per-node", "2")
    assert r.exit_code == 0, r.output
    assert cli("run", study, "--out", one, "--quiet", "--threads", "1").exit_code == 0
    pd.testing.assert_frame_equal(table(two), table(one))
    import vitscope.features as vf

    [store] = [p for p in (two / "stores").iterdir() if p.is_dir()]
    assert vf.open(store).manifest["world_size"] == 2 and vf.open(store).n == 14
    assert "--nproc_per_node=2" not in r.output and store.with_name(store.name + ".torchrun.log").exists()
