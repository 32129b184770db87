"""The study runner's bookkeeping, in process: a failed or skipped cell runs again on the next run, a finished cell
never runs twice (whether the runner or a direct ``run_cell`` is asked), a locked cell is left to its owner, and an
unreadable results file counts as not run."""
import pytest

from vitscope.experiments.analyses import REGISTRY, AnalysisUnavailable, register
from vitscope.experiments.config import parse_study
from vitscope.experiments.locks import CellLock
from vitscope.experiments.results import cell_file, cell_status, read_results
from vitscope.experiments.runner import LOCKS, pending, prepare, run_cell
from vitscope.experiments.study import run_study

NAME = "runner_bookkeeping_probe"
CALLS: list[str] = []
BEHAVIOUR: dict[str, str] = {}          # dataset name -> "fail" / "skip"


def _probe(ctx, opts):
    """Records each call; fails or is skipped on the datasets BEHAVIOUR names."""
    ds = ctx.cell.dataset.name
    CALLS.append(ds)
    if BEHAVIOUR.get(ds) == "fail":
        raise RuntimeError(f"boom on {ds}")
    if BEHAVIOUR.get(ds) == "skip":
        raise AnalysisUnavailable("its library is missing")
    return [{"metric": "calls", "value": float(CALLS.count(ds))}]


STUDY = f"""\
study: bookkeeping
models: [demo-vit]
datasets:
  - {{name: a, data: "synthetic:n=4"}}
  - {{name: b, data: "synthetic:n=4,seed=1"}}
analyses: [{NAME}]
"""


@pytest.fixture
def study():
    register(NAME, description="counts its calls (a test analysis)")(_probe)
    CALLS.clear()
    BEHAVIOUR.clear()
    yield parse_study(STUDY)
    REGISTRY.pop(NAME, None)


def ids(cells):
    return {c.dataset.name: c.id for c in cells}


def test_failed_cells_run_again_and_finished_cells_never(study, tmp_path):
    BEHAVIOUR["b"] = "fail"
    first = run_study(study, tmp_path)
    assert CALLS == ["a", "b"] and first.counts == {"ok": 1, "error": 1} and first.already_done == 0
    cid = ids(prepare(study, tmp_path))
    assert cell_status(tmp_path, cid["a"]) == "ok" and cell_status(tmp_path, cid["b"]) == "error"
    assert [c.id for c in pending(tmp_path, prepare(study, tmp_path))] == [cid["b"]]
    err = read_results(tmp_path, status="error")
    assert err["error"].tolist() == ["RuntimeError: boom on b"]
    assert (tmp_path / "cells" / cid["b"] / "error.txt").exists()

    BEHAVIOUR.clear()
    second = run_study(study, tmp_path)                                      # only the failed cell runs
    assert CALLS == ["a", "b", "b"] and second.counts == {"ok": 1} and second.already_done == 1
    assert read_results(tmp_path)["status"].tolist() == ["ok", "ok"]        # its error row is replaced

    third = run_study(study, tmp_path)                                       # nothing left to run
    assert CALLS == ["a", "b", "b"] and third.outcomes == [] and third.already_done == 2
    assert "2 already done" in third.line()
    # asked directly, a finished cell is not run again either
    assert run_cell(tmp_path, cid["a"]).status == "done" and CALLS == ["a", "b", "b"]
    # every cell again (only_pending=False): the runner still leaves finished cells alone
    again = run_study(study, tmp_path, only_pending=False)
    assert {o.status for o in again.outcomes} == {"done"} and CALLS == ["a", "b", "b"]


def test_skipped_cells_run_again(study, tmp_path):
    BEHAVIOUR["a"] = "skip"
    first = run_study(study, tmp_path)
    assert first.counts == {"skipped": 1, "ok": 1}
    cid = ids(prepare(study, tmp_path))
    assert cell_status(tmp_path, cid["a"]) == "skipped"
    BEHAVIOUR.clear()
    run_study(study, tmp_path)
    assert CALLS == ["a", "b", "a"] and cell_status(tmp_path, cid["a"]) == "ok"


def test_locked_cells_are_left_to_their_owner_and_unreadable_results_rerun(study, tmp_path):
    cid = ids(prepare(study, tmp_path))
    lock = CellLock(tmp_path / LOCKS / f"{cid['a']}.lock")
    assert lock.acquire()
    try:
        out = run_study(study, tmp_path)
    finally:
        lock.release()
    assert sorted(o.status for o in out.outcomes) == ["busy", "ok"] and CALLS == ["b"]
    assert cell_status(tmp_path, cid["a"]) is None                           # never written: still pending
    cell_file(tmp_path, cid["b"]).write_bytes(b"not a parquet file")         # e.g. a disk filled mid-write
    assert cell_status(tmp_path, cid["b"]) is None
    run_study(study, tmp_path)
    assert sorted(CALLS) == ["a", "b", "b"]
    assert {cell_status(tmp_path, c) for c in cid.values()} == {"ok"}
