"""The benchmark: every method x metric on a dataset (with object masks for the localisation metrics)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vitscope.analysis.api import Result, data_label, tidy_table
from vitscope.analysis.attribution_maps.explain import FAMILIES, METHODS, explain
from vitscope.analysis.attribution_maps.metrics import (
    curve_auc, energy_pointing_game, map_auroc, map_iou, pointing_game, road, token_removal,
)
from vitscope.analysis.attribution_maps.options import ExplainOptions

#: metric -> True when higher is better
HIGHER_IS_BETTER = {"deletion_auc": False, "insertion_auc": True, "road_morf": False, "road_lerf": True,
                    "road_combined": True, "pointing_game": True, "energy_pointing_game": True, "iou": True,
                    "auroc": True}
#: the metrics the ranking figure and the summary rank by
RANKED = ("deletion_auc", "insertion_auc", "road_combined", "pointing_game", "energy_pointing_game", "iou",
          "auroc")
N_EXAMPLES = 4


def _models(models) -> dict:
    from vitscope.runtime import model_label

    if isinstance(models, Mapping):
        return dict(models)
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    out = {}
    for m in items:
        label = model_label(m, "model")
        while label in out:
            label += "'"
        out[label] = m
    return out


def pixel_masks(dataset, indices, preprocess_cfg) -> torch.Tensor | None:
    """Union-of-objects masks (n, H, W) bool on the preprocessed image, or None when the dataset has none."""
    from vitscope.analysis.attention.saliency import crop_mask_like_preprocess
    from vitscope.analysis.cluster import dataset_masks

    source = getattr(dataset, "source", dataset)
    out = []
    for i in indices:
        try:
            masks, _ = dataset_masks(source, int(i), "object")
        except (ValueError, FileNotFoundError, KeyError):
            return None
        union = np.any(np.stack([np.asarray(m) > 0 for m in masks]), axis=0) if masks else None
        if union is None:
            return None
        out.append(crop_mask_like_preprocess(union, preprocess_cfg) > 0.5)
    return torch.from_numpy(np.stack(out))


def method_metrics(model, x, labels, exp, masks, opts: ExplainOptions) -> tuple[dict, dict]:
    """{metric: (B,) per-image values} and {curve name: (fractions, (K, B) values)} of one explanation."""
    t = exp.targets.to(x.device)
    vals, curves = {}, {}
    N = exp.grid[0].numel()
    for mode in ("deletion", "insertion"):
        if mode in opts.metrics:
            k, p, _ = token_removal(model, x, t, exp.grid, mode, opts.removal_step, labels)
            vals[f"{mode}_auc"] = curve_auc(k / N, p)
            curves[mode] = (k / N, p)
    if "road" in opts.metrics:
        fr = np.asarray(opts.road_fractions)
        morf = road(model, x, t, exp.maps, fr, "morf", opts.road_noise, opts.seed)
        lerf = road(model, x, t, exp.maps, fr, "lerf", opts.road_noise, opts.seed)
        vals["road_morf"], vals["road_lerf"] = morf.mean(0), lerf.mean(0)
        vals["road_combined"] = (lerf.mean(0) - morf.mean(0)) / 2
        curves["road_morf"], curves["road_lerf"] = (fr, morf), (fr, lerf)
    if masks is not None:
        if "pointing" in opts.metrics:
            vals["pointing_game"] = pointing_game(exp.maps, masks, opts.pointing_tolerance)
            vals["energy_pointing_game"] = energy_pointing_game(exp.maps, masks)
        if "iou" in opts.metrics:
            vals["iou"] = map_iou(exp.maps, masks, opts.iou_threshold)
        if "auroc" in opts.metrics:
            vals["auroc"] = map_auroc(exp.maps, masks)
    if "completeness" in exp.extra:
        vals["completeness_error"] = exp.extra["completeness"].numpy()
    return vals, curves


def evaluate(models, data=None, options: ExplainOptions | None = None, **overrides) -> Result:
    """Every method of ``options.methods`` (default: all) x every metric on ``data`` for every model.

    Args:
        models: ``{label: HookedViT}``, one model or a list.
        data: a dataset spec / ``ImageDataset`` (its object masks, where it has them, give the localisation
            metrics), or a tuple ``(images (B, C, H, W), labels (B,), masks (B, H, W) or None)`` in memory.
        options: :class:`ExplainOptions` (keyword overrides on top).

    Returns a :class:`~vitscope.analysis.api.Result`: one row per model x method x metric (the mean over images, with
    ``method``, ``family``, ``n_images``, ``std``, ``higher_is_better`` and ``rank`` among the methods, 1 = best);
    with ``sanity=True`` also ``sanity_spearman`` rows per randomisation ``stage``. ``arrays``: per-image values,
    the deletion / insertion / ROAD curves and example maps. ``figures()``: the ranking, the example maps, the
    curves and, with the sanity check, the randomisation curves.
    """
    from vitscope.features.access import image_batches, open_dataset_any, preprocess_config

    opts = (options or ExplainOptions()).replace(**overrides) if overrides else (options or ExplainOptions())
    methods = opts.methods or METHODS
    items = _models(models)
    if data is None:
        raise ValueError("the benchmark needs images: a dataset spec (e.g. builtin:demo) or (images, labels, masks)")
    dataset = None
    rows, per_image, curves_all, examples = [], [], {}, {}
    has_masks = True
    for label, model in items.items():
        if model.cfg.head == "none":
            raise ValueError(f"{label}: attribution maps explain a class; this model has no classification head")
        pcfg = preprocess_config(model)
        if isinstance(data, tuple):
            x_all, y_all = data[0], torch.as_tensor(data[1])
            m_all = data[2] if len(data) > 2 else None
            n = x_all.shape[0] if opts.limit is None else min(opts.limit, x_all.shape[0])
            batches = ((x_all[s:min(s + opts.batch_size, n)], y_all[s:min(s + opts.batch_size, n)],
                        None if m_all is None else torch.as_tensor(m_all[s:min(s + opts.batch_size, n)]))
                       for s in range(0, n, opts.batch_size))
        else:
            ds = open_dataset_any(data)
            dataset = getattr(ds, "description", None)
            batches = ((imgs[0], y, pixel_masks(ds, idx.tolist(), pcfg))
                       for imgs, y, idx in image_batches([model], ds, opts.batch_size, opts.limit,
                                                         progress=opts.progress, min_size=1))
        acc: dict = {}
        n_seen = 0
        sanity_x = []
        for x, y, masks in batches:
            x = x.to(model.device, model.dtype)
            y = torch.as_tensor(y).long()
            has_masks = has_masks and masks is not None
            if opts.target == "label":
                if (y < 0).any() or int(y.max()) >= model.cfg.num_classes:
                    raise ValueError(f"--target label needs class labels the model predicts (0..{model.cfg.num_classes - 1});"
                                     f" got labels up to {int(y.max())}; use --target predicted")
                target = y
            else:
                target = None
            for m in methods:
                exp = explain(model, x, target, m, options=opts)
                vals, curves = method_metrics(model, x, y, exp, masks, opts)
                for k, v in vals.items():
                    acc.setdefault((m, k), []).append(np.asarray(v, float))
                for k, (f, v) in curves.items():
                    c = curves_all.setdefault((label, m, k), [f, []])
                    c[1].append(v)
                if label not in examples or m not in examples[label]["maps"]:
                    ex = examples.setdefault(label, {"images": x[:N_EXAMPLES].cpu(), "maps": {},
                                                     "masks": None if masks is None else masks[:N_EXAMPLES],
                                                     "mean": pcfg.mean, "std": pcfg.std})
                    ex["maps"].setdefault(m, exp.maps[:N_EXAMPLES].cpu())
            if opts.sanity and sum(len(s) for s in sanity_x) < opts.sanity_images:
                sanity_x.append((x, y if target is not None else None))
            n_seen += x.shape[0]
        if n_seen == 0:
            raise ValueError("no images for the attribution benchmark")
        for (m, k), vs in acc.items():
            v = np.concatenate(vs)
            for i, vi in enumerate(v):
                per_image.append({"model": label, "method": m, "metric": k, "image": i, "value": float(vi)})
            rows.append({"model": label, "block": opts.block if FAMILIES[m] in ("cam", "attention") else None,
                         "metric": k, "value": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                         "method": m, "family": FAMILIES[m], "n_images": int(np.isfinite(v).sum()),
                         "std": float(np.nanstd(v)) if np.isfinite(v).any() else float("nan"),
                         "higher_is_better": HIGHER_IS_BETTER.get(k), "stage": None})
        if opts.sanity:
            rows += _sanity_rows(model, label, sanity_x, opts)
    _add_ranks(rows)
    table = tidy_table(rows, "attribution-maps", opts, dataset=dataset)
    import pandas as pd

    arrays = {"per_image": pd.DataFrame(per_image),
              "curves": {k: (f, np.concatenate(v, axis=1)) for k, (f, v) in curves_all.items()},
              "examples": examples}
    summary = _summary(rows, len(methods), n_seen, has_masks)
    context = {"data": None if isinstance(data, tuple) else data_label(data) or dataset, "n_images": n_seen}
    return Result("attribution-maps", table, summary, opts, arrays=arrays,
                  meta={"n_images": n_seen, "has_masks": has_masks, "context": context}, draw=_draw)


def _sanity_rows(model, label, sanity_x, opts) -> list[dict]:
    from vitscope.analysis.attribution_maps.sanity import cascading_randomization

    x = torch.cat([s[0] for s in sanity_x])[:opts.sanity_images]
    y = None if sanity_x[0][1] is None else torch.cat([s[1] for s in sanity_x])[:opts.sanity_images]
    if y is None:
        from vitscope.analysis.attribution_maps.explain import _class_targets

        y = _class_targets(model, x, None)
    out = []
    for m in opts.sanity_methods:
        per = {}
        for r in cascading_randomization(model, x, y.to(x.device), m, opts, seed=opts.seed):
            per.setdefault((r["stage"], r["depth"]), []).append(r["spearman"])
        for (stage, depth), v in per.items():
            out.append({"model": label, "block": None, "metric": "sanity_spearman", "value": float(np.nanmean(v)),
                        "method": m, "family": FAMILIES[m], "n_images": len(v), "std": float(np.nanstd(v)),
                        "higher_is_better": None, "stage": stage, "depth": depth})
    return out


def _add_ranks(rows: list[dict]) -> None:
    """Rank of each method among the methods of its model for each ranked metric (1 = best; NaN last)."""
    groups: dict = {}
    for r in rows:
        if r["metric"] in HIGHER_IS_BETTER and r.get("stage") is None:
            groups.setdefault((r["model"], r["metric"]), []).append(r)
    for (_, metric), rs in groups.items():
        sign = -1 if HIGHER_IS_BETTER[metric] else 1
        vals = np.array([sign * r["value"] if np.isfinite(r["value"]) else np.inf for r in rs])
        from scipy.stats import rankdata

        for r, k in zip(rs, rankdata(vals, method="min")):
            r["rank"] = int(k)


def _summary(rows, n_methods, n_images, has_masks) -> str:
    best = []
    for metric, name in (("deletion_auc", "deletion"), ("insertion_auc", "insertion"), ("road_combined", "ROAD"),
                         ("pointing_game", "pointing game")):
        rs = [r for r in rows if r["metric"] == metric and r.get("rank") == 1]
        if rs:
            best.append(f"{name} {rs[0]['method']} ({rs[0]['value']:.3f})")
    tail = "" if has_masks else " (no object masks: localisation metrics left out)"
    return f"attribution maps: {n_methods} method(s) on {n_images} image(s); best by " + ", ".join(best) + tail


def _draw(result: Result) -> dict:
    from vitscope.viz.attribution_maps import plot_curves, plot_examples, plot_ranking, plot_sanity

    t = result.table
    figs = {}
    ranked = t[t["metric"].isin(RANKED) & t["rank"].notna()] if "rank" in t else t.iloc[:0]
    for model in t["model"].unique():
        sub = ranked[ranked["model"] == model]
        tag = "" if t["model"].nunique() == 1 else f"_{_slug(model)}"
        if len(sub):
            figs[f"attribution_ranking{tag}"] = (plot_ranking(sub, title=result.titled(f"attribution maps: {model}")),
                                                 sub)
        ex = result.arrays.get("examples", {}).get(model)
        if ex:                                                   # a few of the images: the data named, not counted
            figs[f"attribution_examples{tag}"] = plot_examples(ex, title=result.titled(f"{model}", n_images=None))
        cur = {k[1:]: v for k, v in result.arrays.get("curves", {}).items() if k[0] == model}
        if cur:
            figs[f"attribution_curves{tag}"] = plot_curves(cur, title=result.titled(f"{model}"))
        san = t[(t["metric"] == "sanity_spearman") & (t["model"] == model)]
        if len(san):
            n = min(result.options.sanity_images, result.meta["n_images"])
            figs[f"attribution_sanity{tag}"] = (plot_sanity(san, title=result.titled(
                f"cascading randomisation: {model}", n_images=n)), san)
    return figs


def _slug(s: str) -> str:
    from vitscope.runtime import slug

    return slug(s)
