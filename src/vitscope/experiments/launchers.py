"""Where the cells run: here one after another, here in K processes, or as a SLURM job array (submitit).

Every launcher runs :func:`~vitscope.experiments.runner.run_cell` for each pending cell; the per-cell lock makes
any mix of launchers and concurrent runs safe. ``submitit-local`` submits the same job array through submitit's
local executor (real subprocesses on this machine), which is how the SLURM path is tested without a cluster.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitscope.experiments.runner import Outcome, run_cell

LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    time: str = "1:00:00"
    mem: str | None = None
    array_parallelism: int = 16
    wait: bool = False
    extra: dict = field(default_factory=dict)          # other slurm_* parameters of submitit


def limit_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and in the BLAS / OpenMP pools (k-means); None leaves the defaults."""
    if not threads:
        return
    import torch

    torch.set_num_threads(int(threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(threads))
    except ImportError:
        pass


def parse_time_minutes(text: str) -> int:
    """SLURM time (``MM``, ``HH:MM:SS``, ``D-HH:MM``, ``D-HH:MM:SS``) -> whole minutes."""
    t = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if not m:
        raise ValueError(f"--time takes minutes or HH:MM:SS (or D-HH:MM:SS), got {text!r}")
    d, a, b, c = m.groups()
    days = int(d or 0)
    if d is not None:                                           # D-HH[:MM[:SS]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
    elif b is None:                                             # MM
        h, mi, s = 0, int(a), 0
    elif c is None:                                             # MM:SS
        h, mi, s = 0, int(a), int(b)
    else:                                                       # HH:MM:SS
        h, mi, s = int(a), int(b), int(c)
    return max(1, days * 1440 + h * 60 + mi + (1 if s else 0))


def parse_mem_gb(text: str | None) -> float | None:
    """``32G``, ``500M``, ``64`` (GB) -> GB."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text).upper())
    if not m:
        raise ValueError(f"--mem takes a size such as 32G or 500M, got {text!r}")
    v, unit = float(m.group(1)), m.group(2) or "G"
    return v * {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[unit]


# ----------------------------------------------------------------------------- local
def run_local(study_dir: Path, cell_ids: list[str], device: str | None = None,
              on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Cells one after another in this process (models and datasets shared between cells)."""
    from vitscope.experiments.runner import load_plan

    plan = load_plan(study_dir)
    out = []
    for cid in cell_ids:
        o = run_cell(study_dir, cid, device, plan)
        out.append(o)
        if on_done:
            on_done(o)
    return out


def _worker_init(threads: int) -> None:
    limit_threads(max(1, threads))


def _worker(study_dir: str, cell_id: str, device: str | None) -> dict:
    return run_cell(study_dir, cell_id, device).to_dict()


def run_processes(study_dir: Path, cell_ids: list[str], jobs: int, device: str | None = None,
                  on_done: Callable[[Outcome], None] | None = None, threads: int | None = None) -> list[Outcome]:
    """Cells spread over ``jobs`` worker processes (spawned; each uses ``threads`` or cpus/jobs threads)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    out = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as ex:
        futs = {ex.submit(_worker, str(study_dir), cid, device): cid for cid in cell_ids}
        for f in as_completed(futs):
            try:
                o = Outcome(**f.result())
            except Exception as e:                  # noqa: BLE001 - a worker that died (killed, out of memory)
                o = Outcome(futs[f], "error", message=f"worker process failed: {type(e).__name__}: {e}")
            out.append(o)
            if on_done:
                on_done(o)
    return out


# ----------------------------------------------------------------------------- SLURM through submitit
def cell_job(study_dir: str, cell_id: str, device: str | None = None) -> dict:
    """What one job-array task runs (only strings travel in the pickle)."""
    limit_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0) or None)
    return run_cell(study_dir, cell_id, device).to_dict()


def submit(study_dir: Path, cell_ids: list[str], cluster: str, opts: SlurmOptions, device: str | None = None,
           name: str = "vitscope", on_done: Callable[[Outcome], None] | None = None) -> tuple[list, list[Outcome]]:
    """Submit one job-array task per cell with submitit; with ``opts.wait`` wait and collect the outcomes."""
    try:
        import submitit
    except ImportError:
        raise RuntimeError("--launcher slurm needs submitit: pip install 'vitscope[slurm]'") from None
    if cluster == "slurm" and submitit.AutoExecutor.which() != "slurm":
        raise RuntimeError("no SLURM here (sbatch/srun not found); run on a login node of the cluster, or use "
                           "--launcher local")
    ex = submitit.AutoExecutor(folder=str(Path(study_dir).resolve() / "slurm" / "%j"), cluster=cluster)
    params = {"name": name, "timeout_min": parse_time_minutes(opts.time), "slurm_array_parallelism":
              int(opts.array_parallelism), "tasks_per_node": 1, "nodes": 1}
    if opts.gpus_per_node:
        params["gpus_per_node"] = int(opts.gpus_per_node)
    if opts.cpus_per_task:
        params["cpus_per_task"] = int(opts.cpus_per_task)
    if opts.mem:
        params["mem_gb"] = parse_mem_gb(opts.mem)
    if opts.partition:
        params["slurm_partition"] = opts.partition
    params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in opts.extra.items()})
    ex.update_parameters(**params)
    sd = str(Path(study_dir).resolve())
    jobs = ex.map_array(cell_job, [sd] * len(cell_ids), list(cell_ids), [device] * len(cell_ids))
    outcomes: list[Outcome] = []
    if opts.wait:
        left = dict(zip(cell_ids, jobs))
        while left:
            for cid, job in list(left.items()):
                if not job.done():
                    continue
                try:
                    o = Outcome(**job.result())
                except Exception as e:                        # noqa: BLE001 - killed, timed out, out of memory
                    msg = str(e).strip().splitlines()
                    o = Outcome(cid, "error", message=f"job {job.job_id} failed: {msg[-1] if msg else type(e).__name__}")
                outcomes.append(o)
                del left[cid]
                if on_done:
                    on_done(o)
            if left:
                time.sleep(0.5)
    return jobs, outcomes
