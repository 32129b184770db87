"""Attention sections: per-head maps, rollout, mean attention distance, saliency IoU, attention statistics,
position-embedding similarity. Each calls the ``evaluate`` of its analysis (``vitscope.analysis.attention``) on the
report's attention patterns and draws (``vitscope.viz``)."""
from __future__ import annotations

from html import escape

import numpy as np
import torch

from vitscope.report.registry import Section, analysis


def _titles(ctx, k: int) -> list[str]:
    if ctx.classes and (ctx.labels >= 0).all():
        return [f"#{int(i)} {ctx.classes[int(y)]}" for i, y in zip(ctx.indices[:k], ctx.labels[:k])]
    return [f"#{int(i)}" for i in ctx.indices[:k]]


def _models(ctx, random: bool = False) -> dict:
    return {f"{ctx.name} (random)": ctx.random_model} if random else {ctx.name: ctx.model}


def _maps(ctx, **options):
    """The attention-maps evaluation (``vitscope.analysis.attention.maps``) on the report's patterns, once."""
    from vitscope.analysis.attention.maps import AttentionMapOptions, evaluate

    key = "attention_maps_" + "_".join(f"{k}={v}" for k, v in sorted(options.items()))
    return ctx.memo(key, lambda: evaluate(_models(ctx), ctx.attention_patterns(),
                                          AttentionMapOptions(limit=None, **options)))


@analysis("overview", "At a glance", needs=("images", "cls"), order=5)
def overview(ctx) -> Section:
    """A few images with the last block's CLS attention (mean over heads) and the attention rollout."""
    from vitscope.viz.attention import _panel, subplots

    depth = ctx.model.cfg.depth
    k = min(ctx.n_show, len(ctx.images))
    last = torch.from_numpy(_maps(ctx, all_blocks=True).arrays["fused"][:k])                     # k, r, c
    roll = rollout_maps(ctx)
    fig, axes = subplots(3, k, figsize=(1.75 * k, 5.6))
    for i, title in enumerate(_titles(ctx, k)):
        _panel(axes[0, i], None, ctx.display[i], alpha=0.0, title=title)
        _panel(axes[1, i], last[i], ctx.display[i], "inferno", 0.6, f"CLS attn, block {depth - 1}" if i == 0 else None)
        _panel(axes[2, i], roll[i], ctx.display[i], "inferno", 0.6, "rollout" if i == 0 else None)
    sec = Section()
    sec.figure(ctx, fig, "strip", "Top: images; middle: CLS attention of the last block (mean over heads); "
               "bottom: attention rollout.", arrays={"cls_attention": last.numpy(), "rollout": roll.numpy()})
    return sec


def rollout_maps(ctx) -> torch.Tensor:
    """CLS rollout maps (n_show, rows, cols) of the first images, computed once per context."""
    from vitscope.analysis.attention.relevance import RolloutOptions, evaluate

    def compute():
        k = min(ctx.n_show, len(ctx.images))
        result = evaluate(_models(ctx), ctx.attention_patterns(), RolloutOptions(limit=k))
        return torch.from_numpy(result.arrays["maps"])

    return ctx.memo("rollout_cls", compute)


