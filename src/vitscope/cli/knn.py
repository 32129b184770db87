"""`vitscope knn`: weighted k-NN classification (DINO protocol) of every block's features, per model.

A thin adapter over :func:`vitscope.analysis.knn.evaluate`: features come from models run over ``--train-data`` /
``--test-data`` (or one ``--data`` split in two), or from feature stores written by `vitscope extract`
(``--train-store`` / ``--test-store``, one pair per model). Writes ``knn.csv`` / ``knn.parquet`` and the per-block
figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP, flag,
                                 locks_out)


@locks_out("vitscope knn")
def knn_cmd(
    model_names: Optional[List[str]] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeatable."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
    with_random: bool = typer.Option(False, "--with-random", help="Also run a random-weight twin of every model "
                                                                  "(seeded by --seed; dashed in the figure)."),
    train: Optional[str] = typer.Option(None, "--train-data", "--train",
                                        help="Training images: the k-NN memory (dataset spec, labelled)."),
    test: Optional[str] = typer.Option(None, "--test-data", "--test", help="Test images (dataset spec, labelled)."),
    data: Optional[str] = typer.Option(None, "--data", "-d",
                                       help=DATA_HELP + " Split into train / test by --test-fraction (instead of "
                                                        "--train-data / --test-data)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="With --data: share held out as test."),
    train_store: Optional[List[Path]] = typer.Option(None, "--train-store", help="Feature store of the training "
                                                                                "images (`vitscope extract`); "
                                                                                "repeat, one per model."),
    test_store: Optional[List[Path]] = typer.Option(None, "--test-store", help="Feature store of the test images, "
                                                                              "paired with --train-store."),
    site: str = typer.Option("resid_post", "--site", help="Store site to read (--train-store)."),
    blocks: str = typer.Option("all", "--blocks", help="Blocks: all, '0,3,-1' or '4:8'."),
    tokens: str = typer.Option("cls", "--tokens", "-t", help="cls (DINO, walmer2023) or mean (of the patch tokens)."),
    ks: str = typer.Option("10,20,100,200", "--k", help="Neighbour counts, comma-separated (DINO's)."),
    temperature: float = typer.Option(0.07, "--temperature", help="Vote weight exp(similarity / T)."),
    count_unvoted: bool = typer.Option(False, "--count-unvoted", help="Top-5 also counts hits on classes "
                                                                      "without a vote (DINO's code)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Number of classes (default: from "
                                                                          "the labels)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many train and test images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --data split and of random weights."),
    out: Path = typer.Option(Path("runs/knn"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """Weighted k-NN accuracy (top-1 / top-5, k = 10, 20, 100, 200) of every block, one line per model. The
    table holds percentages."""
    from vitscope.analysis.knn import KNNOptions, evaluate
    from vitscope.cli.common import default_data, load_models, parse_formats

    fmts = parse_formats(formats)
    opts = KNNOptions(k=ks, temperature=temperature, tokens=tokens, blocks=blocks, count_unvoted=count_unvoted,
                      num_classes=num_classes, test_fraction=test_fraction, seed=seed, site=site,
                      batch_size=batch_size, limit=limit, device=device, progress=not quiet)
    names = list(model_names or [])
    stores = list(train_store or []), list(test_store or [])
    if stores[0] or stores[1]:
        if names or data or train or test:
            raise ValueError("give either --train-store / --test-store or models with data, not both")
        if len(stores[0]) != len(stores[1]):
            raise ValueError(f"--train-store and --test-store come in pairs; got {len(stores[0])} and "
                             f"{len(stores[1])}")
        result = evaluate(list(zip(*stores)), None, opts)
    elif not names:
        raise ValueError(f"nothing to evaluate: give --model (with {flag('train')} / {flag('test')} or --data) or "
                         f"--train-store and --test-store")
    else:
        if data and (train or test):
            raise ValueError(f"give either --data (split by --test-fraction) or {flag('train')} and {flag('test')}")
        if not (train or test):
            data = default_data(model_names, data, quiet)
        if not data and not (train and test):
            raise ValueError(f"models need images: {flag('train')} SPEC {flag('test')} SPEC (labelled), or --data "
                             f"SPEC")
        models = load_models(names, random, device, seed=seed, with_random=with_random)
        result = evaluate(models, data if data else (train, test), opts)
    result.save(out, fmts)
    typer.echo(f"{result.summary} -> {Path(out) / 'knn.csv'}")


def register(app: typer.Typer) -> None:
    app.command("knn")(knn_cmd)
