"""Study commands: `run` (a YAML study of models x datasets x analyses, resumable cell by cell) and `results`
(summary and comparison figures from the study's results table)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vitscope.cli.common import DEVICE_HELP, FORMATS_HELP


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        study_file: Path = typer.Argument(..., help="The study file (YAML): models, datasets, analyses; see "
                                                    "docs/experiments.md."),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Study folder (default: the file's 'out', else runs/<study>)."),
        launcher: str = typer.Option("local", "--launcher",
                                     help="local (this machine), slurm (a job array through submitit), or "
                                          "submitit-local (the same job array as local subprocesses)."),
        jobs: int = typer.Option(1, "--jobs", "-j", help="local: run this many cells at once (processes)."),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        threads: Optional[int] = typer.Option(None, "--threads",
                                              help="CPU threads per cell (torch and k-means); default: torch's "
                                                   "(cpus / jobs with --jobs). 1 is fastest on a busy machine."),
        nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node",
                                                     help="Extract each feature store with torchrun over K "
                                                          "processes (e.g. the GPUs of a node; overrides the "
                                                          "file's features: {nproc_per_node: K})."),
        partition: Optional[str] = typer.Option(None, "--partition", help="slurm: partition."),
        gpus_per_node: int = typer.Option(0, "--gpus-per-node", help="slurm: GPUs per job."),
        cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", help="slurm: CPUs per job."),
        time_limit: str = typer.Option("1:00:00", "--time", help="slurm: time limit per cell (HH:MM:SS or minutes)."),
        mem: Optional[str] = typer.Option(None, "--mem", help="slurm: memory per job, e.g. 32G."),
        array_parallelism: int = typer.Option(16, "--array-parallelism",
                                              help="slurm: at most this many cells running at once."),
        wait: bool = typer.Option(False, "--wait/--no-wait",
                                  help="slurm: wait for the jobs and print the summary (default: submit and return)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and whether they are done; run nothing."),
        status: bool = typer.Option(False, "--status",
                                    help="Show where each cell stands (done, failed, queued or running as a SLURM "
                                         "job or in another process, to run); run nothing."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output, only the summary line."),
    ) -> None:
        """Run a study: every cell (analysis x model x dataset) without finished results; resumable, lock-safe."""
        from vitscope.experiments.config import load_study
        from vitscope.experiments.launchers import SlurmOptions
        from vitscope.experiments.study import run_study

        study = load_study(study_file)
        study_dir = out or Path(study.out or Path("runs") / study.name)
        if status:
            _status(study, study_dir)
            return
        if dry_run:
            _dry_run(study, study_dir)
            return
        slurm = SlurmOptions(partition=partition, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task,
                             time=time_limit, mem=mem, array_parallelism=array_parallelism, wait=wait)
        bar = None

        def on_start(n_cells: int, n_todo: int) -> None:
            nonlocal bar
            if quiet:
                return
            from tqdm import tqdm

            typer.echo(f"study {study.name}: {n_cells} cells, {n_todo} to run ({launcher}"
                       f"{f', {jobs} processes' if launcher == 'local' and jobs > 1 else ''}) -> {study_dir}",
                       err=True)
            if n_todo and (launcher != "slurm" or wait):
                bar = tqdm(total=n_todo, unit="cell", desc="cells", dynamic_ncols=True)

        def on_done(o) -> None:
            if bar is None:
                return
            extra = f" ({o.rows} rows)" if o.status == "ok" else (f": {o.message}" if o.message else "")
            bar.write(f"{o.status:>7}  {o.seconds:6.1f} s  {o.cell}{extra}")
            bar.update(1)

        try:
            summary = run_study(study, study_dir, launcher=launcher, jobs=jobs, device=device, slurm=slurm,
                                threads=threads, nproc_per_node=nproc_per_node, on_start=on_start,
                                on_done=on_done)
        finally:
            if bar is not None:
                bar.close()
        typer.echo(summary.line())
        if summary.submitted:
            typer.echo(f"submitted job array {summary.submitted[0].split('_')[0]} ({len(summary.submitted)} tasks); "
                       f"logs in {study_dir / 'slurm'}; `vitscope run {study_file} --status` shows where each cell "
                       f"stands, `vitscope results {study_dir}` sums up, `vitscope run {study_file}` again reruns "
                       f"failed or killed cells")
        failed = summary.counts.get("error", 0)
        if failed:
            raise RuntimeError(f"{failed} cell(s) failed (the others finished); see `vitscope results {study_dir}` "
                               f"or the 'error' column; `vitscope run {study_file}` runs them again")

    @app.command("results")
    def results_cmd(
        study_dir: Path = typer.Argument(..., help="A study folder written by `vitscope run`."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Figure folder (default: STUDY_DIR/figures)."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the one-line summary."),
    ) -> None:
        """Summarise a study's results table and draw its comparison figures (per block, CKA grids, probe gains)."""
        from vitscope.cli.common import parse_formats
        from vitscope.experiments.figures import summary_text, write_figures
        from vitscope.experiments.results import read_results

        fmts = parse_formats(formats)
        df = read_results(study_dir)
        text = summary_text(df)
        if not quiet:
            typer.echo(text)
        fig_dir = out or Path(study_dir) / "figures"
        written = write_figures(df, fig_dir, fmts)
        typer.echo(f"{text.splitlines()[0]}; {len(written)} figure(s) -> {fig_dir}")


def _status(study, study_dir: Path) -> None:
    from collections import Counter

    from vitscope.experiments.cells import expand
    from vitscope.experiments.status import study_status

    states = study_status(study_dir, expand(study))
    for s in states:
        typer.echo(f"{s.state:>8}  {s.cell}" + (f"  ({s.detail})" if s.detail else ""))
    n = Counter(s.state for s in states)
    order = ("done", "running", "queued", "failed", "skipped", "to run")
    typer.echo(f"study {study.name}: {len(states)} cells: " + ", ".join(f"{n[k]} {k}" for k in order if n[k])
               + f" -> {study_dir}")


def _dry_run(study, study_dir: Path) -> None:
    from vitscope.experiments.cells import expand
    from vitscope.experiments.results import cell_status

    cells = expand(study)
    for c in cells:
        st = cell_status(study_dir, c.id) or "to run"
        typer.echo(f"{st:>8}  {c.id}")
    n_ok = sum(cell_status(study_dir, c.id) == "ok" for c in cells)
    typer.echo(f"study {study.name}: {len(cells)} cells, {n_ok} done, {len(cells) - n_ok} to run -> {study_dir}")
