"""One writer per output folder.

Every command that writes a folder (``extract``, ``train``, ``report`` / ``demo`` and the evaluation commands)
holds an advisory lock on ``<folder>/.vitscope-lock[-<part>]`` while it writes. A second process that asks for
the same lock is refused at once with one line naming the process that holds it. The lock is an
``fcntl.flock`` on an open file, so the operating system releases it when the holder exits, also when it is
killed: there are no stale locks to clean up. The file itself records who holds it (pid, host, command, start
time) for the message; it is left in place.

>>> with output_lock("runs/x", "vitscope extract"):
...     ...   # write runs/x
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

try:                                       # POSIX; elsewhere the lock is a no-op (documented)
    import fcntl
except ImportError:                        # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".vitscope-lock"


class OutputLockedError(RuntimeError):
    """Another process is writing the same output folder."""


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command', '?')}, since {since})"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str | None = None, part: str | None = None) -> Iterator[Path]:
    """Hold the write lock of ``folder`` (created if needed) for the ``with`` block.

    ``part`` names a sub-lock (e.g. one per distributed rank, ``part="rank-3"``), so that the ranks of one job
    do not refuse each other while a second job is refused. Raises :class:`OutputLockedError` (one line, naming
    the holder) when another process holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (LOCK_NAME if part is None else f"{LOCK_NAME}-{part}")
    if fcntl is None:                                                   # pragma: no cover
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(
                f"{folder} is being written by {_describe(path)}; wait for it to finish or choose another "
                f"output folder") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": command or " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
