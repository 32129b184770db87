"""run_study: expand a study, run its pending cells with a launcher, and sum up what happened."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitscope.experiments.config import Study
from vitscope.experiments.launchers import (LAUNCHERS, SlurmOptions, active_jobs, limit_threads, run_local,
                                            run_processes, submit)
from vitscope.experiments.runner import Outcome, pending, prepare


@dataclass
class RunSummary:
    study: str
    study_dir: Path
    cells: int
    already_done: int
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    submitted: list[str] = field(default_factory=list)     # job ids (SLURM without --wait)

    @property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    def line(self) -> str:
        c = self.counts
        parts = [f"{c.get('ok', 0)} run"]
        if self.already_done or c.get("done"):
            parts.append(f"{self.already_done + c.get('done', 0)} already done")
        for key, word in (("busy", "left to another run (locked)"), ("queued", "left to their queued SLURM jobs"),
                          ("skipped", "skipped"), ("error", "failed")):
            if c.get(key):
                parts.append(f"{c[key]} {word}")
        if self.submitted:
            parts.append(f"{len(self.submitted)} submitted")
        return (f"study {self.study}: {self.cells} cells: {', '.join(parts)} in {self.seconds:.1f} s "
                f"-> {self.study_dir}")


def run_study(study: Study, study_dir: str | Path, launcher: str = "local", jobs: int = 1,
              device: str | None = None, slurm: SlurmOptions | None = None, only_pending: bool = True,
              threads: int | None = None, nproc_per_node: int | None = None,
              on_start: Callable[[int, int], None] | None = None,
              on_done: Callable[[Outcome], None] | None = None) -> RunSummary:
    """Run every cell of ``study`` that has no finished results in ``study_dir``.

    ``launcher``: "local" (``jobs`` processes when > 1), "slurm" or "submitit-local" (one job-array task per
    cell through submitit). ``threads``: CPU threads per cell (default: torch's, or cpus / jobs with ``jobs``).
    ``nproc_per_node``: extract each feature store with ``torchrun`` over this many processes (overrides the
    study's ``features: {nproc_per_node: K}``; the numbers do not change, so neither do the cells).
    Failed cells are recorded and the others go on; cells locked by another run are
    left to it.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher takes {', '.join(LAUNCHERS)}, got {launcher!r}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if nproc_per_node is not None:
        if nproc_per_node < 1:
            raise ValueError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
        study.features = {**study.features, "nproc_per_node": int(nproc_per_node)}
    t0 = time.perf_counter()
    study_dir = Path(study_dir)
    cells = prepare(study, study_dir)
    todo = pending(study_dir, cells) if only_pending else cells
    ids = [c.id for c in todo]
    summary = RunSummary(study.name, study_dir, len(cells), len(cells) - len(todo))
    if launcher == "slurm" and ids:                 # a cell whose earlier job is still queued is not submitted twice
        queued = active_jobs(study_dir, ids)
        summary.outcomes = [Outcome(c, "queued", message=f"job {j}") for c, j in queued.items()]
        ids = [c for c in ids if c not in queued]
    if on_start:
        on_start(len(cells), len(ids))
    if ids:
        if launcher == "local" and jobs == 1:
            limit_threads(threads)
            summary.outcomes += run_local(study_dir, ids, device, on_done)
        elif launcher == "local":
            summary.outcomes += run_processes(study_dir, ids, jobs, device, on_done, threads)
        else:
            opts = slurm or SlurmOptions()
            if launcher == "submitit-local":
                opts.wait = True
            jobs_, outs = submit(study_dir, ids, "local" if launcher == "submitit-local" else "slurm", opts, device,
                                 name=f"vitscope-{study.name}", on_done=on_done)
            summary.outcomes += outs
            if not opts.wait:
                summary.submitted = [j.job_id for j in jobs_]
    summary.seconds = time.perf_counter() - t0
    return summary
