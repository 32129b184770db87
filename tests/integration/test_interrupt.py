"""Ctrl-C in a long command: one line saying where it stopped and how to resume, exit 130; the resumed
extraction's progress starts where the first run stopped and the store ends complete. SIGINT works whatever
the parent did with it (a test run as a background job inherits SIGINT ignored)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


N = 1000


def extract_args(out):
    return [sys.executable, "-m", "vitscope", "extract", "-m", "demo-vit", "-d", f"synthetic:n={N},size=64",
            "-o", str(out), "-b", "16", "-w", "0", "--tokens", "cls"]


def interrupt(out, sigint=signal.SIG_DFL) -> tuple[int, int, str]:
    """Start an extraction with SIGINT set to ``sigint`` (SIG_DFL whatever this process inherited), send it
    SIGINT once it has written images -> (exit status, images done, stderr)."""
    p = subprocess.Popen(extract_args(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "VITSCOPE_DEBUG": "", "PYTHONFAULTHANDLER": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "progress").glob("rank-0.json")):
        time.sleep(0.2)
    time.sleep(1.0)
    sent = time.time()
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:           # say where it is stuck: faulthandler prints every thread on SIGABRT
        p.send_signal(signal.SIGABRT)
        _, err = p.communicate(timeout=60)
        done = sorted((out / "progress").glob("*.json"))
        pytest.fail(f"no exit {time.time() - sent:.0f} s after SIGINT; progress files {[f.name for f in done]}; "
                    f"its stderr ends:\n" + "\n".join(err.splitlines()[-80:]))
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    n_done = int(last.split("interrupted at ")[1].split("/")[0]) if last.startswith("interrupted at ") else -1
    return p.returncode, n_done, err


@pytest.mark.slow
def test_extract_interrupted_then_resumed(tmp_path):
    out = tmp_path / "store"
    code, n_done, err = interrupt(out)
    assert code == 130, err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("interrupted at ") and f"/{N} images; run the same command to resume" in last
    assert 0 < n_done < N
    r = subprocess.run(extract_args(out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    # the bar of the resumed run starts at the images already on disk, not at 0
    assert f"{n_done}/{N}" in r.stderr.replace("\r", "\n")
    from vitscope.features.store import open_store

    store = open_store(out)
    assert store.complete and np.asarray(store.valid).all()


@pytest.mark.slow
def test_sigint_stops_the_cli_even_when_its_parent_ignored_it(tmp_path):
    """A child inherits SIGINT ignored from a background job's shell; the CLI installs its own handler."""
    code, n_done, err = interrupt(tmp_path / "store", sigint=signal.SIG_IGN)
    assert code == 130 and 0 < n_done < N, err
