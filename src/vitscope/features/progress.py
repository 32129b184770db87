"""Which samples are on disk: per-rank progress files, updated atomically after the data is flushed.

Each rank owns ``progress/rank-{r}.json``::

    {"done": [[0, 64], [128, 192]], "skipped": {"17": {"id": ..., "reason": ..., "kind": ...}}}

``done`` holds half-open sample-index intervals whose rows are on disk (written and flushed before the file is
replaced with ``os.replace``, so a kill at any moment leaves a file that under-states, never over-states, what
is written). The union over all rank files is what a resumed run skips, whatever the number of ranks was.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

PROGRESS_DIR = "progress"


def merge(intervals) -> list[list[int]]:
    """Sort and merge half-open intervals."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def complement(done, n: int) -> list[list[int]]:
    """Intervals of [0, n) not covered by ``done``."""
    out, pos = [], 0
    for a, b in merge(done):
        if a > pos:
            out.append([pos, min(a, n)])
        pos = max(pos, b)
    if pos < n:
        out.append([pos, n])
    return [iv for iv in out if iv[1] > iv[0]]


def covered(done) -> int:
    return sum(b - a for a, b in merge(done))


def grid_batches(todo, batch_size: int) -> list[tuple[int, int]]:
    """Cut the intervals still to do on the fixed grid ``[k*bs, (k+1)*bs)``.

    The grid does not depend on the number of ranks or on where a previous run stopped, so every sample is
    computed in the same batch as in an uninterrupted single-process run (bitwise-equal results on CPU).
    """
    out = []
    for a, b in merge(todo):
        k = a // batch_size
        while k * batch_size < b:
            lo, hi = max(a, k * batch_size), min(b, (k + 1) * batch_size)
            if hi > lo:
                out.append((lo, hi))
            k += 1
    return out


def write_json_atomic(path: Path, obj, fsync: bool = True) -> None:
    """Write JSON to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def rank_file(store_dir: Path, rank: int) -> Path:
    return Path(store_dir) / PROGRESS_DIR / f"rank-{rank}.json"


def read_rank(store_dir: Path, rank: int) -> dict:
    p = rank_file(store_dir, rank)
    if not p.exists():
        return {"done": [], "skipped": {}}
    d = json.loads(p.read_text())
    return {"done": merge(d.get("done", [])), "skipped": dict(d.get("skipped", {}))}


def read_all(store_dir: Path) -> tuple[list[list[int]], dict[int, dict]]:
    """Union of every rank's progress: (done intervals, {index: skip record})."""
    done: list = []
    skipped: dict[int, dict] = {}
    folder = Path(store_dir) / PROGRESS_DIR
    if folder.is_dir():
        for p in sorted(folder.glob("rank-*.json")):
            d = json.loads(p.read_text())
            done += d.get("done", [])
            skipped.update({int(k): v for k, v in d.get("skipped", {}).items()})
    return merge(done), skipped


class RankProgress:
    """The progress file of one rank; ``add`` records a flushed batch."""

    def __init__(self, store_dir: Path, rank: int, fsync: bool = True) -> None:
        self.path = rank_file(store_dir, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prev = read_rank(store_dir, rank)
        self.done = prev["done"]
        self.skipped = prev["skipped"]
        self.fsync = fsync

    def add(self, ranges, skipped: dict[int, dict]) -> None:
        """Record flushed sample ranges ``[(start, stop), ...]`` and their skipped samples, atomically."""
        self.done = merge(self.done + [list(r) for r in ranges])
        self.skipped.update({str(k): v for k, v in skipped.items()})
        write_json_atomic(self.path, {"done": self.done, "skipped": self.skipped}, fsync=self.fsync)
