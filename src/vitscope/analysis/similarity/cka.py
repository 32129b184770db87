"""CKA per block, across models and residual branches: the evaluation entry point over the CKA maths.

The maths lives in :mod:`vitscope.analysis.similarity.cka_core` (re-exported here); this module adds the
evaluation entry point, :func:`evaluate`, that the command line, studies and the report call.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitscope.analysis.api import OptionError, Options, Result, tidy_table

from vitscope.analysis.similarity.cka_core import *  # noqa: F401,F403  (the maths, under its usual path)
from vitscope.analysis.similarity.cka_core import (BANDWIDTH_ALIASES, BANDWIDTHS, KERNELS, METHODS,  # noqa: F401
                                                   _choose_method, _Prepared)


# ----------------------------------------------------------------------------- the evaluation entry point
COMPARISONS = ("layers", "grid", "last_layer", "residual")


@dataclass
class CKAOptions(Options):
    """Options of :func:`evaluate` (``vitscope cka``, the study analysis ``cka``).

    ``comparison``: ``layers`` (layer x layer within one model, or model A x model B), ``grid`` (layer x layer for
    every pair of models), ``last_layer`` (the last block of every model) or ``residual`` (walmer2023's residual
    CKA: each block's skip input against its attention / MLP branch output, with norm ratios).
    :meth:`from_preset` starts from a paper's settings."""

    comparison: str = "layers"
    tokens: str | None = None                # cls, mean, all, patches; default cls (all for residual, walmer2023)
    kernel: str = "linear"                   # linear or rbf
    unbiased: bool = True                    # unbiased HSIC (Song et al. 2012); minibatch CKA is always unbiased
    normalize: bool = False                  # L2-normalise each sample's features first (ciernik2025)
    minmax: bool = False                     # walmer2023's kernel quirk: Gram matrices scaled to [0, 1]
    minibatch: bool = True                   # models: stream minibatch CKA (memory independent of the images)
    sigma: float | None = None               # fixed RBF bandwidth; default one per input from its distances
    rbf_threshold: float = 1.0               # RBF: the data bandwidth times this
    bandwidth: str = "kornblith"             # RBF bandwidth rule (see the module docstring)
    mlp_skip: str = "resid_mid"              # residual: the MLP branch's skip input (resid_mid, or resid_pre)
    sites: tuple[str, ...] = ("resid_post",)  # block sites read from models
    site: str = "resid_post"                 # feature-store site read (stores)
    clusters: int | None = None              # spectral clustering of one model's layers into this many groups
    batch_size: int = 256                    # images per batch (the minibatch of minibatch CKA)
    limit: int | None = None                 # at most this many images
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        from vitscope.analysis.similarity.compare import MLP_SKIPS, check_sites_option
        from vitscope.features.access import TOKEN_MODES

        self.check_choice("comparison", COMPARISONS, aliases={"last-layer": "last_layer"})
        if self.tokens is not None:
            self.check_choice("tokens", TOKEN_MODES)
        self.check_choice("kernel", KERNELS)
        self.check_number("sigma", low=0, low_open=True, optional=True)
        self.check_number("rbf_threshold", low=0, low_open=True)
        self.check_choice("bandwidth", BANDWIDTHS)
        self.check_choice("mlp_skip", MLP_SKIPS)
        check_sites_option(self)
        self.check_int("clusters", optional=True)
        self.check_int("batch_size")
        self.check_int("limit", optional=True)

    @property
    def token_mode(self) -> str:
        return self.tokens or ("all" if self.comparison == "residual" else "cls")

    @classmethod
    def from_preset(cls, preset: str | None = None, **values) -> "CKAOptions":
        """The settings of a preset (``vitscope.analysis.similarity.compare.PRESETS``: the full-data default,
        ciernik2025's, walmer2023's) with the ``values`` that are not None on top; no preset: the defaults."""
        from vitscope.analysis.similarity.compare import preset_options

        given = {k: v for k, v in values.items() if v is not None}
        if preset is None:
            return cls(**given)
        try:
            p = preset_options(preset)
        except ValueError as e:
            raise OptionError("preset", str(e).replace("preset must", "`preset` must")) from None
        base = dict(kernel=p["kernel"], unbiased=p["unbiased"], minmax=p["minmax"], normalize=p["normalize"],
                    minibatch=p["minibatch"], tokens=p["token_mode"], sites=tuple(p["sites"]))
        return cls(**{**base, **given})


def evaluate(models_or_stores, data=None, options: CKAOptions | None = None, **overrides) -> Result:
    """CKA between layers, models or the residual branches (see :class:`CKAOptions`).

    Args:
        models_or_stores: ``{label: HookedViT}`` (or one model / a list) run over ``data``; feature stores of the
            same images (paths or opened stores; a list or ``{label: store}``); or features in memory
            ``{label: {layer: (n, d)}}``.
        data: with models, the images (a dataset spec string, an ``ImageDataset``, an (N, 3, H, W) tensor or an
            iterable of batches); unused otherwise.
        options: :class:`CKAOptions` (keyword overrides are applied on top).

    The table has one row per pair of layers (``model``, ``block``, ``model2``, ``block2``; ``site`` / ``site2``
    when not the block output; metric ``cka``), for residual CKA ``cka_attn`` / ``cka_mlp`` (skip input of
    ``block`` x branch output of ``block2``) and ``norm_ratio_<branch>_<tokens>`` per block; ``layer_cluster``
    rows with ``clusters``. ``result.arrays["results"]`` holds the matrices.
    """
    from vitscope.analysis.similarity.compare import PanelResult, data_label, similarity_inputs

    opts = (options or CKAOptions()).replace(**overrides) if overrides else (options or CKAOptions())
    kind, items = similarity_inputs(models_or_stores, "models, feature stores or in-memory features")
    if kind == "models" and opts.minibatch and not opts.unbiased:
        raise OptionError("unbiased", "minibatch CKA uses unbiased HSIC only; add --full (minibatch=False) for "
                                      "biased CKA")
    run = {"stores": _from_stores, "features": _from_features, "models": _from_models}[kind]
    results, notes, n, where = run(items, data, opts)
    rows = _rows(results, opts)
    meta = {"notes": notes, "n_images": n, "data": where, "kind": kind,
            "clusters": _clusters(results, opts.clusters, opts.comparison)}
    for (a, _), labels in meta["clusters"].items():
        rows += [{"model": a, "block": b, "metric": "layer_cluster", "value": float(c)}
                 for b, c in zip(_blocks_of(results[(a, a)].rows), labels)]
    table = tidy_table(rows, "cka", opts, dataset=where if isinstance(where, str) else data_label(data))
    return PanelResult("cka", table, _summary(results, opts, n), opts, panels=_panels, arrays={"results": results},
                       meta=meta)


def _pairs(names: list[str], grid: bool, what: str) -> list[tuple[str, str]]:
    if len(names) == 1:
        return [(names[0], names[0])]
    if grid:
        return [(a, b) for a in names for b in names]
    if len(names) > 2:
        raise ValueError(f"layer x layer CKA takes one or two {what}; use comparison='grid' (--grid) for every "
                         f"pair, or 'last_layer' (--last-layer) to compare the last layers")
    return [(names[0], names[1])]


def _rbf(opts: CKAOptions) -> dict:
    return dict(kernel=opts.kernel, sigma=opts.sigma, minmax=opts.minmax, normalize=opts.normalize,
                threshold=opts.rbf_threshold, bandwidth=opts.bandwidth)


def _residual_kw(opts: CKAOptions) -> dict:
    return dict(token_mode=opts.token_mode, kernel=opts.kernel, sigma=opts.sigma, minmax=opts.minmax,
                mlp_skip=opts.mlp_skip, threshold=opts.rbf_threshold, bandwidth=opts.bandwidth)


def _from_stores(stores: dict, data, opts: CKAOptions):
    from vitscope.analysis.similarity import compare as C

    names, tok, out = list(stores), opts.token_mode, {}
    if opts.comparison == "residual":
        for n, s in stores.items():
            out[n] = C.store_residual_cka(s, unbiased=opts.unbiased, **_residual_kw(opts))
    elif opts.comparison == "last_layer":
        if len(names) < 2:
            raise ValueError("comparing the last layers needs at least two feature stores (--store and --store2)")
        res = C.store_cross_model_cka(list(stores.values()), site=opts.site, reduction=tok, unbiased=opts.unbiased,
                                      **_rbf(opts))
        res.rows = res.cols = names
        res.meta["last"] = {n: int(s.layers[-1]) for n, s in stores.items()}
        out["last_layer"] = res
    else:
        for a, b in _pairs(names, opts.comparison == "grid", "feature stores"):
            out[(a, b)] = C.store_layer_cka(stores[a], None if a == b else stores[b], site=opts.site, reduction=tok,
                                            unbiased=opts.unbiased, progress=opts.progress, **_rbf(opts))
    first = next(iter(stores.values()))
    return out, [], int(np.asarray(first.valid).sum()), C.data_label(first)


def _from_features(feats: dict, data, opts: CKAOptions):
    from vitscope.analysis.similarity import compare as C

    if opts.comparison not in ("layers", "grid"):
        raise ValueError(f"in-memory features compare layers (comparison 'layers' or 'grid'), not "
                         f"{opts.comparison!r}")
    out = {}
    for a, b in _pairs(list(feats), opts.comparison == "grid", "feature sets"):
        out[(a, b)] = C.layer_cka(feats[a], None if a == b else feats[b], unbiased=opts.unbiased, **_rbf(opts))
        out[(a, b)].meta.update(models=[a, b], token_mode=opts.tokens)
    n = int(np.shape(next(iter(next(iter(feats.values())).values())))[0])
    return out, [], n, C.data_label(data)


def _from_models(models: dict, data, opts: CKAOptions):
    from vitscope.analysis.similarity import compare as C
    from vitscope.features.access import open_dataset_any

    if data is None:
        raise ValueError("CKA from models needs images: data (--data SPEC: a folder, a list, shards, hf:NAME or "
                         "synthetic:n=256)")
    ds, tok, out, notes = open_dataset_any(data), opts.token_mode, {}, []
    common = dict(token_mode=tok, batch_size=opts.batch_size, limit=opts.limit, progress=opts.progress)

    def hooks(m):
        h, note = C.token_hooks(m, tok, opts.sites)
        notes.extend([note] if note and note not in notes else [])
        return h

    def full(m, hk):
        return {C.short_name(h): v for h, v in C.collect_features(m, ds, hk, tok, opts.batch_size, opts.limit,
                                                                  opts.progress)[0].items()}

    if opts.comparison == "residual":
        for n, m in models.items():
            out[n] = C.stream_residual_cka(m, ds, batch_size=opts.batch_size, limit=opts.limit,
                                           progress=opts.progress, **_residual_kw(opts))
    elif opts.comparison == "last_layer":
        if len(models) < 2:
            raise ValueError("comparing the last layers needs at least two models")
        if opts.minibatch:
            res = C.stream_cross_model_cka(models, ds, **common, **_rbf(opts))
        else:
            last = {n: f"blocks.{m.cfg.depth - 1}.{C.DEFAULT_SITE}" for n, m in models.items()}
            res = C.cross_model_cka({n: full(m, [last[n]])[C.short_name(last[n])] for n, m in models.items()},
                                    unbiased=opts.unbiased, **_rbf(opts))
            res.meta.update(token_mode=tok, hooks=last)
        out["last_layer"] = res
    else:
        for a, b in _pairs(list(models), opts.comparison == "grid", "models"):
            ha, hb = hooks(models[a]), hooks(models[b])
            if opts.minibatch:
                res = C.stream_layer_cka(models[a], ds, None if a == b else models[b], ha, hb, names=(a, b),
                                         **common, **_rbf(opts))
            else:
                fa = full(models[a], ha)
                res = C.layer_cka(fa, None if a == b else full(models[b], hb), unbiased=opts.unbiased, **_rbf(opts))
                res.meta.update(token_mode=tok, models=[a, b])
            out[(a, b)] = res
    first = next(iter(out.values()))
    n = first.meta.get("n_images") or C.n_images(ds, opts.limit)
    return out, notes, n, C.data_label(data) or C.data_label(ds)


def _blocks_of(names) -> list:
    from vitscope.analysis.similarity.compare import hook_block

    return [hook_block(n)[0] for n in names]


def _rows(results: dict, opts: CKAOptions) -> list[dict]:
    from vitscope.analysis.similarity.compare import hook_block

    rows = []
    for key, res in results.items():
        if opts.comparison == "residual":
            layers = res.meta.get("layers") or list(range(res.attn.matrix.shape[0]))
            for branch in ("attn", "mlp"):
                m = getattr(res, branch).matrix
                rows += [{"model": key, "block": int(layers[i]), "model2": key, "block2": int(layers[j]),
                          "metric": f"cka_{branch}", "value": float(m[i, j])}
                         for i in range(m.shape[0]) for j in range(m.shape[1])]
                for t, v in res.norm_ratios[branch].items():
                    rows += [{"model": key, "block": int(layers[i]), "metric": f"norm_ratio_{branch}_{t}",
                              "value": float(x)} for i, x in enumerate(v) if np.isfinite(x)]
            continue
        if key == "last_layer":
            last = _last_blocks(res)
            rows += [{"model": a, "block": last[a], "model2": b, "block2": last[b], "metric": "cka",
                      "value": float(res.matrix[i, j])} for i, a in enumerate(res.rows) for j, b in enumerate(res.cols)]
            continue
        a, b = key
        for i, r in enumerate(res.rows):
            for j, c in enumerate(res.cols):
                (br, sr), (bc, sc) = hook_block(r), hook_block(c)
                row = {"model": a, "block": br, "model2": b, "block2": bc, "metric": "cka",
                       "value": float(res.matrix[i, j])}
                row.update({k: v for k, v in (("site", sr), ("site2", sc)) if v is not None})
                rows.append(row)
    return rows


def _last_blocks(res) -> dict:
    """The block index of each model's last layer in a last-layer comparison (from the hooks or the stores)."""
    from vitscope.analysis.similarity.compare import hook_block

    hooks = res.meta.get("hooks") or {}
    return {n: hook_block(hooks[n])[0] if n in hooks else res.meta.get("last", {}).get(n) for n in res.rows}


def _clusters(results: dict, k: int | None, comparison: str) -> dict:
    """Spectral clustering of the layers of each model compared with itself (ciernik2025)."""
    if k is None:
        return {}
    from vitscope.analysis.similarity.rsa import spectral_cluster_layers

    square = {key: r for key, r in results.items() if isinstance(key, tuple) and key[0] == key[1]}
    if comparison not in ("layers", "grid") or not square:
        raise OptionError("clusters", "`clusters` groups the layers of one model (a square layer x layer matrix)")
    return {key: spectral_cluster_layers(r.matrix, k) for key, r in square.items()}


def _summary(results: dict, opts: CKAOptions, n: int | None) -> str:
    how = "minibatch" if next(iter(results.values())).meta.get("minibatch") else "full-data"
    where = f" on {n} images" if n else ""
    if opts.comparison == "residual":
        parts = [f"{k}: CKA(skip, attn) {np.mean(np.diag(r.attn.matrix)):.2f}, CKA(skip, mlp) "
                 f"{np.mean(np.diag(r.mlp.matrix)):.2f} on average" for k, r in results.items()]
        return f"residual CKA ({opts.token_mode} tokens){where}: " + "; ".join(parts)
    if "last_layer" in results:
        r = results["last_layer"]
        off = r.matrix[~np.eye(len(r.rows), dtype=bool)]
        return f"last-layer CKA of {len(r.rows)} models ({opts.token_mode} tokens){where}: {off.mean():.2f} on average"
    (a, b), r = next(iter(results.items()))
    if a == b and r.matrix.shape[0] > 1:
        tail = f"adjacent layers {np.mean(np.diag(r.matrix, 1)):.2f} on average, first vs last {r.matrix[0, -1]:.2f}"
    else:
        tail = f"{r.matrix.mean():.2f} on average"
    return f"{how} CKA ({opts.kernel}, {opts.token_mode} tokens) of {a} x {b}{where}: {tail}"


def _panels(result) -> dict:
    """The figures `vitscope cka` writes: one heat map per comparison (or a grid of them), residual CKA per model."""
    from vitscope.runtime import slug

    o, m, results = result.options, result.meta, result.arrays["results"]
    ctx = dict(data=m["data"], n_images=m["n_images"], tokens=o.token_mode)
    if o.comparison == "residual":
        return {f"residual_{slug(k)}": ("residual", r, dict(title=f"{k}: residual CKA", **ctx))
                for k, r in results.items()}
    if "last_layer" in results:
        return {"cka_last_layer": ("similarity", results["last_layer"], dict(title="last-layer CKA", **ctx))}
    if o.comparison == "grid" and len(results) > 1:
        return {"cka_grid": ("grid", results, dict(title="CKA", **ctx))}
    out = {}
    for (a, b), r in results.items():
        stem = f"cka_{slug(a)}" if a == b else f"cka_{slug(a)}_x_{slug(b)}"
        out[stem] = ("similarity", r, dict(title=f"{a} x {b} (CKA)", clusters=m["clusters"].get((a, b)),
                                           xlabel=f"{b} layer", ylabel=f"{a} layer", **ctx))
    return out
