"""Attribution patching (Nanda 2023; Syed et al. 2023): the first-order estimate of every activation patch at once.

The metric of the run with cell ``c`` patched is approximated by ``M(base) + <source - base, dM/dact>`` restricted
to the cell: (clean - corrupted) x gradient for denoising (the gradient taken on the corrupted run), the reverse for
noising. Two passes (the source run forward, the base run forward and backward) give every cell of every block, for
each site; :func:`agreement` says how well the estimate matches real patching (Pearson r per block and overall).
``freeze_norm`` treats every LayerNorm's scale as a constant in the backward pass (through ``hook_scale``), the
usual way to read linear contributions.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vitscope.analysis.patching.activation import (DIRECTIONS, PatchGrid, check_blocks, input_grid, select_cells)
from vitscope.analysis.patching.pairs import PatchPairs
from vitscope.analysis.patching.sites import (cell_labels, hook_name, parse_metric, resolve_site, site_kind,
                                              tokens_at)


def _per_cell(site: str, prod: torch.Tensor) -> torch.Tensor:
    """(source - base) * gradient (P, ...) summed over everything but the cell axes -> (P, K)."""
    kind = site_kind(site)
    if kind == "position":                       # P, T, D -> P, T
        return prod.sum(-1)
    if kind == "head":                           # P, T, H, X -> P, H
        return prod.sum((1, 3))
    return prod.sum(-1).flatten(1)               # P, H, T(q), T(k) -> P, H*T (head-major)


def attribution_patching(model, pairs: PatchPairs, site: str = "resid_pre", metric="logit",
                         direction: str = "denoising", blocks: Sequence[int] | None = None,
                         patches: np.ndarray | None = None, freeze_norm: bool = False) -> PatchGrid:
    """The same grid as :func:`~vitscope.analysis.patching.activation.activation_patching`, estimated from one
    gradient: ``values[block]`` (K, P) holds ``M(base) + attribution`` so that :meth:`PatchGrid.effect` normalises
    it the same way (0 = corrupted, 1 = clean)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    site = resolve_site(model, site)
    blocks = check_blocks(model, blocks)
    fn, name = parse_metric(model, metric)
    pairs = pairs.to(model.device, model.dtype)
    denoise = direction == "denoising"
    base_x, src_x = (pairs.corrupted, pairs.clean) if denoise else (pairs.clean, pairs.corrupted)
    names = [hook_name(site, b) for b in blocks]
    with torch.no_grad():                                                               # pass 1: the source run
        src_logits, src = model.run_with_cache(src_x, names_filter=names)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def tap(act: torch.Tensor, hook) -> torch.Tensor:
        d = torch.zeros_like(act, requires_grad=True)
        seen[hook.name] = (act.detach(), d)
        return act + d

    hooks = [(n, tap) for n in names]
    if freeze_norm:
        hooks.append((lambda n: n.endswith("hook_scale"), lambda s, hook: s.detach()))
    with torch.enable_grad():                                                           # pass 2: base, backward
        base_logits = model.run_with_hooks(base_x, fwd_hooks=hooks)
        clean_logits = base_logits if not denoise else src_logits
        labels = pairs.labels if pairs.labels is not None else clean_logits.detach().argmax(-1)
        m_base = fn(base_logits, labels)
        grads = torch.autograd.grad(m_base.sum(), [seen[n][1] for n in names], allow_unused=True)
    grads = [torch.zeros_like(seen[n][1]) if g is None else g for n, g in zip(names, grads)]
    m_base = m_base.detach().float()
    m_src = fn(src_logits, labels).float()
    m_clean, m_corr = (m_src, m_base) if denoise else (m_base, m_src)
    grid = input_grid(model, pairs.clean)
    H = model.cfg.num_heads
    values, cells = {}, {}
    for b, n, g in zip(blocks, names, grads):
        est = _per_cell(site, ((src[n] - seen[n][0]) * g).double())                     # P, K
        toks = tokens_at(model, b, grid)
        keep = select_cells(site, toks, H, patches)
        values[b] = (m_base.double()[None, :] + est.T)[torch.as_tensor(keep)].cpu().numpy()   # K, P
        labels_b = cell_labels(site, toks, H)
        cells[b] = [labels_b[i] for i in keep]
    return PatchGrid(site, direction, "attribution", name, blocks, values, cells, m_clean.cpu().double().numpy(),
                     m_corr.cpu().double().numpy(), grid, H)


def agreement(real: PatchGrid, estimate: PatchGrid) -> list[dict]:
    """Pearson r between the patched effects and their attribution estimates, per block and over all blocks
    (``block`` None), with the cell count; NaN where either is constant."""
    if real.blocks != estimate.blocks or real.site != estimate.site:
        raise ValueError("agreement compares two grids of the same site and blocks")
    rows = []
    xs, ys = [], []
    for b in real.blocks:
        x, y = real.effect(b), estimate.effect(b)
        xs.append(x)
        ys.append(y)
        rows.append({"block": b, "metric": "agreement_r", "value": _pearson(x, y), "cells": int(len(x))})
    x, y = np.concatenate(xs), np.concatenate(ys)
    rows.append({"block": None, "metric": "agreement_r", "value": _pearson(x, y), "cells": int(len(x))})
    return rows


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    from scipy.stats import pearsonr

    return float(pearsonr(x, y)[0])
