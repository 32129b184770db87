"""Helpers shared by every command module: option help texts, formats, device, model loading, images.

Commands import from here so that every command reads ``--model``, ``--data``, ``--formats`` and ``--out`` the
same way.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from vitscope.runtime import load_model, load_models, model_meta, resolve_device, save_tidy, slug  # noqa: F401

MODEL_HELP = ("Model: a registry name, timm/<name>, hf:<repo>, or a local folder / file "
              "(see `vitscope models`).")
RANDOM_HELP = "Random weights (no download): the architecture only, as a baseline."
DATA_HELP = "Dataset spec (folder, list file, shards, hf:NAME, video, synthetic:...); see docs/data.md."
IMAGES_HELP = "Image files (used when --data is not given)."
OUT_HELP = "Output folder (created)."
FORMATS_HELP = "Figure formats, comma-separated: png, pdf, svg."
DEVICE_HELP = "Device: cpu, cuda, cuda:1, ... (default: cuda when available)."


def parse_formats(text: str) -> tuple[str, ...]:
    fmts = tuple(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in ("png", "pdf", "svg", "jpg")]
    if bad or not fmts:
        raise ValueError(f"--formats takes png, pdf, svg (comma-separated), got {text!r}")
    return fmts


def open_images(model, data: str | None, images: list[Path] | None, limit: int | None):
    """An ImageDataset with the model's own preprocessing, from --data or image paths; at most ``limit`` items."""
    from vitscope.data import ImageDataset, open_dataset
    from vitscope.data.folders import FileSource
    from vitscope.models.preprocess import PreprocessConfig, Preprocessor

    pcfg = model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)
    tf = Preprocessor(pcfg)
    check_inputs(data, images, limit)
    if data and images:
        raise ValueError("give either --data or image paths, not both")
    if data:
        ds = open_dataset(data, transform=tf)
    elif images:
        missing = [str(p) for p in images if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"image file not found: {missing[0]}")
        ds = ImageDataset(FileSource([str(p) for p in images], description="image files"), transform=tf)
    elif bundled_data(model):
        ds = open_dataset(bundled_data(model), transform=tf)
    else:
        raise ValueError("no images: give image paths or --data SPEC")
    if limit is not None and limit < len(ds):  # (limit >= 1 is checked above)
        ds = ds.subset(range(limit))
    if len(ds) == 0:
        raise ValueError("the dataset has no images")
    return ds, pcfg


def finish_skips(ds, out: Path) -> None:
    """Write ``out/skipped.csv`` when files were skipped and print the one-line summary."""
    if ds.skipped:
        ds.write_skip_report(out / "skipped.csv")
    typer.echo(ds.skip_summary(report=out / "skipped.csv" if ds.skipped else None))


def check_limit(limit: int | None, option: str = "--limit") -> None:
    """``--limit N`` must be a positive number of images."""
    if limit is not None and limit < 1:
        raise ValueError(f"{option} must be a positive number of images, got {limit}")


def check_range(value, option: str, low=None, high=None, low_open: bool = False, high_open: bool = False) -> None:
    """One line naming the option when ``value`` is outside [low, high] (or the open interval's side)."""
    if value is None:
        return
    bad = ((low is not None and (value <= low if low_open else value < low))
           or (high is not None and (value >= high if high_open else value > high)))
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        rng = f"in {lo}, {hi}" if low is not None and high is not None else (
            f"{'>' if low_open else '>='} {low}" if low is not None else f"{'<' if high_open else '<='} {high}")
        raise ValueError(f"{option} must be {rng}, got {value}")


def refuse_weights_with_random(weights, random: bool) -> None:
    """``--weights X --random`` is a contradiction, not a silent choice."""
    if weights is not None and random:
        raise ValueError("--weights and --random contradict each other: --random means no weights; drop one")


def check_inputs(data: str | None, images: list[Path] | None, limit: int | None) -> None:
    """What can be checked about the images before a model (and torch) is loaded: --limit, --data with image
    paths, missing image files. One line, at once."""
    check_limit(limit)
    if data and images:
        raise ValueError("give either --data or image paths, not both")
    missing = [str(p) for p in images or [] if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"image file not found: {missing[0]}")


def bundled_data(model) -> str | None:
    """``builtin:demo`` (with a note) for a bundled demo model given no --data; None for any other model."""
    from vitscope.models.bundled import is_bundled

    if not is_bundled(model):
        return None
    typer.echo("note: no --data; using builtin:demo, the synthetic benchmark the demo models were trained on",
               err=True)
    return "builtin:demo"


