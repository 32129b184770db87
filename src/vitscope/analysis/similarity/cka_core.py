"""Centered kernel alignment (CKA), full data, as pure functions over (n x d) arrays or tensors.

Definitions (``reference/algorithms.md``, "Representation similarity and clustering"):

* Gram matrices: linear ``K = X X^T``; RBF ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` with a fixed sigma or
  one bandwidth per input from its own distances (``bandwidth``):

  - ``"kornblith"`` (default; Kornblith et al. 2019, ``gram_rbf(x, threshold)`` of their reference code):
    ``sigma = threshold * sqrt(median of all n x n squared distances)``, the zeros of the diagonal included
    and numpy's median (the mean of the two middle values for an even count);
  - ``"ciernik2025"`` (old spelling in :data:`BANDWIDTH_ALIASES`; vitscope's former default, ciernik2025's median heuristic):
    ``sigma = threshold * sqrt(median of the non-zero pairwise squared distances)``.

  ``threshold`` (default 1) scales either. Minibatch CKA takes each batch's own bandwidth.
* Biased HSIC (Gretton et al. 2005): ``tr(K H L H) / (n - 1)^2`` with ``H = I - 11^T / n``.
* Unbiased HSIC (Song et al. 2012), computed through the Szekely-Rizzo U-statistic centring of the Gram matrix
  with its diagonal zeroed: ``sum_{i != j} U(K)_ij U(L)_ij / (n (n - 3))``. Needs n >= 4.
* ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

Defaults follow ciernik2025: linear kernel, unbiased HSIC. Everything is accumulated in float64. For the linear
kernel the feature-space form (``||X^T Y||_F^2`` and row norms, cost O(n d^2), memory O(d^2)) is used when
it is cheaper than building n x n Gram matrices; it gives the same numbers.

Never NaN: fewer than 4 samples with unbiased HSIC (2 with biased), constant features, non-finite values and
mismatched sample counts are each a ``ValueError`` that says what came and what to do.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch


ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]
KERNELS = ("linear", "rbf")
BANDWIDTHS = ("kornblith", "ciernik2025")
BANDWIDTH_ALIASES = {"seed000": "ciernik2025"}          # old spellings, still accepted
METHODS = ("auto", "gram", "features")


# ----------------------------------------------------------------------------- input validation (one place)
def as_features(x: Any, name: str = "X", device: torch.device | str | None = None,
                check_finite: bool = True) -> torch.Tensor:
    """Any (n, ...) array or tensor -> a finite float64 tensor (n, d); trailing dims are flattened.

    Tensors stay on their device unless ``device`` is given; numpy arrays (also memory maps) go to the CPU.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = np.asarray(x)
        with warnings.catch_warnings():                                        # read-only memmaps: never written
            warnings.simplefilter("ignore", UserWarning)
            t = torch.as_tensor(a)
    if device is not None:
        t = t.to(device)
    if t.ndim == 0:
        raise ValueError(f"{name} must be an array of shape (n_samples, n_features), got a scalar")
    if t.ndim == 1:
        t = t[:, None]                                                                 # n, 1
    elif t.ndim > 2:
        t = t.reshape(t.shape[0], -1)                                                  # n, prod(rest)
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)})")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    t = t.to(torch.float64)
    if check_finite and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values; clean the features before comparing them")
    return t


def min_samples(unbiased: bool) -> int:
    return 4 if unbiased else 2


def check_n(n: int, unbiased: bool, what: str = "CKA") -> None:
    need = min_samples(unbiased)
    if n < need:
        kind = "unbiased HSIC (n (n - 3) in the denominator)" if unbiased else "biased HSIC"
        raise ValueError(f"{what} with {kind} needs at least {need} samples, got {n}; "
                         f"use more samples{' or unbiased=False' if unbiased else ''}")


def check_not_constant(x: torch.Tensor, name: str = "X") -> None:
    if bool((x == x[:1]).all()):
        raise ValueError(f"{name} is constant across its {x.shape[0]} samples: CKA is 0/0 (undefined); "
                         f"drop this layer or check how the features were extracted")


