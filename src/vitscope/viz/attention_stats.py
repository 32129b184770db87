"""Figures for walmer2023's attention statistics and for saliency IoU."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.ticker
import numpy as np

from vitscope.viz.attention import subplots
from vitscope.viz.titles import context_title

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINES = ("-", "--", ":", "-.")


def plot_block_metric(values, ylabel: str, title: str | None = None, data: str | None = None,
                      n_images: int | None = None):
    """A per-block value (L,) as a line over blocks."""
    v = np.asarray(values, float)
    title = context_title(title, data, n_images)
    fig, axes = subplots(1, 1, figsize=(4.5, 3.2))
    ax = axes[0, 0]
    ax.plot(np.arange(len(v)), v, marker=".", markersize=10)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("block")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_head_metric(values, ylabel: str, title: str | None = None, data: str | None = None,
                     n_images: int | None = None):
    """walmer2023's head-level plot: for each block, the heads sorted by value, one line per block (colour from
    early to late, and a marker and line style of its own so that neighbouring blocks stay apart)."""
    v = np.asarray(values, float)
    L, H = v.shape
    cmap = matplotlib.colormaps["viridis"]
    title = context_title(title, data, n_images)
    fig, axes = subplots(1, 1, figsize=(6.0, 3.6))
    ax = axes[0, 0]
    for b in range(L):
        if np.all(np.isnan(v[b])):
            continue
        ax.plot(np.arange(H), np.sort(v[b]), marker=_MARKERS[b % len(_MARKERS)], markersize=3.5,
                ls=_LINES[b % len(_LINES)], color=cmap(b / max(L - 1, 1)), label=f"block {b}")
    ax.set_xlabel("attention head (sorted)")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(fontsize=6, frameon=False, loc="outside right center", ncol=2 if L > 12 else 1)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_block_head_heatmap(values, title: str | None = None, cmap: str = "plasma", label: str = "",
                            annotate: bool = True, head_labels: Sequence[str] | None = None, data: str | None = None,
                            n_images: int | None = None):
    """A block x head heat map (L, H) with values written in the cells (IoU, distance, ...)."""
    v = np.asarray(values, float)
    L, H = v.shape
    title = context_title(title, data, n_images)
    fig, axes = subplots(1, 1, figsize=(max(0.55 * H + 2.4, 4.2), 0.4 * L + 1.6))
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
    return fig


def plot_offsets(cx, cy, title: str | None = None, data: str | None = None, n_images: int | None = None):
    """Centre of mass of each head's query-centred map (x, y on [-1, 1]), coloured (and marked) by block."""
    cx, cy = np.asarray(cx, float), np.asarray(cy, float)
    L, H = cx.shape
    cmap = matplotlib.colormaps["viridis"]
    title = context_title(title, data, n_images)
    fig, axes = subplots(1, 1, figsize=(5.2, 3.9))
    ax = axes[0, 0]
    for b in range(L):
        ax.scatter(cx[b], cy[b], s=14, color=cmap(b / max(L - 1, 1)), marker=_MARKERS[b % len(_MARKERS)],
                   label=f"block {b}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("mean x offset")
    ax.set_ylabel("mean y offset")
    ax.invert_yaxis()
    fig.legend(fontsize=6, frameon=False, loc="outside right center", ncol=2 if L > 12 else 1)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
