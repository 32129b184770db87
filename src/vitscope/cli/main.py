"""`vitscope` command line: a thin typer app; every command calls library functions.

Each command group lives in its own module under ``vitscope.cli`` and exposes ``register(app)``.
Known errors become one readable line; set ``VITSCOPE_DEBUG=1`` to see the traceback.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import typer

app = typer.Typer(
    name="vitscope",
    help="Probe, measure and visualise Vision Transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# command-group modules, in the order their commands appear in --help
COMMAND_MODULES = (
    "models", "data", "extract", "attention", "similarity", "knn", "retrieval", "davis", "keypoints", "probes",
    "class_embedding", "removal", "train", "experiments", "app", "demo",
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        mod_name = f"vitscope.cli.{name}"
        if importlib.util.find_spec(mod_name) is None:
            continue
        importlib.import_module(mod_name).register(app)


_register_all()


def main() -> None:
    try:
        app()
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as e:
        if os.environ.get("VITSCOPE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        typer.echo("(set VITSCOPE_DEBUG=1 for the full traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
