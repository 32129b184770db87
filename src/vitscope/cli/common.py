"""Helpers shared by every command module: option help texts, formats, device, model loading, images.

Commands import from here so that every command reads ``--model``, ``--data``, ``--formats`` and ``--out`` the
same way. :class:`Command` is the class of every command: it hides old option spellings from ``--help``
(``options_table.py``), remembers which ones were typed (:func:`flag`) and adds ``--threads``.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import re
from pathlib import Path
from typing import Optional

import typer
import typer.core

from vitscope.runtime import load_model, load_models, model_meta, resolve_device, save_tidy, slug  # noqa: F401

MODEL_HELP = ("Model: a registry name, timm/<name>, hf:<repo>, or a local folder / file "
              "(see `vitscope models`).")
RANDOM_HELP = "Random weights (no download): the architecture only, as a baseline."
DATA_HELP = "Dataset spec (folder, list file, shards, hf:NAME, video, synthetic:...); see docs/data.md."
IMAGES_HELP = "Image files (used when --data is not given)."
OUT_HELP = "Output folder (created)."
FORMATS_HELP = "Figure formats, comma-separated: png, pdf, svg."
DEVICE_HELP = "Device: cpu, cuda, cuda:1, ... (default: cuda when available)."
THREADS_HELP = "CPU threads of torch and of the BLAS / OpenMP pools (default: torch's)."


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
    (``--discard-rule`` for the field ``discard_rule``; a renamed option by the spelling typed, see :func:`flag`;
    ``flags`` maps a field to another flag, e.g. ``{"video": "--out"}``)."""
    from vitscope.analysis.api import OptionError

    try:
        return build(*args, **values)
    except OptionError as e:
        plain = "--" + e.field.replace("_", "-")
        name = (flags or {}).get(e.field) or _renamed_flag(e.field) or plain
        msg = re.sub(rf"(?<![\w-]){re.escape(plain)}(?![\w-])", name, str(e).replace(f"`{e.field}`", name))
        raise OptionError(e.field, msg) from None


def _renamed_flag(field: str) -> str | None:
    """:func:`flag` for a field that is a parameter of the current command with old spellings, else None."""
    from vitscope.cli.options_table import old_spellings

    state = _INVOCATION.get()
    param = None if state is None else next((p for p in state[0].params if p.name == field), None)
    return flag(field) if param is not None and old_spellings(param) else None


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


# ----------------------------------------------------------------------------- the command class: option spellings
_INVOCATION: contextvars.ContextVar = contextvars.ContextVar("vitscope_invocation", default=None)
_TYPED = "vitscope.old_spellings"


def _typed_old_spellings(params, args) -> dict[str, str]:
    """``{param name: old spelling}`` for the options of ``args`` typed with an old spelling (before ``--``)."""
    from vitscope.cli.options_table import old_spellings

    old = {o: p.name for p in params for o in old_spellings(p)}
    typed = {}
    for a in args:
        if a == "--":
            break
        name = a.split("=", 1)[0] if a.startswith("--") else a[:2]
        if name in old:
            typed[old[name]] = name
    return typed


def flag(name: str) -> str:
    """How a message names the current command's option ``name`` (its Python parameter): the old spelling the
    user typed (or, when they typed old spellings elsewhere on the line, this option's old spelling too), else its
    name in ``--help``."""
    from vitscope.cli.options_table import canonical, old_spellings

    state = _INVOCATION.get()
    param = None if state is None else next((p for p in state[0].params if p.name == name), None)
    if param is None:
        return "--" + name.replace("_", "-")
    typed = state[1]
    if typed.get(name, "").startswith("--"):
        return typed[name]
    old = [o for o in old_spellings(param) if o.startswith("--")]
    if old and any(t.startswith("--") for t in typed.values()):
        return old[0]
    return canonical(param)


@contextlib.contextmanager
def threads_limited(threads: int | None):
    """Torch and the BLAS / OpenMP pools (k-means) on ``threads`` CPU threads while the block runs; None leaves
    them alone."""
    if threads is None:
        yield
        return
    check_range(threads, "--threads", 1)
    import torch

    before = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits

        pools = threadpool_limits(threads)
    except ImportError:
        pools = None
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if pools is not None:
            pools.restore_original_limits()


@functools.lru_cache(maxsize=None)
def _threads_option():
    """A ``--threads`` option made by typer itself (from a one-option command), copied into each command."""
    import typer.main

    probe = typer.Typer()

    @probe.command()
    def _threads(threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP)) -> None:
        """(only its option is used)"""

    return next(p for p in typer.main.get_command(probe).params if p.name == "threads")


class Command(typer.core.TyperCommand):
    """Every vitscope command: old option spellings (``options_table.OPTIONS[...].old``) are accepted but left out
    of ``--help``; the ones typed are remembered so that messages name them (:func:`flag`); commands that run
    torch get ``--threads``."""

    def __init__(self, *args, **kwargs) -> None:
        from vitscope.cli.options_table import NO_THREADS

        super().__init__(*args, **kwargs)
        self.adds_threads = self.name not in NO_THREADS and not any(p.name == "threads" for p in self.params)
        if self.adds_threads:
            at = next((i for i, p in enumerate(self.params) if p.name == "quiet"), len(self.params))
            self.params.insert(at, copy.copy(_threads_option()))

    def parse_args(self, ctx, args):
        from vitscope.cli.options_table import canonical, old_spellings

        typed = ctx.meta[_TYPED] = _typed_old_spellings(self.params, args)
        try:
            return super().parse_args(ctx, args)
        except Exception as e:                     # click's BadParameter (typer may vendor its own click): it
            p = getattr(e, "param", None)          # would name every spelling, '--clusters' / '--k'
            if p is not None and getattr(e, "param_hint", "") is None and old_spellings(p):
                e.param_hint = f"'{typed.get(p.name) or canonical(p)}'"
            raise

    def invoke(self, ctx):
        threads = ctx.params.pop("threads", None) if self.adds_threads else None
        token = _INVOCATION.set((self, ctx.meta.get(_TYPED, {})))
        try:
            with threads_limited(threads):
                return super().invoke(ctx)
        finally:
            _INVOCATION.reset(token)

    def format_help(self, ctx, formatter) -> None:
        from vitscope.cli.options_table import old_spellings

        saved = [(p, p.opts, p.secondary_opts) for p in self.params if old_spellings(p)]
        for p, opts, secondary in saved:
            hidden = set(old_spellings(p))
            p.opts = [o for o in opts if o not in hidden]
            p.secondary_opts = [o for o in secondary if o not in hidden]
        try:
            super().format_help(ctx, formatter)
        finally:
            for p, opts, secondary in saved:
                p.opts, p.secondary_opts = opts, secondary


def use_command_class(app: typer.Typer) -> None:
    """Make :class:`Command` the class of every command registered on ``app`` and its sub-apps."""
    for info in app.registered_commands:
        if info.cls in (None, typer.core.TyperCommand):
            info.cls = Command
    for group in app.registered_groups:
        use_command_class(group.typer_instance)
