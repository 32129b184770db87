"""What ``vitscope run --status`` shows: the state of every cell of a study (done, running, queued, failed,
skipped, to run), read from the results files, the cell locks and, for cells submitted to SLURM, ``squeue``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitscope.experiments.cells import Cell
from vitscope.experiments.results import cell_status
from vitscope.experiments.runner import LOCKS


@dataclass
class CellState:
    """Where a cell stands: done, failed, skipped, queued / running (a SLURM job), running (a process holds its
    lock), or to run; ``detail`` says which job, process or error."""

    cell: str
    state: str
    detail: str = ""


def study_status(study_dir: str | Path, cells: list[Cell]) -> list[CellState]:
    """The state of every cell, from the results files, the cell locks and, for cells submitted to SLURM
    (``slurm/jobs.json``), ``squeue``; it changes nothing."""
    from vitscope.experiments.launchers import ENDED, read_jobs, slurm_states
    from vitscope.experiments.locks import held_by

    study_dir = Path(study_dir)
    jobs = read_jobs(study_dir)
    states = slurm_states([jobs[c.id] for c in cells if c.id in jobs]) if jobs else {}
    out = []
    for c in cells:
        st, job = cell_status(study_dir, c.id), jobs.get(c.id)
        owner = held_by(study_dir / LOCKS / f"{c.id}.lock")
        slurm = (states or {}).get(job) if job else None
        if st == "ok":
            out.append(CellState(c.id, "done"))
        elif owner is not None:
            where = f"job {job}" if slurm and slurm.split()[0] not in ENDED else \
                f"pid {owner.get('pid')} on {owner.get('host')}"
            out.append(CellState(c.id, "running", where))
        elif slurm and slurm.split()[0] not in ENDED:
            out.append(CellState(c.id, "queued" if slurm == "PENDING" else "running", f"job {job}: {slurm}"))
        elif st in ("error", "skipped"):
            out.append(CellState(c.id, "failed" if st == "error" else "skipped"))
        elif job:
            out.append(CellState(c.id, "to run", f"job {job}: squeue did not answer" if states is None else
                                 f"job {job} ended without a result ({slurm or 'no longer queued'})"))
        else:
            out.append(CellState(c.id, "to run"))
    return out