def warn_near_chance(what: str, data: str | None) -> None:
    """One warning line for a labelled result near chance (often: a model on data unlike its training data)."""
    hint = (" The bundled demo models are near chance off their training data: use --data builtin:demo."
            if data is not None and not str(data).startswith("builtin:demo") else "")
    typer.echo(f"warning: {what}; check that the data suits the model.{hint}", err=True)


def locks_out(command: str):
    """Decorate a command whose ``out`` option is a folder: it holds that folder's write lock while it runs, so a
    second process writing the same folder is refused with one line naming the first (``vitscope.outlock``)."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = kwargs.get("out")
            if out is None:
                return fn(*args, **kwargs)
            from vitscope.outlock import output_lock

            with output_lock(out, command):
                return fn(*args, **kwargs)
        return wrapper
    return deco

def default_data(model_names, data: str | None, quiet: bool = False) -> str | None:
    """``data``, or ``builtin:demo`` (with a note) when it is missing and every model named is a bundled demo
    model: they were trained on it and are near chance elsewhere."""
    from vitscope.models.bundled import bundled_path

    names = [str(n) for n in (model_names or [])]
    if data or not names or not all(bundled_path(n) is not None and not Path(n).exists() for n in names):
        return data
    if not quiet:
        typer.echo("note: no --data; using builtin:demo, the synthetic benchmark the demo models were trained on",
                   err=True)
    return "builtin:demo"


# ----------------------------------------------------------------------------- shared by the evaluation commands
BLOCKS_HELP = "Blocks: all, '0,3,-1' or '4:8' (end excluded; negatives count from the end)."
SEED_HELP = "Seed of the random-weight twins (--random / --with-random): the same seed, the same twin everywhere."
WITH_RANDOM_HELP = "Also run a random-weight twin of every model (seeded by --seed; dashed in the figures)."
LIMIT_HELP = "Use at most this many images."
OPACITY_HELP = "Opacity of a map over its image (0-1)."


def echo_skips(skipped, out: Path, quiet: bool = False) -> None:
    """Write ``out/skipped.csv`` and print the one-line summary when an analysis skipped unreadable files."""
    if not skipped:
        return
    from vitscope.data.skip import skip_summary, write_skip_report

    path = write_skip_report(skipped, Path(out) / "skipped.csv")
    if not quiet:
        typer.echo(skip_summary(skipped, report=path), err=True)


def cli_options(build, *args, flags: dict | None = None, **values):
    """An analysis's options built from the command's values (``build``: the dataclass or a constructor such as
    ``CKAOptions.from_preset``); a bad value is an ``OptionError`` whose message names the command's flag
    (``--discard-rule`` for the field ``discard_rule``; ``flags`` maps a field to another flag, e.g.
    ``{"video": "--out"}``)."""
    from vitscope.analysis.api import OptionError

    try:
        return build(*args, **values)
    except OptionError as e:
        flag = (flags or {}).get(e.field) or "--" + e.field.replace("_", "-")
        raise OptionError(e.field, str(e).replace(f"`{e.field}`", flag)) from None


def image_data(model_names, data: str | None, images: list[Path] | None, limit: int | None, quiet: bool = False):
    """The images of a command as one ImageDataset (the analysis re-reads it with each model's preprocessing):
    ``--data``, image paths, or ``builtin:demo`` for the bundled demo models; at most ``limit`` images."""
    from vitscope.data import ImageDataset, open_dataset
    from vitscope.data.folders import FileSource

    check_inputs(data, images, limit)
    spec = default_data(model_names, data, quiet) if not images else None
    if spec:
        ds = open_dataset(spec)
    elif images:
        ds = ImageDataset(FileSource([str(p) for p in images], description="image files"))
    else:
        raise ValueError("no images: give image paths or --data SPEC")
    if limit is not None and limit < len(ds):
        ds = ds.subset(range(limit))
    if len(ds) == 0:
        raise ValueError("the dataset has no images")
    return ds


def images_reported(ds, out: Path):
    """Around a pass over ``ds``: afterwards write ``out/skipped.csv`` (when files were skipped) and print the
    skip summary; a run where no image could be used says where the reasons are."""
    import contextlib

    @contextlib.contextmanager
    def reported():
        try:
            yield
        except ValueError as e:
            if str(e).startswith("no usable image") and getattr(ds, "skipped", None):
                report = ds.write_skip_report(Path(out) / "skipped.csv")
                raise ValueError(str(e).replace("; check", f" (reasons in {report}); check", 1)) from None
            raise
        finish_skips(ds, out)

    return reported()
