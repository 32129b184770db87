"""`vitscope probe` (linear / attentive probes on stored features), `vitscope probe-e2e` (end-to-end: the attentive
probe on a frozen backbone, fine-tuning with a linear head) and `vitscope probe-stats` (gains and tests across models
and datasets): thin adapters over the ``evaluate`` of ``vitscope.analysis.probes.experiment``, ``.e2e`` and
``.stats``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, RANDOM_HELP, cli_options, flag,
                                 locks_out, parse_formats)


@locks_out("vitscope probe")
def probe_cmd(
    store: List[Path] = typer.Option(..., "--store", "-s", help="Training feature store (`vitscope extract`); "
                                     "repeat to read several stores of the same samples as one (a late-CLS "
                                     "model: CLS from its entry block on in one, AP of every block in another)."),
    test_store: Optional[List[Path]] = typer.Option(None, "--test-store", help="Test feature store(s) (same "
                                                    "model; repeatable like --store); without it a stratified "
                                                    "--test-fraction of --store is held out."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="Held-out share when no --test-store."),
    layer_set: List[str] = typer.Option(["last", "all"], "--layer-set", "-l", "--experiments",
                                        help="last, middle, quarterly, all, tokens, or an explicit list "
                                             "'ln2.3.cls,ln_final.ap'; repeat for several experiments."),
    probe: str = typer.Option("linear,attentive", "--probe", "-p", "--probes", help="linear, attentive or both."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also a linear probe on every block (and the "
                                                              "final layer), batched: accuracy per layer."),
    reductions: str = typer.Option("cls,ap", "--reductions", "-r", help="Reductions of each layer: cls, ap "
                                                                        "(patch mean), ap_all."),
    site: str = typer.Option("ln2", "--site", help="Store site of the intermediate layers (ciernik2025: ln2)."),
    heads: Optional[int] = typer.Option(None, "--num-heads", "--heads", help="Attentive probe heads (default: "
                                                                           "number of inputs; 8 for all tokens)."),
    attn_drops: str = typer.Option("0,0.1,0.3", "--attn-drops", help="Attention dropouts searched (each its own "
                                                                     "grid; the best by validation is kept)."),
    lrs: Optional[str] = typer.Option(None, "--lrs", help="Learning rates (default 0.1,0.01,0.001)."),
    wds: Optional[str] = typer.Option(None, "--wds", help="Weight decays (default logspace(-6, 0, 7))."),
    epochs: int = typer.Option(40, "--epochs", help="Epochs (at least --min-steps steps)."),
    min_steps: int = typer.Option(1000, "--min-steps", help="Minimum number of optimiser steps."),
    batch_size: int = typer.Option(2048, "--batch-size", "-b", help="Batch size before ciernik2025's rule."),
    token_norm: str = typer.Option("token", "--token-norm", help="All-token inputs: 'token' (each token L2) or "
                                                                "'over_tokens' (ciernik2025's stored variant)."),
    no_normalize: bool = typer.Option(False, "--no-normalize", help="Skip the load-time L2 normalisation."),
    clean_val: bool = typer.Option(False, "--clean-val", help="Score validation without jitter (ciernik2025 "
                                                              "jitters it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, initialisation, order and jitter."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Model label in the results table."),
    dataset: Optional[str] = typer.Option(None, "--dataset-name", "--dataset",
                                          help="Dataset label in the results table."),
    save_heads: bool = typer.Option(True, "--save-heads/--no-save-heads", help="Save the trained probes "
                                                                               "(safetensors + JSON)."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    out: Path = typer.Option(Path("runs/probe"), "--out", "-o", help="Output folder."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
):
    """Linear and attentive probes over one, several or all layers of a feature store (ciernik2025's recipe,
    tuned over lr x weight decay as one batched computation); tidy results, heads, logits, figures. The table
    holds accuracies as fractions (0-1) and gains in percentage points; the summary lines print percent."""
    from vitscope.analysis.probes.experiment import ProbeOptions, evaluate, save_run

    fmts = parse_formats(formats)
    opts = cli_options(ProbeOptions, flags={"experiments": "--layer-set", "probes": "--probe",
                                            "normalize": "--no-normalize", "dataset_name": flag("dataset")},
                       experiments=tuple(layer_set), probes=probe, reductions=reductions, per_layer=per_layer,
                       site=site, heads=heads, attn_drops=attn_drops, lrs=lrs, wds=wds, epochs=epochs,
                       min_steps=min_steps, batch_size=batch_size, token_norm=token_norm, normalize=not no_normalize,
                       clean_val=clean_val, seed=seed, test_fraction=test_fraction, model_name=model_name,
                       dataset_name=dataset, device=device, progress=not quiet)
    t0 = time.time()
    result = evaluate(list(store), list(test_store) if test_store else None, opts)
    run = result.meta["run"]
    save_run(run, out, save_heads)
    result.save(out, fmts, table=False)
    if not quiet:
        for (p, exp), (fit, _) in run.fits.items():
            if not exp.startswith("layer_"):
                typer.echo(f"  {p:9s} {exp:14s} test balanced top-1 {100 * fit.test_metrics['balanced_top1']:5.1f}"
                           f"  (lr {fit.lr:g}, wd {fit.weight_decay:g}"
                           + (f", attn drop {fit.attn_drop:g})" if fit.attn_drop is not None else ")"))
        typer.echo(f"probed {run.model}: {len(run.fits)} probes in {time.time() - t0:.1f} s -> {out}/results.csv")


def probe_e2e_cmd(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option(..., "--data", "-d", help="Training images. " + DATA_HELP),
    test_data: Optional[str] = typer.Option(None, "--test-data", "--test", help="Test images (same classes); "
                                            "without it only training runs."),
    recipe: str = typer.Option("attentive-frozen", "--recipe", help="attentive-frozen (attentive probe on a "
                               "frozen backbone) or finetune (linear head, backbone trained)."),
    layer_set: Optional[str] = typer.Option(None, "--layer-set", "-l", help="last, middle, quarterly, all, "
                                            "tokens or 'ln2.3.cls,ln_final.ap' (default: tokens for "
                                            "attentive-frozen, the last layer's CLS for finetune)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Exact number of steps (default: --epochs, at "
                                                              "least --min-steps)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default 10 attentive-frozen, 40 "
                                                                "finetune)."),
    min_steps: int = typer.Option(1000, "--min-steps", help="Minimum number of steps when --steps is not set."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Global batch size (split over processes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of the probe / head (default 1e-3)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay of the probe / head "
                                                                              "(default 0.1)."),
    backbone_lr_scale: float = typer.Option(1e-3, "--backbone-lr-scale", help="finetune: backbone lr = lr x "
                                                                             "this."),
    backbone_wd: float = typer.Option(1e-6, "--backbone-weight-decay", help="finetune: backbone weight decay."),
    heads: Optional[int] = typer.Option(None, "--num-heads", "--heads", help="Attentive probe heads (default: "
                                                                           "number of inputs; 8 for all tokens)."),
    attn_drop: Optional[float] = typer.Option(None, "--attn-drop", help="Attention dropout (default 0.1)."),
    save_every: int = typer.Option(200, "--save-every", help="Checkpoint every N steps (and at the end)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the probe / head, the data order, jitter and dropout "
                                               "(and of --random weights)."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Model label in the results table."),
    dataset: Optional[str] = typer.Option(None, "--dataset-name", "--dataset",
                                          help="Dataset label in the results table."),
    num_workers: int = typer.Option(0, "--workers", "-w", "--num-workers", help="Image-loading processes."),
    device: str = typer.Option("auto", "--device", help="'auto', 'cpu' or 'cuda'."),
    out: Path = typer.Option(Path("runs/probe-e2e"), "--out", "-o", help="Output folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
):
    """End-to-end probes (ciernik2025): the attentive probe on a frozen backbone with features computed every step
    from the images (no feature store), or fine-tuning with a linear head (two parameter groups); resumable.

    The table holds accuracies as fractions (0-1); the summary line prints percent.

    Data parallel: torchrun --nproc_per_node=N -m vitscope probe-e2e ..."""
    import os

    from vitscope.analysis.probes.e2e import E2EOptions, evaluate
    from vitscope.runtime import load_model, model_label

    opts = cli_options(E2EOptions, flags={"dataset_name": flag("dataset")},
                       recipe=recipe, layer_set=layer_set, lr=lr, weight_decay=weight_decay,
                       backbone_lr_scale=backbone_lr_scale, backbone_weight_decay=backbone_wd, epochs=epochs,
                       steps=steps, min_steps=min_steps, batch_size=batch_size, heads=heads, attn_drop=attn_drop,
                       seed=seed, save_every=save_every, out=str(out), resume=resume, num_workers=num_workers,
                       device=device, model_name=model_name, dataset_name=dataset, progress=not quiet)
    m = load_model(model, random=random, seed=seed, device="cpu")
    result = evaluate({model_label(m, model, random): m}, data, opts, test_data=test_data)
    if not quiet and int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"{result.summary} -> {out}")


@locks_out("vitscope probe-stats")
def probe_stats_cmd(
    results: List[Path] = typer.Argument(..., help="results.csv / .parquet files of `vitscope probe` runs, or "
                                                   "their output folders (several models and datasets)."),
    pairs: Optional[str] = typer.Option(None, "--comparisons", "--pairs", help="Run pairs a>b to test, e.g. "
                                        "'attentive:all>attentive:last,linear:all>linear:last' (default: "
                                        "ciernik2025's Figure 2 pairs present in the table)."),
    baseline: str = typer.Option("linear:last_cls", "--baseline", help="Run the gains are measured against."),
    alpha: float = typer.Option(0.05, "--significance", "--alpha", help="Significance level of the tests."),
    out: Path = typer.Option(Path("runs/probe-stats"), "--out", "-o", help="Output folder."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary."),
):
    """Gains against the last-layer CLS linear probe, one-sided paired Wilcoxon tests over datasets (Benjamini-
    Hochberg) and per-dataset tests over models; the gain figure."""
    from vitscope.analysis.probes.stats import ProbeStatsOptions, evaluate
    from vitscope.cli.common import save_tidy

    fmts = parse_formats(formats)
    result = evaluate(list(results), None, cli_options(ProbeStatsOptions, pairs=pairs, baseline=baseline, alpha=alpha))
    result.save(out, fmts, table=False)
    for name in ("gains", "wilcoxon_over_datasets", "per_dataset_tests"):
        if result.meta[name] is not None:
            save_tidy(result.meta[name], out / name)
    if not quiet:
        typer.echo(f"{result.summary} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("probe")(probe_cmd)
    app.command("probe-e2e")(probe_e2e_cmd)
    app.command("probe-stats")(probe_stats_cmd)
