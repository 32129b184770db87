"""The other attention statistics of walmer2023 ("Teaching Matters"), per image and streamed over a dataset.

All patch-to-patch statistics drop every prefix token (CLS, DIST, registers) from queries and keys, as
walmer2023 drops CLS. Definitions (per image, one block's pattern (B, H, T, T)):

- ``head_std``: standard deviation over heads (unbiased, as ``torch.std``) of each patch->patch entry,
  averaged over queries and keys -> (B,).
- ``position_std``: for each key, standard deviation over the patch queries (unbiased), averaged over
  keys -> (B, H).
- ``spatial_to_cls``: attention from the patch queries to the CLS key, averaged over queries -> (B, H).
  (walmer2023's code reads key index 1, the first patch, where its comment says CLS; vitscope reads CLS.)
- average maps of the CLS, mean-spatial and centre queries over the patch keys: see ``maps.attention_map``;
  and walmer2023's two other average maps: ``"all"`` (the mean over **every** query, prefix tokens included, of
  the attention on each patch key) and ``"spcpure"`` (each patch query's row with the prefix keys removed and
  renormalised over the patch keys, then averaged over the patch queries): :func:`average_map`.
- ``aligned_attention``: each patch query's renormalised patch map shifted so that the query sits at the
  centre of a (2·rows-1) x (2·cols-1) grid, summed over queries and divided (``norm``):
  ``"queries"`` (walmer2023) by the number of queries N; ``"overlap"`` by the number of queries whose shifted
  map covers each offset, ``(rows - |dr|) (cols - |dc|)``. Dividing by N makes far offsets small only because
  few queries reach them, so uniform (or random) attention peaks at zero offset and looks local; with
  ``"overlap"`` uniform attention gives a flat map, 1/N everywhere. (walmer2023 also divides its running sum by
  batches x queries instead of images x queries, a divisor a factor of the batch size too small, so its maps
  are that factor too large; vitscope divides by images. The offsets below do not depend on that scale.)
- ``attention_offset``: centre of mass of the aligned map on [-1, 1] coordinates (x along columns, y along
  rows) and its distance to the centre; ``offset_heads``: heads whose aligned map peaks away from zero offset.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vitscope.analysis.api import Drawn, Result
from vitscope.analysis.attention.common import (
    AttentionOptions, AttentionPatterns, ImageBatches, data_description, one_model, options_of, weights_of,
)
from vitscope.analysis.attention.maps import attention_map
from vitscope.analysis.attention.tokens import check_pattern
from vitscope.models.layout import TokenLayout
from vitscope.runtime import model_meta

QUERY_MAPS = ("cls", "mean", "centre")
AVERAGE_MAPS = ("all", "spcpure")
ALIGNED_NORMS = ("overlap", "queries")


def _patches(pattern: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    check_pattern(pattern, layout)
    return pattern[:, :, layout.patches, layout.patches].float()                     # B, H, N, N


def head_std(pattern: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B,) std over heads of patch->patch attention, mean over queries and keys."""
    a = _patches(pattern, layout)
    if a.shape[1] < 2:
        return torch.full((a.shape[0],), float("nan"), device=a.device)
    return a.std(dim=1).mean(dim=(1, 2))


def position_std(pattern: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, H) std over patch queries of the attention on each patch key, mean over keys."""
    return _patches(pattern, layout).std(dim=2).mean(dim=2)


def spatial_to_token(pattern: torch.Tensor, layout: TokenLayout, token: int | None) -> torch.Tensor:
    """(B, H) mean over patch queries of their attention to key ``token``; NaN when the token is absent."""
    check_pattern(pattern, layout)
    if token is None:
        return torch.full(pattern.shape[:2], float("nan"), device=pattern.device)
    return pattern[:, :, layout.patches, token].float().mean(-1)


def spatial_to_cls(pattern: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(B, H) attention from patch queries to CLS (NaN at blocks before CLS enters)."""
    return spatial_to_token(pattern, layout, layout.cls)


