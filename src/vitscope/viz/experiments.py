"""Study figures drawn from the results table alone: probe gains per model and experiment, identifiability.

The per-block comparison figures use :mod:`vitscope.viz.per_block` and the CKA grids
:func:`vitscope.viz.similarity.plot_cka_grid`; this module holds the two figures of the seeds that have
another shape.
"""
from __future__ import annotations

import numpy as np


def plot_probe_gains(table, title: str | None = None, ylabel: str = "gain over the last-layer probe (points)",
                     data: str | None = None, n_images: int | None = None):
    """Grouped bars: one group per model, one bar per experiment (``task``), mean over datasets.

    ``table``: rows with ``model``, ``task`` (the experiment), ``dataset`` and ``value`` (the gain). With several
    datasets, each dataset's gain is drawn as a dot on its bar. ``data``, ``n_images``: the title's context line
    (:mod:`vitscope.viz.titles`).
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    from vitscope.viz.style import bar_hatch, distinct_colours, legend_outside
    from vitscope.viz.titles import context_title

    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    missing = {"model", "task", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"a probe-gain table needs the columns model, task, value; missing {sorted(missing)}")
    if df.empty:
        raise ValueError("nothing to plot: the table has no rows")
    df = df.assign(task=df["task"].fillna("gain"))
    models = list(dict.fromkeys(df["model"]))
    tasks = list(dict.fromkeys(df["task"]))
    width = 0.8 / len(tasks)
    colours = distinct_colours(len(tasks))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(models) * max(1, len(tasks)) ** 0.5 + 2), 3.4),
                           layout="constrained")
    for k, t in enumerate(tasks):
        xs, means = [], []
        for i, m in enumerate(models):
            v = df[(df["model"] == m) & (df["task"] == t)]["value"].to_numpy(dtype=float)
            if v.size == 0:
                continue
            x = i - 0.4 + width * (k + 0.5)
            xs.append(x)
            means.append(float(np.mean(v)))
            if v.size > 1:
                ax.scatter(np.full(v.size, x), v, s=8, color="black", zorder=3)
        ax.bar(xs, means, width=width * 0.95, label=t, color=colours[k], hatch=bar_hatch(k), edgecolor="white",
               linewidth=0.3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    legend_outside(ax, title="experiment")
    title = context_title(title, data, n_images)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_identifiability(table, title: str | None = None, chance: float | None = 0.5, **context):
    """Identifiability score per block, one line per model (random twins dashed), with the chance level;
    ``context``: ``data``, ``n_images``, ``tokens`` for the title's second line."""
    from vitscope.viz.per_block import plot_metric_per_block

    return plot_metric_per_block(table, title=title, ylabel="class identifiability score", chance=chance, **context)
