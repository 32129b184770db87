"""The results table: one parquet dataset per study, one file per cell, written atomically.

``STUDY_DIR/results/<cell id>.parquet`` holds every row of one cell with one fixed schema (:data:`SCHEMA`), so
the whole study reads with one line of pandas::

    df = pandas.read_parquet("runs/my-study/results")

A cell that failed (or was skipped) writes one row with ``status`` "error" (or "skipped") and its message in
``error``; it is run again by the next ``vitscope run``. A cell whose file says "ok" is finished and never run
again. Files of cells that are no longer in the study (options changed) are moved to ``superseded/`` so old
and new rows never mix; they come back if the same cell is planned again.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa

RESULTS = "results"
SUPERSEDED = "superseded"
STATUSES = ("ok", "error", "skipped")

SCHEMA = pa.schema([
    ("study", pa.string()), ("cell", pa.string()), ("model", pa.string()), ("weights_hash", pa.string()),
    ("dataset", pa.string()), ("analysis", pa.string()), ("task", pa.string()), ("block", pa.int64()),
    ("head", pa.int64()), ("model2", pa.string()), ("block2", pa.int64()), ("metric", pa.string()),
    ("value", pa.float64()), ("options", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("vitscope_version", pa.string()), ("time", pa.timestamp("us", tz="UTC")), ("seconds", pa.float64()),
])
COLUMNS = SCHEMA.names
ROW_KEYS = ("task", "block", "head", "model2", "block2", "metric", "value")   # what an analysis may fill in


def results_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / RESULTS


def cell_file(study_dir: str | Path, cell_id: str) -> Path:
    return results_dir(study_dir) / f"{cell_id}.parquet"


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def make_rows(rows: list[dict], base: dict) -> list[dict]:
    """Complete an analysis's rows with the cell's columns (``base``); reject unknown keys."""
    out = []
    for r in rows:
        bad = set(r) - set(ROW_KEYS)
        if bad:
            raise ValueError(f"an analysis row may only set {ROW_KEYS}; got {sorted(bad)}")
        if "metric" not in r or "value" not in r:
            raise ValueError(f"an analysis row needs 'metric' and 'value'; got {r}")
        out.append({**{k: None for k in COLUMNS}, **base, **r})
    return out


def _table(rows: list[dict]) -> pa.Table:
    cols = {c: [r.get(c) for r in rows] for c in COLUMNS}
    cols["value"] = [None if v is None else float(v) for v in cols["value"]]
    for c in ("block", "head", "block2"):
        cols[c] = [None if v is None else int(v) for v in cols[c]]
    return pa.table(cols, schema=SCHEMA)


def write_cell(study_dir: str | Path, cell_id: str, rows: list[dict]) -> Path:
    """Write one cell's rows atomically (temporary file, fsync, rename): a reader sees all of them or none."""
    import pyarrow.parquet as pq

    path = cell_file(study_dir, cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(_table(rows), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def cell_status(study_dir: str | Path, cell_id: str) -> str | None:
    """"ok", "error", "skipped", or None when the cell has no results file."""
    import pyarrow.parquet as pq

    path = cell_file(study_dir, cell_id)
    if not path.exists():
        return None
    try:
        st = pq.read_table(path, columns=["status"]).column("status").to_pylist()
    except (OSError, pa.ArrowInvalid):
        return None                                   # unreadable: treat as not run
    if not st:
        return "ok"                                   # an analysis that returned no rows
    return "ok" if all(s == "ok" for s in st) else next(s for s in st if s != "ok")


def is_finished(study_dir: str | Path, cell_id: str) -> bool:
    return cell_status(study_dir, cell_id) == "ok"


def set_aside(study_dir: str | Path, keep: set[str]) -> tuple[int, int]:
    """Move result files of cells not in ``keep`` to ``superseded/``; bring back planned ones. -> (moved, restored)."""
    rd = results_dir(study_dir)
    sd = Path(study_dir) / SUPERSEDED
    moved = restored = 0
    if rd.exists():
        for p in rd.glob("*.parquet"):
            if p.stem not in keep:
                sd.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.move(str(p), sd / p.name)
                except FileNotFoundError:             # moved by a concurrent run of the same study
                    continue
                moved += 1
    if sd.exists():
        for p in sd.glob("*.parquet"):
            if p.stem in keep and not (rd / p.name).exists():
                rd.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.move(str(p), rd / p.name)
                except FileNotFoundError:
                    continue
                restored += 1
    return moved, restored


def read_results(study_dir: str | Path, status: str | None = None):
    """The study's table as a DataFrame (every cell file, cells in the order they ran); ``status="ok"`` keeps the
    rows of finished cells."""
    import pandas as pd

    rd = results_dir(study_dir)
    if not rd.exists() or not any(rd.glob("*.parquet")):
        raise FileNotFoundError(f"no results in {rd}; run the study first (`vitscope run STUDY.yaml`)")
    df = pd.read_parquet(rd)
    df = df.sort_values("time", kind="stable").reset_index(drop=True)     # cells in the order they ran
    if status is not None:
        df = df[df["status"] == status].reset_index(drop=True)
    return df


def options_json(options: dict) -> str:
    return json.dumps(options, sort_keys=True, default=str)
