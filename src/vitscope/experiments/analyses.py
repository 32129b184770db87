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

:func:`register` and :data:`REGISTRY` live in :mod:`vitscope.experiments.registry`: an adapter module (this one,
``downstream.py``, ``probing.py``, a plugin) imports them from there. Adapters import their library module inside
the function. A plugin adapter whose library is missing calls
:func:`import_or_skip`: its cells are recorded as skipped (:class:`AnalysisUnavailable`) while the others run.
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np

from vitscope.experiments.registry import (REGISTRY, Adapter, AnalysisUnavailable, import_or_skip,  # noqa: F401
                                           options_defaults, options_validator, register, study_rows)


def _options(module: str, name: str):
    """An analysis's options dataclass, imported when the adapters are registered."""
    return getattr(importlib.import_module(module), name)


def _token_list(opts: dict) -> list[str]:
    return [opts["tokens"]]


# ----------------------------------------------------------------------------- attention
def _save_attention(result, ctx) -> None:
    """The result's figures in the cell's folder, named without the model (one model per cell), with the cell."""
    result.meta["figure_meta"] = ctx.meta()
    if "stems" in result.meta:
        result.meta["stems"] = dict.fromkeys(result.meta["stems"], "")
    result.save(ctx.out, table=False)


@register("attention_distance", options=_options("vitscope.analysis.attention.distance", "AttentionDistanceOptions"), fields=("variants", "batch_size"),
          description="mean attention distance per block and head (walmer2023: variant A; probing-vits: B)")
def attention_distance(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.attention.distance import AttentionDistanceOptions, evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.dataset(),
                      AttentionDistanceOptions.from_mapping(opts, limit=None))
    _save_attention(result, ctx)
    return study_rows(result, keep=("head",))


@register("saliency", options=_options("vitscope.analysis.attention.saliency", "SaliencyOptions"), fields=("queries", "mass", "mask_rule", "batch_size"),
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


@register("attention_stats", options=_options("vitscope.analysis.attention.stats", "AttentionStatsOptions"), fields=("batch_size",),
          description="walmer2023's attention statistics per block and head (spread, spatial->CLS, offsets)")
def attention_stats(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.attention.stats import AttentionStatsOptions, evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.dataset(), AttentionStatsOptions.from_mapping(opts, limit=None))
    return study_rows(result, keep=("head",))         # (its 15 figures: `vitscope attention-stats`)


# ----------------------------------------------------------------------------- CKA
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
# ablations, composition scores (patching.py); sparse autoencoders (sae.py)
from vitscope.experiments import downstream as _downstream  # noqa: E402,F401  (registers)
from vitscope.experiments import probing as _probing  # noqa: E402,F401  (registers)
from vitscope.experiments import patching as _patching  # noqa: E402,F401  (registers)
from vitscope.experiments import attribution as _attribution  # noqa: E402,F401  (registers)
from vitscope.experiments import sae as _sae  # noqa: E402,F401  (registers)
