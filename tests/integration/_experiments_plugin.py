"""A study plugin for the experiment tests: one analysis that reads the shared feature store and can be held
(or made to kill its own process) mid-cell, and logs every run, so tests can kill, resume and race runs.

Environment: VITSCOPE_TEST_GATE (a file; while it exists the cell stops mid-way: "hold" sleeps until the
process is killed, "selfkill" sends SIGKILL to its own process), VITSCOPE_TEST_LOG (a file each run appends
"<cell> <pid>" to), VITSCOPE_TEST_SLEEP (seconds to sleep per cell).
"""
import os
import signal
import time
from pathlib import Path

import numpy as np

from vitscope.experiments.analyses import register


@register("feature_mean", defaults={"scale": 1.0}, store_tokens=lambda o: ["mean"],
          description="mean of the stored patch-mean features per block (a test analysis)")
def feature_mean(ctx, opts):
    store = ctx.store(0, "mean")
    rows = [{"block": int(b), "metric": "feature_mean",
             "value": opts["scale"] * float(np.asarray(store[ctx.site, b, "mean"], dtype=np.float64).mean())}
            for b in store.layers]
    log = os.environ.get("VITSCOPE_TEST_LOG")
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, f"{ctx.cell.id} {os.getpid()}\n".encode())
        os.close(fd)
    gate = os.environ.get("VITSCOPE_TEST_GATE")
    if gate and os.path.exists(gate):
        Path(gate + ".started").write_text(str(os.getpid()))
        if Path(gate).read_text().strip() == "selfkill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)
    time.sleep(float(os.environ.get("VITSCOPE_TEST_SLEEP", "0")))
    return rows
