"""Per-head direct logit attribution as a block x head map (see ``analysis.class_embedding.attribution``)."""
from __future__ import annotations

import numpy as np


_LABELS = {"cls": "CLS token", "patches": "patch tokens (mean)", "registers": "registers (mean)"}


def plot_head_attribution(rows, tokens: str = "patches", title: str | None = None):
    """Block x head map of the mean true-class attribution, one panel per token group; returns the Figure.

    ``rows``: :func:`~vitscope.analysis.class_embedding.attribution.attribution_table` rows (or a DataFrame with
    ``block, head, tokens, value``). ``tokens``: a group ("cls", "patches", "registers") or "all" for a panel per
    group. The panels share one colour scale, centred on zero.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    groups = list(dict.fromkeys(df["tokens"])) if tokens == "all" else [tokens]
    missing = [g for g in groups if g not in set(df["tokens"])]
    if missing:
        raise ValueError(f"no rows for tokens {missing}; the table has {sorted(set(df['tokens']))}")
    maps = []
    for g in groups:
        sub = df[df["tokens"] == g].pivot_table(index="block", columns="head", values="value")
        maps.append(sub)
    vmax = max(float(np.nanmax(np.abs(m.to_numpy()))) for m in maps) or 1.0
    fig, axes = plt.subplots(1, len(groups), figsize=(2.2 + 2.6 * len(groups), 3.4), squeeze=False,
                             layout="constrained")
    for ax, g, m in zip(axes[0], groups, maps):
        im = ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", origin="lower")
        ax.set_xticks(range(m.shape[1]), [str(h) for h in m.columns])
        ax.set_yticks(range(m.shape[0]), [str(b) for b in m.index])
        ax.set_xlabel("head")
        ax.set_ylabel("block")
        ax.set_title(_LABELS.get(g, g))
    fig.colorbar(im, ax=axes[0].tolist(), label="true-class logit (direct)")
    if title:
        fig.suptitle(title)
    return fig
