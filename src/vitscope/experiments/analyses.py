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
import warnings
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
    may set its ``fields``, whose defaults and validation come from the dataclass (written once, there).
    ``task``: the analysis reads a task root of the dataset entry (``davis``, ``spair``, ``revisited``) instead of
    its images; its cells are made for the datasets that name one."""
    from vitscope.experiments.config import TASKS

    if options is not None:
        defaults, validate = options_defaults(options, fields), options_validator(options, validate)

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


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis)


def _token_list(opts: dict) -> list[str]:
    return [opts["tokens"]]


# ----------------------------------------------------------------------------- attention distance
@register("attention_distance", defaults={"variants": ["A"], "batch_size": 32}, choices={"variants": ("A", "B")},
          description="mean attention distance per block and head (walmer2023: variant A; probing-vits: B)")
def attention_distance(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.attention.distance import attention_distance as run
    from vitscope.viz.attention_distance import plot_attention_distance
    from vitscope.viz.save import save_figure

    model, ds = ctx.model(0), ctx.dataset()
    variants = list(dict.fromkeys(opts["variants"]))
    acc = run(model, (b[0] for b in ds.batches(batch_size=opts["batch_size"])), variants, progress=False,
              total=len(ds))
    rows = []
    for v in variants:
        mean, std = acc[v].compute(), acc[v].std()
        metric = f"attention_distance_{v}"
        for b in range(mean.shape[0]):
            rows.append({"block": b, "metric": metric, "value": float(mean[b].mean())})
            rows += [{"block": b, "head": h, "metric": metric, "value": float(mean[b, h])}
                     for h in range(mean.shape[1])]
        save_figure(plot_attention_distance(mean, v, title=f"{ctx.label(0)} (variant {v})", std=std),
                    ctx.out / f"distance_{v}", arrays={"mean": mean, "std": std}, meta=ctx.meta())
    return rows


# ----------------------------------------------------------------------------- saliency IoU
@register("saliency", defaults={"queries": ["cls"], "mass": 0.6, "mask_rule": "bicubic", "batch_size": 32},
          choices={"queries": ("cls", "mean", "centre"), "mask_rule": ("bicubic", "any", "majority")},
          needs=("masks",), description="IoU of binarised attention with the object masks (walmer2023)")
def saliency(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.attention.saliency import image_mask_pairs, saliency_batches, saliency_iou
    from vitscope.viz.attention_stats import plot_block_head_heatmap
    from vitscope.viz.save import save_figure

    model = ctx.model(0)
    structure = ctx.raw_dataset()
    src = getattr(structure, "source", structure)
    if not hasattr(src, "sample"):
        raise ValueError(f"dataset {ctx.cell.dataset.name!r} has no object masks; saliency needs synthetic:... "
                         "(or run `vitscope saliency` on a segmentation task format)")
    skipped: list[str] = []
    batches = saliency_batches(model, image_mask_pairs(structure), opts["batch_size"], opts["mask_rule"], skipped)
    res = saliency_iou(model, batches, opts["queries"], opts["mass"], progress=False, total=len(structure))
    rows = []
    for q in dict.fromkeys(opts["queries"]):
        per_head, summed = _nanmean(res[(q, False)], 0), _nanmean(res[(q, True)], 0)        # L, H and L, 1
        metric = f"saliency_iou_{q}"
        for b in range(per_head.shape[0]):
            if np.isnan(summed[b, 0]):                                  # the query token is absent at this block
                continue
            rows.append({"block": b, "metric": metric, "value": float(summed[b, 0])})
            rows += [{"block": b, "head": h, "metric": metric, "value": float(per_head[b, h])}
                     for h in range(per_head.shape[1])]
        table = np.concatenate([per_head, summed], axis=1)
        labels = [str(h) for h in range(per_head.shape[1])] + ["sum"]
        save_figure(plot_block_head_heatmap(table, title=f"{ctx.label(0)}: saliency IoU, {q} query", cmap="viridis",
                                            label="IoU", head_labels=labels),
                    ctx.out / f"iou_{q}", arrays={"mean": table}, meta={**ctx.meta(), "skipped_no_object": skipped})
    return rows


# ----------------------------------------------------------------------------- CKA
@register("cka", defaults={"tokens": "cls", "kernel": "linear", "unbiased": True, "normalize": False},
          choices={"tokens": ("cls", "mean"), "kernel": ("linear", "rbf")}, scope="pair", store_tokens=_token_list,
          description="layer x layer CKA for every pair of models (and each model with itself)")
def cka(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.similarity.compare import store_layer_cka
    from vitscope.viz.similarity import save_similarity

    t = opts["tokens"]
    s1 = ctx.store(0, t)
    s2 = None if ctx.same_models else ctx.store(1, t)
    res = store_layer_cka(s1, s2, site=ctx.site, reduction=t, kernel=opts["kernel"], unbiased=opts["unbiased"],
                          normalize=opts["normalize"])
    save_similarity(res, ctx.out / "cka", title=f"CKA ({t}): {ctx.label(0)} x {ctx.label(-1)}")
    m2 = ctx.label(-1)
    return [{"block": int(r), "block2": int(c), "model2": m2, "metric": "cka", "value": float(res.matrix[i, j])}
            for i, r in enumerate(res.rows) for j, c in enumerate(res.cols)]


# ----------------------------------------------------------------------------- k-means clustering
@register("cluster", defaults={"tokens": "cls", "k": 50, "seed": 0, "n_init": 10},
          choices={"tokens": ("cls", "mean")}, store_tokens=_token_list, needs=("labels",),
          description="k-means on each block's features scored by NMI, ARI and purity (walmer2023)")
def cluster(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.cluster import store_cluster_scores

    scores, layers = store_cluster_scores(ctx.store(0, opts["tokens"]), ctx.site, opts["tokens"], None, opts["k"],
                                          opts["seed"], opts["n_init"])
    return [{"block": int(layer), "metric": m, "value": float(v[i])}
            for m, v in scores.items() for i, layer in enumerate(layers)]


# ----------------------------------------------------------------------------- the other evaluations
# k-NN, retrieval, DAVIS, keypoints (downstream.py); probes, logit lens, removal curves (probing.py)
from vitscope.experiments import downstream as _downstream  # noqa: E402,F401  (registers)
from vitscope.experiments import probing as _probing  # noqa: E402,F401  (registers)
from vitscope.experiments import attribution as _attribution  # noqa: E402,F401  (registers)