def _check_kernel(kernel: str, sigma: float | None, bandwidth: str = "kornblith", threshold: float = 1.0) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if sigma is not None and not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number or None (a bandwidth from the data), got {sigma!r}")
    if BANDWIDTH_ALIASES.get(bandwidth, bandwidth) not in BANDWIDTHS:
        raise ValueError(f"bandwidth must be one of {BANDWIDTHS}, got {bandwidth!r}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"the RBF threshold must be a positive number, got {threshold!r}")


def l2_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """ciernik2025 loads features L2-normalised per sample; zero rows stay zero."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)


# ----------------------------------------------------------------------------- kernels
def pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, n), exact zeros on the diagonal, never negative."""
    x = x - x.mean(dim=0, keepdim=True)                                                # better conditioned
    g = x @ x.T                                                                        # n, n
    sq = g.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * g).clamp_min_(0)
    d.fill_diagonal_(0)
    return d


def median_sigma(x: Any = None, sq_dists: torch.Tensor | None = None) -> float:
    """Median heuristic of ciernik2025: sqrt of the median of the non-zero pairwise squared distances."""
    if sq_dists is None:
        sq_dists = pairwise_sq_dists(as_features(x))
    n = sq_dists.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=sq_dists.device)
    vals = sq_dists[iu[0], iu[1]]
    vals = vals[vals > 0]
    if vals.numel() == 0:
        raise ValueError("every pairwise distance is zero (constant features): the median heuristic for the "
                         "RBF bandwidth is undefined")
    return float(vals.median().sqrt())


