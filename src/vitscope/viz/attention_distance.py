"""Mean attention distance figures: probing-vits's scatter (one point per head, x = block) for one or several models."""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.ticker
import numpy as np

from vitscope.viz.attention import subplots

_UNITS = {"A": "mean attention distance (normalised)", "B": "mean attention distance (pixels)"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _scatter(ax, dist: np.ndarray, label: str | None, color=None, marker="o", offset: float = 0.0,
             std: np.ndarray | None = None) -> None:
    L, H = dist.shape
    x = np.repeat(np.arange(L), H).astype(float) + offset
    ax.scatter(x, dist.reshape(-1), s=14, alpha=0.8, label=label, color=color, marker=marker)
    if std is not None:
        ax.errorbar(x, dist.reshape(-1), yerr=std.reshape(-1), fmt="none", ecolor=color or "grey", alpha=0.3, lw=0.8)


def plot_attention_distance(dist, variant: str = "A", title: str | None = None, std=None, colour_heads: bool = True,
                            data: str | None = None, n_images: int | None = None, blocks=None):
    """One model: ``dist`` (L, H); each head is a point at its block (heads told apart by colour and marker).

    ``blocks``: the block index of each row (default 0..L-1); ``data`` / ``n_images`` are added to the title.
    """
    from vitscope.viz.titles import context_title

    dist = np.asarray(dist, float)
    L, H = dist.shape
    xs = np.arange(L) if blocks is None else np.asarray(list(blocks))
    title = context_title(title, data, n_images)
    fig, axes = subplots(1, 1, figsize=(max(4.0, 0.45 * L + 2.0) + (1.4 if colour_heads and H <= 16 else 0), 3.6))
    ax = axes[0, 0]
    if colour_heads:
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        for h in range(H):
            ax.scatter(xs, dist[:, h], s=16, color=cmap(h % 20), marker=_MARKERS[h % len(_MARKERS)], label=f"head {h}")
            if std is not None:
                ax.errorbar(xs, dist[:, h], yerr=np.asarray(std)[:, h], fmt="none",
                            ecolor=cmap(h % 20), alpha=0.3, lw=0.8)
        if H <= 16:
            fig.legend(fontsize=6, ncol=2 if H > 8 else 1, frameon=False, loc="outside right center")
    else:
        _scatter(ax, dist, None, std=std)
    ax.set_xlabel("block")
    ax.set_ylabel(_UNITS.get(variant, "mean attention distance"), fontsize=9)
    ax.set_xticks(xs if L <= 24 else xs[:: int(np.ceil(L / 24))])
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_attention_distance_models(results: Mapping[str, np.ndarray], variant: str = "A", title: str | None = None,
                                   relative_depth: bool = False, data: str | None = None, n_images: int | None = None):
    """Several models on one figure: ``results`` {model name: (L, H)}; one colour and marker per model.

    ``relative_depth`` puts blocks on [0, 1] so that models of different depth line up.
    """
    import matplotlib

    from vitscope.viz.titles import context_title

    title = context_title(title, data, n_images)
    fig, axes = subplots(1, 1, figsize=(6.5, 3.9))
    ax = axes[0, 0]
    cmap = matplotlib.colormaps["tab10"]
    n = len(results)
    for k, (name, dist) in enumerate(results.items()):
        dist = np.asarray(dist, float)
        L, H = dist.shape
        if relative_depth:
            x = np.repeat(np.arange(L) / max(L - 1, 1), H)
        else:
            x = np.repeat(np.arange(L), H) + (k - (n - 1) / 2) * 0.12
        ax.scatter(x, dist.reshape(-1), s=14, alpha=0.8, color=cmap(k % 10), marker=_MARKERS[k % len(_MARKERS)],
                   label=name)
    ax.set_xlabel("relative depth" if relative_depth else "block")
    ax.set_ylabel(_UNITS.get(variant, "mean attention distance"), fontsize=9)
    if not relative_depth:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, frameon=False, loc="outside right center")
    if title:
        ax.set_title(title, fontsize=10)
    return fig
