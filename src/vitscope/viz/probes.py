"""Probe figures: the attentive probe's attention over its inputs (heads x inputs, mean and std over test images),
gains per model and run. Accuracy per layer uses :func:`vitscope.viz.per_block.save_metric_per_block`."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plot_attention_heads(weights: np.ndarray, labels: Sequence[str] | None = None, title: str | None = None):
    """weights (M, H, N) of M test images -> two heat maps (heads x inputs): mean and std over the images."""
    import matplotlib.pyplot as plt

    w = np.asarray(weights, dtype=float)
    if w.ndim != 3:
        raise ValueError(f"attention weights must be (images, heads, inputs), got shape {w.shape}")
    _, H, N = w.shape
    labels = list(labels) if labels is not None else [str(i) for i in range(N)]
    mean, std = w.mean(0), w.std(0)
    fig, axes = plt.subplots(1, 2, figsize=(min(3.0 + 0.32 * N, 16) * 2 / 1.6, 1.4 + 0.22 * H), layout="constrained")
    for ax, m, name in zip(axes, (mean, std), ("mean", "std")):
        im = ax.imshow(m, aspect="auto", cmap="viridis")
        ax.set_title(f"{name} over {w.shape[0]} test images", fontsize=9)
        ax.set_xlabel("input")
        ax.set_ylabel("head")
        step = max(1, N // 24)
        ax.set_xticks(range(0, N, step))
        ax.set_xticklabels(labels[::step], rotation=90, fontsize=6)
        ax.set_yticks(range(0, H, max(1, H // 12)))
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_gains(gain_table, runs: Sequence[str] | None = None, title: str | None = None, scale: float = 100.0):
    """Mean gain over datasets (points; datasets as dots) per model and run, in points x ``scale``."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from vitscope.viz.style import bar_hatch, distinct_colours, legend_outside

    g = gain_table if isinstance(gain_table, pd.DataFrame) else pd.DataFrame(list(gain_table))
    runs = list(runs) if runs is not None else sorted(set(g["run"]))
    models = sorted(set(g["model"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(models) * max(1, len(runs)) * 0.45 + 2), 3.4),
                           layout="constrained")
    width = 0.8 / max(1, len(runs))
    colours = distinct_colours(len(runs))
    for j, run in enumerate(runs):
        xs, means = [], []
        for i, m in enumerate(models):
            vals = g[(g["model"] == m) & (g["run"] == run)]["gain"].to_numpy() * scale
            if len(vals) == 0:
                continue
            x = i + (j - (len(runs) - 1) / 2) * width
            xs.append(x)
            means.append(vals.mean())
            ax.scatter(np.full(len(vals), x), vals, s=6, color="k", alpha=0.4, zorder=3)
        ax.bar(xs, means, width=width * 0.95, label=run, color=colours[j], hatch=bar_hatch(j), edgecolor="white",
               linewidth=0.3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=20, fontsize=8)
    ax.set_ylabel("gain vs last-layer CLS linear (points)")
    legend_outside(ax, title="run")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
