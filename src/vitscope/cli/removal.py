"""`vitscope removal` (token-removal curves) and `vitscope probe-tokens` (per-token ridge probes), vilas2023: thin
adapters over :func:`vitscope.analysis.class_embedding.removal.evaluate` and
:func:`vitscope.analysis.probes.ridge.evaluate`. Every figure is saved with its numbers, and the results are tidy
tables (CSV + parquet) under ``--out``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP,
                                 WITH_RANDOM_HELP, cli_options, locks_out, parse_formats, save_tidy)


def _save(result, out: Path, formats, quiet: bool, tables: dict) -> None:
    """Figures (with their numbers), the arrays as .npy, the tables, the skipped files; the one-line summary."""
    import numpy as np

    from vitscope.data.datasets import ImageDataset

    written = result.save(out, formats, table=False)
    for name, arr in result.arrays.items():
        if not name.startswith("probe_tokens_"):                # those are saved beside their figures
            np.save(out / f"{name}.npy", arr)
    for stem, rows in tables.items():
        save_tidy(rows, out / stem)
    ds = result.meta.get("dataset")
    if isinstance(ds, ImageDataset) and ds.skipped:
        ds.write_skip_report(out / "skipped.csv")
    if not quiet:
        for p in written:
            if p.suffix in (".png", ".pdf", ".svg"):
                typer.echo(f"wrote {p}")
    typer.echo(f"{result.summary}; written to {out}")


@locks_out("vitscope removal")
def removal_cmd(
    model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeat for several."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Needs class labels."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    with_random: bool = typer.Option(False, "--with-random", help=WITH_RANDOM_HELP),
    out: Path = typer.Option(Path("runs/removal"), "--out", "-o", help=OUT_HELP),
    orders: Optional[str] = typer.Option(None, "--orders",
                                         help="Token orders, comma-separated: grads (vilas2023's class-embedding "
                                              "gradients), chefer, probe (per-token ridge probes; needs "
                                              "--train-data), random. Default: grads,chefer,random, and probe "
                                              "when --train-data is given."),
    probe_data: Optional[str] = typer.Option(None, "--train-data", "--probe-data",
                                             help="Labelled images to fit the per-token ridge probes of the "
                                                  "probe order on (vilas2023: another split than --data)."),
    n_random: int = typer.Option(10, "--n-random", "--random-orders", help="Number of random token orders "
                                                                          "(vilas2023: 10)."),
    seed: int = typer.Option(0, "--seed", help="Random order i uses seed SEED + i (vilas2023: 0..9); also the seed "
                                               "of --random weights."),
    step: int = typer.Option(1, "--step", help="Evaluate every STEP-th number of removed tokens (1 = all)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images of --data."),
    probe_limit: Optional[int] = typer.Option(None, "--train-limit", "--probe-limit",
                                              help="Use only the first N images of --train-data."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per batch (every curve of a batch runs in "
                                                                  "one stacked pass per number of removed tokens)."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Token-removal curves: accuracy as patch tokens are removed, least (negative) or most (positive)
    important first, for gradient, Chefer, linear-probe and random orders, with both AUCs. The tables hold
    accuracies as fractions (0-1)."""
    from vitscope.analysis.class_embedding.removal import RemovalOptions, default_orders, evaluate
    from vitscope.cli.common import default_data, load_models

    fmts = parse_formats(formats)
    opts = RemovalOptions(orders=orders or default_orders(probe_data is not None), n_random=n_random, seed=seed,
                          step=step, batch_size=batch_size, limit=limit, probe_limit=probe_limit, progress=not quiet)
    data = default_data(model_names, data, quiet)
    if not data:
        raise ValueError("removal curves need labelled images: pass --data SPEC (a folder with one sub-folder per "
                         "class, a list file with labels, or synthetic:...)")
    models = load_models(list(model_names), random, device, seed=seed, with_random=with_random)
    result = evaluate(models, data, opts, probe_data=probe_data,
                      log=None if quiet else (lambda line: typer.echo(line, err=True)))
    t = result.table
    _save(result, out, fmts, quiet, {"removal_curves": t[t["metric"] == "accuracy"],
                                     "removal_auc": t[t["metric"] != "accuracy"]})


@locks_out("vitscope probe-tokens")
def probe_tokens_cmd(
    model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeat for several."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Labelled test images. " + DATA_HELP),
    train_data: Optional[str] = typer.Option(None, "--train-data", "--train",
                                             help="Labelled images the probes are fitted on (vilas2023: another "
                                                  "split than --data)."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    with_random: bool = typer.Option(False, "--with-random", help=WITH_RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of --random weights."),
    out: Path = typer.Option(Path("runs/probe-tokens"), "--out", "-o", help=OUT_HELP),
    sites: str = typer.Option("resid_post,attn_out,mlp_out", "--sites", "-s",
                              help="Sites, comma-separated: resid_post, attn_out, mlp_out (vilas2023's hs, attn, "
                                   "mlp)."),
    alpha: float = typer.Option(1.0, "--ridge-alpha", "--alpha", help="Ridge penalty (vilas2023: 1.0)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes",
                                              help="Classes of the targets (default: the training set's)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images of --data."),
    train_limit: Optional[int] = typer.Option(None, "--train-limit",
                                              help="Use only the first N images of --train-data."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Per-token ridge probes (vilas2023): one probe per site, block and token position; accuracy and
    true-class rank per token, and the rank sum over blocks that orders patches for `vitscope removal`. The
    table holds accuracies as fractions (0-1); the summary line prints percent."""
    from vitscope.analysis.probes.ridge import TokenProbeOptions, evaluate
    from vitscope.cli.common import load_models

    fmts = parse_formats(formats)
    opts = cli_options(TokenProbeOptions, sites=sites, alpha=alpha, num_classes=num_classes, batch_size=batch_size,
                       limit=limit, train_limit=train_limit, progress=not quiet)
    if not train_data:
        raise ValueError("per-token probes need labelled training images: pass --train-data SPEC (and the test "
                         "images with --data)")
    if not data:
        raise ValueError("per-token probes need labelled test images: pass --data SPEC (another split than "
                         "--train-data)")
    result = evaluate(load_models(list(model_names), random, device, seed=seed, with_random=with_random), data, opts,
                      train_data=train_data)
    _save(result, out, fmts, quiet, {"token_probes": result.table})


def register(app: typer.Typer) -> None:
    app.command("removal")(removal_cmd)
    app.command("probe-tokens")(probe_tokens_cmd)
