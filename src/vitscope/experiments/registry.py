"""The registry of study analyses: :func:`register` turns a function ``fn(ctx, options) -> rows`` into an analysis
a study file can name (see :mod:`vitscope.experiments.analyses` for the built-in ones and how to write one).

Adapter modules import :func:`register` from here; the parser, the expansion and the runner read
:data:`REGISTRY` after :mod:`vitscope.experiments.analyses` has imported the built-in adapters.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitscope.experiments.spec import TASKS

SCOPES = ("model", "pair")
NEEDS = ("labels", "masks", "train")


class AnalysisUnavailable(RuntimeError):
    """The analysis cannot run in this installation (its library module is missing); the cell is skipped."""


@dataclass
class Adapter:
    name: str
    fn: Callable[..., list[dict]]
    defaults: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, tuple] = field(default_factory=dict)
    scope: str = "model"                               # "model": one cell per model; "pair": per pair of models
    store_tokens: Callable[[dict], list[str]] | None = None    # token reductions read from the feature store
    needs: tuple[str, ...] = ()
    validate: Callable[[dict], None] | None = None
    description: str = ""
    task: str | None = None                            # reads a task root of the dataset (davis, spair, revisited)

    def tokens(self, options: dict) -> list[str]:
        return list(self.store_tokens(options)) if self.store_tokens else []


REGISTRY: dict[str, Adapter] = {}


def register(name: str, defaults: dict | None = None, choices: dict | None = None, scope: str = "model",
             store_tokens: Callable[[dict], list[str]] | None = None, needs: tuple[str, ...] = (),
             validate: Callable[[dict], None] | None = None, description: str = "", task: str | None = None,
             options: type | None = None, fields: tuple[str, ...] = ()):
    """Decorator: register ``fn(ctx, options) -> rows`` as analysis ``name`` (see the module docstring).

    ``options``: the analysis's options dataclass (:class:`vitscope.analysis.api.Options`); a study's ``options:``
    may set its ``fields``, whose defaults and validation come from the dataclass (written once, there); a
    ``defaults`` entry given with it overrides the dataclass's default of that field in studies (an explicit study
    default, e.g. ``k: 50`` where the dataclass's ``None`` means "the paper's value for the mode").
    ``task``: the analysis reads a task root of the dataset entry (``davis``, ``spair``, ``revisited``) instead of
    its images; its cells are made for the datasets that name one."""
    if options is not None:
        defaults = {**options_defaults(options, fields), **(defaults or {})}
        validate = options_validator(options, validate)

    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"needs takes {NEEDS}, got {bad}")

    def deco(fn):
        REGISTRY[name] = Adapter(name, fn, dict(defaults or {}), dict(choices or {}), scope, store_tokens,
                                 tuple(needs), validate, description or (fn.__doc__ or "").strip().split("\n")[0],
                                 task)
        return fn

    return deco


def options_defaults(options: type, fields: tuple[str, ...]) -> dict[str, Any]:
    """A study's defaults for ``fields`` of an options dataclass (tuples as lists, as YAML writes them)."""
    base = options()
    return {f: list(v) if isinstance(v, tuple) else v for f in fields for v in [getattr(base, f)]}


def options_validator(options: type, extra: Callable[[dict], None] | None = None) -> Callable[[dict], None]:
    """Validation of a study's options by the dataclass (``options.k`` named as the study file spells it)."""
    def validate(o: dict) -> None:
        from vitscope.analysis.api import OptionError

        try:
            options.from_mapping(o)
        except OptionError as e:
            raise ValueError(str(e).replace(f"`{e.field}`", f"'{e.field}'")) from None
        if extra is not None:
            extra(o)
    return validate


def study_rows(result, keep: tuple[str, ...] = ()) -> list[dict]:
    """A :class:`~vitscope.analysis.api.Result`'s table as study rows (block, metric, value and the columns in
    ``keep``, e.g. task / head / model2 / block2); the runner adds the model and option columns."""
    out = []
    for r in result.table.to_dict("records"):
        row = {"block": None if _isnull(r.get("block")) else int(r["block"]), "metric": r["metric"],
               "value": float(r["value"])}
        row.update({k: r[k] for k in keep if not _isnull(r.get(k))})
        out.append(row)
    return out


def _isnull(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def import_or_skip(module: str, what: str):
    """Import ``module`` or raise :class:`AnalysisUnavailable` saying ``what`` is not in this version."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        import vitscope

        raise AnalysisUnavailable(f"{what} is not available in this version of vitscope ({vitscope.__version__}: "
                                  f"{module} is missing); the cell runs once it is installed")
    return importlib.import_module(module)
