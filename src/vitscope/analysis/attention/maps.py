"""Attention maps: any block, head and query, heads separately or fused, DINO-style mass thresholding.

Shapes: B = batch, H = heads, T = tokens at that block, (rows, cols) = the patch grid.
The pure functions take a softmax pattern ``(B, H, T, T)`` (``blocks.{i}.attn.hook_pattern``) and the
``TokenLayout`` of the same block; the ``*_from_model`` helpers run the model for you.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitscope.analysis.api import Drawn, Result
from vitscope.analysis.attention.common import (  # noqa: F401 - collect_patterns, block_of, pattern_hook: here too
    AttentionOptions, block_of, check_block, collect_patterns, pattern_hook, data_description, map_frame, one_model, options_of, pattern_batches, query_slug,
    resolve_heads, weights_of,
)
from vitscope.analysis.attention.tokens import (
    MEAN_QUERY, blocks_with_token, check_pattern, grid_of, normalize_block, resolve_query,
)
from vitscope.models.layout import TokenLayout
from vitscope.runtime import model_meta

HEAD_FUSIONS = ("mean", "max", "min", "sum")


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


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class AttentionMapOptions(AttentionOptions):
    """Options of :func:`evaluate` (``vitscope attention``, the app's attention view, the report's maps)."""

    block: int = -1                     # block whose attention is read (-1: the last)
    query: str = "cls"                  # cls, dist, reg<k>, mean, centre, top, left, right, bottom or "row,col"
    heads: Any = None                   # heads kept: "0,3,-1" or a list (None: every head)
    fusion: str = "mean"                # heads fused for the fused map and the overlay figure: mean, max, min, sum
    threshold: float | None = None      # also DINO's masks keeping this share of the attention mass (e.g. 0.6)
    all_blocks: bool = False            # also the block x head grid (every block where the query exists)
    limit: int | None = 8               # at most this many images
    batch_size: int = 8
    overlay: bool = True                # figures: maps over the image
    cmap: str = "inferno"
    opacity: float = 0.6                # of a map over its image
    progress: bool = False

    def validate(self) -> None:
        self.check_int("block", minimum=None)
        self.check_query()
        self.check_heads()
        self.check_choice("fusion", HEAD_FUSIONS)
        self.check_number("threshold", 0, 1, low_open=True, optional=True)
        self.check_limit()
        self.check_int("batch_size")
        self.check_display()


def evaluate(models, data=None, options: AttentionMapOptions | None = None, **overrides) -> Result:
    """Per-head attention maps of one query at one block, for each image (and the heads fused).

    Args:
        models: one model (or ``{label: model}`` with one entry).
        data: images (a dataset spec, an ``ImageDataset``, image files, model inputs (N, 3, H, W)) or
            :class:`~vitscope.analysis.attention.common.AttentionPatterns`.
        options: :class:`AttentionMapOptions` (keyword overrides are applied on top).

    Returns a :class:`~vitscope.analysis.api.Result`: one row per image x head x patch (``metric`` ``attention``;
    ``attention_<fusion>`` for the fused map, ``mass_mask`` for the masks), with ``image``, ``head``, ``row``,
    ``col`` and ``query`` columns; ``arrays``: ``maps`` (N, H', rows, cols), ``fused`` (N, rows, cols), ``masks``,
    ``grid`` (N, L, H, rows, cols) and ``grid_blocks`` with ``all_blocks``. ``figures()`` draws each image's
    heads (its masks, its block x head grid) and every image's fused map.
    """
    import pandas as pd

    from vitscope.analysis.api import tidy_table

    opts = options_of(AttentionMapOptions, options, overrides)
    label, model = one_model(models)
    cfg = model.cfg
    b = check_block(model, opts.block)
    resolve_query(opts.query, model.token_layout(b), cfg)               # before any image is read
    heads = resolve_heads(opts.heads, cfg.num_heads)
    grid_blocks = blocks_with_token(model, opts.query) if opts.all_blocks else []
    out: dict[str, list] = {k: [] for k in ("maps", "fused", "masks", "grid", "display", "index", "ids")}
    for batch in pattern_batches(model, data, [b, *grid_blocks], opts.limit, opts.batch_size, opts.progress):
        pats, lays = batch.patterns, batch.layouts
        maps = attention_map(pats[b], lays[b], opts.query, heads=heads, cfg=cfg).float().cpu()   # B, H', r, c
        out["maps"].append(maps)
        out["fused"].append(fuse_heads(maps, opts.fusion, dim=1))
        if opts.threshold is not None:
            out["masks"].append(mass_threshold(maps, opts.threshold))
        if grid_blocks:
            out["grid"].append(torch.stack([attention_map(pats[g], lays[g], opts.query, cfg=cfg).float().cpu()
                                            for g in grid_blocks], dim=1))                       # B, L, H, r, c
        out["display"] += batch.display
        out["index"] += batch.index
        out["ids"] += batch.ids
    ids = out["ids"]
    arrays = {k: torch.cat(v).numpy() for k, v in out.items() if k in ("maps", "fused", "masks", "grid") and v}
    arrays.update(grid_blocks=np.asarray(grid_blocks, dtype=np.int64), index=np.asarray(out["index"]),
                  display=out["display"] if all(d is not None for d in out["display"]) else None)
    head_ids = list(heads) if heads is not None else list(range(arrays["maps"].shape[1]))
    n, H = arrays["maps"].shape[:2]
    per_head = dict(image=[i for i in ids for _ in head_ids], head=head_ids * n)
    frames = [map_frame(arrays["maps"].reshape(n * H, *arrays["maps"].shape[2:]), metric="attention", **per_head),
              map_frame(arrays["fused"], metric=f"attention_{opts.fusion}", image=ids, head=[None] * n)]
    if "masks" in arrays:
        frames.append(map_frame(arrays["masks"].reshape(n * H, *arrays["masks"].shape[2:]), metric="mass_mask",
                                **per_head))
    df = pd.concat(frames, ignore_index=True)
    df.insert(0, "model", label)
    df.insert(1, "block", b)
    df["query"] = opts.query
    table = tidy_table(df, "attention", opts, dataset=data_description(data), weights={label: weights_of(model)})
    on_patches = float(arrays["maps"].sum(axis=(-2, -1)).mean())
    summary = (f"{label}: {opts.query} attention at block {b} over {n} image(s), {H} head(s); on average "
               f"{on_patches:.3f} of it on the patches (the rest on prefix tokens)")
    return Result("attention", table, summary, opts, arrays,
                  meta={"model": label, "block": b, "heads": head_ids, "ids": ids,
                        "record": model_meta(model, label)}, draw=_draw)


def _draw(result: Result):
    """Each image's heads (its masks, its block x head grid), then every image's fused map over the image."""
    from vitscope.viz.attention import plot_block_head_grid, plot_head_maps, plot_image_overlays

    o: AttentionMapOptions = result.options
    a, m = result.arrays, result.meta
    b, qn, q = m["block"], query_slug(o.query), o.query
    disp = a["display"] if a.get("display") is not None else [None] * len(m["ids"])
    labels = [f"head {h}" for h in m["heads"]]
    for k, (i, ident) in enumerate(zip(a["index"], m["ids"])):
        name, base = Path(ident).stem, f"{int(i):04d}_{Path(ident).stem}"
        meta = {**m["record"], "image": ident, "block": b, "query": q}
        arrays = {"maps": a["maps"][k]} | ({"mask": a["masks"][k]} if "masks" in a else {})
        fig = plot_head_maps(a["maps"][k], image=disp[k], overlay_image=o.overlay and disp[k] is not None,
                             cmap=o.cmap, alpha=o.opacity, title=f"{name}: {q} -> patches, block {b}",
                             head_labels=labels)
        yield f"{base}_block{b}_{qn}", Drawn(fig, arrays=arrays, meta={**meta, "heads": labels})
        if "masks" in a:
            fig = plot_head_maps(a["masks"][k].astype(float), image=disp[k],
                                 overlay_image=o.overlay and disp[k] is not None, cmap="gray", alpha=o.opacity,
                                 head_labels=labels, title=f"{name}: top {o.threshold:.0%} of attention mass, "
                                                           f"block {b}")
            yield f"{base}_block{b}_{qn}_mass{o.threshold:g}", Drawn(fig, arrays={"mask": a["masks"][k]},
                                                                     meta={**meta, "mass": o.threshold})
        if "grid" in a:
            blocks = a["grid_blocks"].tolist()
            fig = plot_block_head_grid(a["grid"][k], blocks, image=disp[k] if o.overlay else None, cmap=o.cmap,
                                       alpha=o.opacity, title=f"{name}: {q} -> patches")
            yield f"{base}_blocks_{qn}", Drawn(fig, arrays={"maps": a["grid"][k], "blocks": np.asarray(blocks)},
                                               meta={**m["record"], "image": ident, "blocks": blocks, "query": q})
    if a.get("display") is None:
        return                                                     # (patterns given without their pictures)
    names = [Path(i).name for i in m["ids"]]
    fig = plot_image_overlays(disp, a["fused"], names, cmap=o.cmap, alpha=o.opacity,
                              title=f"{q} attention, block {b}, heads fused by {o.fusion}")
    yield f"overlays_block{b}_{qn}", Drawn(fig, arrays={"maps": a["fused"]},
                                           meta={**m["record"], "images": names, "block": b, "query": q,
                                                 "fusion": o.fusion})
