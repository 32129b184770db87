"""The one lock implementation (vitscope.outlock) in its three uses: the blocking feature-store lock waits for its
holder in another process, and every use falls back to O_EXCL files where flock is not supported (NFS)."""
import errno
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from vitscope import outlock
from vitscope.outlock import CellLock, FileLock, OutputLockedError, output_lock, store_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vitscope.outlock import store_lock
    with store_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(0.5)
        Path(sys.argv[2]).write_text("written")
""")


def test_store_lock_waits_for_the_holder(tmp_path):
    lock, marker = tmp_path / "store.lock", tmp_path / "store-written"
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(marker)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert p.stdout.readline().strip() == "locked"
        with store_lock(lock):
            assert marker.read_text() == "written"          # we got the lock only after the holder finished
        assert lock.exists()                                # a store lock stays in place
    finally:
        p.kill()
        p.wait()


@pytest.fixture
def no_flock(monkeypatch):
    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(outlock.fcntl, "flock", flock)


def test_output_lock_without_flock_refuses_a_second_writer_and_cleans_up(tmp_path, no_flock):
    with output_lock(tmp_path, "first writer") as path:
        assert json.loads(path.read_text())["command"] == "first writer"
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()} .*first writer"):
            with output_lock(tmp_path):
                pass
    assert not path.exists()                                # the fallback's file goes with the lock
    with output_lock(tmp_path):
        pass


def test_store_and_cell_locks_without_flock_break_a_dead_owners_lock(tmp_path, no_flock):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 0})
    (tmp_path / "store.lock").write_text(record)
    with store_lock(tmp_path / "store.lock"):               # blocking, but the owner is dead: taken at once
        assert json.loads((tmp_path / "store.lock").read_text())["pid"] == os.getpid()
    (tmp_path / "cell.lock").write_text(record)
    cell = CellLock(tmp_path / "cell.lock")
    assert cell.acquire() and cell.took_over["pid"] == dead.pid
    assert not FileLock(tmp_path / "cell.lock").acquire()  # held by this live process
    cell.release()
    assert not (tmp_path / "cell.lock").exists()
