"""Attention rollout (Abnar & Zuidema 2020; probing-vits and vit-explain), correct for every sample of a batch.

For blocks ``start .. end``: fuse the heads (mean / max / min), optionally zero the lowest ``discard_ratio``
of the entries of each sample's matrix (never the CLS->CLS entry), add the identity, renormalise the
**rows**, and multiply: ``J_n = Â_n · J_{n-1}`` with ``J`` starting at the identity. The CLS row of ``J`` over
the patch columns, divided by its max, is the rollout map.

Tokens that enter at a later block (cls-register: CLS or registers inserted before block k) make the matrices
change size. vitscope rolls out over the tokens present: before multiplying by a block that has more
tokens, ``J`` is embedded into the larger index set (each old token keeps its identity, found by name
through the two layouts) and every newly inserted token gets an identity row and column — an inserted
token is a learned constant, so all of its flow comes from itself. The result is a (B, T_end, T_end)
matrix over the tokens of the last block; reading the CLS row over the patch columns is then well defined
even when CLS entered late.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional

import torch

from vitscope.analysis.attention.maps import collect_patterns, fuse_heads
from vitscope.analysis.attention.tokens import (
    MEAN_QUERY, grid_of, index_map, normalize_block, resolve_query,
)
from vitscope.models.layout import TokenLayout

ROLLOUT_FUSIONS = ("mean", "max", "min")
NORMALIZATIONS = ("max", "minmax", "none")


class Attribution(NamedTuple):
    """What ``rollout_from_model`` and ``relevance_from_model`` return (a tuple: ``maps, matrix, targets = ...``).

    ``maps`` (B, rows, cols): the query's row over the patch columns, normalised; ``matrix`` (B, T, T): the rolled-out
    matrix over the tokens of the last block; ``targets`` (B,): the class explained, None for attention rollout.
    """

    maps: torch.Tensor
    matrix: torch.Tensor
    targets: Optional[torch.Tensor]


DISCARD_RULES = ("exclude-cls", "spare-cls", "all", "vit-explain")


def resolve_discard_rule(rule: str, gradient: bool = False) -> str:
    """Name of a discard rule -> one of ``exclude-cls``, ``spare-cls``, ``all``.

    ``"vit-explain"`` stands for what that code does: ``spare-cls`` in attention rollout, ``all`` in gradient
    rollout (``gradient=True``), where its line that spares CLS->CLS is commented out.
    """
    r = str(rule).strip().lower().replace("_", "-")
    if r == "vit-explain":
        return "all" if gradient else "spare-cls"
    if r not in DISCARD_RULES:
        raise ValueError(f"discard rule must be one of {DISCARD_RULES}, got {rule!r}")
    return r


def discard_lowest(a: torch.Tensor, ratio: float, keep: int | None = None, rule: str = "exclude-cls") -> torch.Tensor:
    """Zero low entries of each sample's (T, T) matrix; ``k = int(ratio * T * T)``.

    ``a`` (B, T, T); each sample is treated on its own (vit-explain zeroes the first sample's entries only).
    ``keep`` is the CLS index (None when CLS is absent at this block). ``rule``:

    - ``"exclude-cls"`` (default): CLS->CLS is never a candidate; the k lowest of the other entries are zeroed.
    - ``"spare-cls"`` (vit-explain's attention rollout): the k lowest entries are chosen among all entries, and
      CLS->CLS is left alone if it is one of them (then k - 1 entries are zeroed).
    - ``"all"`` (vit-explain's gradient rollout): the k lowest entries are zeroed, CLS->CLS included.
    - ``"vit-explain"``: ``spare-cls``; gradient rollout passes ``"all"`` for it (see :func:`resolve_discard_rule`).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio}")
    rule = resolve_discard_rule(rule)
    B, T, _ = a.shape
    k = int(ratio * T * T)
    if k == 0:
        return a
    flat = a.reshape(B, T * T).clone()
    score = flat
    if keep is not None and rule == "exclude-cls":
        k = min(k, T * T - 1)
        score = flat.clone()
        score[:, keep * T + keep] = float("inf")
    idx = score.topk(k, dim=-1, largest=False).indices                               # B, k
    if keep is not None and rule == "spare-cls":
        cls_cls = keep * T + keep
        restore = flat[:, cls_cls].clone()
        flat.scatter_(1, idx, 0.0)
        flat[:, cls_cls] = restore
    else:
        flat.scatter_(1, idx, 0.0)
    return flat.reshape(B, T, T)


def add_identity_and_normalize(a: torch.Tensor) -> torch.Tensor:
    """(A + I) with every row divided by its sum (not the columns: a known bug of public code)."""
    T = a.shape[-1]
    a = a + torch.eye(T, dtype=a.dtype, device=a.device)
    return a / a.sum(dim=-1, keepdim=True)


def embed_joint(J: torch.Tensor, old: TokenLayout, new: TokenLayout) -> torch.Tensor:
    """Embed (B, T_old, T_old) into the token set of ``new`` (B, T_new, T_new), identity for inserted tokens."""
    where = index_map(old, new)
    if old.n_tokens == new.n_tokens and where == list(range(new.n_tokens)):
        return J
    idx = torch.tensor(where, device=J.device)
    B = J.shape[0]
    out = torch.eye(new.n_tokens, dtype=J.dtype, device=J.device).expand(B, -1, -1).clone()
    out[:, idx[:, None], idx[None, :]] = J
    return out


def _blocks(patterns: Mapping[int, torch.Tensor] | Sequence[torch.Tensor], start_block: int,
            end_block: int | None) -> tuple[dict[int, torch.Tensor], list[int]]:
    pats = dict(patterns) if isinstance(patterns, Mapping) else dict(enumerate(patterns))
    if not pats:
        raise ValueError("no attention patterns given")
    last = max(pats)
    end = last if end_block is None else end_block
    blocks = list(range(start_block, end + 1))
    missing = [b for b in blocks if b not in pats]
    if missing or not blocks:
        raise ValueError(f"rollout from block {start_block} to {end} needs the patterns of blocks {blocks}; "
                         f"missing {missing or blocks}")
    return pats, blocks


def rollout_matrices(mats: Mapping[int, torch.Tensor], layouts: Mapping[int, TokenLayout],
                     blocks: Sequence[int], residual: str = "identity") -> torch.Tensor:
    """Multiply per-block matrices (B, T_b, T_b) in block order with the size handling described above.

    ``residual="identity"``: J_n = Â_n · J_{n-1} with Â = rownorm(A + I) (rollout);
    ``residual="add"``: R_n = R_{n-1} + A_n · R_{n-1} (Chefer et al.).
    """
    J = None
    prev = None
    for b in blocks:
        A, lay = mats[b], layouts[b]
        if A.shape[-1] != lay.n_tokens:
            raise ValueError(f"block {b}: matrix has {A.shape[-1]} tokens, layout has {lay.n_tokens}")
        if J is None:
            J = torch.eye(lay.n_tokens, dtype=A.dtype, device=A.device).expand(A.shape[0], -1, -1)
        else:
            J = embed_joint(J, prev, lay)
        J = A @ J if residual == "identity" else J + A @ J
        prev = lay
    return J


def attention_rollout(patterns: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                      layouts: Mapping[int, TokenLayout] | Sequence[TokenLayout],
                      head_fusion: str = "mean", discard_ratio: float = 0.0, start_block: int = 0,
                      end_block: int | None = None, discard_rule: str = "exclude-cls") -> torch.Tensor:
    """Rollout over blocks ``start_block .. end_block`` (default: the last pattern given).

    ``patterns``: {block: (B, H, T_b, T_b)} or a list indexed by block; ``layouts`` likewise.
    ``discard_rule``: which entries the discard may zero (:func:`discard_lowest`; ``"vit-explain"`` for its rule).
    Returns J (B, T_end, T_end) over the tokens of ``end_block``.
    """
    if head_fusion not in ROLLOUT_FUSIONS:
        raise ValueError(f"head_fusion must be one of {ROLLOUT_FUSIONS}, got {head_fusion!r}")
    rule = resolve_discard_rule(discard_rule, gradient=False)
    pats, blocks = _blocks(patterns, start_block, end_block)
    lays = dict(layouts) if isinstance(layouts, Mapping) else dict(enumerate(layouts))
    mats = {}
    for b in blocks:
        a = fuse_heads(pats[b].float(), head_fusion, dim=1)                          # B, T, T
        a = discard_lowest(a, discard_ratio, keep=lays[b].cls, rule=rule)
        mats[b] = add_identity_and_normalize(a)
    return rollout_matrices(mats, lays, blocks)


def rollout_map(joint: torch.Tensor, layout: TokenLayout, query="cls", normalize: str | None = "max",
                cfg=None) -> torch.Tensor:
    """Row of ``query`` (default CLS) over the patch columns, on the grid: (B, rows, cols).

    ``normalize="max"`` divides each map by its max (probing-vits / vit-explain); ``"minmax"`` rescales to [0, 1]
    (the notebooks of Chefer et al.); None or ``"none"`` keeps raw values.
    """
    if normalize == "none":
        normalize = None
    q = resolve_query(query, layout, cfg)
    row = joint[:, layout.patches, :].mean(1) if q == MEAN_QUERY else joint[:, q, :]
    m = row[:, layout.patches]                                                       # B, N
    if normalize == "max":
        mx = m.amax(-1, keepdim=True)
        m = m / torch.where(mx == 0, torch.ones_like(mx), mx)
    elif normalize == "minmax":
        lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
        m = (m - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    elif normalize is not None:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS} (or None), got {normalize!r}")
    return m.reshape(m.shape[0], *layout.grid)


def rollout_from_model(model, x: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                       start_block: int = 0, end_block: int = -1, query="cls", normalize: str | None = "max",
                       discard_rule: str = "exclude-cls") -> Attribution:
    """Run ``model`` on ``x`` and return :class:`Attribution` ``(maps (B, rows, cols), J (B, T, T), None)``."""
    depth = model.cfg.depth
    start, end = normalize_block(start_block, depth), normalize_block(end_block, depth)
    if start > end:
        raise ValueError(f"start_block {start_block} comes after end_block {end_block}")
    grid = grid_of(x, model)
    resolve_query(query, model.token_layout(end, grid), model.cfg)
    pats = collect_patterns(model, x, range(start, end + 1))
    return rollout_from_patterns(pats, {b: model.token_layout(b, grid) for b in pats}, head_fusion, discard_ratio,
                                 start, end, query, normalize, discard_rule, model.cfg)


def rollout_from_patterns(patterns: Mapping[int, torch.Tensor], layouts: Mapping[int, TokenLayout],
                          head_fusion: str = "mean", discard_ratio: float = 0.0, start_block: int = 0,
                          end_block: int | None = None, query="cls", normalize: str | None = "max",
                          discard_rule: str = "exclude-cls", cfg=None) -> Attribution:
    """:func:`rollout_from_model` on patterns already computed (``{block: (B, H, T, T)}`` with their layouts)."""
    end = max(patterns) if end_block is None else end_block
    J = attention_rollout(patterns, layouts, head_fusion, discard_ratio, start_block, end, discard_rule=discard_rule)
    return Attribution(rollout_map(J, layouts[end], query, normalize, cfg=cfg), J, None)
