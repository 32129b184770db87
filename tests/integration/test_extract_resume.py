"""Kill a real extraction process with SIGKILL (several times, at different moments), run it again, and
compare with an uninterrupted run: every array, the labels and the skip list must be identical."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vitscope.features as vf

JOB = Path(__file__).with_name("_extract_job.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(out, *args):
    return subprocess.Popen([sys.executable, str(JOB), str(out), "--quiet", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def done_rows(out) -> int:
    p = Path(out) / "progress" / "rank-0.json"
    try:
        return sum(b - a for a, b in json.loads(p.read_text())["done"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def kill_when(proc, out, rows: int, extra: float, timeout: float = 60.0) -> None:
    t0 = time.time()
    while done_rows(out) < rows:
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before it could be killed: {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("the job made no progress")
        time.sleep(0.01)
    time.sleep(extra)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def assert_same_store(a, b):
    assert a.keys() == b.keys()
    for key in a.keys():
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.skipped == b.skipped
    assert a.manifest["model"] == b.manifest["model"]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    ref_proc = start(tmp_path / "ref")
    out = tmp_path / "killed"
    # 1) killed just after some batches were recorded, 2) killed at an arbitrary moment of a later batch
    kill_when(start(out, "--delay", "0.03"), out, rows=8, extra=0.0)
    n1 = done_rows(out)
    with pytest.raises(vf.IncompleteStoreError):
        vf.open(out)
    kill_when(start(out, "--delay", "0.03"), out, rows=n1 + 8, extra=0.07)
    n2 = done_rows(out)
    assert 0 < n1 < n2 < 40
    # 3) the same command again finishes the store
    fin = start(out, "--delay", "0.0")
    outp, err = fin.communicate(timeout=120)
    assert fin.returncode == 0, err
    run = json.loads(outp.strip().splitlines()[-1])
    assert run["already_done"] == n2 and run["images"] + run["skipped"] == 40 - n2
    assert ref_proc.wait(timeout=120) == 0, ref_proc.stderr.read()
    got, ref = vf.open(out), vf.open(tmp_path / "ref")
    assert got.complete and got.manifest["created"] <= got.manifest["completed"]
    assert [r["index"] for r in got.skipped] == [5, 17]
    assert_same_store(got, ref)
