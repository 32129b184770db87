"""Minibatch CKA (Nguyen, Raghu & Kornblith 2021, eq. 3), streamed over batches for all layer pairs at once.

For each batch of b samples and each representation, the Gram matrix is built (b x b, float64), U-centred
(diagonal zeroed, Szekely-Rizzo) and flattened; one matrix product then gives the unbiased HSIC of every
pair. The per-batch values ``HSIC_1 = <U(K), U(L)> / (b (b - 3))`` are averaged over batches and

    CKA_minibatch(X_i, Y_j) = mean_b HSIC_1(K_ib, L_jb) / sqrt(mean_b HSIC_1(K_ib, K_ib) * mean_b HSIC_1(L_jb, L_jb))

Memory is O(L b^2 + b d) whatever the number of samples. walmer2023 used batches of 8 and min-max scaled every
linear Gram matrix to [0, 1] with the diagonal zeroed before the HSIC (``minmax=True`` reproduces that; off by
default). With one batch holding all the data, the result equals full unbiased CKA.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vitscope.analysis.similarity.cka_core import (
    DEGENERATE_RTOL,
    _check_kernel,
    as_features,
    check_n,
    l2_normalize_rows,
    pairwise_sq_dists,
    rbf_sigma,
)


def _as_list(feats: Any) -> tuple[list[str] | None, list[Any]]:
    if isinstance(feats, Mapping):
        return [str(k) for k in feats], list(feats.values())
    if isinstance(feats, (np.ndarray, torch.Tensor)):
        return None, [feats]
    return None, list(feats)


def _minmax_stack(k: torch.Tensor) -> torch.Tensor:
    """walmer2023's quirk on a stack of Gram matrices (L, b, b): each scaled to [0, 1], diagonal zeroed."""
    k = k - k.amin(dim=(1, 2), keepdim=True)
    top = k.amax(dim=(1, 2), keepdim=True)
    k = torch.where(top > 0, k / torch.where(top > 0, top, torch.ones_like(top)), k)
    idx = torch.arange(k.shape[1], device=k.device)
    k[:, idx, idx] = 0
    return k


def _u_centre_stack(k: torch.Tensor) -> torch.Tensor:
    """Szekely-Rizzo U-centring of a stack of Gram matrices (L, b, b), as :func:`center_gram` does for one."""
    b = k.shape[1]
    k = k.clone()
    idx = torch.arange(b, device=k.device)
    k[:, idx, idx] = 0
    means = k.sum(dim=1) / (b - 2)                                                     # L, b
    means = means - means.sum(dim=1, keepdim=True) / (2 * (b - 1))
    k = k - means[:, :, None] - means[:, None, :]
    k[:, idx, idx] = 0
    return k


