"""`vitscope retrieval`: Revisited Oxford / Paris retrieval (mAP, mP@1/5/10; easy, medium, hard) of every block.

A thin adapter over :func:`vitscope.analysis.retrieval.evaluate`: descriptors from models (the CLS token of each
block, images thumbnailed to ``--imsize`` as DINO does, or the model's own resize and crop with ``--preprocess
model``, walmer2023), or read from feature stores of the database and query images. Writes ``retrieval.csv`` /
``retrieval.parquet`` (percent) and the per-block figures; unreadable images are skipped and listed in
``skipped.csv``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (BLOCKS_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP,
                                 SEED_HELP, WITH_RANDOM_HELP, cli_options, echo_skips, locks_out)
from vitscope.data.tasks.revisited import revisited_loaders  # noqa: F401  (its old import path)


@locks_out("vitscope retrieval")
def retrieval_cmd(
    model_names: Optional[List[str]] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeatable."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
    with_random: bool = typer.Option(False, "--with-random", help=WITH_RANDOM_HELP),
    root: str = typer.Option(..., "--root", help="Revisited dataset folder: gnd_<name>.pkl and jpg/ (roxford5k, "
                                                 "rparis6k, or `vitscope synth`'s revisited/rsynth), or "
                                                 "synthetic[:landmarks=N,...] (written into --out/data)."),
    name: Optional[str] = typer.Option(None, "--name", help="Which gnd_<name>.pkl when the folder has several."),
    db_store: Optional[List[Path]] = typer.Option(None, "--db-store", help="Feature store of the database images "
                                                                          "(in gnd order); repeat, one per model."),
    query_store: Optional[List[Path]] = typer.Option(None, "--query-store", help="Feature store of the query "
                                                                                "images, paired with --db-store."),
    site: str = typer.Option("resid_post", "--site", help="Store site to read."),
    blocks: str = typer.Option("all", "--blocks", help=BLOCKS_HELP),
    tokens: str = typer.Option("cls", "--tokens", "-t", help="cls (the protocol) or mean (of the patch tokens)."),
    protocols: str = typer.Option("easy,medium,hard", "--protocols", help="Protocols, comma-separated."),
    imsize: Optional[int] = typer.Option(None, "--imsize", help="Longer side of the thumbnail (DINO: 224 Oxford, "
                                                                "512 Paris; default: the model's input size)."),
    preprocess: str = typer.Option("thumbnail", "--preprocess", help="thumbnail (DINO: aspect kept, no crop) or "
                                                                     "model (walmer2023: the model's resize + "
                                                                     "centre crop)."),
    multiscale: bool = typer.Option(False, "--multiscale", help="Mean descriptor over scales 1, 1/sqrt 2, 1/2."),
    no_crop: bool = typer.Option(False, "--no-crop", help="Do not crop queries to their box (DINO, walmer2023)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass (equal sizes batched)."),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    out: Path = typer.Option(Path("runs/retrieval"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """Retrieval mAP and mP@k of every block on Revisited Oxford / Paris, one line per model. The table holds
    percentages."""
    from vitscope.analysis.retrieval import RetrievalOptions, evaluate, open_revisited
    from vitscope.cli.common import load_models, parse_formats
    from vitscope.data.tasks.synthetic import task_root

    fmts = parse_formats(formats)
    opts = cli_options(RetrievalOptions, tokens=tokens, protocols=protocols, imsize=imsize, preprocess=preprocess,
                       multiscale=multiscale, crop=not no_crop, blocks=blocks, batch_size=batch_size, name=name,
                       site=site, device=device, progress=not quiet)
    gt = cli_options(open_revisited, task_root(root, "revisited", Path(out) / "data"), name)
    names, stores = list(model_names or []), (list(db_store or []), list(query_store or []))
    if stores[0] or stores[1]:
        if names:
            raise ValueError("give either --db-store/--query-store or models, not both")
        if len(stores[0]) != len(stores[1]):
            raise ValueError(f"--db-store and --query-store come in pairs; got {len(stores[0])} and "
                             f"{len(stores[1])}")
        inputs = list(zip(*stores))
    elif not names:
        raise ValueError("nothing to evaluate: give --model, or --db-store and --query-store")
    else:
        inputs = load_models(names, random, device, seed=seed, with_random=with_random)
    result = evaluate(inputs, gt, opts)
    result.save(out, fmts)
    echo_skips(result.meta["skipped"], out, quiet)
    typer.echo(f"{result.summary} -> {Path(out) / 'retrieval.csv'}")


def register(app: typer.Typer) -> None:
    app.command("retrieval")(retrieval_cmd)
