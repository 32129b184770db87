"""Ctrl-C in a long command: one line saying where it stopped and how to resume, exit 130; the resumed
extraction's progress starts where the first run stopped and the store ends complete."""
import os
import signal
import subprocess
import sys
import time

import numpy as np


def test_extract_interrupted_then_resumed(tmp_path):
    out = tmp_path / "store"
    args = [sys.executable, "-m", "vitscope", "extract", "-m", "demo-vit", "-d", "synthetic:n=3000,size=64",
            "-o", str(out), "-b", "16", "-w", "0", "--tokens", "cls"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "VITSCOPE_DEBUG": ""})
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "progress").glob("rank-0.json")):
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("interrupted at ") and "/3000 images; run the same command to resume" in last
    n_done = int(last.split("interrupted at ")[1].split("/")[0])
    assert 0 < n_done < 3000
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    # the bar of the resumed run starts at the images already on disk, not at 0
    assert f"{n_done}/3000" in r.stderr.replace("\r", "\n")
    from vitscope.features.store import open_store

    store = open_store(out)
    assert store.complete and np.asarray(store.valid).all()
