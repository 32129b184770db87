"""Background writer: rows go to the ``.npy`` files in place while the next batch is computed.

The main thread hands over one job per batch; a single thread writes the rows (``seek`` + ``write`` into
the already-created files, so the page cache holds them and the process's resident memory does not grow
with the dataset), flushes them to disk, and only then records the batch in the rank's progress file.
Batches that queued up while the thread was busy are committed together (one flush, one progress update),
so a fast GPU is never held back by one ``fsync`` per batch.
A bounded queue keeps at most ``max_pending`` batches in flight, so peak memory is independent of N.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitscope.features.progress import RankProgress

_F16_MAX = float(np.finfo(np.float16).max)


class _RowFile:
    """One ``.npy`` file opened for in-place row writes."""

    def __init__(self, path: Path) -> None:
        mm = np.load(path, mmap_mode="r")
        self.offset, self.shape, self.dtype = int(mm.offset), mm.shape, mm.dtype
        self.row_bytes = int(np.prod(mm.shape[1:], dtype=np.int64)) * mm.dtype.itemsize
        del mm
        self.path = path
        self.f = open(path, "r+b", buffering=0)  # noqa: SIM115 (closed in close())

    def write(self, start: int, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]} do not fit {self.shape[1:]}")
        if start < 0 or start + rows.shape[0] > self.shape[0]:
            raise ValueError(f"{self.path.name}: rows {start}..{start + rows.shape[0]} outside 0..{self.shape[0]}")
        mv = memoryview(rows).cast("B")
        self.f.seek(self.offset + start * self.row_bytes)
        while len(mv):
            n = self.f.write(mv)
            mv = mv[n:]

    def sync(self) -> None:
        (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(self.f.fileno())

    def close(self) -> None:
        self.f.close()


@dataclass
class Job:
    """One batch: rows ``start..stop`` of every array; ``indices`` are the samples that came back (sorted)."""

    start: int
    stop: int
    indices: np.ndarray
    labels: np.ndarray
    arrays: list                       # per store key: (B_good, ...) or (B_good, width); converted after ready()
    skipped: dict[int, dict] = field(default_factory=dict)
    ready: Callable[[], None] | None = None     # waits for an asynchronous device->host copy
    release: Callable[[], None] | None = None   # gives a pinned buffer back once written


class BackgroundWriter:
    """Writes :class:`Job` s in submission order on one thread; errors surface on the next ``submit``/``close``."""

    def __init__(self, store_dir: Path, files: list[str], keys: list, progress: RankProgress,
                 max_pending: int = 4, fsync: bool = True, check_f16: bool = False) -> None:
        self.files = [_RowFile(Path(store_dir) / f) for f in files]
        self.labels = _RowFile(Path(store_dir) / "labels.npy")
        self.keys = keys
        self.progress = progress
        self.fsync = fsync
        self.check_f16 = check_f16
        self.bytes_written = 0
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vitscope-feature-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ main thread
    def submit(self, job: Job) -> None:
        self._raise()
        while True:
            try:
                self._q.put(job, timeout=0.5)
                return
            except queue.Full:
                self._raise()

    def close(self) -> None:
        """Wait for every pending job, close the files; re-raise a writer error."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        for f in self.files + [self.labels]:
            f.close()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None and not isinstance(self._error, _Aborted):
            err = self._error
            self._error = _Aborted()
            raise err

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            jobs = [self._q.get()]
            # group commit: whatever else is already queued is written now and synced once with it
            while jobs[-1] is not None:
                try:
                    jobs.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = jobs[-1] is None
            jobs = [j for j in jobs if j is not None]
            if jobs and self._error is None:
                try:
                    for job in jobs:
                        self._write(job)
                    if self.fsync:
                        for f in self.files + [self.labels]:
                            f.sync()
                    self.progress.add([(j.start, j.stop) for j in jobs],
                                      {k: v for j in jobs for k, v in j.skipped.items()})
                except BaseException as e:  # noqa: BLE001 (handed to the main thread)
                    self._error = e
            if stop:
                return

    def _write(self, job: Job) -> None:
        if job.ready is not None:
            job.ready()
        n = job.stop - job.start
        pos = np.asarray(job.indices, dtype=np.int64) - job.start
        full = len(pos) == n
        for f, key, arr in zip(self.files, self.keys, job.arrays):
            a = arr.numpy() if hasattr(arr, "numpy") else np.asarray(arr)
            a = a.reshape((a.shape[0],) + f.shape[1:])        # flat (B, width) views from a pinned buffer
            if self.check_f16 and a.size and not np.isfinite(a).all():
                raise ValueError(f"features of {key} are not finite in float16 (|x| > {_F16_MAX:g} overflows); "
                                 "extract with dtype='float32'")
            if not full:
                rows = np.zeros((n,) + a.shape[1:], dtype=f.dtype)
                rows[pos] = a
                a = rows
            f.write(job.start, a)
            self.bytes_written += a.nbytes
        lab = np.full(n, -1, dtype=np.int64)
        lab[pos] = np.asarray(job.labels, dtype=np.int64)
        self.labels.write(job.start, lab)
        if job.release is not None:
            job.release()


class _Aborted(Exception):
    pass
