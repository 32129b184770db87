"""Mean attention distance per block x head, two named variants, streamed over batches.

- **Variant A** (walmer2023, "Teaching Matters"; the default): patch positions on [0, 1]
  (grid coordinate / (edge - 1)); every prefix token (CLS, DIST, registers) is dropped from queries and
  keys and each query row is renormalised over the patch keys (a row with no mass on patches counts 0);
  ``d_i = Σ_j a_ij ‖p_i - p_j‖``, averaged over the patch queries.
- **Variant B** (probing-vits, "probing-vits"; Raghu et al.): distance in pixels (patch_size x grid distance);
  prefix tokens dropped from queries and keys **without** renormalising; Σ over keys, mean over queries.

Both give one value per image x block x head, then the mean (and std) over images. ``MeanAttentionDistance``
accumulates sums over batches (update / compute), so a dataset pass never holds more than one batch of
one block's pattern; :func:`attention_distance` runs that pass with hooks that reduce each pattern as soon
as it is computed.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vitscope.analysis.api import Drawn, Result
from vitscope.analysis.attention.common import (
    AttentionOptions, AttentionPatterns, ImageBatches, as_models, block_of, data_description, figure_stem,
    options_of, pattern_hook, weights_of,
)
from vitscope.analysis.attention.tokens import check_pattern
from vitscope.models.layout import TokenLayout
from vitscope.runtime import model_meta

VARIANTS = ("A", "B")


def patch_coordinates(grid: tuple[int, int]) -> torch.Tensor:
    """(N, 2) integer (row, col) of each patch token in sequence order (row-major)."""
    rows, cols = grid
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=1).double()


def distance_matrix(grid: tuple[int, int], variant: str = "A", patch_size: int | None = None) -> torch.Tensor:
    """(N, N) float64 distances between patch tokens: normalised [0, 1] coordinates (A) or pixels (B)."""
    rows, cols = grid
    p = patch_coordinates(grid)
    if variant == "A":
        p = p / torch.tensor([max(rows - 1, 1), max(cols - 1, 1)], dtype=torch.float64)
    elif variant == "B":
        if patch_size is None:
            raise ValueError("variant B measures pixels and needs patch_size")
        p = p * float(patch_size)
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return torch.cdist(p, p)


def _patch_block(pattern: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    check_pattern(pattern, layout)
    return pattern[:, :, layout.patches, layout.patches]                             # B, H, N, N


def _patch_size(patch_size: int | None, layout: TokenLayout | None) -> int | None:
    if patch_size is not None:
        return patch_size
    return getattr(layout, "patch_size", None)


def mean_attention_distance(pattern: torch.Tensor, layout: TokenLayout, variant: str = "A",
                            patch_size: int | None = None, dist: torch.Tensor | None = None) -> torch.Tensor:
    """Per image and head: (B, H) mean attention distance of one block's pattern (B, H, T, T).

    Variant B measures pixels: ``patch_size`` defaults to the layout's (``model.token_layout(b)`` carries the
    model's patch size).
    """
    a = _patch_block(pattern, layout)
    if dist is None:
        ps = _patch_size(patch_size, layout)
        if variant == "B" and ps is None:
            raise ValueError("variant B measures pixels: pass patch_size, or a layout from model.token_layout(b)")
        dist = distance_matrix(layout.grid, variant, ps)
    dist = dist.to(device=a.device, dtype=a.dtype if a.dtype == torch.float64 else torch.float32)
    a = a.to(dist.dtype)
    d = torch.einsum("bhqk,qk->bhq", a, dist)                                        # B, H, N
    if variant == "A":
        s = a.sum(-1)                                                                # B, H, N
        d = d / torch.where(s == 0, torch.ones_like(s), s)
    return d.mean(-1)                                                                # B, H


class MeanAttentionDistance:
    """Streaming mean attention distance over a dataset: ``update`` per block and batch, ``compute`` at the end.

    Keeps, per block and head, the float64 sum and sum of squares of the per-image values and the number of
    images, so the result equals the all-at-once mean over images exactly (up to float rounding).
    """

    def __init__(self, depth: int, num_heads: int, variant: str = "A", patch_size: int | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.depth, self.num_heads, self.variant, self.patch_size = depth, num_heads, variant, patch_size
        self._dist: dict[tuple, torch.Tensor] = {}
        self.reset()

    def reset(self) -> None:
        self.sum = np.zeros((self.depth, self.num_heads))
        self.sumsq = np.zeros((self.depth, self.num_heads))
        self.count = np.zeros(self.depth, dtype=np.int64)

    def _matrix(self, layout: TokenLayout, device) -> torch.Tensor:
        ps = _patch_size(self.patch_size, layout)
        if self.variant == "B" and ps is None:
            raise ValueError("variant B measures pixels: give MeanAttentionDistance a patch_size, or layouts from "
                             "model.token_layout(b)")
        key = (tuple(layout.grid), str(device), ps)
        if key not in self._dist:
            self._dist[key] = distance_matrix(layout.grid, self.variant, ps).float().to(device)
        return self._dist[key]

    def update_values(self, block: int, values: torch.Tensor | np.ndarray) -> None:
        """Add per-image values (B, H) of one block."""
        v = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
        self.sum[block] += v.sum(0)
        self.sumsq[block] += (v ** 2).sum(0)
        self.count[block] += v.shape[0]

    def update(self, block: int, pattern: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Reduce one block's pattern (B, H, T, T) and add it; returns the per-image values (B, H)."""
        d = mean_attention_distance(pattern, layout, self.variant, self.patch_size,
                                    dist=self._matrix(layout, pattern.device))
        self.update_values(block, d)
        return d

    def compute(self) -> np.ndarray:
        """(depth, heads) mean over images; NaN for blocks never updated."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.count[:, None]

    def std(self) -> np.ndarray:
        """(depth, heads) population standard deviation over images."""
        m = self.compute()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.maximum(self.sumsq / self.count[:, None] - m ** 2, 0.0))

    @property
    def n_images(self) -> int:
        return int(self.count.max()) if self.count.size else 0


def images_of(batch) -> torch.Tensor:
    """The image tensor of a batch: a tensor, or the first element of a tuple / list (``(images, labels, idx)``)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"]
    raise ValueError(f"expected a batch tensor (B, C, H, W) or a tuple starting with one, got {type(batch).__name__}")


