"""Attention commands on a few images: `attention`, `rollout`, `tokens-pdf`, `pos-embed`, `video` (the
dataset-level ones, `attention-distance`, `attention-stats` and `saliency`, are in ``cli/attention_stats.py``).

Each command is a thin adapter over the ``evaluate`` of its analysis in ``vitscope.analysis.attention``: it parses
the options into the analysis's options dataclass, loads the model (``vitscope.runtime``), calls ``evaluate``,
writes ``result.save(out)`` (every figure with the numbers behind it: ``.npy`` / ``.json``, and the tidy table as
``<analysis>.csv`` / ``.parquet``) and prints one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, IMAGES_HELP, MODEL_HELP, OPACITY_HELP,
                                 OUT_HELP, RANDOM_HELP, SEED_HELP)

QUERY_HELP = "Query token: cls, dist, reg<k>, mean, centre, top, left, right, bottom or 'row,col'."


def _model(name: str, random: bool, seed: int, device: Optional[str]) -> dict:
    """``{label: model}``: the model loaded (its seeded random twin with --random)."""
    from vitscope.runtime import load_model, model_label

    model = load_model(name, random, seed=seed, device=device)
    return {model_label(model, name, random): model}


def _run_on_images(evaluate, name, random, seed, device, data, images, limit, out, opts, formats, quiet):
    """Load the model, read the images, run ``evaluate``, save its result under ``out``; returns the result."""
    from vitscope.cli.common import image_data, images_reported, parse_formats

    fmts = parse_formats(formats)
    ds = image_data([name], data, images, limit, quiet)
    models = _model(name, random, seed, device)
    with images_reported(ds, out):
        result = evaluate(models, ds, opts)
        result.save(out, fmts)
    return result


# ----------------------------------------------------------------------------- attention
def attention_cmd(
    images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
    model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(Path("runs/attention"), "--out", "-o", help=OUT_HELP),
    block: int = typer.Option(-1, "--block", "-b", help="Block whose attention is drawn (-1 = last)."),
    query: str = typer.Option("cls", "--query", help=QUERY_HELP),
    heads: Optional[str] = typer.Option(None, "--heads", help="Heads to draw, comma-separated (default all)."),
    fusion: str = typer.Option("mean", "--head-fusion", "--fusion",
                               help="Head fusion for the batch overlay figure: mean, max, min or sum."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Also draw DINO-style masks keeping this "
                                                                        "share of attention mass (e.g. 0.6)."),
    all_blocks: bool = typer.Option(False, "--all-blocks", help="Also draw the block x head grid (blocks where "
                                                                "the query exists)."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Draw maps over the image."),
    cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
    opacity: float = typer.Option(0.6, "--opacity", "--alpha", help=OPACITY_HELP),
    limit: int = typer.Option(8, "--limit", help="At most this many images."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Per-head attention maps of one block (and optionally every block) for each image."""
    from vitscope.analysis.attention.maps import AttentionMapOptions, evaluate
    from vitscope.cli.common import cli_options

    opts = cli_options(AttentionMapOptions, block=block, query=query, heads=heads, fusion=fusion,
                       threshold=threshold, all_blocks=all_blocks, overlay=overlay, cmap=cmap,
                       opacity=opacity, limit=limit, batch_size=batch_size, progress=not quiet)
    result = _run_on_images(evaluate, model_name, random, seed, device, data, images, limit, out, opts, formats,
                            quiet)
    typer.echo(f"wrote {len(result.meta['ids'])} image(s) of attention maps to {out}")


