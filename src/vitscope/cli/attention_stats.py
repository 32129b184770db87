"""Attention statistics over a dataset: `attention-distance`, `attention-stats`, `saliency`.

Each command is a thin adapter over the ``evaluate`` of its analysis (``vitscope.analysis.attention.distance``,
``.stats``, ``.saliency``): options into the analysis's options dataclass, models from ``vitscope.runtime``,
``result.save(out)`` (figures with their numbers, the tidy table as ``<analysis>.csv`` / ``.parquet``) and one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, IMAGES_HELP, MODEL_HELP, OUT_HELP,
                                 RANDOM_HELP, SEED_HELP)


def _labelled(model_names, random: bool, with_random: bool, random_models, seed: int, device) -> dict:
    """``{label: model}`` for attention-distance: every --model, its random twin with --with-random, and every
    --random-model with random weights; labels are the names (folders: their last part), `` (random)`` marking
    the random twins when both kinds are compared."""
    from vitscope.runtime import load_model

    twins = with_random and not random
    runs = ([(n, random) for n in model_names] + [(n, True) for n in model_names if twins]
            + [(n, True) for n in (random_models or [])])
    models: dict = {}
    for name, rnd in runs:
        label = Path(name).name if Path(name).exists() else name
        label = f"{label} (random)" if rnd and (random_models or twins) else label
        label = label if label not in models else f"{label} ({len(models)})"
        models[label] = load_model(name, rnd, seed=seed, device=device)
    return models


# ----------------------------------------------------------------------------- attention distance
def distance_cmd(
    images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
    model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeat to compare models on "
                                                                                  "one figure."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
    with_random: bool = typer.Option(False, "--with-random", help="Also run a random-weight twin of every --model "
                                                                  "(seeded by --seed)."),
    random_models: Optional[List[str]] = typer.Option(None, "--random-model",
                                                      help="Also compare this architecture with random weights "
                                                           "(repeatable), e.g. the baseline of a --model."),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(Path("runs/attention-distance"), "--out", "-o", help=OUT_HELP),
    variants: str = typer.Option("A,B", "--variants",
                                 help="A: normalised coordinates, prefix tokens dropped and rows renormalised "
                                      "(walmer2023); B: pixels, not renormalised (probing-vits)."),
    limit: Optional[int] = typer.Option(1000, "--limit", help="At most this many images (probing-vits: 1000)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
    relative_depth: bool = typer.Option(False, "--relative-depth",
                                        help="Comparison figure: blocks on [0, 1] (models of different depth)."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Mean attention distance per block x head over a dataset (streamed), scatter per model and compared."""
    from vitscope.analysis.attention.distance import AttentionDistanceOptions, evaluate
    from vitscope.cli.common import cli_options, image_data, images_reported, parse_formats
    from vitscope.viz.save import save_table

    opts = cli_options(AttentionDistanceOptions, variants=variants, limit=limit, batch_size=batch_size,
                       relative_depth=relative_depth, progress=not quiet)
    fmts = parse_formats(formats)
    ds = image_data(model_names, data, images, limit, quiet)
    models = _labelled(model_names, random, with_random, random_models, seed, device)
    with images_reported(ds, out):
        result = evaluate(models, ds, opts)
        result.save(out, fmts)
    per_head = result.table[result.table["head"].notna()]
    for label, stem in result.meta["stems"].items():                   # one table per model, as the figures
        rows = per_head[per_head["model"] == label].rename(columns={"value": "mean_distance"})
        save_table(rows[["model", "variant", "block", "head", "mean_distance", "std", "n_images"]].to_dict("records"),
                   out / f"{stem}_distance.csv")
    typer.echo(f"wrote mean attention distance ({', '.join(opts.variants)}) of {len(models)} model(s) to {out}")