def stream_patterns(model, batches: Iterable, reducers, blocks: Sequence[int] | None = None,
                    device=None, progress: bool = True, total: int | None = None, desc: str = "attention") -> int:
    """Run ``model`` over ``batches`` and call ``reducer(block, pattern, layout)`` for every block's pattern.

    Each pattern is reduced inside its hook and dropped, so memory stays at one block of one batch.
    Returns the number of images seen.
    """
    from tqdm.auto import tqdm

    depth = model.cfg.depth
    blocks = list(range(depth)) if blocks is None else sorted(set(blocks))
    state = {"grid": None}

    def hook(t: torch.Tensor, hp) -> None:
        b = block_of(hp.name)
        lay = model.token_layout(b, state["grid"])
        for r in reducers:
            r(b, t, lay)

    n = 0
    device = device or model.device
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    try:
        with torch.inference_mode(), model.hooks([(pattern_hook(b), hook) for b in blocks]):
            for batch in batches:
                x = images_of(batch).to(device=device, dtype=model.dtype)
                state["grid"] = (x.shape[-2] // model.cfg.patch_size, x.shape[-1] // model.cfg.patch_size)
                model(x, stop_at=blocks[-1] + 1)
                n += x.shape[0]
                bar.update(x.shape[0])
    finally:
        bar.close()
    return n


def multi_variant_reducer(accumulators: dict[str, MeanAttentionDistance]):
    """One hook reducer that feeds several variants from a single read of each pattern (stacked einsum)."""
    variants = list(accumulators)
    cache: dict[tuple, torch.Tensor] = {}

    def reduce(block: int, pattern: torch.Tensor, layout: TokenLayout) -> None:
        a = _patch_block(pattern, layout)
        if a.dtype != torch.float64:
            a = a.float()
        key = (tuple(layout.grid), str(a.device), a.dtype)
        if key not in cache:
            mats = [distance_matrix(layout.grid, v, accumulators[v].patch_size) for v in variants]
            if "A" in variants:                              # a row of ones gives the row sums in the same pass
                mats.append(torch.ones_like(mats[0]))
            cache[key] = torch.stack(mats).to(device=a.device, dtype=a.dtype)                # V(+1), N, N
        d = torch.einsum("bhqk,vqk->vbhq", a, cache[key])                                   # V(+1), B, H, N
        for k, v in enumerate(variants):
            dv = d[k]
            if v == "A":
                rowsum = d[-1]
                dv = dv / torch.where(rowsum == 0, torch.ones_like(rowsum), rowsum)
            accumulators[v].update_values(block, dv.mean(-1))

    return reduce


def attention_distance(model, batches: Iterable, variants: Sequence[str] = ("A", "B"),
                       blocks: Sequence[int] | None = None, device=None, progress: bool = True,
                       total: int | None = None) -> dict[str, MeanAttentionDistance]:
    """Mean attention distance of ``model`` over ``batches`` (tensors or ``(images, ...)`` tuples).

    Returns ``{variant: MeanAttentionDistance}``; ``.compute()`` is (depth, heads), ``.std()`` likewise.
    """
    cfg = model.cfg
    acc = {v: MeanAttentionDistance(cfg.depth, cfg.num_heads, v, cfg.patch_size) for v in dict.fromkeys(variants)}
    stream_patterns(model, batches, [multi_variant_reducer(acc)], blocks, device, progress, total,
                    desc="attention distance")
    return acc


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class AttentionDistanceOptions(AttentionOptions):
    """Options of :func:`evaluate` (``vitscope attention-distance``, the study analysis ``attention_distance``,
    the app's distance view, the report's section)."""

    variants: tuple[str, ...] = ("A",)  # A (walmer2023: normalised, renormalised rows), B (probing-vits: pixels)
    limit: int | None = 1000            # at most this many images (probing-vits: 1000)
    batch_size: int = 32
    relative_depth: bool = False        # figure of several models: blocks on [0, 1] (models of different depth)
    progress: bool = False

    def validate(self) -> None:
        self.check_names("variants", VARIANTS, upper=True, message="takes A and/or B")
        self.check_limit()
        self.check_int("batch_size")


def evaluate(models, data=None, options: AttentionDistanceOptions | None = None, **overrides) -> Result:
    """Mean attention distance of every block and head, averaged over the images (streamed), per model.

    Args:
        models: a model, a list of models or ``{label: model}``.
        data: images (a dataset spec, an ``ImageDataset``, image files, model inputs (N, 3, H, W)), read with
            each model's own preprocessing, or :class:`~vitscope.analysis.attention.common.AttentionPatterns`
            (one model).
        options: :class:`AttentionDistanceOptions` (keyword overrides are applied on top).

    Returns a :class:`~vitscope.analysis.api.Result`: per model, variant and block one row with the mean over
    heads (``head`` empty) and one row per head (``metric`` ``attention_distance_<variant>``; variant A in
    normalised [0, 1] units, B in pixels), with ``variant``, ``std`` (over images) and ``n_images`` columns.
    ``arrays``: ``mean`` and ``std`` as ``{model: {variant: (blocks, heads)}}``. ``figures()``: a scatter per
    model and variant, and every model on one figure when there are several.
    """
    import pandas as pd

    from vitscope.analysis.api import tidy_table

    opts = options_of(AttentionDistanceOptions, options, overrides)
    items = as_models(models)
    if isinstance(data, AttentionPatterns) and len(items) != 1:
        raise ValueError("attention patterns belong to one model; give that model alone")
    rows: list[dict] = []
    means: dict[str, dict] = {}
    stds: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for label, model in items.items():
        acc = _distances(model, data, opts)
        counts[label] = n = acc[opts.variants[0]].n_images
        means[label], stds[label] = {v: acc[v].compute() for v in opts.variants}, {v: acc[v].std() for v in acc}
        for v in opts.variants:
            mean, std = means[label][v], stds[label][v]
            for b in range(mean.shape[0]):
                common = {"model": label, "block": b, "metric": f"attention_distance_{v}", "variant": v,
                          "n_images": n}
                rows.append({**common, "head": None, "value": float(mean[b].mean()), "std": None})
                rows += [{**common, "head": h, "value": float(mean[b, h]), "std": float(std[b, h])}
                         for h in range(mean.shape[1])]
    df = pd.DataFrame(rows)
    df["head"] = pd.Series([r["head"] for r in rows], dtype=object)
    table = tidy_table(df, "attention_distance", opts, dataset=data_description(data),
                       weights={k: weights_of(m) for k, m in items.items()})
    last = ", ".join(f"{k} {v}: {float(np.nanmean(means[k][v][-1])):.3f}" for k in items for v in opts.variants)
    summary = (f"mean attention distance (variant {', '.join(opts.variants)}) of {len(items)} model(s) over "
               f"{max(counts.values())} image(s); last block, mean over heads: {last}")
    meta = {"stems": {k: figure_stem(k) for k in items}, "n_images": counts, "data": data_description(data),
            "records": {k: model_meta(m, k) for k, m in items.items()}}
    return Result("attention_distance", table, summary, opts, {"mean": means, "std": stds}, meta, draw=_draw)


def _distances(model, data, opts: AttentionDistanceOptions) -> dict[str, MeanAttentionDistance]:
    """``{variant: MeanAttentionDistance}`` of one model over ``data`` (streamed) or over given patterns."""
    cfg = model.cfg
    if isinstance(data, AttentionPatterns):
        acc = {v: MeanAttentionDistance(cfg.depth, cfg.num_heads, v, cfg.patch_size) for v in opts.variants}
        lays = data.layouts(model)
        n = len(data) if opts.limit is None else min(opts.limit, len(data))
        for v in opts.variants:
            for b, p in data.patterns.items():
                acc[v].update(b, p[:n], lays[b])
        return acc
    images = ImageBatches(model, data, opts.limit)
    acc = attention_distance(model, (x for x, _ in images.batches(opts.batch_size)), opts.variants,
                             progress=opts.progress, total=len(images))
    images.require(acc[opts.variants[0]].n_images)
    return acc


def _draw(result: Result):
    """A scatter per model and variant (a point per head at its block); every model on one figure."""
    from vitscope.viz.attention_distance import plot_attention_distance, plot_attention_distance_models

    o: AttentionDistanceOptions = result.options
    m, means, stds = result.meta, result.arrays["mean"], result.arrays["std"]
    for label, stem in m["stems"].items():
        for v in o.variants:
            n = m["n_images"][label]
            fig = plot_attention_distance(means[label][v], v, title=f"{label} (variant {v})", std=stds[label][v],
                                          data=m["data"], n_images=n)
            meta = {**m["records"][label], "variant": v, "n_images": n, "data": m["data"],
                    "units": "normalised [0, 1]" if v == "A" else "pixels", **m.get("figure_meta", {})}
            yield "_".join(p for p in (stem, "distance", v) if p), Drawn(
                fig, arrays={"mean": means[label][v], "std": stds[label][v]}, meta=meta)
    if len(means) > 1:
        for v in o.variants:
            fig = plot_attention_distance_models({k: means[k][v] for k in means}, v,
                                                 relative_depth=o.relative_depth,
                                                 title=f"mean attention distance, variant {v}", data=m["data"],
                                                 n_images=max(m["n_images"].values()))
            yield f"models_distance_{v}", Drawn(
                fig, arrays={f"model{k}": means[x][v] for k, x in enumerate(means)},
                meta={"variant": v, "models": list(means),
                      "random_init": [m["records"][k]["random_init"] for k in means]})
