"""torchrun with 2 CPU processes on gloo: each rank writes its own range of the same store; the result equals a
single-process run bit for bit (same batch grid, same kernels). Also: a store one process left incomplete is
finished by two."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import _extract_job as job
import numpy as np
import pytest
import torch
from _extract_fixtures import make_inputs

import vitscope.features as vf
from vitscope.features import extract_features

JOB = Path(__file__).with_name("_extract_job.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(nproc, *args, timeout=180):
    """``torchrun --standalone --nproc_per_node=N ARGS`` (ARGS: a script or ``-m vitscope ...``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *map(str, args)]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def same(a, b):
    assert a.keys() == b.keys()
    for key in a.keys():
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.skipped == b.skipped


@pytest.mark.slow
def test_torchrun_cli_two_ranks_equal_one_process(tmp_path):
    model_dir, imgs, _ = make_inputs(tmp_path)
    args = ["extract", "-m", model_dir, "-d", imgs, "-l", "all", "-s", "resid_post,ln2", "-t", "cls,mean,registers",
            "-b", "4", "-w", "0"]
    single = subprocess.Popen([sys.executable, "-m", "vitscope", *map(str, args), "-o", str(tmp_path / "one"), "-q"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p = torchrun(2, "-m", "vitscope", *args, "-o", tmp_path / "two")
    assert "extracted 14 images (1 skipped)" in p.stderr                 # rank 0's summary, totals over ranks
    assert single.wait(timeout=120) == 0, single.stderr.read()
    one, two = vf.open(tmp_path / "one"), vf.open(tmp_path / "two")
    assert two.manifest["world_size"] == 2 and one.manifest["world_size"] == 1
    assert [r["index"] for r in two.skipped] == [7]
    same(one, two)


@pytest.mark.slow
def test_two_ranks_finish_a_store_one_process_left_incomplete(tmp_path):
    out = tmp_path / "s"
    ref = subprocess.Popen([sys.executable, str(JOB), str(tmp_path / "ref"), "--quiet"], env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                  # as in the job processes: same kernels, same bits
    try:
        with pytest.raises(SystemExit):                       # the data "crashes" at sample 14
            extract_features(job.model(), job.SlowData(40, 0.0, bad=(5, 17), crash_at=14), out, **job.REQUEST,
                             batch_size=4, progress=False, num_workers=0)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(vf.IncompleteStoreError):
        vf.open(out)
    p = torchrun(2, JOB, out, "--quiet")
    # both ranks print one JSON object each; their writes may land on one line, so split on the objects
    runs = [json.loads(obj) for obj in re.findall(r"\{[^{}]*\}", p.stdout)]
    assert len(runs) == 2, p.stdout
    assert runs[0]["already_done"] == 12 and runs[0]["images"] + runs[0]["skipped"] == 28
    assert ref.wait(timeout=120) == 0
    same(vf.open(out), vf.open(tmp_path / "ref"))