@analysis("attention_maps", "Attention maps per head", needs=("images", "cls"), order=20)
def attention_maps(ctx) -> Section:
    """CLS-query attention over the patches: every head of the last block over one image, the block x head
    grid, and the head-mean map of the last block over several images."""
    from vitscope.viz.attention import plot_block_head_grid, plot_head_maps, plot_image_overlays

    last = ctx.model.cfg.depth - 1
    result = _maps(ctx, all_blocks=True)
    blocks = result.arrays["grid_blocks"].tolist()
    maps, grid = result.arrays["maps"], result.arrays["grid"][0]                 # n, H, r, c and L, H, r, c
    sec = Section()
    sec.add_text(f"Attention of the CLS query to the patch tokens (prefix keys dropped, rows not renormalised), "
                 f"blocks {blocks[0]}..{last}. Brighter = more attention. Inferno colour map, overlays at alpha 0.6.")
    fig = plot_head_maps(maps[0], ctx.display[0], overlay_image=True,
                         title=f"block {last}, CLS -> patches, every head ({_titles(ctx, 1)[0]})")
    sec.figure(ctx, fig, "heads_last_block", f"Block {last}: each head's CLS attention over image "
               f"{_titles(ctx, 1)[0]}.", arrays={"maps": maps[0]})
    fig = plot_block_head_grid(grid, blocks, title="CLS attention, block x head (first image)")
    sec.figure(ctx, fig, "block_head_grid", "Every block (rows) and head (columns), raw maps on the patch grid.",
               arrays={"maps": grid})
    k = min(ctx.n_show, len(ctx.images))
    mean_maps = result.arrays["fused"][:k]                                                       # k, r, c
    fig = plot_image_overlays(list(ctx.display[:k]), mean_maps, _titles(ctx, k),
                              title=f"block {last}, CLS attention (mean over heads)")
    sec.figure(ctx, fig, "overlays", f"Head-mean CLS attention of block {last} over {k} images.",
               arrays={"maps": mean_maps})
    return sec


@analysis("rollout", "Attention rollout", needs=("images", "cls"), order=25)
def rollout(ctx) -> Section:
    """Attention rollout (Abnar & Zuidema; probing-vits): heads fused by mean, identity added, rows renormalised,
    multiplied through the blocks; the CLS row over the patches, divided by its max."""
    from vitscope.viz.attention import plot_image_overlays

    model = ctx.model
    maps = rollout_maps(ctx)
    k = len(maps)
    sec = Section()
    if model.cfg.cls_block:
        sec.add_text(f"CLS enters before block {model.cfg.cls_block}: the rollout follows it from there and the "
                     f"patch tokens from block 0.")
    fig = plot_image_overlays(list(ctx.display[:k]), maps, _titles(ctx, k), title="attention rollout (CLS)")
    sec.figure(ctx, fig, "overlays", f"Rollout maps over {k} images (mean head fusion, no discard).",
               arrays={"maps": maps.numpy()})
    return sec


@analysis("relevance", "Gradient relevance (Chefer et al.)", needs=("images", "cls"), order=27)
def relevance(ctx) -> Section:
    """Class-specific relevance, "Generic Attention-model Explainability" (Chefer et al., ICCV 2021; vilas2023):
    R <- R + mean_heads(clamp(grad * A, min=0)) R through the blocks, for the predicted class; the CLS row over
    the patches, divided by its max."""
    from vitscope.analysis.attention.relevance import RolloutOptions, evaluate
    from vitscope.viz.attention import plot_image_overlays

    if ctx.model.cfg.head == "none":
        return Section.skip("skipped: the model has no classification head to explain")
    k = min(ctx.n_show, len(ctx.images))
    result = evaluate(_models(ctx), ctx.images[:k],
                      RolloutOptions(method="chefer2021-generic", limit=k, batch_size=max(k, 1)))
    maps, targets = result.arrays["maps"], result.arrays["targets"]
    classes = ctx.model_classes()
    names = [classes[int(t)] if classes and int(t) < len(classes) else f"class {int(t)}" for t in targets]
    titles = [f"{t} -> {n}" for t, n in zip(_titles(ctx, k), names)]
    sec = Section()
    fig = plot_image_overlays(list(ctx.display[:k]), maps, titles,
                              title="relevance for the predicted class (chefer2021-generic)")
    sec.figure(ctx, fig, "overlays", f"Relevance maps of the predicted class over {k} images (title: image -> "
               f"prediction).", arrays={"maps": maps, "targets": targets})
    return sec