# ----------------------------------------------------------------------------- walmer2023 statistics
def stats_cmd(
    images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
    model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(Path("runs/attention-stats"), "--out", "-o", help=OUT_HELP),
    limit: Optional[int] = typer.Option(1000, "--limit", help="At most this many images."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """walmer2023's statistics: std over heads / positions, spatial->CLS, average and query-centred maps, offsets.

    Query-centred maps are written twice: aligned (walmer2023: divided by the number of queries) and
    aligned_overlap (each offset divided by the number of queries that reach it; flat for uniform attention).
    """
    from vitscope.analysis.attention.stats import AttentionStatsOptions, evaluate
    from vitscope.cli.common import cli_options, image_data, images_reported, parse_formats
    from vitscope.runtime import load_model, model_label

    opts = cli_options(AttentionStatsOptions, limit=limit, batch_size=batch_size, progress=not quiet)
    fmts = parse_formats(formats)
    ds = image_data([model_name], data, images, limit, quiet)
    model = load_model(model_name, random, seed=seed, device=device)
    with images_reported(ds, out):
        result = evaluate({model_label(model, model_name, random): model}, ds, opts)
        result.save(out, fmts)
    typer.echo(f"wrote attention statistics of {int(result.arrays['n_images'])} image(s) to {out}")


# ----------------------------------------------------------------------------- saliency IoU
def saliency_cmd(
    model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    coco: Optional[Path] = typer.Option(None, "--coco", help="COCO instances json (with --image-root)."),
    partimagenet: Optional[Path] = typer.Option(None, "--partimagenet",
                                                help="PartImageNet annotation json (with --image-root)."),
    imagenet_s: Optional[Path] = typer.Option(None, "--imagenet-s", help="ImageNet-S root folder."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Image folder of --coco / --partimagenet."),
    data: Optional[str] = typer.Option(None, "--data", "-d",
                                       help="Instead of a task format: synthetic[:...] (shapes with masks)."),
    out: Path = typer.Option(Path("runs/saliency"), "--out", "-o", help=OUT_HELP),
    queries: str = typer.Option("cls,mean,centre", "--queries", help="Queries: cls, mean (all spatial queries), "
                                                                     "centre."),
    mass: float = typer.Option(0.6, "--mass", help="Share of attention mass kept in the binary map."),
    mask_rule: str = typer.Option("bicubic", "--mask-rule",
                                  help="Mask to token grid: bicubic (walmer2023: each object resized, then ORed), "
                                       "bicubic-union (the union resized once), any, majority."),
    merge_rule: str = typer.Option("sum", "--merge-rule",
                                   help="Heads summed: sum (raw maps, then renormalised) or walmer2023 (CLS and centre "
                                        "maps renormalised per head first, as that code does)."),
    limit: Optional[int] = typer.Option(5000, "--limit", help="At most this many images (walmer2023: 5000)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Saliency IoU of binarised attention maps against ground-truth object masks, per block x head."""
    from vitscope.analysis.attention.saliency import SaliencyOptions, evaluate, mask_data, summarize_iou
    from vitscope.cli.common import cli_options, parse_formats
    from vitscope.runtime import load_model, model_label
    from vitscope.viz.save import save_json, save_table

    opts = cli_options(SaliencyOptions, queries=queries, mass=mass, mask_rule=mask_rule, merge_rule=merge_rule,
                       limit=limit, batch_size=batch_size, progress=not quiet)
    fmts = parse_formats(formats)
    structure = mask_data(data, coco, partimagenet, imagenet_s, image_root)
    model = load_model(model_name, random, seed=seed, device=device)
    result = evaluate({model_label(model, model_name, random): model}, structure, opts)
    result.save(out, fmts)
    save_table(summarize_iou(result.arrays["values"]), out / "saliency_iou.csv")
    skipped = result.meta["skipped_no_object"]
    save_json({"skipped_no_object": skipped}, out / "skipped_no_object.json")
    typer.echo(f"saliency IoU over {result.meta['n_images']} image(s) ({len(skipped)} without objects left out) "
               f"written to {out}")


def register(app: typer.Typer) -> None:
    app.command("attention-distance")(distance_cmd)
    app.command("attention-stats")(stats_cmd)
    app.command("saliency")(saliency_cmd)