# ----------------------------------------------------------------------------- rollout
def rollout_cmd(
    images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
    model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(Path("runs/rollout"), "--out", "-o", help=OUT_HELP),
    method: str = typer.Option("rollout", "--method",
                               help="rollout (attention only), grad-rollout (vit-explain's gradient rollout), "
                                    "chefer2021-generic (Chefer et al. ICCV 2021, 'Generic Attention-model "
                                    "Explainability') or chefer2021-lrp (Chefer et al. CVPR 2021, 'Transformer "
                                    "Attribution'). Old names grad, grad_rollout, chefer are accepted."),
    head_fusion: str = typer.Option("mean", "--head-fusion", help="Rollout head fusion: mean, max or min."),
    discard_ratio: float = typer.Option(0.0, "--discard-ratio", help="Zero this share of the lowest entries per "
                                                                     "block (rollout and grad-rollout)."),
    discard_rule: str = typer.Option("exclude-cls", "--discard-rule",
                                     help="Which entries the discard zeroes: exclude-cls (the k lowest other than "
                                          "CLS->CLS), vit-explain (that code's rule: rollout spares CLS->CLS among "
                                          "the k lowest, grad-rollout spares nothing), spare-cls or all."),
    normalize: str = typer.Option("max", "--map-scaling", "--normalize",
                                  help="Map scaling: max (divide by the max), minmax (to [0, 1], as Chefer et al.'s "
                                       "notebooks show) or none."),
    start_block: int = typer.Option(0, "--start-block", help="First block of the rollout."),
    query: str = typer.Option("cls", "--query", help="Row read from the rolled-out matrix (cls, reg<k>, ...)."),
    target: Optional[int] = typer.Option(None, "--target", help="Class explained by grad / chefer (default: the "
                                                                "predicted one)."),
    cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
    opacity: float = typer.Option(0.6, "--opacity", "--alpha", help=OPACITY_HELP),
    limit: int = typer.Option(8, "--limit", help="At most this many images."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Attention rollout, gradient rollout or Chefer et al.'s relevance maps over the images."""
    from vitscope.analysis.attention.relevance import RolloutOptions, evaluate
    from vitscope.cli.common import cli_options

    opts = cli_options(RolloutOptions, method=method, head_fusion=head_fusion, discard_ratio=discard_ratio,
                       discard_rule=discard_rule, normalize=normalize, start_block=start_block, query=query,
                       target=target, cmap=cmap, opacity=opacity, limit=limit,
                       batch_size=batch_size, progress=not quiet)
    result = _run_on_images(evaluate, model_name, random, seed, device, data, images, limit, out, opts, formats,
                            quiet)
    typer.echo(f"wrote {result.meta['what']} of {len(result.meta['ids'])} image(s) to {out}")


# ----------------------------------------------------------------------------- video
def video_cmd(
    source: Path = typer.Argument(..., help="Video file (mp4, GIF, ...) or a folder of frame images."),
    model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    out: Path = typer.Option(Path("runs/video/attention.mp4"), "--out", "-o",
                             help="Output video: .mp4 or .gif (frames go to <name>_frames/ beside it)."),
    block: int = typer.Option(-1, "--block", "-b", help="Block (-1 = last)."),
    query: str = typer.Option("cls", "--query", help="Query token (cls, reg<k>, mean, centre, ...)."),
    fusion: str = typer.Option("mean", "--head-fusion", "--fusion", help="Head fusion: mean, max, min or sum."),
    short_side: Optional[int] = typer.Option(None, "--short-side", help="Resize frames to this short side "
                                                                        "(default: the model's size)."),
    layout: str = typer.Option("overlay", "--layout", help="overlay (map over the frame) or side (frame | map)."),
    cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
    opacity: float = typer.Option(0.6, "--opacity", "--alpha", help=OPACITY_HELP),
    fps: Optional[float] = typer.Option(None, "--fps", help="Output frame rate (default: the source's)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after this many frames."),
    step: int = typer.Option(1, "--step", help="Use every k-th frame."),
    batch_size: int = typer.Option(8, "--batch-size", help="Frames per forward pass."),
    no_frames: bool = typer.Option(False, "--no-frames", help="Do not write the PNG frames."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP + " (summary figure)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Attention heat-map video: per-frame attention blended over the frames (mp4 or GIF, plus PNG frames)."""
    from vitscope.analysis.attention.video import VideoOptions, evaluate
    from vitscope.cli.common import cli_options, parse_formats

    opts = cli_options(VideoOptions, flags={"video": "--out"}, block=block, query=query, fusion=fusion,
                       short_side=short_side, layout=layout, cmap=cmap, opacity=opacity, fps=fps, max_frames=max_frames,
                       step=step, batch_size=batch_size, video=str(out), save_frames=not no_frames,
                       progress=not quiet)
    fmts = parse_formats(formats)
    result = evaluate(_model(model_name, random, seed, device), source, opts)
    result.save(out.parent, fmts)
    m = result.meta
    typer.echo(f"wrote {m['video']} ({m['n_frames']} frames at {m['fps']:g} fps)")


# ----------------------------------------------------------------------------- tokens PDF (cls-register)
def tokens_pdf_cmd(
    images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
    model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(Path("runs/tokens"), "--out", "-o", help=OUT_HELP),
    block: int = typer.Option(-1, "--block", "-b", help="Block whose attention is drawn (-1 = last)."),
    cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
    limit: int = typer.Option(4, "--limit", help="At most this many images (one PDF each)."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP + " (one figure per page)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """CLS and register attention over patches for every head: one PDF per image, one page per token."""
    from vitscope.analysis.attention.token_pages import TokenPagesOptions, evaluate, write_pdfs
    from vitscope.cli.common import cli_options

    opts = cli_options(TokenPagesOptions, block=block, cmap=cmap, limit=limit, progress=not quiet)
    result = _run_on_images(evaluate, model_name, random, seed, device, data, images, limit, out, opts, formats,
                            quiet)
    write_pdfs(result, out)
    typer.echo(f"wrote {len(result.meta['ids'])} PDF(s) with pages {', '.join(result.meta['tokens'])} to {out}")


# ----------------------------------------------------------------------------- position embeddings
def pos_embed_cmd(
    model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    out: Path = typer.Option(Path("runs/pos-embed"), "--out", "-o", help=OUT_HELP),
    grid: Optional[str] = typer.Option(None, "--token-grid", "--grid",
                                       help="Token grid 'rows,cols' (default: the model's); learned embeddings "
                                            "are resampled."),
    filters: int = typer.Option(28, "--filters", help="Number of patch-embedding filters to draw."),
    filter_mode: str = typer.Option("pca", "--filter-mode", help="pca (principal components, ViT paper) or raw "
                                                                 "(first filters)."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Position-embedding cosine-similarity grid and patch-embedding filter images."""
    from vitscope.analysis.attention.posembed import PosEmbedOptions, evaluate
    from vitscope.cli.common import cli_options, parse_formats

    opts = cli_options(PosEmbedOptions, grid=grid, filters=filters, filter_mode=filter_mode)
    fmts = parse_formats(formats)
    result = evaluate(_model(model_name, random, seed, device), None, opts)
    result.save(out, fmts)
    written = ["patch-embedding filters"]
    if result.arrays["similarity"] is None:
        typer.echo("this model has no absolute position embedding; only the filters are drawn")
    else:
        written.insert(0, "position-embedding similarity")
    typer.echo(f"wrote {' and '.join(written)} to {out}")


def register(app: typer.Typer) -> None:
    from vitscope.cli import attention_stats

    app.command("attention")(attention_cmd)
    app.command("rollout")(rollout_cmd)
    attention_stats.register(app)
    app.command("video")(video_cmd)
    app.command("tokens-pdf")(tokens_pdf_cmd)
    app.command("pos-embed")(pos_embed_cmd)
