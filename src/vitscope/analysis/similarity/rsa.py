"""RSA per block: the evaluation entry point over the RSA maths.

The maths lives in :mod:`vitscope.analysis.similarity.rsa_core` (re-exported here); this module adds the
evaluation entry point, :func:`evaluate`, that the command line, studies and the report call.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitscope.analysis.api import OptionError, Options, Result, tidy_table

from vitscope.analysis.similarity.rsa_core import *  # noqa: F401,F403  (the maths, under its usual path)
from vitscope.analysis.similarity.rsa_core import COMPARE_METHODS, RDM_METHODS  # noqa: F401


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class RSAOptions(Options):
    """Options of :func:`evaluate` (``vitscope rsa``)."""

    rdm: str = "correlation"                 # RDM: correlation (ciernik2025), cosine or euclidean
    compare: str = "spearman"                # RDM comparison: spearman (ciernik2025) or pearson
    tokens: str = "cls"                      # cls, mean, all, patches
    sites: tuple[str, ...] = ("resid_post",)  # block sites read from a model
    site: str = "resid_post"                 # feature-store site read (stores)
    clusters: int | None = None              # spectral clustering of the layers into this many groups
    batch_size: int = 64
    limit: int | None = None                 # at most this many images (RDMs are N x N)
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        from vitscope.analysis.similarity.compare import check_sites_option
        from vitscope.features.access import TOKEN_MODES

        self.check_choice("rdm", RDM_METHODS)
        self.check_choice("compare", COMPARE_METHODS)
        self.check_choice("tokens", TOKEN_MODES)
        check_sites_option(self)
        self.check_int("clusters", optional=True)
        self.check_int("batch_size")
        self.check_int("limit", optional=True)


def evaluate(models_or_stores, data=None, options: RSAOptions | None = None, **overrides) -> Result:
    """RSA between layers (ciernik2025: correlation RDMs compared by Spearman): of one model run over ``data``,
    of one feature store, between two stores of the same images (store A's layers x store B's), or of features in
    memory ``{label: {layer: (n, d)}}``. Options: :class:`RSAOptions` (keyword overrides applied on top).

    The table has one row per pair of layers (``model``, ``block``, ``model2``, ``block2``, metric ``rsa``), and
    ``layer_cluster`` rows with ``clusters``."""
    from vitscope.analysis.similarity import compare as C
    from vitscope.features.access import common_valid, open_dataset_any, store_features

    opts = (options or RSAOptions()).replace(**overrides) if overrides else (options or RSAOptions())
    kind, items = C.similarity_inputs(models_or_stores, "one model, one or two feature stores, or features")
    names, notes = list(items), []
    if len(names) > (2 if kind == "stores" else 1):
        raise ValueError("RSA compares the layers of one model (or of two feature stores of the same images)")
    if kind == "stores":
        s1 = items[names[0]]
        if len(names) == 1:
            res = C.store_layer_rsa(s1, opts.site, opts.tokens, rdm_method=opts.rdm, compare=opts.compare)
        else:
            s2 = items[names[1]]
            valid = common_valid([s1, s2])
            res = C.layer_rsa(store_features(s1, opts.site, opts.tokens, None, valid),
                              store_features(s2, opts.site, opts.tokens, None, valid), opts.rdm, opts.compare)
        n, where = int(np.asarray(s1.valid).sum()), C.data_label(s1)
    elif kind == "features":
        res = C.layer_rsa(items[names[0]], rdm_method=opts.rdm, compare=opts.compare)
        n, where = int(np.shape(next(iter(items[names[0]].values())))[0]), C.data_label(data)
    else:
        if data is None:
            raise ValueError("RSA from a model needs images: data (--data SPEC: a folder, a list or synthetic:n=256)")
        model, ds = items[names[0]], open_dataset_any(data)
        hooks, note = C.token_hooks(model, opts.tokens, opts.sites)
        notes += [note] if note else []
        res = C.stream_layer_rsa(model, ds, hooks, opts.tokens, opts.rdm, opts.compare, opts.batch_size, opts.limit,
                                 progress=opts.progress)
        n, where = res.meta.get("n_images"), C.data_label(data) or C.data_label(ds)
    pair = (names[0], names[-1])
    clusters = None
    if opts.clusters is not None:
        if len(names) != 1:
            raise OptionError("clusters", "`clusters` groups the layers of one model (a square layer x layer matrix)")
        clusters = spectral_cluster_layers(res.matrix, opts.clusters)
    rows = []
    for i, r in enumerate(res.rows):
        for j, c in enumerate(res.cols):
            (br, sr), (bc, sc) = C.hook_block(r), C.hook_block(c)
            row = {"model": pair[0], "block": br, "model2": pair[1], "block2": bc, "metric": "rsa",
                   "value": float(res.matrix[i, j])}
            rows.append({**row, **{k: v for k, v in (("site", sr), ("site2", sc)) if v is not None}})
    if clusters is not None:
        rows += [{"model": pair[0], "block": C.hook_block(r)[0], "metric": "layer_cluster", "value": float(c)}
                 for r, c in zip(res.rows, clusters)]
    off = res.matrix[~np.eye(*res.matrix.shape, dtype=bool)] if res.matrix.shape[0] == res.matrix.shape[1] else \
        res.matrix.ravel()
    summary = (f"RSA ({opts.rdm} RDMs, {opts.compare}) of {' x '.join(dict.fromkeys(pair))}"
               f"{f' on {n} images' if n else ''}: {off.mean():.2f} between layers on average")
    return C.PanelResult("rsa", tidy_table(rows, "rsa", opts, dataset=where), summary, opts, panels=_panels,
                         arrays={"result": res, "clusters": clusters},
                         meta={"notes": notes, "n_images": n, "data": where, "models": list(dict.fromkeys(pair))})


def _panels(result) -> dict:
    """One heat map of the layers' RSA, with the spectral clusters when asked for."""
    from vitscope.runtime import slug

    o, m = result.options, result.meta
    names = m["models"]
    kw = dict(title=f"{' x '.join(names)} (RSA: {o.rdm}, {o.compare})", clusters=result.arrays["clusters"],
              vmin=None, vmax=1.0, cmap="viridis", xlabel=f"{names[-1]} block", ylabel=f"{names[0]} block",
              data=m["data"], n_images=m["n_images"], tokens=o.tokens)
    return {"rsa_" + "_x_".join(slug(n) for n in names): ("similarity", result.arrays["result"], kw)}
