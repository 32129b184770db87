"""File locks: one writer per output folder, one owner per study cell, one extraction per feature store.

One implementation, :class:`FileLock`, used three ways:

- :func:`output_lock`: every command that writes a folder (``extract``, ``train``, ``report`` / ``demo`` and the
  evaluation commands) holds it on ``<folder>/.vitscope-lock[-<part>]`` while it writes. A second process that asks
  for the same lock is refused at once (:class:`OutputLockedError`, one line naming the holder).
- :class:`CellLock`: a study cell's lock; non-blocking (a run that finds a cell locked leaves it to its owner), the
  file is removed on release, and the record of an owner that died is kept in ``took_over``.
- :func:`store_lock`: blocking; a second cell that needs the same feature store waits until the first has
  extracted it, then reuses it.

The lock is an ``fcntl.flock`` on an open file, so the operating system releases it when the holder exits, also
when it is killed: there are no stale locks to clean up. The file records who holds it (pid, host, start time,
command) for the messages. Where ``flock`` is not available (some network file systems) the lock falls back to
``O_EXCL`` creation and that record: a lock of a process that no longer exists on this host, or older than
``stale_after`` seconds on another host, is stale and is broken. Without ``fcntl`` (Windows) only the fallback
is used.

>>> with output_lock("runs/x", "vitscope extract"):
...     ...   # write runs/x
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

try:                                       # POSIX; elsewhere the O_EXCL fallback
    import fcntl
except ImportError:                        # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".vitscope-lock"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)      # flock not supported here


class OutputLockedError(RuntimeError):
    """Another process is writing the same output folder."""


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
    """The owner record of a lock file (pid, host, since, command), or None when absent, empty or unreadable."""
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


def held_by(path: str | Path) -> dict | None:
    """The owner record of a lock that a live process holds now, else None; reads it, never takes it."""
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


class FileLock:
    """An exclusive advisory lock on the file ``path``.

    ``acquire(blocking=False)`` returns True when this process holds it (``blocking=True`` waits for the holder).
    ``remove``: release deletes the file (else it is emptied and left in place). ``command`` goes into the owner
    record. ``took_over`` is the record of a previous holder that died while holding the lock.
    """

    def __init__(self, path: str | Path, remove: bool = False, stale_after: float = 48 * 3600.0,
                 command: str | None = None) -> None:
        self.path = Path(path)
        self.remove = remove
        self.stale_after = stale_after
        self.command = command
        self.fd: int | None = None
        self.took_over: dict | None = None
        self._excl = False

    def _record(self) -> bytes:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        if self.command is not None:
            info["command"] = self.command[:200]
        return json.dumps(info).encode()

    # ------------------------------------------------------------------ flock
    def _acquire_flock(self, blocking: bool = False) -> bool:
        tries = 0
        while blocking or tries < 20:
            tries += 1
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError:
                os.close(fd)
                raise
            if self.remove:         # released (unlinked) between our open and flock: retry on the new file
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
            os.pwrite(fd, self._record(), 0)
            os.fsync(fd)
            self.fd = fd
            return True
        return False

    # ------------------------------------------------------------------ O_EXCL fallback
    def _acquire_excl(self, blocking: bool = False, poll: float = 0.2) -> bool:
        tries = 0
        while blocking or tries < 3:
            tries += 1
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = read_owner(self.path)
                if not is_stale(owner, self.stale_after):
                    if not blocking:
                        return False
                    time.sleep(poll)
                    continue
                self.took_over = owner
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            os.write(fd, self._record())
            os.fsync(fd)
            self.fd, self._excl = fd, True
            return True
        return False

    def acquire(self, blocking: bool = False, poll: float = 0.2) -> bool:
        """Take the lock; False when another process holds it (``blocking``: wait, polling every ``poll`` seconds
        where only the fallback works)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:                                               # pragma: no cover
            return self._acquire_excl(blocking, poll)
        try:
            return self._acquire_flock(blocking)
        except OSError as e:
            if e.errno not in NO_FLOCK:
                raise
            return self._acquire_excl(blocking, poll)

    def release(self) -> None:
        if self.fd is None:
            return
        if self.remove or self._excl:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)             # unlink while still holding the flock, then close
        else:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd, self._excl = None, False

    @property
    def held(self) -> bool:
        return self.fd is not None

    def holder(self) -> str:
        """The holder as one phrase for messages: ``pid N on HOST (COMMAND, since TIME)``."""
        info = read_owner(self.path)
        if not info:
            return "another process"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", info.get("started", 0))))
        return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command', '?')}, since {since})"


class CellLock(FileLock):
    """A study cell's lock: non-blocking, removed on release, a dead owner's lock taken over.

    >>> lock = CellLock("study/locks/cell.lock")
    >>> if lock.acquire():
    ...     try: ...
    ...     finally: lock.release()
    """

    def __init__(self, path: str | Path, stale_after: float = 48 * 3600.0) -> None:
        super().__init__(path, remove=True, stale_after=stale_after)

    def __enter__(self) -> CellLock:
        if not self.acquire():
            owner = read_owner(self.path) or {}
            raise RuntimeError(f"{self.path} is held by pid {owner.get('pid')} on {owner.get('host')}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str | None = None, part: str | None = None) -> Iterator[Path]:
    """Hold the write lock of ``folder`` (created if needed) for the ``with`` block.

    ``part`` names a sub-lock (e.g. one per distributed rank, ``part="rank-3"``), so that the ranks of one job
    do not refuse each other while a second job is refused. Raises :class:`OutputLockedError` (one line, naming
    the holder) when another process holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / (LOCK_NAME if part is None else f"{LOCK_NAME}-{part}"),
                    command=command or " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]))
    if not lock.acquire():
        raise OutputLockedError(f"{folder} is being written by {lock.holder()}; wait for it to finish or choose "
                                f"another output folder")
    try:
        yield lock.path
    finally:
        lock.release()


@contextlib.contextmanager
def store_lock(path: str | Path, poll: float = 0.2) -> Iterator[None]:
    """Blocking exclusive lock on ``path`` (left in place); waits for the current holder."""
    lock = FileLock(path)
    if not lock.acquire(blocking=True, poll=poll):                                 # pragma: no cover - blocking returns True
        raise RuntimeError(f"could not lock {path}")
    try:
        yield
    finally:
        lock.release()