class MinibatchCKA:
    """Streaming CKA matrix between ``n_x`` representations and ``n_y`` others (or the same ones).

    >>> mb = MinibatchCKA()                      # layer x layer within one model
    >>> for batch in loader:                     # each update: a list (or dict) of (b, ...) arrays, one per layer
    ...     mb.update(features_of(batch))
    >>> mb.compute()                             # (L, L) numpy array

    ``update(xs, ys)`` with a second list compares two models (``compute()`` is (Lx, Ly)). The first call fixes
    whether the object is paired; every batch must have the same layers and >= 4 samples. With the RBF kernel
    and no fixed ``sigma``, each batch and each representation takes its own bandwidth (``bandwidth`` rule,
    ``threshold``; see :mod:`~vitscope.analysis.similarity.cka`). Batches with
    fewer samples are an error (merge a short tail batch into the previous one, as the vitscope streamers do).
    """

    def __init__(self, kernel: str = "linear", sigma: float | None = None, minmax: bool = False,
                 normalize: bool = False, device: torch.device | str | None = None, threshold: float = 1.0,
                 bandwidth: str = "kornblith") -> None:
        _check_kernel(kernel, sigma, bandwidth, threshold)
        self.kernel, self.sigma, self.minmax, self.normalize = kernel, sigma, minmax, normalize
        self.threshold, self.bandwidth = threshold, bandwidth
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.paired: bool | None = None
        self.names_x: list[str] | None = None
        self.names_y: list[str] | None = None
        self.hsic_xy: torch.Tensor | None = None                                       # Lx, Ly (sums)
        self.hsic_xx: torch.Tensor | None = None                                       # Lx
        self.hsic_yy: torch.Tensor | None = None                                       # Ly
        self.energy_x = self.energy_y = None                                           # sums of ||K||^2 (scale)
        self.n_batches = 0
        self.n_samples = 0

    # ------------------------------------------------------------------ one batch
    def _centred(self, feats: list[Any], b: int | None, side: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        xs = []
        for i, f in enumerate(feats):
            x = as_features(f, f"{side}[{i}]", self.device, check_finite=False)       # checked below
            if b is None:
                b = x.shape[0]
                check_n(b, True, "a minibatch CKA batch")
            elif x.shape[0] != b:
                raise ValueError(f"every representation in a batch must hold the same samples: {side}[{i}] has "
                                 f"{x.shape[0]} rows, expected {b}")
            if self.normalize:
                x = l2_normalize_rows(x)
            if self.kernel == "linear" and not self.minmax:
                x = x - x.mean(dim=0, keepdim=True)                                    # shift invariant, stabler
            xs.append(x)
        if not xs:
            raise ValueError(f"no representations given for {side}")
        if self.kernel == "linear":
            if len({x.shape for x in xs}) == 1:
                xx = torch.stack(xs)                                                   # L, b, d
                grams = torch.bmm(xx, xx.transpose(1, 2))                              # L, b, b
            else:
                grams = torch.stack([x @ x.T for x in xs])
        else:
            ks = []
            for x in xs:
                d = pairwise_sq_dists(x)
                if self.sigma is None and not bool((d > 0).any()):
                    ks.append(torch.ones_like(d))                                      # constant batch: U(K) = 0
                    continue
                s = rbf_sigma(d, self.bandwidth, self.threshold) if self.sigma is None else float(self.sigma)
                ks.append(torch.exp(-d / (2.0 * s * s)))
            grams = torch.stack(ks)                                                    # L, b, b
        if self.minmax:
            grams = _minmax_stack(grams)
        energy = (grams * grams).sum(dim=(1, 2))                                       # L
        bad = torch.nonzero(~torch.isfinite(energy)).flatten().tolist()
        if bad:                                                                        # NaN / inf in, or overflow
            raise ValueError(f"{side}[{bad[0]}] contains NaN or infinite values (or values so large that its Gram "
                             f"matrix overflows); clean the features before comparing them")
        return _u_centre_stack(grams).reshape(len(xs), -1), energy, b                  # L, b*b; L

    def update(self, xs: Sequence[Any] | Mapping[str, Any], ys: Sequence[Any] | Mapping[str, Any] | None = None
               ) -> "MinibatchCKA":
        """Add one batch: ``xs`` a list/dict of (b, ...) arrays (one per layer), ``ys`` the same for a second model."""
        names_x, xs_l = _as_list(xs)
        paired = ys is not None
        if self.paired is None:
            self.paired = paired
            self.names_x = names_x or [f"x{i}" for i in range(len(xs_l))]
        elif self.paired != paired:
            raise ValueError("this MinibatchCKA was started " + ("with" if self.paired else "without") +
                             " a second list of representations (ys); pass the same kind of input every batch")
        ux, ex, b = self._centred(xs_l, None, "xs")
        if paired:
            names_y, ys_l = _as_list(ys)
            if self.names_y is None:
                self.names_y = names_y or [f"y{i}" for i in range(len(ys_l))]
            uy, ey, _ = self._centred(ys_l, b, "ys")
        else:
            uy, ey = ux, ex
        if self.hsic_xy is None:
            self.hsic_xy = torch.zeros(ux.shape[0], uy.shape[0], dtype=torch.float64, device=ux.device)
            self.hsic_xx = torch.zeros(ux.shape[0], dtype=torch.float64, device=ux.device)
            self.hsic_yy = torch.zeros(uy.shape[0], dtype=torch.float64, device=ux.device)
            self.energy_x = torch.zeros_like(self.hsic_xx)
            self.energy_y = torch.zeros_like(self.hsic_yy)
        if ux.shape[0] != self.hsic_xy.shape[0] or uy.shape[0] != self.hsic_xy.shape[1]:
            raise ValueError(f"got {ux.shape[0]} x {uy.shape[0]} representations in this batch but "
                             f"{self.hsic_xy.shape[0]} x {self.hsic_xy.shape[1]} before")
        scale = 1.0 / (b * (b - 3))
        self.hsic_xy += (ux @ uy.T) * scale
        diag_x = (ux * ux).sum(dim=1) * scale
        self.hsic_xx += diag_x
        self.hsic_yy += ((uy * uy).sum(dim=1) * scale) if paired else diag_x
        self.energy_x += ex * scale
        self.energy_y += ey * scale
        self.n_batches += 1
        self.n_samples += b
        return self

    def merge(self, other: "MinibatchCKA") -> "MinibatchCKA":
        """Add another accumulator's batches (e.g. from another process over a shard of the data)."""
        if other.n_batches == 0:
            return self
        if self.n_batches == 0:
            self.paired, self.names_x, self.names_y = other.paired, other.names_x, other.names_y
            self.hsic_xy = other.hsic_xy.clone()
            self.hsic_xx, self.hsic_yy = other.hsic_xx.clone(), other.hsic_yy.clone()
            self.energy_x, self.energy_y = other.energy_x.clone(), other.energy_y.clone()
        else:
            if self.hsic_xy.shape != other.hsic_xy.shape or self.paired != other.paired:
                raise ValueError("cannot merge MinibatchCKA objects over different representations")
            self.hsic_xy += other.hsic_xy.to(self.hsic_xy.device)
            self.hsic_xx += other.hsic_xx.to(self.hsic_xx.device)
            self.hsic_yy += other.hsic_yy.to(self.hsic_yy.device)
            self.energy_x += other.energy_x.to(self.hsic_xx.device)
            self.energy_y += other.energy_y.to(self.hsic_xx.device)
        self.n_batches += other.n_batches
        self.n_samples += other.n_samples
        return self

    # ------------------------------------------------------------------ result
    def compute(self) -> np.ndarray:
        """The (Lx, Ly) CKA matrix over every batch seen so far."""
        if self.n_batches == 0:
            raise ValueError("MinibatchCKA.compute() before any update(): feed at least one batch")
        for vec, en, names, side in ((self.hsic_xx, self.energy_x, self.names_x, "xs"),
                                     (self.hsic_yy, self.energy_y, self.names_y or self.names_x, "ys")):
            bad = torch.nonzero(vec <= DEGENERATE_RTOL * en).flatten().tolist()
            if bad:
                which = ", ".join(names[i] for i in bad[:5])
                raise ValueError(f"HSIC(X, X) is zero for {side} {which}: these representations were constant (or "
                                 f"degenerate) in every batch, so CKA is undefined; drop them")
        den = torch.sqrt(self.hsic_xx[:, None] * self.hsic_yy[None, :])
        return (self.hsic_xy / den).cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"hsic_xy": self.hsic_xy, "hsic_xx": self.hsic_xx, "hsic_yy": self.hsic_yy,
                "energy_x": self.energy_x, "energy_y": self.energy_y, "n_batches": self.n_batches,
                "n_samples": self.n_samples, "paired": self.paired, "names_x": self.names_x, "names_y": self.names_y}

    def load_state_dict(self, state: dict[str, Any]) -> "MinibatchCKA":
        """Restore what :meth:`state_dict` returned (e.g. to resume a long streaming run)."""
        for k in ("hsic_xy", "hsic_xx", "hsic_yy", "energy_x", "energy_y", "n_batches", "n_samples", "paired",
                  "names_x", "names_y"):
            if k not in state:
                raise ValueError(f"not a MinibatchCKA state: {k!r} is missing")
            setattr(self, k, state[k])
        return self
