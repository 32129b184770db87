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

from vitscope.analysis.similarity.cka_core import as_features

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
