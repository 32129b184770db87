"""Attention maps: any block, head and query, heads separately or fused, DINO-style mass thresholding.

Shapes: B = batch, H = heads, T = tokens at that block, (rows, cols) = the patch grid.
The pure functions take a softmax pattern ``(B, H, T, T)`` (``blocks.{i}.attn.hook_pattern``) and the
``TokenLayout`` of the same block; the ``*_from_model`` helpers run the model for you.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from vitscope.analysis.attention.tokens import (
    MEAN_QUERY, blocks_with_token, check_pattern, grid_of, normalize_block, resolve_query,
)
from vitscope.models.layout import TokenLayout

HEAD_FUSIONS = ("mean", "max", "min", "sum")


def pattern_hook(block: int) -> str:
    return f"blocks.{block}.attn.hook_pattern"


def block_of(hook_name: str) -> int:
    """``blocks.7.attn.hook_pattern`` -> 7."""
    return int(hook_name.split(".")[1])


def fuse_heads(x: torch.Tensor, fusion: str, dim: int = 1) -> torch.Tensor:
    """Fuse the head dimension with ``mean``, ``max``, ``min`` or ``sum``."""
    if fusion == "mean":
        return x.mean(dim)
    if fusion == "sum":
        return x.sum(dim)
    if fusion == "max":
        return x.amax(dim)
    if fusion == "min":
        return x.amin(dim)
    raise ValueError(f"head fusion must be one of {HEAD_FUSIONS}, got {fusion!r}")


def query_rows(pattern: torch.Tensor, layout: TokenLayout, query="cls", cfg=None) -> torch.Tensor:
    """The attention row(s) of ``query`` over every key: (B, H, T). ``"mean"`` averages the patch queries
    (in float32 at least: a float16 / bfloat16 pattern is not averaged in its own precision)."""
    check_pattern(pattern, layout)
    q = resolve_query(query, layout, cfg)
    if q == MEAN_QUERY:
        rows = pattern[:, :, layout.patches, :]
        if rows.dtype in (torch.float16, torch.bfloat16):
            return rows.mean(2, dtype=torch.float32)
        return rows.mean(2)
    return pattern[:, :, q, :]


def attention_map(pattern: torch.Tensor, layout: TokenLayout, query="cls", heads: Sequence[int] | None = None,
                  fusion: str | None = None, renormalize: bool = False, cfg=None) -> torch.Tensor:
    """Attention of ``query`` over the patch tokens, as a map on the patch grid.

    Returns (B, H', rows, cols) with ``heads`` selected (all by default), or (B, rows, cols) when ``fusion``
    ("mean", "max", "min", "sum") fuses the heads. ``renormalize`` divides by the attention mass left on
    patches after dropping the prefix keys (walmer2023's saliency does this after fusing); a row with no mass
    on patches stays zero.
    """
    rows = query_rows(pattern, layout, query, cfg)[..., layout.patches]             # B, H, N
    if heads is not None:
        rows = rows[:, list(heads)]
    if fusion is not None:
        rows = fuse_heads(rows, fusion, dim=1)                                       # B, N
    if renormalize:
        s = rows.sum(-1, keepdim=True)
        rows = rows / torch.where(s == 0, torch.ones_like(s), s)
    return rows.reshape(*rows.shape[:-1], *layout.grid)                              # B, [H,] rows, cols


def mass_threshold(maps: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """DINO's thresholding: keep the largest values that together hold ``mass`` of each map's total.

    ``maps`` (..., rows, cols) non-negative -> bool of the same shape. As DINO's ``visualize_attention.py``:
    sort ascending, normalise to sum 1, cumulative sum, keep entries whose cumulative value exceeds ``1 - mass``.
    """
    if not 0.0 <= mass <= 1.0:
        raise ValueError(f"mass must be in [0, 1], got {mass}")
    shape = maps.shape
    flat = maps.reshape(-1, shape[-2] * shape[-1]).double()
    val, idx = torch.sort(flat, dim=-1)
    tot = val.sum(-1, keepdim=True)
    val = val / torch.where(tot == 0, torch.ones_like(tot), tot)
    keep_sorted = val.cumsum(-1) > (1.0 - mass)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, idx, keep_sorted)
    return keep.reshape(shape)


def patterns_from_cache(cache, blocks: Iterable[int] | None = None) -> dict[int, torch.Tensor]:
    """``{block: pattern (B, H, T, T)}`` from a ``run_with_cache`` cache (or any mapping of hook names).

    >>> _, cache = model.run_with_cache(x, names_filter="blocks.*.attn.hook_pattern")
    >>> A.attention_rollout(A.patterns_from_cache(cache), layouts)

    ``blocks`` keeps those blocks only (an error names any that the cache lacks).
    """
    found = {}
    for name in cache.keys():
        parts = str(name).split(".")
        if len(parts) == 4 and parts[0] == "blocks" and parts[2:] == ["attn", "hook_pattern"]:
            found[int(parts[1])] = cache[name]
    if not found:
        raise ValueError("the cache holds no attention pattern; run the model with "
                         "names_filter='blocks.*.attn.hook_pattern'")
    if blocks is not None:
        want = list(blocks)
        missing = [b for b in want if b not in found]
        if missing:
            raise ValueError(f"the cache holds the patterns of blocks {sorted(found)}; missing {missing}")
        found = {b: found[b] for b in want}
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------------- running the model
def collect_patterns(model, x: torch.Tensor, blocks: Iterable[int] | None = None) -> dict[int, torch.Tensor]:
    """Run ``model`` on ``x`` (B, C, H, W) and return ``{block: pattern (B, H, T, T)}``.

    Stops after the last requested block (no head is run).
    """
    depth = model.cfg.depth
    blocks = sorted({normalize_block(b, depth) for b in (range(depth) if blocks is None else blocks)})
    if not blocks:
        return {}
    names = [pattern_hook(b) for b in blocks]
    with torch.inference_mode():
        _, cache = model.run_with_cache(x, names_filter=names, stop_at=blocks[-1] + 1)
    return {b: cache[pattern_hook(b)] for b in blocks}


def attention_maps_from_model(model, x: torch.Tensor, block: int = -1, query="cls",
                              heads: Sequence[int] | None = None, fusion: str | None = None,
                              renormalize: bool = False) -> torch.Tensor:
    """Run the model and return :func:`attention_map` of one block: (B, H', rows, cols) or (B, rows, cols)."""
    b = normalize_block(block, model.cfg.depth)
    layout = model.token_layout(b, grid_of(x, model))
    resolve_query(query, layout, model.cfg)             # fail before running the model
    pattern = collect_patterns(model, x, [b])[b]
    return attention_map(pattern, layout, query, heads, fusion, renormalize, cfg=model.cfg)


def pool_attention_maps(model, x: torch.Tensor, fusion: str | None = None) -> torch.Tensor:
    """The attention of an attention-pooled model's probe query (SigLIP, Perception Encoder, AIMv2; its CLS-like
    read-out) over the patch tokens, as maps: (B, H, rows, cols), or (B, rows, cols) with ``fusion``.

    The pool attends over the final-norm tokens; models whose pool also reads CLS (PE) give the patches' share.
    """
    if getattr(model, "attn_pool", None) is None:
        raise ValueError(f"this model has no attention pool (global_pool={model.cfg.global_pool!r}); use "
                         "attention_maps_from_model with query='cls' or 'mean'")
    grid = grid_of(x, model)
    lay = model.token_layout(model.cfg.depth, grid)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter="attn_pool.hook_pattern")
    pattern = cache["attn_pool.hook_pattern"][:, :, 0]                               # B, H, T'
    if model.cfg.map_tokens == "patches":
        rows = pattern                                                               # B, H, N
    else:
        rows = pattern[..., lay.patches]                                             # B, H, N
    if fusion is not None:
        rows = fuse_heads(rows, fusion, dim=1)                                       # B, N
    return rows.reshape(*rows.shape[:-1], *lay.grid)                                 # B, [H,] rows, cols


def block_head_maps(model, x: torch.Tensor, blocks: Sequence[int] | None = None, query="cls",
                    renormalize: bool = False) -> tuple[list[int], torch.Tensor]:
    """Maps of ``query`` for several blocks: (blocks, (B, L, H, rows, cols)).

    By default every block where ``query`` exists (blocks before a late CLS / register are skipped); asking
    for such a block explicitly is an error that names the block where the token enters.
    """
    depth = model.cfg.depth
    grid = grid_of(x, model)
    if blocks is None:
        blocks = blocks_with_token(model, query)
    blocks = [normalize_block(b, depth) for b in blocks]
    for b in blocks:
        resolve_query(query, model.token_layout(b, grid), model.cfg)
    pats = collect_patterns(model, x, blocks)
    maps = [attention_map(pats[b], model.token_layout(b, grid), query, renormalize=renormalize, cfg=model.cfg)
            for b in blocks]
    return blocks, torch.stack(maps, dim=1)