@analysis("attention_distance", "Mean attention distance", needs=("images",), order=30)
def attention_distance(ctx) -> Section:
    """Mean attention distance per block and head: variant A (walmer2023: normalised coordinates, prefix tokens
    dropped, rows renormalised) and variant B (probing-vits: pixels, no renormalisation)."""
    from vitscope.analysis.attention.distance import AttentionDistanceOptions, evaluate
    from vitscope.viz.attention_distance import plot_attention_distance

    result = evaluate(_models(ctx), ctx.attention_patterns(), AttentionDistanceOptions(variants=("A", "B"),
                                                                                       limit=None))
    n = result.meta["n_images"][ctx.name]
    sec = Section()
    rows = []
    for variant, unit in (("A", "normalised [0, 1] coordinates"), ("B", "pixels")):
        dist, std = result.arrays["mean"][ctx.name][variant], result.arrays["std"][ctx.name][variant]
        fig = plot_attention_distance(dist, variant, title=f"variant {variant} ({unit})", data=ctx.data_label,
                                      n_images=n)
        sec.figure(ctx, fig, f"variant_{variant}", f"Variant {variant}: one point per head at its block.",
                   arrays={"distance": dist, "std": std})
        rows += [{"variant": variant, "block": b, "mean over heads": round(float(np.nanmean(dist[b])), 4),
                  "min head": round(float(np.nanmin(dist[b])), 4), "max head": round(float(np.nanmax(dist[b])), 4)}
                 for b in range(dist.shape[0])]
    sec.add_text("Low values: local heads (attending near the query patch); high values: global heads.")
    sec.table(ctx, rows, "per_block", "Mean attention distance per block (over heads and images)")
    return sec


SALIENCY_RULES = {"bicubic": "walmer2023's bicubic mask (generous: it also marks cells next to the object)",
                  "majority": "tight mask (cells at least half covered by the object)"}


