"""Saliency IoU (walmer2023): how well a head's attention covers the annotated objects.

Per image, block and head: take the attention of the CLS query, the mean spatial query or the centre
query over the patch keys (prefix keys dropped, row renormalised), per head or summed over heads
(``merge``), binarise it by keeping the top ``mass`` (default 0.6) of attention mass (DINO's rule,
:func:`~vitscope.analysis.attention.maps.mass_threshold`), and score IoU against the ground-truth mask on
the token grid. Results are averaged over images per block x head.

Named options where walmer2023's code and vitscope's first rule differ:

- mask to grid (``rule``): ``"bicubic"`` (default, walmer2023) resizes **each object's** mask to the token
  grid (bicubic, any value > 0) and ORs them; ``"bicubic-union"`` resizes the union of the objects once
  (a little tighter where objects are small and apart); ``"any"`` / ``"majority"`` work on the union.
- merged heads (``merge_rule``): ``"sum"`` (default) sums the heads' raw maps, then renormalises;
  ``"walmer2023"`` (its old spelling in :data:`MERGE_RULE_ALIASES`) reproduces walmer2023's numbers, whose CLS and centre maps reach
  the merge already renormalised per head (its per-head pass divides the attention tensor in place), so every head
  weighs the same in the sum; its mean-query maps are unaffected.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitscope.analysis.api import Drawn, OptionError, Result
from vitscope.analysis.attention.common import (
    AttentionOptions, AttentionPatterns, data_description, one_model, options_of, weights_of,
)
from vitscope.analysis.attention.maps import attention_map, mass_threshold
from vitscope.analysis.attention.tokens import check_pattern
from vitscope.models.layout import TokenLayout
from vitscope.runtime import model_meta

SALIENCY_QUERIES = ("cls", "mean", "centre")
MASK_RULES = ("bicubic", "bicubic-union", "any", "majority")
MERGE_RULES = ("sum", "walmer2023")
MERGE_RULE_ALIASES = {"seed002": "walmer2023"}         # old spellings, still accepted


# ----------------------------------------------------------------------------- masks
def crop_mask_like_preprocess(mask: np.ndarray, preprocess_cfg=None) -> np.ndarray:
    """Apply the image's geometric preprocessing to a mask (H, W) and return the float mask on the crop.

    ``preprocess_cfg`` (a :class:`~vitscope.models.preprocess.PreprocessConfig`): resize the short side to
    ``input/crop_pct`` and centre crop, as the image was (area-averaged, values in [0, 1]). None: a square
    centre crop of the original mask (walmer2023's ``ccrop``).
    """
    m = np.asarray(mask).astype(np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask (H, W), got shape {m.shape}")
    m = (m > 0).astype(np.float32)
    h, w = m.shape
    if preprocess_cfg is None:
        if h < w:
            s = (w - h) // 2
            return m[:, s:s + h]
        s = (h - w) // 2
        return m[s:s + w, :]
    import math

    th, tw = preprocess_cfg.input_size
    scale = math.floor(max(th, tw) / preprocess_cfg.crop_pct)
    if w <= h:
        nw, nh = scale, int(scale * h / w)
    else:
        nh, nw = scale, int(scale * w / h)
    img = Image.fromarray(m)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BOX if nw < w else Image.BILINEAR)
    left, top = int(round((nw - tw) / 2.0)), int(round((nh - th) / 2.0))
    return np.asarray(img.crop((left, top, left + tw, top + th)), dtype=np.float32)


def _bicubic_grid(m: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    rows, cols = grid
    im = Image.fromarray((m > 0.5).astype(np.uint8) * 255)
    return np.asarray(im.resize((cols, rows), Image.BICUBIC)) > 0


def mask_to_token_grid(mask: np.ndarray, grid: tuple[int, int], preprocess_cfg=None,
                       rule: str = "bicubic") -> np.ndarray:
    """Ground-truth mask -> bool (rows, cols) on the token grid.

    ``mask``: (H, W) (any non-zero = object) or a stack (K, H, W) of the image's objects. Each is cropped as
    the image was (see :func:`crop_mask_like_preprocess`), then:
    ``"bicubic"`` (walmer2023, default): each object's 0/255 mask resized bicubically, a token is object when
    its value is > 0 for any object (generous: it also takes cells next to an object);
    ``"bicubic-union"``: the union of the objects resized once the same way;
    ``"any"``: any object pixel in the cell; ``"majority"``: at least half of the cell's pixels are object.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"rule must be one of {MASK_RULES}, got {rule!r}")
    objects = np.asarray(mask)
    if objects.ndim == 3:
        if rule == "bicubic" and len(objects):
            out = np.zeros(grid, bool)
            for o in objects:
                out |= _bicubic_grid(crop_mask_like_preprocess(o, preprocess_cfg), grid)
            return out
        objects = objects.any(0) if len(objects) else np.zeros(objects.shape[1:], bool)
    m = crop_mask_like_preprocess(objects, preprocess_cfg)
    rows, cols = grid
    if rule in ("bicubic", "bicubic-union"):
        return _bicubic_grid(m, grid)
    frac = np.asarray(Image.fromarray(m).resize((cols, rows), Image.BOX))
    return frac > 1e-6 if rule == "any" else frac >= 0.5


# ----------------------------------------------------------------------------- scores
def check_merge_rule(merge_rule: str) -> str:
    """The merge rule's current name (an old spelling of :data:`MERGE_RULE_ALIASES` is accepted); ValueError when
    it is none of :data:`MERGE_RULES`."""
    merge_rule = MERGE_RULE_ALIASES.get(merge_rule, merge_rule)
    if merge_rule not in MERGE_RULES:
        raise ValueError(f"merge_rule must be one of {MERGE_RULES}, got {merge_rule!r}")
    return merge_rule


def binarize_attention(pattern: torch.Tensor, layout: TokenLayout, query: str = "cls", merge: bool = False,
                       mass: float = 0.6, cfg=None, merge_rule: str = "sum") -> torch.Tensor:
    """Bool (B, H', rows, cols): the top-``mass`` attention of ``query`` over patches, H' = 1 when merged.

    ``merge_rule="walmer2023"``: the CLS and centre maps are renormalised per head before the heads are summed
    (see the module docstring); ``"sum"`` sums the raw maps.
    """
    if check_merge_rule(merge_rule) == "walmer2023" and merge and query != "mean":
        per_head = attention_map(pattern, layout, query, renormalize=True, cfg=cfg)    # B, H, r, c
        m = per_head.sum(1)
        s = m.sum(dim=(-2, -1), keepdim=True)
        m = m / torch.where(s == 0, torch.ones_like(s), s)
    else:
        m = attention_map(pattern, layout, query, fusion="sum" if merge else None, renormalize=True, cfg=cfg)
    if merge:
        m = m[:, None]
    return mass_threshold(m, mass)


def iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of bool maps ``pred`` (B, K, rows, cols) with ``gt`` (B, rows, cols) -> (B, K); NaN for an empty union."""
    gt = gt.to(pred.device).bool()[:, None]
    inter = (pred & gt).sum(dim=(-2, -1)).double()
    union = (pred | gt).sum(dim=(-2, -1)).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))


class SaliencyIoU:
    """Accumulates per-image IoU for every (query, merged) setting and block: ``update`` / ``compute``.

    The masks come with each batch: ``update_batch({block: pattern}, {block: layout}, masks)``, or
    ``update(block, pattern, layout, masks)`` for one block at a time (pass the same masks object with every
    block of a batch; a new object, or a block seen again, starts the next batch). ``set_masks(gt)`` then
    ``update(block, pattern, layout)`` does the same for streamed hooks. Per-image values are kept
    (N x L x H floats, small) so that tables can list them. ``merge_rule``: see :func:`binarize_attention`.
    """

    def __init__(self, depth: int, num_heads: int, queries: Sequence[str] = SALIENCY_QUERIES,
                 mass: float = 0.6, merge: Sequence[bool] = (False, True), merge_rule: str = "sum") -> None:
        self.merge_rule = check_merge_rule(merge_rule)
        self.depth, self.H, self.queries, self.mass, self.merge = depth, num_heads, tuple(queries), mass, tuple(merge)
        self._batch: dict[tuple[str, bool], dict[int, torch.Tensor]] = {}
        self.values: dict[tuple[str, bool], list[np.ndarray]] = {(q, m): [] for q in self.queries for m in self.merge}
        self._gt: torch.Tensor | None = None
        self._gt_src = None
        self._seen: set[int] = set()

    def set_masks(self, gt: torch.Tensor) -> None:
        """Ground truth for the next batch: bool (B, rows, cols)."""
        self.flush()
        self._gt_src = gt
        self._gt = torch.as_tensor(gt).bool()

    def update_batch(self, patterns, layouts, masks) -> None:
        """One batch: ``patterns`` {block: (B, H, T, T)}, ``layouts`` {block: layout} (or one layout for all),
        ``masks`` bool (B, rows, cols) on the token grid."""
        self.set_masks(masks)
        for b, p in patterns.items():
            self.update(b, p, layouts if isinstance(layouts, TokenLayout) else layouts[b])

    def update(self, block: int, pattern: torch.Tensor, layout: TokenLayout, masks=None) -> None:
        check_pattern(pattern, layout)
        if masks is not None and (masks is not self._gt_src or block in self._seen):
            self.set_masks(masks)
        if self._gt is None:
            raise ValueError("give the masks with the batch: update(block, pattern, layout, masks), "
                             "update_batch(patterns, layouts, masks) or set_masks(gt) first")
        if self._gt.shape[0] != pattern.shape[0] or tuple(self._gt.shape[1:]) != tuple(layout.grid):
            raise ValueError(f"masks of shape {tuple(self._gt.shape)} do not match a batch of {pattern.shape[0]} "
                             f"image(s) on a {tuple(layout.grid)} token grid")
        self._seen.add(block)
        for q in self.queries:
            absent = q == "cls" and layout.cls is None
            for m in self.merge:
                k = 1 if m else self.H
                if absent:
                    v = torch.full((pattern.shape[0], k), float("nan"), dtype=torch.float64)
                else:
                    v = iou(binarize_attention(pattern, layout, q, m, self.mass, merge_rule=self.merge_rule),
                            self._gt)
                self._batch.setdefault((q, m), {})[block] = v.cpu()

    def flush(self) -> None:
        for key, per_block in self._batch.items():
            if not per_block:
                continue
            B, K = next(iter(per_block.values())).shape
            arr = np.full((B, self.depth, K), np.nan)
            for b, v in per_block.items():
                arr[:, b] = v.numpy()
            self.values[key].append(arr)
        self._batch = {}
        self._seen = set()

    def compute(self) -> dict[tuple[str, bool], np.ndarray]:
        """{(query, merged): per-image IoU (N, L, H or 1)}; average with ``np.nanmean(v, axis=0)``."""
        self.flush()
        return {k: (np.concatenate(v, 0) if v else np.zeros((0, self.depth, 1 if k[1] else self.H)))
                for k, v in self.values.items()}


def saliency_iou(model, batches: Iterable, queries: Sequence[str] = SALIENCY_QUERIES, mass: float = 0.6,
                 merge: Sequence[bool] = (False, True), device=None, progress: bool = True,
                 total: int | None = None, merge_rule: str = "sum") -> dict[tuple[str, bool], np.ndarray]:
    """Per-image saliency IoU over ``batches`` of ``(images (B, C, H, W), masks (B, rows, cols) bool)``.

    Masks must already be on the token grid (:func:`mask_to_token_grid`). Returns
    ``{(query, merged): (N, L, H or 1)}``.
    """
    from vitscope.analysis.attention.distance import stream_patterns

    acc = SaliencyIoU(model.cfg.depth, model.cfg.num_heads, queries, mass, merge, merge_rule)

    def with_masks():
        for x, gt in batches:
            acc.set_masks(torch.as_tensor(gt))
            yield x

    stream_patterns(model, with_masks(), [acc.update], device=device, progress=progress, total=total,
                    desc="saliency IoU")
    return acc.compute()


def summarize_iou(values: dict[tuple[str, bool], np.ndarray]) -> list[dict]:
    """Tidy rows (query, merged, block, head, iou_mean, iou_std, n) from :func:`saliency_iou`'s output."""
    rows = []
    for (q, m), v in values.items():
        if v.shape[0] == 0:
            continue
        with np.errstate(invalid="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(v, 0), np.nanstd(v, 0)
        n = np.sum(~np.isnan(v), 0)
        for b in range(v.shape[1]):
            for h in range(v.shape[2]):
                rows.append({"query": q, "merged": m, "block": b, "head": "sum" if m else h,
                             "iou_mean": float(mean[b, h]), "iou_std": float(std[b, h]), "n": int(n[b, h])})
    return rows


# ----------------------------------------------------------------------------- inputs with masks
def image_mask_pairs(structure, limit: int | None = None):
    """(image, masks, id) for each item of a task structure with object masks.

    ``masks`` is bool (K, H, W), one mask per annotated object (what walmer2023 resizes one by one), or (H, W).
    Accepts what ``vitscope.data`` reads: COCO instances (the non-crowd instances), PartImageNet (its part
    masks, the annotations walmer2023 reads), ImageNet-S (one mask per class present), the synthetic
    classification set (an ImageDataset or source whose ``sample(i)`` has ``image`` and ``mask``), or any
    iterable of ``(image, mask)`` pairs. Images are PIL images, arrays or paths.
    """
    src = getattr(structure, "source", structure)
    if hasattr(src, "sample") and hasattr(src, "ids"):                       # synthetic shapes
        n = len(src.ids) if limit is None else min(limit, len(src.ids))
        for i in range(n):
            s = src.sample(i)
            yield s.image, np.asarray(s.mask, bool), src.ids[i]
        return
    if hasattr(structure, "__getitem__") and hasattr(structure, "__len__") and hasattr(structure, "image_paths"):
        n = len(structure) if limit is None else min(limit, len(structure))
        for i in range(n):
            s = structure[i]
            if hasattr(s, "iscrowd") and hasattr(s, "masks"):                             # COCO instances
                keep = ~np.asarray(s.iscrowd, bool)
                m = s.masks[keep] if keep.any() else s.foreground()
            elif hasattr(s, "part_masks"):                                                # PartImageNet
                m = s.part_masks if len(s.part_masks) else s.object_mask()
            elif hasattr(s, "mask") and hasattr(s, "object_mask"):                        # ImageNet-S
                ids = s.mask()
                obj = s.object_mask()
                m = np.stack([(ids == c) & obj for c in np.unique(ids[obj])]) if obj.any() else obj
            elif hasattr(s, "foreground"):
                m = s.foreground()
            elif hasattr(s, "object_mask"):
                m = s.object_mask()
            else:
                raise ValueError(f"{type(s).__name__} has no object mask (foreground() or object_mask())")
            yield s.path, np.asarray(m, bool), s.path
        return
    for k, item in enumerate(structure):
        if limit is not None and k >= limit:
            return
        img, m = item[0], item[1]
        yield img, np.asarray(m, bool), str(k)


def saliency_batches(model, pairs, batch_size: int = 16, rule: str = "bicubic", skipped: list | None = None):
    """Preprocess (image, mask, id) triples into batches (images (B, 3, H, W), masks (B, rows, cols) bool).

    The mask follows the image's own resize and centre crop (the model's PreprocessConfig). Images without
    any object pixel are left out (IoU is undefined there), and their ids appended to ``skipped``.
    """
    from vitscope.models.preprocess import PreprocessConfig, Preprocessor

    pcfg = model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)
    tf = Preprocessor(pcfg)
    p = model.cfg.patch_size
    grid = (pcfg.input_size[0] // p, pcfg.input_size[1] // p)
    xs, ms = [], []
    for img, mask, ident in pairs:
        if not mask.any():
            if skipped is not None:
                skipped.append(ident)
            continue
        gm = mask_to_token_grid(mask, grid, preprocess_cfg=pcfg, rule=rule)
        if not gm.any():
            if skipped is not None:
                skipped.append(ident)
            continue
        xs.append(tf(img))
        ms.append(torch.from_numpy(gm))
        if len(xs) == batch_size:
            yield torch.stack(xs), torch.stack(ms)
            xs, ms = [], []
    if xs:
        yield torch.stack(xs), torch.stack(ms)


def mask_data(data=None, coco=None, partimagenet=None, imagenet_s=None, image_root=None):
    """Images with object masks for :func:`evaluate`: exactly one of a dataset spec with masks (``synthetic:...``),
    a COCO instances json or a PartImageNet annotation json (each with ``image_root``), or an ImageNet-S folder."""
    given = [s for s in (coco, partimagenet, imagenet_s, data) if s]
    if len(given) != 1:
        raise ValueError("give exactly one of --coco, --partimagenet, --imagenet-s or --data synthetic:...")
    if coco or partimagenet:
        from vitscope.data.tasks import load_segmentation

        return load_segmentation(coco, partimagenet, image_root)
    if imagenet_s:
        from vitscope.data.tasks import load_imagenet_s

        return load_imagenet_s(imagenet_s)
    if not isinstance(data, (str, Path)):
        return data
    from vitscope.data import open_dataset

    structure = open_dataset(str(data))
    if not hasattr(structure.source, "sample"):
        raise ValueError(f"--data {data!r} has no object masks; use synthetic[:...] or a task format")
    return structure


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class SaliencyOptions(AttentionOptions):
    """Options of :func:`evaluate` (``vitscope saliency``, the study analysis ``saliency``, the report's
    section)."""

    queries: tuple[str, ...] = ("cls",)     # cls, mean (all spatial queries), centre
    mass: float = 0.6                       # share of the attention mass kept in the binary map (DINO's rule)
    mask_rule: str = "bicubic"              # mask to token grid (MASK_RULES; bicubic: walmer2023)
    merge_rule: str = "sum"                 # heads summed (MERGE_RULES; walmer2023: that code's numbers)
    limit: int | None = 5000                # at most this many images (walmer2023: 5000)
    batch_size: int = 32
    progress: bool = False

    def validate(self) -> None:
        self.check_names("queries", SALIENCY_QUERIES)
        self.check_number("mass", 0, 1, low_open=True)
        self.check_choice("mask_rule", MASK_RULES)
        self.check_choice("merge_rule", MERGE_RULES, aliases=MERGE_RULE_ALIASES)
        self.check_limit()
        self.check_int("batch_size")


def evaluate(models, data=None, options: SaliencyOptions | None = None, **overrides) -> Result:
    """walmer2023's saliency IoU: the top ``mass`` of each head's (and the summed heads') attention, binarised,
    against the object masks on the token grid, averaged over the images per block and head.

    Args:
        models: one model (or ``{label: model}`` with one entry).
        data: images with object masks: a spec with masks (``synthetic:...``), what :func:`mask_data` opens
            (COCO, PartImageNet, ImageNet-S), an iterable of ``(image, mask)`` pairs, or
            :class:`~vitscope.analysis.attention.common.AttentionPatterns` with ``masks`` on the token grid.
        options: :class:`SaliencyOptions` (keyword overrides are applied on top).

    Returns a :class:`~vitscope.analysis.api.Result`: per query and block one row for the heads summed (``head``
    empty) and one per head (``metric`` ``saliency_iou_<query>``, the mean IoU over images), with ``query``,
    ``iou_std`` and ``n`` columns; blocks where the query token is absent have no row. ``arrays["values"]``:
    ``{(query, merged): per-image IoU (N, blocks, heads or 1)}``; ``meta["skipped_no_object"]``: images left out
    (no object). ``figures()``: a block x (heads + sum) map per query.
    """
    import pandas as pd

    from vitscope.analysis.api import tidy_table

    opts = options_of(SaliencyOptions, options, overrides)
    label, model = one_model(models)
    cfg = model.cfg
    if "cls" in opts.queries and not cfg.class_token:
        raise OptionError("queries", "this model has no CLS token; use `queries` mean,centre")
    skipped: list[str] = []
    if isinstance(data, AttentionPatterns):
        if data.masks is None:
            raise ValueError("saliency IoU needs the object masks on the token grid with the patterns (masks=)")
        acc = SaliencyIoU(cfg.depth, cfg.num_heads, opts.queries, opts.mass, merge_rule=opts.merge_rule)
        acc.update_batch(dict(data.patterns), data.layouts(model), data.masks)
        values, n_total = acc.compute(), len(data)
    else:
        structure = mask_data(data)
        n_total = len(structure) if opts.limit is None else min(opts.limit, len(structure))
        batches = saliency_batches(model, image_mask_pairs(structure, opts.limit), opts.batch_size, opts.mask_rule,
                                   skipped)
        values = saliency_iou(model, batches, opts.queries, opts.mass, progress=opts.progress, total=n_total,
                              merge_rule=opts.merge_rule)
    n_used = int(next(iter(values.values())).shape[0])
    if n_used == 0:
        raise ValueError(f"no usable image: none of the {n_total} image(s) could be read or had an object mask "
                         f"({len(skipped)} without objects); check the data with `vitscope check-data`")
    summ = summarize_iou(values)
    absent = {(r["query"], r["block"]) for r in summ if r["merged"] and np.isnan(r["iou_mean"])}
    rows = [{"model": label, "block": r["block"], "head": None if r["merged"] else r["head"],
             "metric": f"saliency_iou_{r['query']}", "value": r["iou_mean"], "query": r["query"],
             "iou_std": r["iou_std"], "n": r["n"]} for r in summ if (r["query"], r["block"]) not in absent]
    rows.sort(key=lambda r: (opts.queries.index(r["query"]), r["block"], -1 if r["head"] is None else r["head"]))
    df = pd.DataFrame(rows)
    df["head"] = pd.Series([r["head"] for r in rows], dtype=object)
    desc = data_description(data) if isinstance(data, (str, Path, AttentionPatterns)) else \
        getattr(data, "description", None) or type(data).__name__
    table = tidy_table(df, "saliency", opts, dataset=desc, weights={label: weights_of(model)})
    last = {q: mean_iou(values[(q, True)])[-1, 0] for q in opts.queries}
    summary = (f"{label}: saliency IoU over {n_used} image(s) ({len(skipped)} without objects left out), last "
               f"block, heads summed: " + ", ".join(f"{q} {v:.3f}" for q, v in last.items()))
    return Result("saliency", table, summary, opts, {"values": values},
                  meta={"model": label, "n_images": n_used, "skipped_no_object": skipped, "data": desc,
                        "record": model_meta(model, label)}, draw=_draw)


def mean_iou(v: np.ndarray) -> np.ndarray:
    """Mean over images of per-image IoU (N, blocks, K) -> (blocks, K); NaN where no image has a value."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(v, 0)


def saliency_headline(values: dict, depth: int, query: str = "cls") -> dict[str, float]:
    """Headline numbers of :func:`evaluate`'s per-image values: the query at the last block (heads summed, and
    the best head), and the best block x head."""
    per_head, merged = mean_iou(values[(query, False)]), mean_iou(values[(query, True)])[:, 0]   # L, H and L
    b, h = np.unravel_index(np.nanargmax(per_head), per_head.shape)
    return {"last_block_merged": float(merged[depth - 1]), "last_block_best_head": float(np.nanmax(per_head[-1])),
            "best": float(per_head[b, h]), "best_block": int(b), "best_head": int(h)}


def _draw(result: Result):
    """A block x (heads + sum) map of the mean IoU per query."""
    from vitscope.viz.attention_stats import plot_block_head_heatmap

    o: SaliencyOptions = result.options
    m, values = result.meta, result.arrays["values"]
    meta = {**m["record"], "mass": o.mass, "mask_rule": o.mask_rule, "merge_rule": o.merge_rule,
            "n_images": m["n_images"], "skipped_no_object": len(m["skipped_no_object"]), **m.get("figure_meta", {})}
    for q in o.queries:
        per_head, summed = values[(q, False)], values[(q, True)]
        table = np.concatenate([mean_iou(per_head), mean_iou(summed)], axis=1)                  # L, H + 1
        labels = [str(h) for h in range(per_head.shape[2])] + ["sum"]
        fig = plot_block_head_heatmap(table, title=f"{m['model']}: saliency IoU, {q} query (mass {o.mass:g})",
                                      cmap="viridis", data=m["data"], n_images=m["n_images"], label="IoU",
                                      head_labels=labels)
        yield f"iou_{q}", Drawn(fig, arrays={"per_image_heads": per_head, "per_image_summed": summed, "mean": table},
                                meta={**meta, "query": q, "columns": labels})
