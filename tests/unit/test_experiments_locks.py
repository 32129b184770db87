"""Per-cell locks: one owner at a time, released on exit, taken over when the owner was killed."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from vitscope.experiments.locks import CellLock, is_stale, read_owner


def test_one_owner_and_release(tmp_path):
    p = tmp_path / "locks" / "cell.lock"
    a, b = CellLock(p), CellLock(p)
    assert a.acquire()
    assert read_owner(p)["pid"] == os.getpid() and read_owner(p)["host"] == socket.gethostname()
    assert not b.acquire()                      # another owner (flock is per open file description)
    a.release()
    assert not p.exists()
    assert b.acquire() and b.took_over is None  # a clean release leaves nothing to take over
    b.release()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    p = tmp_path / "cell.lock"
    code = textwrap.dedent(f"""
        import sys, time
        from vitscope.experiments.locks import CellLock
        assert CellLock({str(p)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert not CellLock(p).acquire()        # held by a live process
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    lock = CellLock(p)
    assert lock.acquire()
    assert lock.took_over["pid"] == proc.pid     # the dead owner's record
    lock.release()


def test_owner_record_staleness(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    assert is_stale({"pid": dead.pid, "host": here, "since": time.time()}, 3600)
    assert not is_stale({"pid": os.getpid(), "host": here, "since": 0}, 3600)
    assert not is_stale({"pid": 1, "host": "elsewhere", "since": time.time()}, 3600)
    assert is_stale({"pid": 1, "host": "elsewhere", "since": time.time() - 7200}, 3600)
    assert is_stale(None, 3600)


def test_exclusive_create_fallback_breaks_stale_locks(tmp_path):
    p = tmp_path / "cell.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    p.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": time.time()}))
    lock = CellLock(p)
    assert lock._acquire_excl() and lock.took_over["pid"] == dead.pid
    assert not CellLock(p)._acquire_excl()      # now held by this (live) process
    lock.release()
