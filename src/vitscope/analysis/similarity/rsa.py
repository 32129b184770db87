"""Representational similarity analysis (ciernik2025, after thingsvision) and spectral clustering of layers.

* ``rdm(X, "correlation")``: ``1 - corr(x_i, x_j)`` (each sample centred over its features, clipped to [-1, 1]);
  ``"cosine"``: ``1 - cos(x_i, x_j)``; ``"euclidean"``: ``||x_i - x_j||``.
* ``compare_rdms(A, B, "spearman" | "pearson")``: the correlation of the strict upper triangles (scipy.stats).
* ciernik2025 defaults: correlation RDMs compared with Spearman.
* ``spectral_cluster_layers(S, k)``: sklearn ``SpectralClustering(affinity="precomputed")`` on ``|S|`` with a unit
  diagonal (ciernik2025), cluster ids renumbered by first appearance in layer order.

Never NaN: a zero-variance sample (correlation RDM), a zero sample (cosine RDM), a constant RDM
(correlation of RDMs) and a non-finite similarity matrix are each a ``ValueError``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial.distance import pdist, squareform

from vitscope.analysis.api import OptionError, Options, Result, tidy_table
from vitscope.analysis.similarity.cka import as_features

RDM_METHODS = ("correlation", "cosine", "euclidean")
COMPARE_METHODS = ("spearman", "pearson")


def _np(x: Any, name: str) -> np.ndarray:
    return as_features(x, name).cpu().numpy()


def rdm(x: Any, method: str = "correlation") -> np.ndarray:
    """Representational dissimilarity matrix (n, n) of the n samples in ``x`` (n, d), float64."""
    if method not in RDM_METHODS:
        raise ValueError(f"RDM method must be one of {RDM_METHODS}, got {method!r}")
    x = _np(x, "X")
    if x.shape[0] < 3:
        raise ValueError(f"an RDM needs at least 3 samples to be compared, got {x.shape[0]}")
    if method == "euclidean":
        return squareform(pdist(x, "euclidean"))
    if method == "correlation":
        x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(norms == 0)
    if bad.size:
        what = "has zero variance over its features" if method == "correlation" else "is the zero vector"
        raise ValueError(f"sample(s) {bad[:5].tolist()} {what}, so the {method} distance is 0/0; "
                         f"drop them or use method='euclidean'")
    xn = x / norms[:, None]
    sim = np.clip(xn @ xn.T, -1.0, 1.0)
    out = 1.0 - sim
    np.fill_diagonal(out, 0.0)
    return out


def upper_triangle(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"an RDM must be square, got shape {m.shape}")
    return m[np.triu_indices(m.shape[0], k=1)]


def compare_rdms(a: Any, b: Any, method: str = "spearman") -> float:
    """Spearman (default, ciernik2025) or Pearson correlation of the strict upper triangles of two RDMs."""
    if method not in COMPARE_METHODS:
        raise ValueError(f"RDM comparison must be one of {COMPARE_METHODS}, got {method!r}")
    va, vb = upper_triangle(np.asarray(a)), upper_triangle(np.asarray(b))
    if va.shape != vb.shape:
        raise ValueError(f"RDMs differ in size: {int(np.sqrt(2 * va.size)) + 1} vs {int(np.sqrt(2 * vb.size)) + 1} "
                         f"samples; both must describe the same samples")
    for v, nm in ((va, "first"), (vb, "second")):
        if not np.isfinite(v).all():
            raise ValueError(f"the {nm} RDM contains NaN or infinite values")
        if np.all(v == v[0]):
            raise ValueError(f"the {nm} RDM is constant (all samples equally dissimilar): its correlation with "
                             f"another RDM is undefined")
    r = stats.spearmanr(va, vb)[0] if method == "spearman" else stats.pearsonr(va, vb)[0]
    return float(r)


def rsa(x: Any, y: Any, rdm_method: str = "correlation", compare: str = "spearman") -> float:
    """RSA score of two representations of the same samples: ``compare_rdms(rdm(X), rdm(Y))``."""
    rx, ry = rdm(x, rdm_method), rdm(y, rdm_method)
    if rx.shape != ry.shape:
        raise ValueError(f"X has {rx.shape[0]} samples but Y has {ry.shape[0]}; RSA compares the same samples")
    return compare_rdms(rx, ry, compare)


def _listify(feats: Any, prefix: str) -> tuple[list[str], list[Any]]:
    if isinstance(feats, Mapping):
        return [str(k) for k in feats], list(feats.values())
    feats = list(feats)
    return [f"{prefix}{i}" for i in range(len(feats))], feats


def rsa_matrix(xs: Sequence[Any] | Mapping[str, Any], ys: Sequence[Any] | Mapping[str, Any] | None = None,
               rdm_method: str = "correlation", compare: str = "spearman") -> np.ndarray:
    """RSA between every pair of representations (layer x layer or model x model); RDMs built once each."""
    _, xs_l = _listify(xs, "x")
    rdx = [rdm(x, rdm_method) for x in xs_l]
    rdy = rdx if ys is None else [rdm(y, rdm_method) for y in _listify(ys, "y")[1]]
    n = {r.shape[0] for r in rdx + rdy}
    if len(n) > 1:
        raise ValueError(f"representations hold different numbers of samples {sorted(n)}; RSA needs the same samples")
    out = np.zeros((len(rdx), len(rdy)))
    for i, a in enumerate(rdx):
        for j, b in enumerate(rdy):
            if ys is None and j < i:
                out[i, j] = out[j, i]
                continue
            out[i, j] = compare_rdms(a, b, compare)
    return out


def mean_cosine_similarity(x: Any, y: Any) -> float:
    """ciernik2025's "cosine" model similarity: mean over samples of cos(x_i, y_i) (same feature width)."""
    a, b = _np(x, "X"), _np(y, "Y")
    if a.shape != b.shape:
        raise ValueError(f"cosine similarity needs the same shape, got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    if (na == 0).any() or (nb == 0).any():
        raise ValueError("a sample is the zero vector: its cosine similarity is undefined")
    return float(np.mean((a * b).sum(1) / (na * nb)))


def spectral_cluster_layers(similarity: Any, n_clusters: int, seed: int = 0, assign_labels: str = "kmeans",
                            absolute: bool = True) -> np.ndarray:
    """Cluster layers (or models) by a square similarity matrix; returns one cluster id per row.

    As ciernik2025: the affinity is ``|S|`` with the diagonal set to 1, ``SpectralClustering(affinity="precomputed",
    assign_labels=..., random_state=seed)``; ids are renumbered in order of first appearance.
    """
    from sklearn.cluster import SpectralClustering

    s = np.array(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"the similarity matrix must be square, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("the similarity matrix contains NaN or infinite values")
    if not 1 <= n_clusters <= s.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {s.shape[0]}] for {s.shape[0]} layers, got {n_clusters}")
    if absolute:
        s = np.abs(s)
    elif (s < 0).any():
        raise ValueError("spectral clustering needs a non-negative affinity; use absolute=True")
    s = (s + s.T) / 2
    np.fill_diagonal(s, 1.0)
    if n_clusters == 1:
        return np.zeros(s.shape[0], dtype=int)
    labels = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", assign_labels=assign_labels,
                                random_state=seed).fit_predict(s)
    return renumber_by_first_occurrence(labels)


def renumber_by_first_occurrence(labels: Sequence[int]) -> np.ndarray:
    mapping: dict[int, int] = {}
    return np.array([mapping.setdefault(int(v), len(mapping)) for v in labels], dtype=int)


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
        from vitscope.analysis.similarity.compare import site_hooks
        from vitscope.features.access import TOKEN_MODES

        self.check_choice("rdm", RDM_METHODS)
        self.check_choice("compare", COMPARE_METHODS)
        self.check_choice("tokens", TOKEN_MODES)
        self.sites = tuple(self.sites.split(",")) if isinstance(self.sites, str) else tuple(self.sites)
        try:
            site_hooks(self.sites)
        except ValueError as e:
            raise OptionError("sites", str(e)) from None
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