def average_map(pattern: torch.Tensor, layout: TokenLayout, mode: str = "all") -> torch.Tensor:
    """walmer2023's average attention maps on the patch keys -> (B, H, rows, cols).

    ``"all"``: mean over every query (CLS, registers and patches) of its attention on each patch key (not
    renormalised). ``"spcpure"``: patch queries only, prefix keys removed and each query's row renormalised
    over the patch keys (a row with no mass there stays 0), then the mean over queries.
    """
    check_pattern(pattern, layout)
    if mode == "all":
        m = pattern[:, :, :, layout.patches].float().mean(2)                          # B, H, N
    elif mode == "spcpure":
        a = _patches(pattern, layout)                                                 # B, H, N, N
        s = a.sum(-1, keepdim=True)
        m = (a / torch.where(s == 0, torch.ones_like(s), s)).mean(2)
    else:
        raise ValueError(f"average map mode must be one of {AVERAGE_MAPS}, got {mode!r}")
    return m.reshape(*m.shape[:2], *layout.grid)


def overlap_count(grid: tuple[int, int]) -> torch.Tensor:
    """(2r-1, 2c-1): how many patch queries' shifted maps cover each offset, ``(r - |dr|) (c - |dc|)``."""
    rows, cols = grid
    dr = rows - torch.arange(2 * rows - 1).sub(rows - 1).abs()
    dc = cols - torch.arange(2 * cols - 1).sub(cols - 1).abs()
    return (dr[:, None] * dc[None, :]).double()


def aligned_attention(pattern: torch.Tensor, layout: TokenLayout, norm: str = "queries") -> torch.Tensor:
    """(B, H, 2r-1, 2c-1) query-centred average of the renormalised patch->patch maps.

    ``norm="queries"`` (walmer2023) divides the sum by the number of queries; ``"overlap"`` divides each offset
    by the number of queries that reach it (:func:`overlap_count`), so that uniform attention is flat.
    """
    if norm not in ALIGNED_NORMS:
        raise ValueError(f"norm must be one of {ALIGNED_NORMS}, got {norm!r}")
    a = _patches(pattern, layout)
    s = a.sum(-1, keepdim=True)
    a = a / torch.where(s == 0, torch.ones_like(s), s)
    B, H, N, _ = a.shape
    rows, cols = layout.grid
    a = a.reshape(B, H, N, rows, cols)
    out = a.new_zeros(B, H, 2 * rows - 1, 2 * cols - 1)
    for q in range(N):
        i, j = divmod(q, cols)
        out[:, :, rows - 1 - i:2 * rows - 1 - i, cols - 1 - j:2 * cols - 1 - j] += a[:, :, q]
    if norm == "overlap":
        return out / overlap_count(layout.grid).to(out)
    return out / N


