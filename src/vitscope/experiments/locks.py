"""File locks: one owner per study cell, one extraction per feature store.

:class:`CellLock` is non-blocking: a run that finds a cell locked leaves it to its owner. The lock file holds
the owner's pid, host and start time. The owner also holds an ``flock`` on it, which the kernel releases when
the owner dies (SIGKILL, out of memory, a pre-empted job), so a lock left by a dead process is taken over at
once. Where ``flock`` is not available (some network file systems) the lock falls back to ``O_EXCL`` creation
and the owner record: a lock of a process that no longer exists on this host, or older than ``stale_after``
seconds on another host, is stale and is broken.

:func:`store_lock` is a blocking lock: a second cell that needs the same feature store waits until the first
has extracted it, then reuses it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # exists, owned by someone else
        return True
    return True


def read_owner(path: str | Path) -> dict | None:
    """The owner record of a lock file (pid, host, since), or None when absent or unreadable."""
    try:
        return json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None


def is_stale(owner: dict | None, stale_after: float) -> bool:
    """A lock record whose process is gone (same host) or that is older than ``stale_after`` (other host)."""
    if not owner:
        return True
    if owner.get("host") == socket.gethostname():
        return not pid_alive(owner.get("pid", -1))
    return time.time() - float(owner.get("since", 0)) > stale_after


class CellLock:
    """Non-blocking exclusive lock on ``path``: ``acquire()`` returns True when this process owns it.

    >>> lock = CellLock("study/locks/cell.lock")
    >>> if lock.acquire():
    ...     try: ...
    ...     finally: lock.release()
    """

    def __init__(self, path: str | Path, stale_after: float = 48 * 3600.0) -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        self.fd: int | None = None
        self.took_over: dict | None = None        # the record of a dead owner this lock replaced

    # ------------------------------------------------------------------ flock path
    def _acquire_flock(self) -> bool:
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError:
                os.close(fd)
                raise
            # the file may have been unlinked (released) between open and flock: then retry on the new file
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            prev = os.read(fd, 4096)
            if prev.strip():
                with contextlib.suppress(ValueError):
                    self.took_over = json.loads(prev)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(_owner()).encode())
            os.fsync(fd)
            self.fd = fd
            return True
        return False

    # ------------------------------------------------------------------ O_EXCL fallback
    def _acquire_excl(self) -> bool:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = read_owner(self.path)
                if not is_stale(owner, self.stale_after):
                    return False
                self.took_over = owner
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            os.write(fd, json.dumps(_owner()).encode())
            os.fsync(fd)
            self.fd = fd
            return True
        return False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._acquire_flock()
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            return self._acquire_excl()

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)                 # unlink while still holding the flock, then close
        os.close(self.fd)
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> CellLock:
        if not self.acquire():
            owner = read_owner(self.path) or {}
            raise RuntimeError(f"{self.path} is held by pid {owner.get('pid')} on {owner.get('host')}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def store_lock(path: str | Path, poll: float = 0.2) -> Iterator[None]:
    """Blocking exclusive lock (``flock`` on a lock file that stays in place); waits for the current owner."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:               # no flock here: poll an O_EXCL lock instead
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            lock = CellLock(path.with_name(path.name + ".excl"))
            while not lock.acquire():
                time.sleep(poll)
            try:
                yield
            finally:
                lock.release()
            return
        yield
    finally:
        os.close(fd)


def held_by(path: str | Path) -> dict | None:
    """The owner record of a :class:`CellLock` that a live process holds now, else None; reads, never takes it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_owner(path) or {}
        except OSError:                    # no flock here: the O_EXCL record decides
            owner = read_owner(path)
            return None if is_stale(owner, 48 * 3600.0) else owner
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
