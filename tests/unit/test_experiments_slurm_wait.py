"""Following SLURM jobs without accounting: squeue's answer parsed, jobs done by their result file, jobs that
ended without one (scancel, time limit) reported once squeue shows them ended, submitit's warnings printed once,
and the cell states `vitscope run --status` prints. The real cluster runs in tests/integration/test_slurm.py."""
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from vitscope.experiments import launchers
from vitscope.experiments.launchers import _submitit_warnings_once, slurm_states, wait_slurm
from vitscope.experiments.locks import CellLock, held_by
from vitscope.experiments.runner import Outcome
from vitscope.experiments.status import study_status


def fake_squeue(tmp_path, monkeypatch, stdout="", stderr="", code=0) -> Path:
    """An `squeue` on PATH that prints ``stdout`` and records its arguments."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (tmp_path / "out.txt").write_text(stdout)
    (tmp_path / "err.txt").write_text(stderr)
    exe = bin_ / "squeue"
    exe.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args.txt\ncat {tmp_path}/out.txt\n"
                   f"cat {tmp_path}/err.txt >&2\nexit {code}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "args.txt"


def test_squeue_states_of_array_tasks(tmp_path, monkeypatch):
    args = fake_squeue(tmp_path, monkeypatch, "12_0|COMPLETED\n12_1|RUNNING\n12_2|PENDING\n13|CANCELLED\n")
    assert slurm_states(["12_0", "12_1", "12_2", "13"]) == {"12_0": "COMPLETED", "12_1": "RUNNING",
                                                            "12_2": "PENDING", "13": "CANCELLED"}
    a = args.read_text().split()
    assert "--jobs=12,13" in a and "--array" in a and "--states=all" in a       # one call for every array
    fake_squeue(tmp_path, monkeypatch, stderr="slurm_load_jobs error: Invalid job id specified", code=1)
    assert slurm_states(["12_0"]) == {}                                        # aged out: none is queued
    fake_squeue(tmp_path, monkeypatch, stderr="slurm_load_jobs error: Unable to contact slurm controller", code=1)
    assert slurm_states(["12_0"]) is None                                      # cannot tell
    assert slurm_states([]) == {}


def fake_job(tmp_path, job_id, cell, result=None, log=""):
    d = tmp_path / job_id
    d.mkdir()
    paths = SimpleNamespace(result_pickle=d / "result.pkl", stderr=d / "log.err")
    paths.stderr.write_text(log)
    if result is not None:
        paths.result_pickle.write_text("x")
    return SimpleNamespace(job_id=job_id, paths=paths, result=lambda: result or Outcome(cell, "ok", 1.0, 3).to_dict())


def test_wait_collects_results_and_reports_jobs_that_ended_without_one(tmp_path, monkeypatch):
    jobs = {"a": fake_job(tmp_path, "7_0", "a", Outcome("a", "ok", 1.0, 3).to_dict()),
            "b": fake_job(tmp_path, "7_1", "b", log="slurmstepd: error: *** JOB 8 CANCELLED AT 10:00 ***\n"),
            "c": fake_job(tmp_path, "7_2", "c"),
            "d": fake_job(tmp_path, "7_3", "d")}
    calls = []

    def states(ids):
        calls.append(sorted(ids))
        if len(calls) == 1:
            return {"7_1": "CANCELLED", "7_2": "RUNNING", "7_3": "RUNNING"}
        jobs["d"].paths.result_pickle.write_text("x")              # d finishes while c has left the queue
        return {"7_1": "CANCELLED"}

    monkeypatch.setattr(launchers, "slurm_states", states)
    done = []
    out = wait_slurm(jobs, done.append, poll=0.01, grace=0.0, max_interval=0.0)
    by = {o.cell: o for o in out}
    assert [o.cell for o in done] == [o.cell for o in out] and set(by) == {"a", "b", "c", "d"}
    assert by["a"].status == "ok" and by["a"].rows == 3 and by["d"].status == "ok"
    assert by["b"].status == "error" and by["b"].message.startswith("job 7_1 ended without a result (CANCELLED): "
                                                                    "slurmstepd: error: *** JOB 8 CANCELLED")
    assert by["c"].status == "error" and "job 7_2 ended without a result (no longer queued)" in by["c"].message
    assert calls[0] == ["7_1", "7_2", "7_3"]                         # a was done by its result file alone


def test_wait_gives_a_late_result_file_its_grace(tmp_path, monkeypatch):
    job = fake_job(tmp_path, "9", "a")
    seen = []

    def states(ids):
        seen.append(1)
        if len(seen) == 3:                                          # shows up after the job left the queue
            job.paths.result_pickle.write_text("x")
        return {}

    monkeypatch.setattr(launchers, "slurm_states", states)
    [o] = wait_slurm({"a": job}, poll=0.01, grace=30.0, max_interval=0.0)
    assert o.status == "ok"


def test_without_squeue_only_result_files_decide(tmp_path, monkeypatch, capsys):
    job = fake_job(tmp_path, "9", "a")
    n = []

    def states(ids):
        n.append(1)
        if len(n) == 5:
            job.paths.result_pickle.write_text("x")
        return None

    monkeypatch.setattr(launchers, "slurm_states", states)
    [o] = wait_slurm({"a": job}, poll=0.01, grace=0.0, max_interval=0.0)
    assert o.status == "ok"
    assert capsys.readouterr().err.count("squeue did not answer") == 1


def test_submitit_warnings_are_printed_once(capsys):
    log = logging.getLogger("submitit")
    handlers = log.handlers[:]
    with _submitit_warnings_once():
        for i in (1, 2, 3):
            log.warning(f"Call #{i} - Bypassing sacct error X, status may be inaccurate.")
        log.info("Call #4 - Command sacct")
    log_out = capsys.readouterr()
    assert log_out.out == "" and log_out.err == "submitit: Bypassing sacct error X, status may be inaccurate.\n"
    assert log.handlers == handlers                                  # submitit's own logging is back


def test_held_by_reads_a_lock_without_taking_it(tmp_path):
    p = tmp_path / "cell.lock"
    assert held_by(p) is None
    lock = CellLock(p)
    assert lock.acquire()
    assert held_by(p)["pid"] == os.getpid() and lock.held
    lock.release()
    p.write_text(json.dumps({"pid": os.getpid(), "host": "h", "since": 0}))    # a record nobody holds
    assert held_by(p) is None and p.exists()


@pytest.fixture
def study_cells(tmp_path):
    from vitscope.experiments.cells import expand
    from vitscope.experiments.config import parse_study
    from vitscope.experiments.results import write_cell

    study = parse_study("study: s\nmodels: [demo-vit]\ndatasets: [{name: d, data: 'synthetic:n=8'}]\n"
                        "analyses: [attention_distance, saliency, {name: cluster, options: {k: 2}}, "
                        "{name: cluster, label: c2, options: {k: 3}}, {name: cluster, label: c3, options: {k: 4}}, "
                        "{name: cluster, label: c4, options: {k: 5}}]\n")
    cells = expand(study)
    ok = {"metric": "m", "value": 1.0, "status": "ok"}
    write_cell(tmp_path, cells[0].id, [{**ok, "cell": cells[0].id}])
    write_cell(tmp_path, cells[1].id, [{**ok, "cell": cells[1].id, "status": "error", "error": "E"}])
    return cells


def test_status_of_each_cell(tmp_path, monkeypatch, study_cells):
    c = [x.id for x in study_cells]
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "jobs.json").write_text(json.dumps({c[0]: "5_0", c[1]: "5_1", c[2]: "5_2", c[3]: "5_3",
                                                              c[4]: "5_4"}))
    monkeypatch.setattr(launchers, "slurm_states", lambda ids: {"5_2": "PENDING", "5_3": "RUNNING",
                                                                "5_4": "CANCELLED"})
    lock = CellLock(tmp_path / "locks" / f"{c[5]}.lock")             # a local run holds the last cell
    assert lock.acquire()
    try:
        st = {s.cell: (s.state, s.detail) for s in study_status(tmp_path, study_cells)}
    finally:
        lock.release()
    assert st[c[0]] == ("done", "") and st[c[1]] == ("failed", "")
    assert st[c[2]] == ("queued", "job 5_2: PENDING") and st[c[3]] == ("running", "job 5_3: RUNNING")
    assert st[c[4]] == ("to run", "job 5_4 ended without a result (CANCELLED)")
    assert st[c[5]][0] == "running" and st[c[5]][1].startswith(f"pid {os.getpid()} on ")
    assert (tmp_path / "slurm" / "jobs.json").exists() and not list((tmp_path / "results").glob(f"{c[2]}*"))
