"""Where the cells run: here one after another, here in K processes, or as a SLURM job array (submitit).

Every launcher runs :func:`~vitscope.experiments.runner.run_cell` for each pending cell; the per-cell lock makes
any mix of launchers and concurrent runs safe. ``submitit-local`` submits the same job array through submitit's
local executor (real subprocesses on this machine); the tests also run the SLURM path on a private one-node cluster.

SLURM jobs are followed with ``squeue`` and the result files submitit writes, not with ``sacct``: many small
clusters run without accounting, where ``sacct`` fails on every poll. ``STUDY_DIR/slurm/jobs.json`` records the
job of each submitted cell, which ``vitscope run --status`` reads.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitscope.experiments.locks import store_lock
from vitscope.experiments.runner import Outcome, run_cell, write_json_atomic

LAUNCHERS = ("local", "slurm", "submitit-local")
JOBS = "jobs.json"                   # STUDY_DIR/slurm/jobs.json: cell id -> job id of its last submission
# states of a job that will not run again (squeue keeps finished jobs for the cluster's MinJobAge)
ENDED = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"})


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


def _note(message: str) -> None:
    """One line on stderr that leaves a progress bar intact."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class _OnceHandler(logging.Handler):
    """submitit's warnings, each message once (submitit logs every warning to stdout and to stderr, per poll)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        msg = re.sub(r"^Call #\d+ - ", "", record.getMessage())
        if msg not in self.seen:
            self.seen.add(msg)
            _note(f"submitit: {msg}")


@contextlib.contextmanager
def _submitit_warnings_once():
    log = logging.getLogger("submitit")
    saved = log.handlers[:], log.propagate
    log.handlers, log.propagate = [_OnceHandler()], False
    try:
        yield
    finally:
        log.handlers, log.propagate = saved


def slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """``squeue``'s state of each job (array tasks as ``<array>_<task>``) among ``job_ids``: the jobs that are
    queued, running, or finished within the cluster's MinJobAge. A job it does not list has ended long ago.
    None when squeue cannot be asked (not on a cluster, controller down)."""
    arrays = sorted({str(j).split("_")[0] for j in job_ids})
    if not arrays:
        return {}
    try:
        r = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T",
                            f"--jobs={','.join(arrays)}"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return {} if "Invalid job id" in r.stderr else None      # every job aged out of the controller
    states = {}
    for line in r.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid:
            states[jid] = state.strip()
    return states


def read_jobs(study_dir: str | Path) -> dict[str, str]:
    """Cell id -> id of the SLURM job that last ran it (``slurm/jobs.json``)."""
    p = Path(study_dir) / "slurm" / JOBS
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def active_jobs(study_dir: str | Path, cell_ids: list[str]) -> dict[str, str]:
    """Cells among ``cell_ids`` whose last SLURM job is still queued or running: cell id -> "job id: state"."""
    jobs = {c: j for c, j in read_jobs(study_dir).items() if c in set(cell_ids)}
    states = slurm_states(list(jobs.values())) if jobs else {}
    return {c: f"{j}: {states[j]}" for c, j in jobs.items()
            if states and j in states and states[j].split()[0] not in ENDED}


def _record_jobs(study_dir: Path, jobs: dict[str, str]) -> None:
    p = study_dir / "slurm" / JOBS
    p.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(p.with_name(JOBS + ".lock")):
        write_json_atomic(p, {**read_jobs(study_dir), **jobs})


def _collect(cid: str, job) -> Outcome:
    """The outcome a finished job wrote; an error outcome when it raised."""
    try:
        return Outcome(**job.result())
    except Exception as e:                                    # noqa: BLE001 - the job's own failure
        msg = str(e).strip().splitlines()
        return Outcome(cid, "error", message=f"job {job.job_id} failed: {msg[-1] if msg else type(e).__name__}")


def _ended_without_result(cid: str, job, state: str) -> Outcome:
    last = ""
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in Path(job.paths.stderr).read_text(errors="replace").splitlines() if ln.strip()]
        last = f": {lines[-1]}" if lines else ""
    return Outcome(cid, "error", message=f"job {job.job_id} ended without a result ({state}){last}; log: "
                                         f"{job.paths.stderr}")


def wait_slurm(jobs: dict, on_done: Callable[[Outcome], None] | None = None, poll: float = 0.5,
               grace: float = 10.0, max_interval: float = 30.0) -> list[Outcome]:
    """Wait for SLURM jobs (cell id -> submitit job) and collect their outcomes.

    A job is done when its result file appears (checked every ``poll`` seconds). ``squeue`` is asked every few
    seconds (more rarely as the wait grows, at most every ``max_interval``): a job that it shows as ended
    (cancelled, timed out, out of memory, failed) or no longer lists, and whose result file is still missing
    ``grace`` seconds later (a shared file system may show it late), becomes an error outcome naming its state
    and log. Its cell has no results file, so the next ``vitscope run`` runs it again."""
    left = dict(jobs)
    outcomes: list[Outcome] = []
    ended: dict[str, tuple[float, str]] = {}            # cell -> (when squeue first showed its job ended, state)
    t0 = next_check = time.time()
    warned = False
    while left:
        done = {cid: _collect(cid, job) for cid, job in left.items() if job.paths.result_pickle.exists()}
        running = {cid: job for cid, job in left.items() if cid not in done}
        now = time.time()
        if running and now >= next_check:
            states = slurm_states([job.job_id for job in running.values()])
            if states is None and not warned:
                _note("squeue did not answer; waiting for the jobs' result files only")
                warned = True
            for cid, job in running.items():
                st = None if states is None else states.get(str(job.job_id), "no longer queued")
                if st is not None and (st == "no longer queued" or st.split()[0] in ENDED):
                    ended.setdefault(cid, (now, st))
                else:
                    ended.pop(cid, None)
            next_check = now + min(max_interval, 2.0 + (now - t0) / 10)
        for cid, (since, st) in ended.items():
            if cid in running and now - since >= grace:
                job = running[cid]
                done[cid] = (_collect(cid, job) if job.paths.result_pickle.exists()
                             else _ended_without_result(cid, job, st))
        for cid, o in done.items():
            del left[cid]
            ended.pop(cid, None)
            outcomes.append(o)
            if on_done:
                on_done(o)
        if left:
            time.sleep(poll)
    return outcomes


def _wait_local(jobs: dict, on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """submitit's local executor: its own watcher knows when a process ended."""
    left = dict(jobs)
    outcomes: list[Outcome] = []
    while left:
        for cid, job in list(left.items()):
            if not job.done():
                continue
            o = _collect(cid, job)
            outcomes.append(o)
            del left[cid]
            if on_done:
                on_done(o)
        if left:
            time.sleep(0.5)
    return outcomes


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
    study_dir = Path(study_dir).resolve()
    ex = submitit.AutoExecutor(folder=str(study_dir / "slurm" / "%j"), cluster=cluster)
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
    sd = str(study_dir)
    with _submitit_warnings_once():
        jobs = ex.map_array(cell_job, [sd] * len(cell_ids), list(cell_ids), [device] * len(cell_ids))
        by_cell = dict(zip(cell_ids, jobs))
        if cluster == "slurm":
            _record_jobs(study_dir, {cid: str(job.job_id) for cid, job in by_cell.items()})
        if not opts.wait:
            return jobs, []
        outcomes = wait_slurm(by_cell, on_done) if cluster == "slurm" else _wait_local(by_cell, on_done)
    return jobs, outcomes
