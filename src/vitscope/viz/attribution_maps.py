"""Figures of the attribution-map benchmark: the ranking of the methods per metric, example maps, the
deletion / insertion / ROAD curves and the cascading randomisation check."""
from __future__ import annotations

import numpy as np

METRIC_LABELS = {"deletion_auc": "deletion AUC ↓", "insertion_auc": "insertion AUC ↑",
                 "road_combined": "ROAD (LeRF-MoRF)/2 ↑", "road_morf": "ROAD MoRF ↓", "road_lerf": "ROAD LeRF ↑",
                 "pointing_game": "pointing game ↑", "energy_pointing_game": "energy pointing ↑", "iou": "IoU ↑",
                 "auroc": "AUROC ↑"}


def plot_ranking(table, title: str | None = None):
    """Methods (rows, best mean rank first) x metrics (columns): the colour is the rank (1 = best), the text the
    value. ``table``: tidy rows with ``method``, ``metric``, ``value``, ``rank`` of one model."""
    import matplotlib.pyplot as plt

    metrics = [m for m in METRIC_LABELS if m in set(table["metric"])]
    ranks = table.pivot_table(index="method", columns="metric", values="rank", aggfunc="first")[metrics]
    vals = table.pivot_table(index="method", columns="metric", values="value", aggfunc="first")[metrics]
    order = ranks.mean(axis=1).sort_values().index
    ranks, vals = ranks.loc[order], vals.loc[order]
    fig, ax = plt.subplots(figsize=(max(4.8, 1.15 * len(metrics) + 2.6), 0.34 * len(order) + 1.4),
                           layout="constrained")                       # at least the width of a two-line title
    im = ax.imshow(ranks.to_numpy(float), cmap="viridis_r", aspect="auto")
    for i in range(len(order)):
        for j in range(len(metrics)):
            v = vals.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if ranks.iat[i, j] > len(order) / 2 else "black")
    ax.set_xticks(range(len(metrics)), [METRIC_LABELS[m] for m in metrics], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), list(order), fontsize=8)
    fig.colorbar(im, ax=ax, label="rank (1 = best)", shrink=0.8)
    ax.set_title(title or "attribution maps ranked per metric", fontsize=10)
    return fig


def _show_image(x, mean, std) -> np.ndarray:
    m = np.asarray(mean or (0.5, 0.5, 0.5), float)[:, None, None]
    s = np.asarray(std or (0.5, 0.5, 0.5), float)[:, None, None]
    return np.clip(np.asarray(x, float) * s + m, 0, 1).transpose(1, 2, 0)


def plot_examples(examples: dict, title: str | None = None, max_images: int = 4):
    """Images (rows) and each method's map (columns) over the image; the object's outline where known.
    ``examples``: {"images": (n, C, H, W), "maps": {method: (n, H, W)}, "masks": (n, H, W) or None,
    "mean", "std"}."""
    import matplotlib.pyplot as plt

    methods = list(examples["maps"])
    n = min(max_images, examples["images"].shape[0])
    fig, axes = plt.subplots(n, len(methods) + 1, figsize=(max(4.6, 1.35 * (len(methods) + 1)), 1.4 * n + 0.4),
                             layout="constrained", squeeze=False)           # at least the width of a two-line title
    for i in range(n):
        img = _show_image(examples["images"][i], examples.get("mean"), examples.get("std"))
        axes[i, 0].imshow(img)
        for j, m in enumerate(methods, start=1):
            a = np.asarray(examples["maps"][m][i], float)
            lo, hi = a.min(), a.max()
            axes[i, j].imshow(img)
            axes[i, j].imshow((a - lo) / (hi - lo) if hi > lo else a * 0, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if examples.get("masks") is not None:
                axes[i, j].contour(np.asarray(examples["masks"][i], float), levels=[0.5], colors="white",
                                   linewidths=0.6)
            if i == 0:
                axes[i, j].set_title(m, fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_method_map(image, amap, mean=None, std=None, mask=None, title: str | None = None):
    """One image and one map over it (``vitscope explain``)."""
    import matplotlib.pyplot as plt

    img = _show_image(image, mean, std)
    fig, axes = plt.subplots(1, 2, figsize=(5.4, 2.9), layout="constrained")
    axes[0].imshow(img)
    a = np.asarray(amap, float)
    lo, hi = a.min(), a.max()
    axes[1].imshow(img)
    im = axes[1].imshow((a - lo) / (hi - lo) if hi > lo else a * 0, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    if mask is not None:
        axes[1].contour(np.asarray(mask, float), levels=[0.5], colors="white", linewidths=0.8)
    fig.colorbar(im, ax=axes[1], shrink=0.8, label="min-max scaled")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_curves(curves: dict, title: str | None = None):
    """Mean target probability along deletion, insertion and ROAD (MoRF / LeRF), one line per method.
    ``curves``: {(method, curve): (fractions (K,), values (K, n))}."""
    import matplotlib.pyplot as plt

    kinds = [k for k in ("deletion", "insertion", "road_morf", "road_lerf") if any(c == k for _, c in curves)]
    methods = list(dict.fromkeys(m for m, _ in curves))
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(4.6, 3.2 * len(kinds)), 3.2), layout="constrained",
                             squeeze=False)                                  # at least the width of a two-line title
    cmap = plt.get_cmap("tab20")
    for ax, k in zip(axes[0], kinds):
        for i, m in enumerate(methods):
            if (m, k) in curves:
                f, v = curves[(m, k)]
                ax.plot(f, np.nanmean(v, axis=1), color=cmap(i % 20), lw=1.2, label=m,
                        ls="--" if m == "random" else "-")
        ax.set_xlabel("fraction " + ("removed" if k != "insertion" else "kept"))
        ax.set_title(k.replace("_", " "), fontsize=9)
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("probability of the class")
    axes[0, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_sanity(table, title: str | None = None):
    """Spearman correlation with the trained model's maps as the parameters are randomised from the top."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.4), layout="constrained")
    for m, sub in table.groupby("method", sort=False):
        sub = sub.sort_values("depth")
        ax.plot(sub["depth"], sub["value"], marker="o", ms=3, label=m)
        stages = list(sub["stage"])
    ax.set_xticks(range(len(stages)), stages, rotation=45, ha="right", fontsize=7)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_ylabel("Spearman ρ with the trained maps")
    ax.set_xlabel("randomised down to")
    ax.legend(fontsize=7)
    ax.set_title(title or "cascading randomisation", fontsize=10)
    return fig