@analysis("saliency_iou", "Saliency IoU against object masks", needs=("images", "masks", "cls"), order=35)
def saliency_iou(ctx) -> Section:
    """walmer2023's saliency IoU: the top 60% of each head's CLS attention mass, binarised, IoU with the object
    mask on the token grid; compared with the same architecture with random weights."""
    from vitscope.analysis.attention.saliency import (SaliencyOptions, evaluate, mean_iou, saliency_headline,
                                                      summarize_iou)
    from vitscope.viz.attention_stats import plot_block_head_heatmap

    depth = ctx.model.cfg.depth
    opts = SaliencyOptions(queries=("cls", "mean"), limit=None)
    sec = Section()
    results, rows = {}, []
    for rule, what in SALIENCY_RULES.items():
        gt = ctx.token_masks(rule)
        res = {who: evaluate(_models(ctx, who == "random"), ctx.attention_patterns(who == "random", rule), opts)
               for who in ("trained", "random")}
        s_t, s_r = (saliency_headline(res[who].arrays["values"], depth) for who in ("trained", "random"))
        results[rule] = {"trained": s_t, "random": s_r, "object_cover": float(gt.float().mean()),
                         "n_images": int(len(ctx.images))}
        sec.add_text(
            f"<b>{rule}</b> masks ({what}; objects cover {100 * float(gt.float().mean()):.0f}% of the token grid): "
            f"CLS attention of the last block, heads merged, IoU <b>{s_t['last_block_merged']:.3f}</b> vs "
            f"<b>{s_r['last_block_merged']:.3f}</b> with random weights; best single head {s_t['best']:.3f} "
            f"(block {s_t['best_block']}, head {s_t['best_head']}) vs {s_r['best']:.3f}.")
        for who, r in (("trained", res["trained"]), ("random weights", res["random"])):
            v = mean_iou(r.arrays["values"][("cls", False)])                                      # L, H
            fig = plot_block_head_heatmap(v, title=f"saliency IoU, CLS query, {rule} masks ({who})", label="IoU",
                                          data=ctx.data_label, n_images=r.meta["n_images"])
            sec.figure(ctx, fig, f"{rule}_{who.split()[0]}", f"Mean IoU per block and head, {rule} masks, {who} "
                       f"(blocks before CLS enters are empty).", arrays={"iou": v})
        rows += [dict(x, masks=rule, model=who) for who, r in res.items()
                 for x in summarize_iou(r.arrays["values"]) if x["merged"]]
    ctx.info["saliency"] = results
    sec.add_text(f"{len(ctx.images)} images. A head whose attention sits on a few object tokens scores low IoU "
                 f"even when all of it is on the object: the 60% mass keeps few tokens.")
    sec.table(ctx, [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
              "merged", "IoU with heads merged, per mask rule, query and block",
              columns=["masks", "model", "query", "block", "iou_mean", "iou_std", "n"])
    return sec


@analysis("attention_stats", "Attention statistics", needs=("images",), order=40)
def attention_stats(ctx) -> Section:
    """walmer2023's statistics: spread of attention over heads and over positions, attention from the spatial
    tokens to CLS, and the average attention map of the mean spatial query per block and head."""
    from vitscope.analysis.attention.stats import AttentionStatsOptions, evaluate
    from vitscope.viz.attention import plot_block_head_grid
    from vitscope.viz.attention_stats import plot_block_metric, plot_head_metric

    cfg = ctx.model.cfg
    res = evaluate(_models(ctx), ctx.attention_patterns(), AttentionStatsOptions(limit=None)).arrays
    sec = Section()
    where = {"data": ctx.data_label, "n_images": int(res["n_images"])}
    fig = plot_block_metric(res["head_std"], "std over heads", title="diversity of heads per block", **where)
    sec.figure(ctx, fig, "head_std", "Standard deviation of the attention maps over heads, per block.",
               arrays={"head_std": res["head_std"]})
    fig = plot_head_metric(res["position_std"], "std over positions", title="spread over query positions", **where)
    sec.figure(ctx, fig, "position_std", "Per head (sorted within each block): how much the attention changes "
               "with the query position.", arrays={"position_std": res["position_std"]})
    if cfg.class_token:
        fig = plot_head_metric(res["spatial_to_cls"], "attention to CLS", title="spatial tokens -> CLS", **where)
        sec.figure(ctx, fig, "spatial_to_cls", "Mean attention that patch queries give the CLS key.",
                   arrays={"spatial_to_cls": res["spatial_to_cls"]})
    fig = plot_block_head_grid(res["map_mean"], title="average attention of the mean spatial query", **where)
    sec.figure(ctx, fig, "map_mean", "Average over images of the mean patch query's attention, block x head.",
               arrays={"map_mean": res["map_mean"]})
    rows = [{"block": b, "head_std": round(float(res["head_std"][b]), 5),
             "position_std (mean over heads)": round(float(np.nanmean(res["position_std"][b])), 5),
             "offset heads": int(np.sum(res["offset_head"][b]))} for b in range(cfg.depth)]
    sec.table(ctx, rows, "per_block", f"Statistics per block ({int(res['n_images'])} images)")
    return sec


@analysis("position_embedding", "Position-embedding similarity", order=45)
def position_embedding(ctx) -> Section:
    """probing-vits: cosine similarity of each patch's learned position embedding to every other patch."""
    from vitscope.analysis.attention.posembed import evaluate
    from vitscope.viz.attention_tokens import plot_position_similarity

    if ctx.model.cfg.pos_embed != "learned":
        return Section.skip(f"skipped: the model's position embedding is {escape(ctx.model.cfg.pos_embed)!s}, "
                            f"not learned")
    sim = evaluate(_models(ctx)).arrays["similarity"]
    sec = Section()
    fig = plot_position_similarity(sim)
    sec.figure(ctx, fig, "similarity", "Each small map: one patch's similarity to all patches (its own position "
               "is the brightest).", arrays={"similarity": sim})
    return sec
