"""Activation patching: put one activation of one run into the other and measure what it restores.

Denoising runs the corrupted input and patches in the clean activation of one cell (a token position, a head, or a
head's query row); noising runs the clean input and patches in the corrupted one. Each cell's metric is normalised
so that 0 is the corrupted run and 1 the clean run (:func:`~vitscope.analysis.patching.sites.normalise`).

Batched: the blocks before the patched block are never recomputed. Both inputs run once with their caches; for each
block, the base run's residual stream entering that block (``hook_resid_pre``) is copied once per cell, the copies
are stacked in the batch, each copy gets its own cell patched (a hook that takes the source activation where the
cell's mask is set), and :meth:`HookedViT.forward_from` runs the stack from that block to the logits.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vitscope.analysis.patching.pairs import PatchPairs
from vitscope.analysis.patching.sites import (Metric, cell_labels, cell_masks, expand_mask, hook_name, normalise,
                                              parse_metric, resolve_site, site_kind, tokens_at)

DIRECTIONS = ("denoising", "noising")


@dataclass
class PatchGrid:
    """The metric of every patched run, per block: ``values[block]`` is (K, P) for K cells and P pairs (attribution
    patching: its first-order estimate), ``cells[block]`` names the K cells; ``clean`` / ``corrupted`` (P,) are the
    metric of the two unpatched runs."""

    site: str
    direction: str
    method: str
    metric: str
    blocks: list[int]
    values: dict[int, np.ndarray]
    cells: dict[int, list[dict]]
    clean: np.ndarray
    corrupted: np.ndarray
    grid: tuple[int, int]
    n_heads: int
    extra: dict = field(default_factory=dict)

    def effect(self, block: int, per_pair: bool = False) -> np.ndarray:
        """Normalised effect (K,) of each cell, of the metric averaged over the pairs (``per_pair``: (K, P))."""
        v = self.values[block]
        if per_pair:
            return normalise(v, self.clean[None], self.corrupted[None])
        return normalise(v.mean(1), self.clean.mean(), self.corrupted.mean())

    def rows(self, model: str = "model", per_pair: bool = False) -> list[dict]:
        """Tidy rows: one per block x cell (``metric`` = ``effect``, ``value`` normalised; ``delta`` the raw change
        of the metric), with the cell's columns; ``per_pair`` adds one row per pair (column ``pair``)."""
        out = []
        base = self.corrupted if self.direction == "denoising" else self.clean
        for b in self.blocks:
            eff, v = self.effect(b), self.values[b]
            per = self.effect(b, per_pair=True) if per_pair else None
            for k, cell in enumerate(self.cells[b]):
                common = {"model": model, "block": b, "site": self.site, "direction": self.direction,
                          "method": self.method, "quantity": self.metric, **self.extra, **cell}
                out.append({**common, "metric": "effect", "value": float(eff[k]),
                            "delta": float(v[k].mean() - base.mean())})
                if per is not None:
                    out += [{**common, "metric": "effect", "value": float(per[k, p]), "pair": p,
                             "delta": float(v[k, p] - base[p])} for p in range(v.shape[1])]
        return out

    def summary_rows(self, model: str = "model", changed: np.ndarray | None = None) -> list[dict]:
        """Per-block summaries (no cell columns): ``effect_max``, the effect of the cell with the largest |effect|
        (per block x head for the pattern site; head and path grids have no summary: their cells are heads), and,
        with ``changed`` ((P, rows, cols): the share of each patch where each pair's inputs differ),
        ``changed_share``: the share of the summed |change of the metric| over patch positions that lies on changed
        patches, averaged over the pairs (pairs whose inputs differ everywhere are left out)."""
        kind = "path" if self.method == "path" else site_kind(self.site)
        if kind in ("head", "path"):
            return []
        out = []
        base = {"model": model, "site": self.site, "direction": self.direction, "method": self.method,
                "quantity": self.metric, **self.extra}
        ref = self.corrupted if self.direction == "denoising" else self.clean
        for b in self.blocks:
            eff = self.effect(b)
            if kind == "pattern":
                heads = np.array([c["head"] for c in self.cells[b]])
                for h in np.unique(heads):
                    e = eff[heads == h]
                    out.append({**base, "block": b, "head": int(h), "metric": "effect_max",
                                "value": float(e[np.argmax(np.abs(e))])})
                continue
            out.append({**base, "block": b, "metric": "effect_max", "value": float(eff[np.argmax(np.abs(eff))])})
            if changed is None:
                continue
            patch = [k for k, c in enumerate(self.cells[b]) if c["token"] == "patch"]
            delta = np.abs(self.values[b][patch] - ref[None])                           # K_patch, P
            shares = []
            for p in range(delta.shape[1]):
                on = np.array([changed[p][self.cells[b][k]["row"], self.cells[b][k]["col"]] > 0 for k in patch])
                if on.all() or delta[:, p].sum() == 0:
                    continue
                shares.append(delta[on, p].sum() / delta[:, p].sum())
            if shares:
                out.append({**base, "block": b, "metric": "changed_share", "value": float(np.mean(shares)),
                            "pairs": len(shares)})
        return out

    # ------------------------------------------------------------------ arrays for the figures
    def position_maps(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(patch effects (L, rows, cols), {prefix token: (L,)}) with NaN where a cell was not patched or a token is
        absent at a block; L = len(blocks). Position sites only."""
        rows, cols = self.grid
        maps = np.full((len(self.blocks), rows, cols), np.nan)
        prefix: dict[str, np.ndarray] = {}
        for i, b in enumerate(self.blocks):
            for cell, e in zip(self.cells[b], self.effect(b)):
                if cell["token"] == "patch":
                    maps[i, cell["row"], cell["col"]] = e
                else:
                    prefix.setdefault(cell["token"], np.full(len(self.blocks), np.nan))[i] = e
        order = sorted(prefix, key=lambda t: (t != "cls", t != "dist", len(t), t))        # CLS, DIST, reg0, ...
        return maps, {t: prefix[t] for t in order}

    def head_map(self) -> np.ndarray:
        """Effects (L, H) for head sites (and path patching's senders); NaN where a head was not patched."""
        out = np.full((len(self.blocks), self.n_heads), np.nan)
        for i, b in enumerate(self.blocks):
            for cell, e in zip(self.cells[b], self.effect(b)):
                out[i, cell["head"]] = e
        return out

    def pattern_maps(self) -> tuple[np.ndarray, list[list[dict]]]:
        """Effects (L, H, T_max) for the pattern site, queries in sequence order (NaN-padded where T is smaller)."""
        t_max = max(1 + max(c["position"] for c in self.cells[b]) for b in self.blocks)
        out = np.full((len(self.blocks), self.n_heads, t_max), np.nan)
        for i, b in enumerate(self.blocks):
            for cell, e in zip(self.cells[b], self.effect(b)):
                out[i, cell["head"], cell["position"]] = e
        return out, [self.cells[b] for b in self.blocks]


def input_grid(model, x: torch.Tensor) -> tuple[int, int]:
    p = model.cfg.patch_size
    return x.shape[-2] // p, x.shape[-1] // p


def check_blocks(model, blocks: Sequence[int] | None) -> list[int]:
    depth = model.cfg.depth
    if blocks is None:
        return list(range(depth))
    out = []
    for b in blocks:
        b = int(b)
        if not -depth <= b < depth:
            raise ValueError(f"block {b} does not exist; this model has blocks 0..{depth - 1}")
        out.append(b % depth)
    return sorted(dict.fromkeys(out))


def patch_cells(model, base_resid: torch.Tensor, source: torch.Tensor, site: str, block: int, masks: torch.Tensor,
                metric: Metric, labels: torch.Tensor, batch_size: int = 64,
                grid: tuple[int, int] | None = None) -> torch.Tensor:
    """The metric (K, P) of K patched runs from ``block``: run ``k`` starts from ``base_resid`` (P, T, D, the base
    run's ``blocks.{block}.hook_resid_pre``) and takes ``source`` (P, ..., the other run's activation at ``site``)
    where ``masks[k]`` is set (masks: (K, T) positions, (K, H) heads, (K, H, T) head x query rows). Up to
    ``batch_size`` runs share a forward pass (at least one cell per pass)."""
    P = base_resid.shape[0]
    per = max(1, batch_size // P)
    out = []
    name = hook_name(site, block)
    source = source.to(base_resid.dtype)
    for k0 in range(0, masks.shape[0], per):
        m = expand_mask(site, masks[k0:k0 + per].to(base_resid.device))                # k, 1, ...
        k = m.shape[0]

        def patch(act: torch.Tensor, hook=None, m=m, k=k) -> torch.Tensor:
            a = act.reshape(k, P, *act.shape[1:])
            return torch.where(m, source[None], a).reshape(act.shape)

        x = base_resid.repeat(k, 1, 1)                                                  # k*P, T, D (cell-major)
        if site == "resid_pre":
            logits = model.forward_from(patch(x), block, grid)
        else:
            with model.hooks([(name, patch)]):
                logits = model.forward_from(x, block, grid)
        out.append(metric(logits, labels.repeat(k)).reshape(k, P).float())
    return torch.cat(out)


def select_cells(site: str, tokens, n_heads: int, patches: np.ndarray | None) -> np.ndarray:
    """Indices of the cells kept when only ``patches`` (a (rows, cols) bool mask) are patched (position and
    pattern sites; the prefix tokens are left out then); every cell when ``patches`` is None."""
    kind = site_kind(site)
    if patches is None or kind == "head":
        n = len(tokens) if kind == "position" else n_heads if kind == "head" else n_heads * len(tokens)
        return np.arange(n)
    keep = np.array([t.kind == "patch" and bool(patches[t.row, t.col]) for t in tokens])
    if kind == "position":
        return np.nonzero(keep)[0]
    return np.nonzero(np.tile(keep, n_heads))[0]


def runs(model, pairs: PatchPairs, metric, clean_names, corrupted_names):
    """Both inputs once with their caches -> (metric fn, name, labels, m_clean, m_corrupted, clean cache, corrupted
    cache)."""
    fn, name = parse_metric(model, metric)
    clean_logits, clean_cache = model.run_with_cache(pairs.clean, names_filter=list(clean_names))
    corr_logits, corr_cache = model.run_with_cache(pairs.corrupted, names_filter=list(corrupted_names))
    labels = pairs.labels if pairs.labels is not None else clean_logits.argmax(-1)
    return (fn, name, labels, fn(clean_logits, labels).float(), fn(corr_logits, labels).float(),
            clean_cache, corr_cache)


@torch.no_grad()
def activation_patching(model, pairs: PatchPairs, site: str = "resid_pre", metric="logit",
                        direction: str = "denoising", blocks: Sequence[int] | None = None,
                        patches: np.ndarray | None = None, batch_size: int = 64, progress: bool = False) -> PatchGrid:
    """The block x cell grid of activation patching at ``site`` (see the module).

    ``pairs``: :class:`PatchPairs` (:func:`~vitscope.analysis.patching.pairs.make_pairs`); ``metric``: see
    :func:`~vitscope.analysis.patching.sites.parse_metric`; ``patches``: a (rows, cols) bool mask to patch only
    those patch positions (position and pattern sites).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    site = resolve_site(model, site)
    blocks = check_blocks(model, blocks)
    pairs = pairs.to(model.device, model.dtype)
    resid = [f"blocks.{b}.hook_resid_pre" for b in blocks]
    acts = [hook_name(site, b) for b in blocks]
    denoise = direction == "denoising"
    fn, name, labels, m_clean, m_corr, c_clean, c_corr = runs(model, pairs, metric, acts if denoise else resid,
                                                              resid if denoise else acts)
    base, src = (c_corr, c_clean) if denoise else (c_clean, c_corr)
    grid = input_grid(model, pairs.clean)
    H = model.cfg.num_heads
    values, cells = {}, {}
    it = blocks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(blocks, desc=f"patching {site}", unit="block", leave=False)
    for b in it:
        toks = tokens_at(model, b, grid)
        keep = select_cells(site, toks, H, patches)
        masks = cell_masks(site, len(toks), H)[torch.as_tensor(keep)]
        v = patch_cells(model, base[f"blocks.{b}.hook_resid_pre"], src[hook_name(site, b)], site, b, masks, fn,
                        labels, batch_size, grid)
        values[b] = v.cpu().double().numpy()
        labels_b = cell_labels(site, toks, H)
        cells[b] = [labels_b[i] for i in keep]
    return PatchGrid(site, direction, "activation", name, blocks, values, cells, m_clean.cpu().double().numpy(),
                     m_corr.cpu().double().numpy(), grid, H)
