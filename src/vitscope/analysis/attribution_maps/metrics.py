"""Faithfulness and localisation of attribution maps.

Faithfulness (the model on perturbed inputs; the score is the softmax probability of the explained class):

- **deletion / insertion** (Petsiuk et al. 2018, on tokens): the patches are ranked by the map on the token grid
  (most relevant first, ties: lower index first); deletion removes the k most relevant patch tokens, insertion
  keeps only the k most relevant; deletion at k = 0, step, 2 step, ..., N - 1, N removed, insertion at N minus
  those kept (the same cuts of the same order). Tokens are removed right after the position
  embedding (``vitscope.hooks.drop_patches``), as the removal curves of
  :mod:`~vitscope.analysis.class_embedding.removal` do: deletion is their ``positive`` direction, insertion with
  k kept their ``negative`` direction with N - k removed. AUC: the trapezoid over the fraction k / N in [0, 1]
  (deletion: lower is better; insertion: higher).
- **ROAD** (Rong et al. 2022, "remove and debias"): the given share of the pixels, most relevant first (MoRF) or
  least relevant first (LeRF), is replaced by noisy linear imputation: each removed pixel is the weighted mean of
  its 8 neighbours inside the image (weights 1/6 side, 1/12 diagonal), solved jointly for all removed pixels
  (one sparse system per image and channel), plus Gaussian noise of std ``noise``. MoRF: lower is better; LeRF:
  higher; ``road_combined = (LeRF - MoRF) / 2`` (pytorch-grad-cam's ``ROADCombined``).

Localisation against object masks (B, H, W) bool on the image grid:

- **pointing game** (Zhang et al. 2016): a hit when the map's maximum (the first one in row-major order) lies on
  the object, or within ``tolerance`` pixels of it;
- **energy-based pointing game** (Wang et al. 2020): the share of the map's mass on the object, the map min-max
  scaled to [0, 1] first;
- **IoU**: the min-max scaled map is object where it is >= ``threshold``;
- **AUROC**: the map as a score of object pixels (Mann-Whitney U with mid-ranks for ties).

Sanity: :func:`spearman` is the rank correlation of two maps (mid-ranks), per image.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vitscope.analysis.class_embedding.removal import removal_mask, removal_steps
from vitscope.hooks.interventions import drop_patches

NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def _probs_and_correct(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor):
    p = torch.softmax(logits.float(), -1).gather(1, targets[:, None].to(logits.device))[:, 0]
    return p.cpu(), (logits.argmax(-1).cpu() == labels.cpu())


def token_removal(model, x: torch.Tensor, targets: torch.Tensor, grid_maps: torch.Tensor, mode: str = "deletion",
                  step: int = 1, labels: torch.Tensor | None = None):
    """Deletion or insertion on tokens -> ``(k (K,), probability (K, B), correct (K, B))``; k counts the patches
    removed (deletion) or kept (insertion), 0 .. N. ``correct``: the prediction equals ``labels`` (default:
    ``targets``)."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    B = x.shape[0]
    imp = grid_maps.reshape(B, -1).float()
    N = imp.shape[1]
    order = torch.sort(imp, dim=-1, descending=True, stable=True).indices.to(x.device)
    steps = np.unique(np.r_[removal_steps(N, step), N]).astype(np.int64)             # removed: 0, step, .., N-1, N
    ks = steps if mode == "deletion" else np.sort(N - steps)                         # kept: the same cuts
    labels = targets if labels is None else labels
    probs, correct = [], []
    with torch.inference_mode():
        for k in ks:
            gone = removal_mask(order, int(k), "positive") if mode == "deletion" else \
                removal_mask(order, N - int(k), "negative")
            logits = model.run_with_hooks(x, fwd_hooks=drop_patches(model, gone)) if gone.any() else model(x)
            p, c = _probs_and_correct(logits, targets, labels)
            probs.append(p)
            correct.append(c)
    return ks, torch.stack(probs).numpy(), torch.stack(correct).numpy()


