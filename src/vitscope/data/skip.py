"""The bad-file policy: what a run does with a file it cannot decode, and the report it leaves behind.

``on_error="skip"`` (the default for dataset runs) records the file and goes on; ``"raise"`` stops at the
first bad file with its one-line reason. Skipped files are listed in ``skipped.csv`` next to the results
(:func:`write_skip_report`) and summarised in one line at the end of the run (:func:`skip_summary`).
"""
from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ON_ERROR = ("skip", "raise")

# readable words for ImageDecodeError.kind in summaries
_KIND_WORDS = {
    "missing": "missing",
    "folder": "a folder",
    "empty": "empty",
    "not_image": "not an image",
    "truncated": "truncated",
    "too_large": "too large",
    "corrupt": "corrupt",
}


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


@dataclass(frozen=True)
class SkipRecord:
    """One item a run left out: its sample index, its id (file path or locator), why, and the kind of failure."""

    index: int
    id: str
    reason: str
    kind: str = "corrupt"


def write_skip_report(skipped: Iterable[SkipRecord], path: str | Path) -> Path:
    """Write the skipped items as CSV (columns index, id, kind, reason), sorted by index; returns the path.

    The file is written even when nothing was skipped (header only), so its absence never means "all fine".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(skipped, key=lambda r: r.index)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "id", "kind", "reason"])
        for r in rows:
            w.writerow([r.index, r.id, r.kind, r.reason])
    return path


def read_skip_report(path: str | Path) -> list[SkipRecord]:
    """Read back a report written by :func:`write_skip_report`."""
    with Path(path).open(newline="") as f:
        return [SkipRecord(int(r["index"]), r["id"], r["reason"], r["kind"]) for r in csv.DictReader(f)]


def skip_summary(skipped: Iterable[SkipRecord], total: int | None = None, report: str | Path | None = None) -> str:
    """One line for the end of a run, e.g.
    ``skipped 3 of 120 images (2 truncated, 1 not an image); see skipped.csv``."""
    rows = list(skipped)
    of = f" of {total}" if total is not None else ""
    see = f"; see {report}" if report is not None else ""
    if not rows:
        return f"skipped 0{of} images{see}"
    kinds = Counter(r.kind for r in rows)
    parts = ", ".join(f"{n} {_KIND_WORDS.get(k, k)}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"skipped {len(rows)}{of} images ({parts}){see}"