def attention_offset(aligned: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre of mass of aligned maps (..., R, C) on [-1, 1] axes -> (distance, cx, cy), each (...)."""
    m = np.asarray(aligned.detach().cpu() if isinstance(aligned, torch.Tensor) else aligned, dtype=np.float64)
    R, C = m.shape[-2:]
    ys = 2 * np.arange(R) / max(R - 1, 1) - 1
    xs = 2 * np.arange(C) / max(C - 1, 1) - 1
    tot = m.sum(axis=(-2, -1), keepdims=True)
    m = m / np.where(tot > 0, tot, 1.0)
    cx = (m * xs[None, :]).sum(axis=(-2, -1))
    cy = (m * ys[:, None]).sum(axis=(-2, -1))
    return np.hypot(cx, cy), cx, cy


def offset_heads(aligned: np.ndarray | torch.Tensor) -> np.ndarray:
    """Bool (...): the aligned map's maximum is not at zero offset (the head attends mostly elsewhere)."""
    m = np.asarray(aligned.detach().cpu() if isinstance(aligned, torch.Tensor) else aligned, dtype=np.float64)
    R, C = m.shape[-2:]
    flat = m.reshape(*m.shape[:-2], R * C)
    centre = (R // 2) * C + C // 2
    return flat.argmax(-1) != centre


class AttentionStats:
    """Streaming accumulator of every walmer2023 statistic over a dataset (per block, means over images).

    ``update(block, pattern, layout)`` per batch; ``compute()`` returns a dict of arrays:
    ``head_std`` (L,), ``position_std`` (L, H), ``spatial_to_cls`` (L, H), ``map_cls`` / ``map_mean`` /
    ``map_centre`` / ``map_all`` / ``map_spcpure`` (L, H, rows, cols), ``aligned`` (L, H, 2r-1, 2c-1; seed
    002's division by the number of queries), ``aligned_overlap`` (the same maps divided by the overlap count,
    flat for uniform attention), ``offset`` / ``offset_x`` / ``offset_y`` (L, H, from ``aligned``),
    ``offset_head`` (L, H) bool, and ``n_images``. Blocks before CLS enters give NaN for the CLS statistics.
    """

    def __init__(self, depth: int, num_heads: int, grid: tuple[int, int], queries: Sequence[str] = QUERY_MAPS):
        self.depth, self.H, self.grid, self.queries = depth, num_heads, tuple(grid), tuple(queries)
        r, c = self.grid
        L, H = depth, num_heads
        self.sums = {
            "head_std": np.zeros(L), "position_std": np.zeros((L, H)), "spatial_to_cls": np.zeros((L, H)),
            "aligned": np.zeros((L, H, 2 * r - 1, 2 * c - 1)),
            **{f"map_{q}": np.zeros((L, H, r, c)) for q in self.queries + AVERAGE_MAPS},
        }
        self.counts = {k: np.zeros(L, dtype=np.int64) for k in self.sums}

    def _add(self, key: str, block: int, v: torch.Tensor) -> None:
        if torch.isnan(v).all():
            return
        self.sums[key][block] += v.double().sum(0).cpu().numpy()
        self.counts[key][block] += v.shape[0]

    def update(self, block: int, pattern: torch.Tensor, layout: TokenLayout) -> None:
        if tuple(layout.grid) != self.grid:
            raise ValueError(f"AttentionStats was built for a {self.grid} grid, got {layout.grid}; "
                             "average maps need one input size")
        self._add("head_std", block, head_std(pattern, layout))
        self._add("position_std", block, position_std(pattern, layout))
        self._add("spatial_to_cls", block, spatial_to_cls(pattern, layout))
        self._add("aligned", block, aligned_attention(pattern, layout))
        for mode in AVERAGE_MAPS:
            self._add(f"map_{mode}", block, average_map(pattern, layout, mode))
        for q in self.queries:
            if q == "cls" and layout.cls is None:
                continue
            self._add(f"map_{q}", block, attention_map(pattern, layout, q).float())

    def compute(self) -> dict[str, np.ndarray]:
        out = {}
        for k, s in self.sums.items():
            c = self.counts[k].reshape(-1, *([1] * (s.ndim - 1)))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[k] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        n_queries = self.grid[0] * self.grid[1]                                        # undo / N, divide by overlap
        out["aligned_overlap"] = out["aligned"] * (n_queries / overlap_count(self.grid).numpy())
        d, cx, cy = attention_offset(np.nan_to_num(out["aligned"]))
        out.update(offset=d, offset_x=cx, offset_y=cy, offset_head=offset_heads(np.nan_to_num(out["aligned"])))
        out["n_images"] = np.array(int(self.counts["position_std"].max()))
        return out


def attention_statistics(model, batches: Iterable, grid: tuple[int, int] | None = None,
                         queries: Sequence[str] = QUERY_MAPS, device=None, progress: bool = True,
                         total: int | None = None) -> dict[str, np.ndarray]:
    """Stream ``model`` over ``batches`` and return :class:`AttentionStats` ``.compute()``."""
    from vitscope.analysis.attention.distance import stream_patterns

    acc = AttentionStats(model.cfg.depth, model.cfg.num_heads, grid or model.cfg.grid, queries)
    stream_patterns(model, batches, [acc.update], device=device, progress=progress, total=total,
                    desc="attention statistics")
    return acc.compute()


# ----------------------------------------------------------------------------- the evaluation entry point
#: the per-head statistics of the table, and the one per block
HEAD_METRICS = ("position_std", "spatial_to_cls", "offset", "offset_x", "offset_y", "offset_head")
MAP_KEYS = ("map_cls", "map_mean", "map_centre", "map_all", "map_spcpure", "aligned", "aligned_overlap")


@dataclass
class AttentionStatsOptions(AttentionOptions):
    """Options of :func:`evaluate` (``vitscope attention-stats``, the study analysis ``attention_stats``, the
    report's section)."""

    limit: int | None = 1000            # at most this many images
    batch_size: int = 32
    progress: bool = False

    def validate(self) -> None:
        self.check_limit()
        self.check_int("batch_size")


def evaluate(models, data=None, options: AttentionStatsOptions | None = None, **overrides) -> Result:
    """walmer2023's attention statistics of one model over the images (streamed): spread over heads and over
    query positions, spatial -> CLS attention, average maps, query-centred maps and their offsets.

    Args:
        models: one model (or ``{label: model}`` with one entry).
        data: images (a dataset spec, an ``ImageDataset``, image files, model inputs (N, 3, H, W)) or
            :class:`~vitscope.analysis.attention.common.AttentionPatterns`.
        options: :class:`AttentionStatsOptions` (keyword overrides are applied on top).

    Returns a :class:`~vitscope.analysis.api.Result`: one row per block and head for each of :data:`HEAD_METRICS`
    (``offset_head`` is 1 for a head whose query-centred map peaks away from zero offset) and one row per block
    for ``head_std`` (``head`` empty); undefined values (CLS statistics before CLS enters) have no row.
    ``arrays``: :meth:`AttentionStats.compute`'s dict. ``figures()``: every statistic and map of the command.
    """
    import pandas as pd

    from vitscope.analysis.api import tidy_table

    opts = options_of(AttentionStatsOptions, options, overrides)
    label, model = one_model(models)
    cfg = model.cfg
    if isinstance(data, AttentionPatterns):
        acc = AttentionStats(cfg.depth, cfg.num_heads, data.grid or cfg.grid)
        lays = data.layouts(model)
        n = len(data) if opts.limit is None else min(opts.limit, len(data))
        for b, p in data.patterns.items():
            acc.update(b, p[:n], lays[b])
        res = acc.compute()
    else:
        images = ImageBatches(model, data, opts.limit)
        res = attention_statistics(model, (x for x, _ in images.batches(opts.batch_size)), progress=opts.progress,
                                   total=len(images))
        images.require(int(res["n_images"]))
    n = int(res["n_images"])
    rows = [{"block": b, "head": None, "metric": "head_std", "value": float(res["head_std"][b])}
            for b in range(cfg.depth)]
    rows += [{"block": b, "head": h, "metric": k, "value": float(res[k][b, h])}
             for k in HEAD_METRICS for b in range(cfg.depth) for h in range(cfg.num_heads)]
    rows = [r for r in rows if r["value"] == r["value"]]                        # no row for undefined values
    df = pd.DataFrame(rows)
    df["head"] = pd.Series([r["head"] for r in rows], dtype=object)
    df.insert(0, "model", label)
    df["n_images"] = n
    table = tidy_table(df, "attention_stats", opts, dataset=data_description(data),
                       weights={label: weights_of(model)})
    summary = (f"{label}: walmer2023's attention statistics over {n} image(s); std over heads from "
               f"{res['head_std'][0]:.4f} (block 0) to {res['head_std'][-1]:.4f} (block {cfg.depth - 1}), "
               f"{int(res['offset_head'].sum())} offset head(s)")
    return Result("attention_stats", table, summary, opts, dict(res),
                  meta={"model": label, "data": data_description(data), "record": model_meta(model, label)},
                  draw=_draw)


def _draw(result: Result):
    """Std over heads per block; each per-head statistic (by block, and as a block x head map); the offsets;
    every average and query-centred map (blocks where it is defined)."""
    from vitscope.viz.attention import plot_block_head_grid
    from vitscope.viz.attention_stats import plot_block_head_heatmap, plot_block_metric, plot_head_metric, plot_offsets

    res, m = result.arrays, result.meta
    meta = {**m["record"], "n_images": int(res["n_images"])}
    ctx = {"data": m["data"], "n_images": int(res["n_images"])}                             # for the titles
    yield "std_over_heads", Drawn(plot_block_metric(res["head_std"], "std over heads", **ctx),
                                  arrays={"values": res["head_std"]}, meta=meta)
    for key, label in [("position_std", "std over token positions"), ("spatial_to_cls", "spatial -> CLS attention"),
                       ("offset", "attention offset (query-centred maps)")]:
        yield key, Drawn(plot_head_metric(res[key], label, **ctx), arrays={"values": res[key]}, meta=meta)
        yield f"{key}_summary", Drawn(plot_block_head_heatmap(res[key], label=label, title=label, **ctx),
                                      arrays={"values": res[key]}, meta=meta)
    yield "offsets", Drawn(plot_offsets(res["offset_x"], res["offset_y"], "centre of the query-centred maps", **ctx),
                           arrays={"x": res["offset_x"], "y": res["offset_y"], "offset_head": res["offset_head"]},
                           meta=meta)
    for key in MAP_KEYS:
        keep = [b for b in range(res[key].shape[0]) if not np.isnan(res[key][b]).all()]     # skip all-NaN blocks
        if keep:
            fig = plot_block_head_grid(res[key][keep], keep, title=key.replace("_", " "), **ctx)
            yield key, Drawn(fig, arrays={"maps": res[key], "blocks": keep}, meta=meta)