def curve_auc(fraction: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoid area of ``values`` (K, B) over ``fraction`` (K,) -> (B,)."""
    f = np.asarray(fraction, float)[:, None]
    v = np.asarray(values, float)
    return np.sum((f[1:] - f[:-1]) * (v[1:] + v[:-1]) / 2, axis=0)


def linear_imputation(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation without noise: ``img`` (C, H, W), ``keep`` (H, W) bool (False: removed)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    C, H, W = img.shape
    keep = np.asarray(keep, bool)
    miss = np.flatnonzero(~keep.ravel())
    out = np.array(img, dtype=np.float64, copy=True)
    if miss.size == 0:
        return out.astype(img.dtype)
    var = -np.ones(H * W, np.int64)
    var[miss] = np.arange(miss.size)
    r0, c0 = np.divmod(miss, W)
    flat = out.reshape(C, -1)
    rows, cols, vals = [], [], []
    diag = np.zeros(miss.size)
    rhs = np.zeros((miss.size, C))
    for (dr, dc), w in NEIGHBOURS:
        r, c = r0 + dr, c0 + dc
        ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        eq = np.flatnonzero(ok)
        nb = r[ok] * W + c[ok]
        diag[eq] -= w
        known = keep.ravel()[nb]
        rhs[eq[known]] -= w * flat[:, nb[known]].T
        rows.append(eq[~known])
        cols.append(var[nb[~known]])
        vals.append(np.full((~known).sum(), w))
    rows = np.concatenate(rows + [np.arange(miss.size)])
    cols = np.concatenate(cols + [np.arange(miss.size)])
    vals = np.concatenate(vals + [diag])
    A = coo_matrix((vals, (rows, cols)), shape=(miss.size, miss.size)).tocsc()
    sol = spsolve(A, rhs)
    flat[:, miss] = np.asarray(sol).reshape(miss.size, C).T
    return out.astype(img.dtype)


def road(model, x: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor, fractions: Sequence[float],
         order: str = "morf", noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """ROAD probabilities (F, B): the share ``fractions[f]`` of the pixels removed most (``morf``) or least
    (``lerf``) relevant first and imputed (see the module doc)."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    B, C, H, W = x.shape
    g = torch.Generator().manual_seed(int(seed))
    flat = maps.reshape(B, -1).float().cpu()
    rank = torch.sort(flat, dim=-1, descending=(order == "morf"), stable=True).indices
    xs = x.detach().cpu().numpy()
    out = []
    with torch.inference_mode():
        for f in fractions:
            n = int(round(f * H * W))
            imputed = []
            for i in range(B):
                keep = np.ones(H * W, bool)
                keep[rank[i, :n].numpy()] = False
                keep = keep.reshape(H, W)
                im = torch.from_numpy(linear_imputation(xs[i], keep))
                if noise > 0:
                    m = torch.from_numpy(~keep)
                    im = im + m * noise * torch.randn(im.shape, generator=g, dtype=im.dtype)
                imputed.append(im)
            logits = model(torch.stack(imputed).to(x.device, x.dtype))
            out.append(_probs_and_correct(logits, targets, targets)[0])
    return torch.stack(out).numpy()


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    m = maps.reshape(maps.shape[0], -1).float()
    lo, hi = m.amin(1, keepdim=True), m.amax(1, keepdim=True)
    return ((m - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))).reshape(maps.shape)


def _check_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    masks = torch.as_tensor(masks).bool()
    if masks.shape != maps.shape:
        raise ValueError(f"masks must have the maps' shape {tuple(maps.shape)}, got {tuple(masks.shape)}")
    return masks.cpu()


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> np.ndarray:
    """1.0 when the map's maximum hits the object (within ``tolerance`` pixels), else 0.0; NaN without object."""
    masks = _check_masks(maps, masks)
    B, H, W = maps.shape
    idx = maps.reshape(B, -1).float().cpu().argmax(1)
    r, c = idx // W, idx % W
    out = np.full(B, np.nan)
    for i in range(B):
        m = masks[i].numpy()
        if not m.any():
            continue
        if tolerance > 0:
            ys, xs = np.nonzero(m)
            out[i] = float(((ys - int(r[i])) ** 2 + (xs - int(c[i])) ** 2).min() <= tolerance ** 2)
        else:
            out[i] = float(m[int(r[i]), int(c[i])])
    return out


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Share of the min-max scaled map's mass on the object (B,); NaN without object or for a flat map."""
    masks = _check_masks(maps, masks)
    m = _minmax(maps.cpu())
    tot = m.flatten(1).sum(1)
    inside = (m * masks).flatten(1).sum(1)
    out = (inside / tot).numpy().astype(float)
    out[(tot == 0).numpy() | ~masks.flatten(1).any(1).numpy()] = np.nan
    return out


def map_iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """IoU of ``minmax(map) >= threshold`` with the object (B,); NaN without object."""
    masks = _check_masks(maps, masks)
    pred = _minmax(maps.cpu()) >= threshold
    inter = (pred & masks).flatten(1).sum(1).float()
    union = (pred | masks).flatten(1).sum(1).float()
    out = (inter / union.clamp(min=1)).numpy().astype(float)
    out[~masks.flatten(1).any(1).numpy()] = np.nan
    return out


def _ranks(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v, axis=-1)


def map_auroc(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Area under the ROC curve of the map scoring object pixels (B,); NaN when the mask is empty or full."""
    masks = _check_masks(maps, masks)
    B = maps.shape[0]
    v = maps.reshape(B, -1).float().cpu().numpy()
    y = masks.reshape(B, -1).numpy()
    r = _ranks(v)
    pos = y.sum(1).astype(float)
    neg = y.shape[1] - pos
    u = (r * y).sum(1) - pos * (pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (pos * neg)
    out[(pos == 0) | (neg == 0)] = np.nan
    return out


def spearman(a: torch.Tensor, b: torch.Tensor, absolute: bool = False) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (B,) (mid-ranks; NaN where a map is constant)."""
    a = a.reshape(a.shape[0], -1).float().cpu().numpy()
    b = b.reshape(b.shape[0], -1).float().cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {a.shape} and {b.shape}")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    ra, rb = _ranks(a), _ranks(b)
    ra = ra - ra.mean(1, keepdims=True)
    rb = rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)