def kornblith_sigma(x: Any = None, sq_dists: torch.Tensor | None = None, threshold: float = 1.0) -> float:
    """Kornblith et al.'s bandwidth: ``threshold * sqrt(median of every entry of the (n, n) squared distances)``."""
    if sq_dists is None:
        sq_dists = pairwise_sq_dists(as_features(x))
    flat = sq_dists.reshape(-1)
    m = flat.numel()
    lo = flat.kthvalue((m - 1) // 2 + 1).values
    hi = flat.kthvalue(m // 2 + 1).values
    med = float((lo + hi) / 2)
    if not med > 0:
        raise ValueError("the median squared distance is zero (half or more of the samples are identical), so "
                         "Kornblith's RBF bandwidth is zero; pass a fixed sigma or bandwidth='ciernik2025'")
    return threshold * float(np.sqrt(med))


def rbf_sigma(sq_dists: torch.Tensor, bandwidth: str = "kornblith", threshold: float = 1.0) -> float:
    """The RBF bandwidth of one input from its squared distances (see the module docstring)."""
    bandwidth = BANDWIDTH_ALIASES.get(bandwidth, bandwidth)
    if bandwidth == "kornblith":
        return kornblith_sigma(sq_dists=sq_dists, threshold=threshold)
    if bandwidth == "ciernik2025":
        return threshold * median_sigma(sq_dists=sq_dists)
    raise ValueError(f"bandwidth must be one of {BANDWIDTHS}, got {bandwidth!r}")


def gram_linear(x: Any, minmax: bool = False) -> torch.Tensor:
    """``X X^T`` (n, n) in float64. ``minmax=True`` applies walmer2023's quirk (see :func:`minmax_scale_gram`)."""
    x = as_features(x)
    k = x @ x.T
    return minmax_scale_gram(k) if minmax else k


def gram_rbf(x: Any, sigma: float | None = None, minmax: bool = False, threshold: float = 1.0,
             bandwidth: str = "kornblith") -> torch.Tensor:
    """``exp(-||x_i - x_j||^2 / (2 sigma^2))`` (n, n); ``sigma=None`` takes it from ``x`` by the ``bandwidth``
    rule scaled by ``threshold`` (default: Kornblith et al.'s ``gram_rbf(x, threshold=1.0)``)."""
    x = as_features(x)
    d = pairwise_sq_dists(x)
    s = rbf_sigma(d, bandwidth, threshold) if sigma is None else float(sigma)
    k = torch.exp(-d / (2.0 * s * s))
    return minmax_scale_gram(k) if minmax else k


def gram(x: Any, kernel: str = "linear", sigma: float | None = None, minmax: bool = False, threshold: float = 1.0,
         bandwidth: str = "kornblith") -> torch.Tensor:
    _check_kernel(kernel, sigma, bandwidth, threshold)
    return gram_linear(x, minmax) if kernel == "linear" else gram_rbf(x, sigma, minmax, threshold, bandwidth)


def minmax_scale_gram(k: torch.Tensor) -> torch.Tensor:
    """walmer2023's kernel quirk: ``K -= K.min(); K /= K.max(); diag(K) = 0`` (min and max over the whole matrix).

    With a single batch it does not change unbiased CKA (U-centring removes the constant shift and the scale
    cancels); across minibatches it re-weights the batches, which is why their figures differ slightly.
    A constant Gram matrix stays all zero instead of becoming 0/0.
    """
    k = k - k.min()
    top = k.max()
    if top > 0:
        k = k / top
    k = k.clone()
    k.fill_diagonal_(0)
    return k


# ----------------------------------------------------------------------------- centring and HSIC
def center_gram(k: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Biased: ``H K H``. Unbiased: the Szekely-Rizzo U-centring of K with its diagonal zeroed
    (``U_ij = K_ij - r_i/(n-2) - r_j/(n-2) + S/((n-1)(n-2))`` off the diagonal, 0 on it)."""
    k = torch.as_tensor(k).to(torch.float64)
    n = k.shape[0]
    if k.ndim != 2 or k.shape[1] != n:
        raise ValueError(f"a Gram matrix must be square, got shape {tuple(k.shape)}")
    if unbiased:
        check_n(n, True, "U-centring")
        k = k.clone()
        k.fill_diagonal_(0)
        means = k.sum(dim=0) / (n - 2)                                                 # r_j / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        k = k - means[:, None] - means[None, :]
        k.fill_diagonal_(0)
        return k
    col = k.mean(dim=0)
    return k - col[None, :] - k.mean(dim=1)[:, None] + col.mean()


def hsic_from_centered(kc: torch.Tensor, lc: torch.Tensor, unbiased: bool = True) -> float:
    n = kc.shape[0]
    s = float((kc * lc).sum())
    return s / (n * (n - 3)) if unbiased else s / ((n - 1) ** 2)


def hsic(k: Any, l: Any, unbiased: bool = True) -> float:
    """HSIC of two Gram matrices (n, n): biased ``tr(KHLH)/(n-1)^2`` or unbiased (Song et al. 2012)."""
    k = torch.as_tensor(k).to(torch.float64)
    l = torch.as_tensor(l).to(torch.float64)
    if k.shape != l.shape:
        raise ValueError(f"Gram matrices differ in shape: {tuple(k.shape)} vs {tuple(l.shape)}")
    check_n(k.shape[0], unbiased, "HSIC")
    return hsic_from_centered(center_gram(k, unbiased), center_gram(l, unbiased), unbiased)


def cka_from_grams(k: Any, l: Any, unbiased: bool = True) -> float:
    """CKA of two precomputed Gram matrices."""
    k = torch.as_tensor(k).to(torch.float64)
    l = torch.as_tensor(l).to(torch.float64)
    if k.shape != l.shape:
        raise ValueError(f"Gram matrices differ in shape: {tuple(k.shape)} vs {tuple(l.shape)}")
    check_n(k.shape[0], unbiased)
    kc, lc = center_gram(k, unbiased), center_gram(l, unbiased)
    return _ratio(hsic_from_centered(kc, lc, unbiased), hsic_from_centered(kc, kc, unbiased),
                  hsic_from_centered(lc, lc, unbiased), ("K", "L"))


def _ratio(xy: float, xx: float, yy: float, names: tuple[str, str]) -> float:
    for v, nm in ((xx, names[0]), (yy, names[1])):
        if not v > 0:
            raise ValueError(f"HSIC({nm}, {nm}) = {v:.3g} <= 0, so CKA is undefined: {nm} carries no structure the "
                             f"estimator can see (constant, or rank-deficient features such as mutually orthogonal "
                             f"samples with the unbiased estimator); drop it or use more samples")
    return float(xy / np.sqrt(xx * yy))


# ----------------------------------------------------------------------------- prepared representations
DEGENERATE_RTOL = 1e-10


def n_pairs_norm(n: int, unbiased: bool) -> float:
    return float(n * (n - 3)) if unbiased else float((n - 1) ** 2)


class _Prepared:
    """One representation ready for pairwise HSIC: centred features (feature form) or a centred Gram matrix."""

    __slots__ = ("mode", "x", "sqn", "sqsum", "uc", "self_hsic", "n", "unbiased", "name")

    def __init__(self, x: torch.Tensor, mode: str, unbiased: bool, kernel: str, sigma: float | None,
                 minmax: bool, name: str, threshold: float = 1.0, bandwidth: str = "kornblith") -> None:
        self.mode, self.n, self.unbiased, self.name = mode, x.shape[0], unbiased, name
        self.x = self.sqn = self.uc = None
        if mode == "features":
            xc = x - x.mean(dim=0, keepdim=True)                                       # n, d
            self.x = xc
            self.sqn = (xc * xc).sum(dim=1)                                            # n: diag of K
            self.sqsum = float(self.sqn.sum())
        else:
            if kernel == "linear" and not minmax:
                x = x - x.mean(dim=0, keepdim=True)                                    # HSIC is shift invariant
            k = x @ x.T if kernel == "linear" else None
            if k is None:
                d = pairwise_sq_dists(x)
                s = rbf_sigma(d, bandwidth, threshold) if sigma is None else float(sigma)
                k = torch.exp(-d / (2.0 * s * s))
                del d
            if minmax:
                k = minmax_scale_gram(k)
            energy = float((k * k).sum())
            self.uc = center_gram(k, unbiased)
        if mode == "features":
            g = self.x.T @ self.x
            energy = float((g * g).sum())                                               # ||K||_F^2 of centred X
        self.self_hsic = self.hsic(self)
        # HSIC(X, X) that is zero up to rounding (constant or degenerate structure) counts as zero
        norm = n_pairs_norm(self.n, unbiased)
        if self.self_hsic * norm <= DEGENERATE_RTOL * energy:
            self.self_hsic = 0.0

    def hsic(self, other: "_Prepared") -> float:
        n = self.n
        if self.mode == "gram":
            return hsic_from_centered(self.uc, other.uc, self.unbiased)
        cross = self.x.T @ other.x                                                     # dx, dy
        fro2 = float((cross * cross).sum())                                            # ||Xc^T Yc||_F^2 = tr(KL)
        if not self.unbiased:
            return fro2 / ((n - 1) ** 2)
        # Off-diagonal sums with K~ = K - diag(K) and centred X (so K 1 = 0, K~ 1 = -diag(K)):
        # tr(K~ L~) = tr(KL) - diag(K).diag(L); 1'K~1 = -sum diag(K); 1'K~L~1 = diag(K).diag(L)
        dd = float(self.sqn @ other.sqn)
        num = fro2 - dd + self.sqsum * other.sqsum / ((n - 1) * (n - 2)) - 2.0 * dd / (n - 2)
        return num / (n * (n - 3))


def _choose_method(method: str, kernel: str, minmax: bool, n: int, dims_x: Sequence[int],
                   dims_y: Sequence[int] | None) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if kernel != "linear" or minmax:
        if method == "features":
            raise ValueError("the feature-space form exists for the linear kernel without the min-max quirk only")
        return "gram"
    if method != "auto":
        return method
    sym = dims_y is None
    dx = list(dims_x)
    dy = dx if sym else list(dims_y)
    uniq = dx if sym else dx + dy
    div = 2 if sym else 1
    feat_cost = n * (sum(a * b for a in dx for b in dy) / div + sum(a * a for a in uniq))
    gram_cost = n * n * (sum(uniq) + len(dx) * len(dy) / div)
    return "features" if feat_cost <= gram_cost else "gram"


def _names(feats: Any, prefix: str) -> tuple[list[str], list[Any]]:
    if isinstance(feats, Mapping):
        return [str(k) for k in feats], list(feats.values())
    if isinstance(feats, (np.ndarray, torch.Tensor)):
        raise ValueError(f"expected a list or dict of (n, d) arrays, one per layer, got a single array of shape "
                         f"{tuple(feats.shape)}; wrap it in a list or use cka(X, Y)")
    feats = list(feats)
    return [f"{prefix}{i}" for i in range(len(feats))], feats


# ----------------------------------------------------------------------------- public functions
def cka(x: Any, y: Any, kernel: str = "linear", unbiased: bool = True, sigma: float | None = None,
        minmax: bool = False, normalize: bool = False, method: str = "auto", device=None, threshold: float = 1.0,
        bandwidth: str = "kornblith") -> float:
    """CKA between two representations of the same n samples (arrays or tensors, (n, d1) and (n, d2)).

    Args:
        kernel: "linear" (default) or "rbf".
        unbiased: unbiased HSIC (default, ciernik2025) or biased (``unbiased=False``).
        sigma: fixed RBF bandwidth; None = one per input from its distances (``bandwidth``, ``threshold``).
        threshold: RBF only, scales the data bandwidth (Kornblith et al.'s ``threshold``, default 1).
        bandwidth: "kornblith" (default: ``threshold * sqrt(median squared distance)`` over the whole distance
            matrix) or "ciernik2025" (the median of the non-zero distances, vitscope's former default; its old
            spelling is in ``BANDWIDTH_ALIASES``).
        minmax: walmer2023's kernel quirk (Gram scaled to [0, 1], diagonal zeroed); only for reproducing its figures.
        normalize: L2-normalise each sample first (ciernik2025 loads features that way).
        method: "auto" (feature-space form for the linear kernel when cheaper), "gram" or "features".
    """
    return float(cka_matrix([x], [y], kernel=kernel, unbiased=unbiased, sigma=sigma, minmax=minmax,
                            normalize=normalize, method=method, device=device, threshold=threshold,
                            bandwidth=bandwidth)[0, 0])


def linear_cka(x: Any, y: Any, unbiased: bool = True, **kw) -> float:
    return cka(x, y, kernel="linear", unbiased=unbiased, **kw)


def rbf_cka(x: Any, y: Any, sigma: float | None = None, unbiased: bool = True, **kw) -> float:
    return cka(x, y, kernel="rbf", sigma=sigma, unbiased=unbiased, **kw)


def cka_matrix(xs: Sequence[Any] | Mapping[str, Any], ys: Sequence[Any] | Mapping[str, Any] | None = None,
               kernel: str = "linear", unbiased: bool = True, sigma: float | None = None, minmax: bool = False,
               normalize: bool = False, method: str = "auto", device=None, progress: bool = False,
               max_cache_bytes: int = 2 << 30, threshold: float = 1.0, bandwidth: str = "kornblith") -> np.ndarray:
    """CKA between every representation in ``xs`` and every one in ``ys`` (default: ``xs`` itself) -> (Lx, Ly).

    Each representation is prepared once (centred features or a centred Gram matrix), so the matrix costs
    L Gram builds plus L^2 inner products, not 2 L^2 Gram builds. Within one list only i <= j is computed.
    Arrays are read one at a time, so lazy arrays (memory maps) are loaded as needed.
    """
    _check_kernel(kernel, sigma, bandwidth, threshold)
    names_x, xs = _names(xs, "x")
    sym = ys is None
    names_y, ys_l = (names_x, xs) if sym else _names(ys, "y")
    if not xs or not ys_l:
        raise ValueError("nothing to compare: the list of representations is empty")

    def load(a, nm):
        t = as_features(a, nm, device)
        if normalize:
            t = l2_normalize_rows(t)
        return t

    first = load(xs[0], names_x[0])
    n = first.shape[0]
    check_n(n, unbiased)
    dims_x = [_dim(a) for a in xs]
    dims_y = None if sym else [_dim(a) for a in ys_l]
    mode = _choose_method(method, kernel, minmax, n, dims_x, dims_y)

    def prep(a, nm, t=None):
        t = load(a, nm) if t is None else t
        if t.shape[0] != n:
            raise ValueError(f"{nm} has {t.shape[0]} samples but {names_x[0]} has {n}; every representation "
                             f"must hold the same samples in the same order")
        check_not_constant(t, nm)
        return _Prepared(t, mode, unbiased, kernel, sigma, minmax, nm, threshold, bandwidth)

    per_item = n * n * 8 if mode == "gram" else n * max(dims_x + (dims_y or [])) * 8
    cache_y = per_item * len(ys_l) <= max_cache_bytes
    out = np.zeros((len(xs), len(ys_l)))
    prepared_y: dict[int, _Prepared] = {}

    def get_y(j: int) -> _Prepared:
        if j in prepared_y:
            return prepared_y[j]
        p = prep(ys_l[j], names_y[j])
        if cache_y:
            prepared_y[j] = p
        return p

    it = range(len(xs))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="CKA", unit="layer")
    for i in it:
        px = prepared_y.get(i) if sym else None
        if px is None:
            px = prep(xs[i], names_x[i], first if i == 0 else None)
        if sym and cache_y:
            prepared_y[i] = px
        for j in range(i if sym else 0, len(ys_l)):
            py = px if (sym and j == i) else get_y(j)
            out[i, j] = _ratio(px.hsic(py), px.self_hsic, py.self_hsic, (names_x[i], names_y[j]))
            if sym:
                out[j, i] = out[i, j]
    return out


def _dim(a: Any) -> int:
    shape = tuple(a.shape) if hasattr(a, "shape") else np.shape(a)
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1
