"""`vitscope` command line: a thin typer app; every command calls library functions.

Each command group lives in its own module under ``vitscope.cli`` and exposes ``register(app)``.
Known errors become one readable line; set ``VITSCOPE_DEBUG=1`` to see the traceback.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import threading

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
    "class_embedding", "removal", "explain", "patching", "sae", "train", "experiments", "app", "demo",
)


def _flags_without_type() -> None:
    """Help shows no ``<bool>`` type beside on/off flags (typer >= 0.20 prints one for every option)."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if original is None or getattr(original, "_vitscope", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None
        return original(self, ctx)

    display_type_rich._vitscope = True
    option.display_type_rich = display_type_rich


def _version(value: bool) -> None:
    if value:
        from vitscope import __version__

        typer.echo(f"vitscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Probe, measure and visualise Vision Transformers."""


def _register_all() -> None:
    from vitscope.cli.common import use_command_class

    for name in COMMAND_MODULES:
        mod_name = f"vitscope.cli.{name}"
        if importlib.util.find_spec(mod_name) is None:
            continue
        importlib.import_module(mod_name).register(app)
    use_command_class(app)                 # old option spellings hidden from --help, --threads (cli/common.py)


_flags_without_type()
_register_all()


def _keyboard_interrupt(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind typer's ``Exit(130)`` (it keeps it as the cause)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _interrupted(e: KeyboardInterrupt | None) -> None:
    """Ctrl-C: one line saying where the command stopped (and how to resume, when it can), exit 130."""
    msg = e.args[0] if e is not None and e.args else "interrupted"
    typer.secho(f"\n{msg}", fg=typer.colors.YELLOW, err=True)
    sys.exit(130)


def _catch_sigint() -> None:
    """SIGINT (Ctrl-C) raises KeyboardInterrupt here whatever the parent did: a process started with SIGINT ignored
    (a background job of a non-interactive shell, `make test &`) would otherwise never stop on it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    _catch_sigint()
    try:
        app()
    except KeyboardInterrupt as e:                     # (typer turns Ctrl-C into exit 130; see below)
        _interrupted(e)
    except SystemExit as e:
        if e.code == 130:
            _interrupted(_keyboard_interrupt(e))
        raise
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError) as e:
        if os.environ.get("VITSCOPE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        field = getattr(e, "field", None)                 # an analysis option (vitscope.analysis.api.OptionError)
        if field:
            msg = str(e).replace(f"`{field}`", "--" + field.replace("_", "-"))
        typer.secho(f"error: {msg} (VITSCOPE_DEBUG=1 shows the traceback)", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
