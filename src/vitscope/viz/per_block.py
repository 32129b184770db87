"""The seed-style comparison figure: one metric against the block, one line per model.

Every per-block evaluation (k-NN, retrieval, DAVIS, keypoints, probes, clustering, attention distance) writes a
tidy table with the columns ``model, block, metric, value`` (plus ``task`` and option columns); this module draws
any such table, so the per-command figures and the study figures (``vitscope results``) look the same.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# random-weight twins are drawn dashed in the colour of their trained model
RANDOM_SUFFIX = " (random)"


def _base(model: str) -> str:
    return model[: -len(RANDOM_SUFFIX)] if model.endswith(RANDOM_SUFFIX) else model


def plot_metric_per_block(table, metric: str | None = None, title: str | None = None, ylabel: str | None = None,
                          models: Sequence[str] | None = None, ax=None, data: str | None = None,
                          n_images: int | None = None, tokens: str | None = None, chance: float | None = None,
                          ylim: tuple[float, float] | str | None = None):
    """Draw ``value`` against ``block`` for each model of a tidy table; returns the Figure.

    ``table``: a pandas DataFrame (or a list of dicts) with columns ``model``, ``block``, ``value`` and, when
    several metrics are present, ``metric`` (choose one with ``metric=``). Models whose name ends in
    ``" (random)"`` are drawn dashed in the colour of the model they are the random twin of. Blocks are the model's
    own block indices (a model whose CLS enters late simply starts later on the x axis).

    ``chance``: the chance level, drawn as a dashed grey line labelled "chance". ``ylim``: the y range; by default
    a metric in percent (its axis label says "%") spans 0 to 100 (widened if a value lies outside), so 92.3 against
    93.2 does not look like a large gap, and any other metric is scaled to its values; ``"auto"`` always scales to
    the values, a pair ``(low, high)`` fixes the range.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    from vitscope.viz.titles import context_title

    title = context_title(title, data, n_images, tokens)
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    missing = {"model", "block", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"a per-block table needs the columns model, block, value; missing {sorted(missing)}")
    if metric is not None:
        if "metric" not in df.columns or metric not in set(df["metric"]):
            have = sorted(set(df["metric"])) if "metric" in df.columns else []
            raise ValueError(f"metric {metric!r} is not in the table; it has {have}")
        df = df[df["metric"] == metric]
    elif "metric" in df.columns and df["metric"].nunique() > 1:
        raise ValueError(f"the table holds several metrics {sorted(set(df['metric']))}: choose one with metric=")
    if df.empty:
        raise ValueError("nothing to plot: the table has no rows")
    names = list(models) if models is not None else list(dict.fromkeys(df["model"]))
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.4), layout="constrained")
    else:
        fig = ax.figure
    colours: dict[str, str] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for name in names:
        part = df[df["model"] == name].sort_values("block")
        if part.empty:
            continue
        base = _base(name)
        if base not in colours:
            colours[base] = cycle[len(colours) % len(cycle)]
        rand = name.endswith(RANDOM_SUFFIX)
        ax.plot(part["block"].to_numpy(), part["value"].to_numpy(dtype=float), marker="o", ms=3.5,
                ls="--" if rand else "-", color=colours[base], alpha=0.75 if rand else 1.0, label=name)
    blocks = np.sort(df["block"].unique())
    ax.set_xticks(blocks if len(blocks) <= 16 else blocks[:: int(np.ceil(len(blocks) / 16))])
    if chance is not None:
        ax.axhline(float(chance), color="grey", lw=0.9, ls="--", zorder=1, label=f"chance ({float(chance):g})")
    ax.set_xlabel("block")
    label = ylabel or (metric if metric is not None else str(df["metric"].iloc[0]) if "metric" in df else "value")
    ax.set_ylabel(label)
    _set_ylim(ax, ylim, "%" in label, df["value"].to_numpy(dtype=float), chance)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False)
    return fig


def _set_ylim(ax, ylim, percent: bool, values: np.ndarray, chance: float | None) -> None:
    """``ylim`` as :func:`plot_metric_per_block` documents it."""
    if isinstance(ylim, str):
        if ylim != "auto":
            raise ValueError(f"ylim must be 'auto', None or a pair (low, high), got {ylim!r}")
        return
    if ylim is None:
        if not percent:
            return
        shown = values[np.isfinite(values)]
        if chance is not None:
            shown = np.append(shown, float(chance))
        lo = min(0.0, float(shown.min())) if shown.size else 0.0
        hi = max(100.0, float(shown.max())) if shown.size else 100.0
    else:
        try:
            lo, hi = (float(v) for v in ylim)
        except (TypeError, ValueError):
            raise ValueError(f"ylim must be 'auto', None or a pair (low, high), got {ylim!r}") from None
        if not lo < hi:
            raise ValueError(f"ylim must be a pair (low, high) with low < high, got {ylim!r}")
    ax.set_ylim(lo, hi)


def save_metric_per_block(table, stem: str | Path, metric: str | None = None, formats: Sequence[str] = ("png",),
                          title: str | None = None, ylabel: str | None = None, **context) -> list[Path]:
    """Draw the table with :func:`plot_metric_per_block` and save the figure with the rows behind it (``.csv``)."""
    import pandas as pd

    from vitscope.viz.save import save_figure

    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    fig = plot_metric_per_block(df, metric=metric, title=title, ylabel=ylabel, **context)
    stem = Path(stem)
    written = save_figure(fig, stem, formats)
    rows = df if metric is None else df[df["metric"] == metric]
    csv = stem.with_name(f"{stem.name}.csv")
    rows.to_csv(csv, index=False)
    return written + [csv]
