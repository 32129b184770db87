"""The analyses a study can run: a registry of small adapters from an analysis name to a library function.

An adapter receives a :class:`~vitscope.experiments.context.CellContext` (the cell's model(s), dataset, feature
stores, options and output folder) and returns tidy rows, one dict per number::

    {"block": 3, "metric": "nmi", "value": 0.71}                  # required: metric and value
    {"block": 3, "head": 5, "metric": "attention_distance_A", "value": 0.42}
    {"block": 2, "block2": 4, "model2": "demo-vit (random)", "metric": "cka", "value": 0.3}
    {"task": "all-blocks attentive", "metric": "gain", "value": 4.9}

``head`` absent (null) marks the per-block value; the runner adds study, cell, model, weights hash, dataset,
analysis, options, vitscope version and time. Adding an analysis is one registered function::

    @register("my_metric", defaults={"k": 10}, store_tokens=lambda o: ["cls"], needs=("labels",))
    def my_metric(ctx, opts):
        store = ctx.store(0, "cls")
        return [{"block": b, "metric": "my_metric", "value": f(store, b, opts["k"])} for b in ctx.layers(0, "cls")]

Adapters import their library module inside the function. A plugin adapter whose library is missing calls
:func:`import_or_skip`: its cells are recorded as skipped (:class:`AnalysisUnavailable`) while the others run.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    default, e.g. ``k: 50`` where the dataclass's ``None`` means "the paper's value for the mode")
    ``task``: the analysis reads a task root of the dataset entry (``davis``, ``spair``, ``revisited``) instead of
    its images; its cells are made for the datasets that name one."""
    from vitscope.experiments.config import TASKS

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


def _token_list(opts: dict) -> list[str]:
    return [opts["tokens"]]


# ----------------------------------------------------------------------------- attention
def _attention_options(name: str):
    import importlib

    module, cls = {"distance": ("distance", "AttentionDistanceOptions"), "saliency": ("saliency", "SaliencyOptions"),
                   "stats": ("stats", "AttentionStatsOptions")}[name]
    return getattr(importlib.import_module(f"vitscope.analysis.attention.{module}"), cls)


def _save_attention(result, ctx) -> None:
    """The result's figures in the cell's folder, named without the model (one model per cell), with the cell."""
    result.meta["figure_meta"] = ctx.meta()
    if "stems" in result.meta:
        result.meta["stems"] = dict.fromkeys(result.meta["stems"], "")
    result.save(ctx.out, table=False)


@register("attention_distance", options=_attention_options("distance"), fields=("variants", "batch_size"),
          description="mean attention distance per block and head (walmer2023: variant A; probing-vits: B)")
def attention_distance(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.attention.distance import AttentionDistanceOptions, evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.dataset(),
                      AttentionDistanceOptions.from_mapping(opts, limit=None))
    _save_attention(result, ctx)
    return study_rows(result, keep=("head",))


@register("saliency", options=_attention_options("saliency"), fields=("queries", "mass", "mask_rule", "batch_size"),
          needs=("masks",), description="IoU of binarised attention with the object masks (walmer2023)")
def saliency(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.attention.saliency import SaliencyOptions, evaluate

    structure = ctx.raw_dataset()
    if not hasattr(getattr(structure, "source", structure), "sample"):
        raise ValueError(f"dataset {ctx.cell.dataset.name!r} has no object masks; saliency needs synthetic:... "
                         "(or run `vitscope saliency` on a segmentation task format)")
    result = evaluate({ctx.label(0): ctx.model(0)}, structure, SaliencyOptions.from_mapping(opts, limit=None))
    _save_attention(result, ctx)
    return study_rows(result, keep=("head",))


@register("attention_stats", options=_attention_options("stats"), fields=("batch_size",),
          description="walmer2023's attention statistics per block and head (spread, spatial->CLS, offsets)")
def attention_stats(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.attention.stats import AttentionStatsOptions, evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.dataset(), AttentionStatsOptions.from_mapping(opts, limit=None))
    return study_rows(result, keep=("head",))         # (its 15 figures: `vitscope attention-stats`)


# ----------------------------------------------------------------------------- CKA
def _options(module: str, name: str):
    return getattr(importlib.import_module(module), name)


@register("cka", options=_options("vitscope.analysis.similarity.cka", "CKAOptions"),
          fields=("tokens", "kernel", "unbiased", "normalize"), defaults={"tokens": "cls"}, scope="pair",
          choices={"tokens": ("cls", "mean"), "kernel": ("linear", "rbf")},
          store_tokens=_token_list,
          description="layer x layer CKA for every pair of models (and each model with itself)")
def cka(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.similarity.cka import CKAOptions, evaluate

    t = opts["tokens"]
    stores = {ctx.label(0): ctx.store(0, t)}
    if not ctx.same_models:
        stores[ctx.label(1)] = ctx.store(1, t)
    result = evaluate(stores, None, CKAOptions.from_mapping(opts, site=ctx.site, device=ctx.device))
    result.save(ctx.out, table=False)
    return study_rows(result, keep=("block2", "model2"))


# ----------------------------------------------------------------------------- RSA
@register("rsa", options=_options("vitscope.analysis.similarity.rsa", "RSAOptions"),
          fields=("rdm", "compare", "tokens"), choices={"tokens": ("cls", "mean")}, store_tokens=_token_list,
          description="layer x layer RSA of each model: correlation RDMs compared by Spearman (ciernik2025)")
def rsa(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.similarity.rsa import RSAOptions, evaluate

    result = evaluate({ctx.label(0): ctx.store(0, opts["tokens"])}, None,
                      RSAOptions.from_mapping(opts, site=ctx.site, device=ctx.device))
    result.save(ctx.out, table=False)
    return study_rows(result, keep=("block2", "model2"))


# ----------------------------------------------------------------------------- k-means clustering
@register("cluster", options=_options("vitscope.analysis.cluster", "ClusterOptions"),
          fields=("tokens", "k", "seed", "n_init"), defaults={"k": 50}, choices={"tokens": ("cls", "mean")},
          store_tokens=_token_list, needs=("labels",),
          description="k-means on each block's features scored by NMI, ARI and purity (walmer2023)")
def cluster(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.cluster import ClusterOptions, evaluate

    result = evaluate({ctx.label(0): ctx.store(0, opts["tokens"])}, None,
                      ClusterOptions.from_mapping(opts, site=ctx.site, device=ctx.device))
    result.save(ctx.out, table=False)
    return study_rows(result)


# ----------------------------------------------------------------------------- the other evaluations
# k-NN, retrieval, DAVIS, keypoints (downstream.py); probes, logit lens, removal curves (probing.py); patching,
# ablations, composition scores (patching.py)
from vitscope.experiments import downstream as _downstream  # noqa: E402,F401  (registers)
from vitscope.experiments import probing as _probing  # noqa: E402,F401  (registers)
from vitscope.experiments import patching as _patching  # noqa: E402,F401  (registers)
