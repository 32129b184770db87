"""Figures for seed 002's attention statistics and for saliency IoU."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitscope.viz.attention import subplots


def plot_block_metric(values, ylabel: str, title: str | None = None):
    """A per-block value (L,) as a line over blocks."""
    v = np.asarray(values, float)
    fig, axes = subplots(1, 1, figsize=(4.5, 3.0))
    ax = axes[0, 0]
    ax.plot(np.arange(len(v)), v, marker=".", markersize=10)
    ax.set_xlabel("block")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_head_metric(values, ylabel: str, title: str | None = None):
    """Seed 002's head-level plot: for each block, the heads sorted by value, one line per block."""
    import matplotlib

    v = np.asarray(values, float)
    L, H = v.shape
    cmap = matplotlib.colormaps["viridis"]
    fig, axes = subplots(1, 1, figsize=(5.5, 3.4))
    ax = axes[0, 0]
    for b in range(L):
        if np.all(np.isnan(v[b])):
            continue
        ax.plot(np.arange(H), np.sort(v[b]), marker="o", markersize=3, color=cmap(b / max(L - 1, 1)),
                label=f"blk {b}")
    ax.set_xlabel("attention head (sorted)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_block_head_heatmap(values, title: str | None = None, cmap: str = "plasma", label: str = "",
                            annotate: bool = True, head_labels: Sequence[str] | None = None):
    """A block x head heat map (L, H) with values written in the cells (IoU, distance, ...)."""
    v = np.asarray(values, float)
    L, H = v.shape
    fig, axes = subplots(1, 1, figsize=(0.55 * H + 2.2, 0.4 * L + 1.4))
    ax = axes[0, 0]
    im = ax.imshow(v, cmap=cmap, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    ax.set_xticks(np.arange(H))
    ax.set_xticklabels(head_labels or [str(h) for h in range(H)], fontsize=7)
    ax.set_yticks(np.arange(L))
    ax.tick_params(labelsize=7)
    if annotate and L * H <= 400:
        finite = v[np.isfinite(v)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for b in range(L):
            for h in range(H):
                if np.isfinite(v[b, h]):
                    ax.text(h, b, f"{v[b, h]:.2f}", ha="center", va="center", fontsize=5.5,
                            color="black" if v[b, h] > mid else "white")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(label, fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_offsets(cx, cy, title: str | None = None):
    """Centre of mass of each head's query-centred map (x, y on [-1, 1]), coloured by block."""
    import matplotlib

    cx, cy = np.asarray(cx, float), np.asarray(cy, float)
    L, H = cx.shape
    cmap = matplotlib.colormaps["viridis"]
    fig, axes = subplots(1, 1, figsize=(4.6, 3.8))
    ax = axes[0, 0]
    for b in range(L):
        ax.scatter(cx[b], cy[b], s=14, color=cmap(b / max(L - 1, 1)), label=f"blk {b}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("mean x offset")
    ax.set_ylabel("mean y offset")
    ax.invert_yaxis()
    ax.legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
