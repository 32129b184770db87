"""Running cells: the plan file, one cell under its lock, and the outcome of each.

``STUDY_DIR/plan.json`` lists every cell of the study (written by :func:`prepare`); a worker of any launcher
(another process, a SLURM array task) runs a cell knowing only the study folder and the cell id.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from vitscope.experiments.cells import Cell, expand, store_tokens
from vitscope.experiments.config import Study, load_plugins
from vitscope.experiments.results import (cell_status, is_finished, make_rows, now, options_json, set_aside,
                                          write_cell)
from vitscope.outlock import CellLock

PLAN = "plan.json"
LOCKS = "locks"


@dataclass
class Outcome:
    """What happened to a cell in this run: ok, error, skipped (analysis unavailable), done (finished before),
    busy (another run holds its lock), queued (left to the SLURM job of an earlier submission, still queued)."""

    cell: str
    status: str
    seconds: float = 0.0
    rows: int = 0
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def prepare(study: Study, study_dir: str | Path) -> list[Cell]:
    """Expand the study, write ``plan.json`` and set aside result files of cells no longer in the study."""
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    plan_path = study_dir / PLAN
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old.get("study") not in (None, study.name):
            raise ValueError(f"{study_dir} holds the study {old.get('study')!r}, not {study.name!r}; choose another "
                             "output folder (--out) or keep the study's name")
    cells = expand(study)
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError("two cells of the study are identical; check for repeated models or datasets")
    plan = {"study": study.name, "source": str(study.path) if study.path else None, "plugins": study.plugins,
            "features": study.features, "store_tokens": store_tokens(study, cells),
            "cells": [c.to_dict() for c in cells]}
    write_json_atomic(plan_path, plan)
    if study.path is not None:
        copy = study_dir / f".study.yaml.{os.getpid()}.tmp"
        copy.write_text(Path(study.path).read_text())
        os.replace(copy, study_dir / "study.yaml")
    set_aside(study_dir, set(ids))
    return cells


def load_plan(study_dir: str | Path) -> dict:
    p = Path(study_dir) / PLAN
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: {study_dir} is not a study folder (run `vitscope run STUDY.yaml`)")
    plan = json.loads(p.read_text())
    load_plugins(plan.get("plugins") or [], None)
    return plan


def _base_row(cell: Cell, ctx, version: str) -> dict:
    wh = None
    try:
        wh = ctx.weights_hash(0)
    except Exception:                 # noqa: BLE001 - the model itself may be what failed to load
        pass
    return {"study": cell.study, "cell": cell.id, "model": cell.models[0].label, "weights_hash": wh,
            "dataset": cell.dataset.name, "analysis": cell.analysis,
            "model2": cell.models[-1].label if len(cell.models) > 1 else None,
            "options": options_json({**cell.options, **({"features": cell.features} if cell.features else {})}),
            "status": "ok", "error": None, "vitscope_version": version}


def run_cell(study_dir: str | Path, cell_id: str, device: str | None = None, plan: dict | None = None,
             progress: bool = False) -> Outcome:
    """Run one cell unless it is finished or locked by another run; record its rows (or its error)."""
    import vitscope
    from vitscope.experiments.analyses import REGISTRY, AnalysisUnavailable
    from vitscope.experiments.context import CellContext

    study_dir = Path(study_dir)
    plan = plan or load_plan(study_dir)
    by_id = {c["id"]: c for c in plan["cells"]}
    if cell_id not in by_id:
        raise KeyError(f"cell {cell_id!r} is not in {study_dir / PLAN}")
    cell = Cell.from_dict(by_id[cell_id])
    if is_finished(study_dir, cell_id):
        return Outcome(cell_id, "done")
    lock = CellLock(study_dir / LOCKS / f"{cell_id}.lock")
    if not lock.acquire():
        return Outcome(cell_id, "busy", message="another run holds this cell")
    try:
        if is_finished(study_dir, cell_id):                     # finished by another run meanwhile
            return Outcome(cell_id, "done")
        t0 = time.perf_counter()
        ctx = CellContext(cell, study_dir, plan.get("store_tokens"), device=device, progress=progress,
                          features=plan.get("features"))
        status, message = "ok", ""
        try:
            adapter = REGISTRY.get(cell.kind)
            if adapter is None:
                raise AnalysisUnavailable(f"analysis {cell.kind!r} is not registered in this installation")
            produced = adapter.fn(ctx, cell.options) or []
        except AnalysisUnavailable as e:
            status, message, produced = "skipped", str(e), []
        except Exception as e:                                  # noqa: BLE001 - recorded; the other cells go on
            status, message, produced = "error", f"{type(e).__name__}: {e}", []
            (ctx.out / "error.txt").write_text(traceback.format_exc())
        seconds = time.perf_counter() - t0
        base = {**_base_row(cell, ctx, vitscope.__version__), "time": now(), "seconds": round(seconds, 3)}
        if status == "ok":
            try:
                rows = make_rows(produced, base)
            except ValueError as e:
                status, message = "error", f"ValueError: {e}"
        if status != "ok":
            rows = [{**{k: None for k in ("task", "block", "head", "block2", "metric", "value")}, **base,
                     "status": status, "error": message}]
        write_cell(study_dir, cell_id, rows)
        return Outcome(cell_id, status, seconds, len(rows) if status == "ok" else 0, message)
    finally:
        lock.release()


def pending(study_dir: str | Path, cells: list[Cell]) -> list[Cell]:
    """Cells without an "ok" results file (never run, killed, failed or skipped)."""
    return [c for c in cells if cell_status(study_dir, c.id) != "ok"]
