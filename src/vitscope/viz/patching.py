"""Figures of patching and ablations (``vitscope.analysis.patching``). Every effect figure uses one colour scale
per figure, diverging around 0 (red: the patch moves the metric towards the clean run, blue: away from it).

* :func:`plot_position_effects`: block x position maps drawn over the image grid (one panel per block; CLS,
  DIST and registers as a block x token strip), with the changed patches outlined;
* :func:`plot_head_effects`: a block x head grid (head sites, path patching's senders, ablations);
* :func:`plot_pattern_effects`: per block, heads x query positions;
* :func:`plot_agreement`: attribution patching against real patching;
* :func:`plot_pruning`: accuracy and logit as heads are pruned;
* :func:`plot_composition`: Q-, K- and V-composition scores between heads.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vitscope.viz.attention import subplots

CMAP = "RdBu_r"


def _vmax(*arrays) -> float:
    vals = [np.nanmax(np.abs(a)) for a in arrays if a is not None and np.size(a) and not np.all(np.isnan(a))]
    v = float(max(vals)) if vals else 1.0
    return v if v > 0 else 1.0


def plot_position_effects(maps: np.ndarray, blocks: Sequence[int], prefix: Mapping[str, np.ndarray] | None = None,
                          images: Mapping[str, np.ndarray] | None = None, changed: np.ndarray | None = None,
                          title: str | None = None, label: str = "effect (0 corrupted, 1 clean)", ncols: int = 6):
    """Block x position effects: ``maps`` (L, rows, cols), one panel per block drawn over the first of ``images``
    ({name: (H, W, 3) uint8}, each also shown in a panel of its own first, e.g. the clean and the corrupted input);
    ``prefix`` {token: (L,)} as a block x token strip; ``changed`` (rows, cols): the patches where the inputs differ
    (outlined)."""
    from matplotlib.patches import Rectangle

    L, rows, cols = maps.shape
    prefix = {k: v for k, v in (prefix or {}).items() if not np.all(np.isnan(v))}
    images = dict(images or {})
    under = next(iter(images.values()), None)
    vmax = _vmax(maps, *prefix.values())
    panels = [("image", n) for n in images] + [("block", i) for i in range(L)] + ([("prefix", None)] if prefix else [])
    nc = min(ncols, len(panels))
    nr = -(-len(panels) // nc)
    fig, axes = subplots(nr, nc, figsize=(1.9 * nc + 1.0, 2.0 * nr + (0.5 if title else 0.2)))
    im = None
    extent = (0, cols, rows, 0)

    def outline(ax):
        if changed is not None:
            for r, c in zip(*np.nonzero(changed > 0)):
                ax.add_patch(Rectangle((c, r), 1, 1, fill=False, lw=0.8, ec="k"))

    for j in range(nr * nc):
        ax = axes[j // nc, j % nc]
        if j >= len(panels):
            ax.axis("off")
            continue
        kind, what = panels[j]
        if kind == "prefix":                                        # CLS, DIST, registers: block x token
            names = list(prefix)
            strip = np.stack([prefix[n] for n in names], axis=1)    # L, n_prefix
            im = ax.imshow(strip, cmap=CMAP, vmin=-vmax, vmax=vmax, aspect="auto")
            ax.set_xticks(range(len(names)), [n.upper() for n in names], fontsize=7, rotation=90)
            ax.set_yticks(range(L), [str(b) for b in blocks], fontsize=7)
            ax.set_ylabel("block", fontsize=8)
            ax.set_title("other tokens", fontsize=9)
            continue
        if kind == "image":
            ax.imshow(images[what], extent=extent)
            ax.set_title(what, fontsize=9)
        else:
            if under is not None:
                ax.imshow(under, extent=extent, alpha=0.35)
            im = ax.imshow(maps[what], cmap=CMAP, vmin=-vmax, vmax=vmax, extent=extent,
                           alpha=0.8 if under is not None else 1.0, interpolation="nearest")
            ax.set_title(f"block {blocks[what]}", fontsize=9)
        outline(ax)
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_head_effects(values: np.ndarray, blocks: Sequence[int], title: str | None = None,
                      label: str = "effect (0 corrupted, 1 clean)", columns: Sequence[str] | None = None,
                      xlabel: str = "head", symmetric: bool = True):
    """A block x head grid (L, H) (``columns`` names the columns, e.g. heads and "MLP")."""
    v = np.asarray(values, float)
    L, H = v.shape
    fig, axes = subplots(1, 1, figsize=(max(4.6, 1.6 + 0.42 * H), 1.0 + 0.36 * L))   # room for a two-line title
    ax = axes[0, 0]
    vmax = _vmax(v)
    im = ax.imshow(v, cmap=CMAP if symmetric else "viridis", vmin=-vmax if symmetric else None,
                   vmax=vmax if symmetric else None, aspect="auto")
    ax.set_xticks(range(H), list(columns) if columns is not None else [str(h) for h in range(H)], fontsize=8)
    ax.set_yticks(range(L), [str(b) for b in blocks], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("block")
    fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_pattern_effects(values: np.ndarray, blocks: Sequence[int], token_names: Sequence[str] | None = None,
                         title: str | None = None, label: str = "effect (0 corrupted, 1 clean)", ncols: int = 3):
    """Per block, heads x query positions (L, H, T): the effect of patching one head's attention row."""
    v = np.asarray(values, float)
    L, H, T = v.shape
    vmax = _vmax(v)
    nc = min(ncols, L)
    nr = -(-L // nc)
    fig, axes = subplots(nr, nc, figsize=(0.9 + min(0.09 * T, 6.0) * nc, 0.5 + (0.25 * H + 0.6) * nr))
    im = None
    for i in range(nr * nc):
        ax = axes[i // nc, i % nc]
        if i >= L:
            ax.axis("off")
            continue
        im = ax.imshow(v[i], cmap=CMAP, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(H), [str(h) for h in range(H)], fontsize=6)
        ax.set_ylabel("head", fontsize=8)
        ax.set_xlabel("query position", fontsize=8)
        ax.set_title(f"block {blocks[i]}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_agreement(points: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str | None = None):
    """Attribution estimate against the real patching effect, one panel per grid: ``{name: (real, estimate, r)}``."""
    n = len(points)
    fig, axes = subplots(1, n, figsize=(max(4.6, 3.1 * n), 3.0))      # at least the width of a two-line title
    for ax, (name, (x, y, r)) in zip(axes[0], points.items()):
        ax.scatter(x, y, s=6, alpha=0.6)
        lo = float(np.nanmin([np.nanmin(x), np.nanmin(y)]))
        hi = float(np.nanmax([np.nanmax(x), np.nanmax(y)]))
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("activation patching")
        ax.set_ylabel("attribution patching")
        ax.set_title(f"{name}: r = {r:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_pruning(curve, title: str | None = None, chance: float | None = None):
    """Accuracy (%) and mean true-class logit against the number of heads pruned (``curve``: rows with
    ``n_pruned``, ``metric`` in ("accuracy", "logit"), ``value``; one line per model). ``chance`` (%, 100 / C): a
    dashed grey line labelled "chance" on the accuracy panel."""
    import pandas as pd

    df = curve if isinstance(curve, pd.DataFrame) else pd.DataFrame(list(curve))
    fig, axes = subplots(1, 2, figsize=(7.4, 3.0))
    for ax, metric, ylabel in zip(axes[0], ("accuracy", "logit"), ("accuracy (%)", "mean true-class logit")):
        for model, sub in df[df["metric"] == metric].groupby("model", sort=False):
            sub = sub.sort_values("n_pruned")
            ax.plot(sub["n_pruned"], sub["value"], marker=".", label=str(model))
        if metric == "accuracy":                    # a percentage on 0-100, so that small changes look small
            vals = df[df["metric"] == "accuracy"]["value"].to_numpy(dtype=float)
            ax.set_ylim(min(0.0, *vals), max(100.0, *vals))
            if chance is not None:
                ax.axhline(float(chance), color="grey", lw=0.9, ls="--", zorder=1,
                           label=f"chance ({float(chance):.3g})")
                ax.legend(fontsize=7)
        ax.set_xlabel("heads pruned")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if df["model"].nunique() > 1:
        axes[0, 1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_composition(scores: Mapping[str, np.ndarray], title: str | None = None):
    """Q-, K- and V-composition between every earlier head (rows) and later head (columns): ``{mode: (L, H, L, H)}``
    with NaN where the writer is not earlier than the reader."""
    modes = list(scores)
    L, H = next(iter(scores.values())).shape[:2]
    fig, axes = subplots(1, len(modes), figsize=(3.3 * len(modes) + 0.8, 3.3))
    vmax = _vmax(*scores.values())
    im = None
    ticks = [b * H + (H - 1) / 2 for b in range(L)]
    for ax, mode in zip(axes[0], modes):
        im = ax.imshow(scores[mode].reshape(L * H, L * H), cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_xticks(ticks, [str(b) for b in range(L)], fontsize=7)
        ax.set_yticks(ticks, [str(b) for b in range(L)], fontsize=7)
        ax.set_xlabel("reading head (block)")
        ax.set_ylabel("writing head (block)")
        ax.set_title(f"{mode}-composition", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="composition score")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_block_effects(effects: np.ndarray, blocks: Sequence[int], image: np.ndarray | None = None,
                       patch: tuple[int, int] | None = None, grid: tuple[int, int] | None = None,
                       title: str | None = None, label: str = "effect (0 corrupted, 1 clean)"):
    """One cell's effect per block as bars (colour diverging around 0), with the corrupted input beside it and the
    patched position outlined (the app's patching tab)."""
    import matplotlib
    from matplotlib.patches import Rectangle

    e = np.asarray(effects, float)
    fig, axes = subplots(1, 2 if image is not None else 1, figsize=(6.8 if image is not None else 4.4, 2.8),
                         width_ratios=[1, 1.6] if image is not None else None)
    if image is not None:
        ax = axes[0, 0]
        h, w = image.shape[:2]
        ax.imshow(image)
        if patch is not None and grid is not None:
            ph, pw = h / grid[0], w / grid[1]
            ax.add_patch(Rectangle((patch[1] * pw - 0.5, patch[0] * ph - 0.5), pw, ph, fill=False, lw=1.5, ec="c"))
        ax.set_title("corrupted input", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[0, -1]
    vmax = _vmax(e)
    norm = matplotlib.colors.Normalize(-vmax, vmax)
    ax.bar(range(len(e)), e, color=matplotlib.colormaps[CMAP](norm(e)), edgecolor="0.3", lw=0.5)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(e)), [str(b) for b in blocks], fontsize=8)
    ax.set_xlabel("block")
    ax.set_ylabel(label, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title, fontsize=9)
    return fig
