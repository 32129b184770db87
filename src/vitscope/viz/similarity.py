"""Figures for representation similarity and clustering; every ``save_*`` writes the numbers beside the picture.

* :func:`plot_cka` one heat map (layer x layer or model x model), optional cluster strip (spectral clustering)
* :func:`plot_cka_grid` a grid of heat maps, one per model pair
* :func:`plot_residual` residual CKA (skip x branch) for both branches and the norm ratios per block
* :func:`plot_cluster_curves` NMI / ARI / purity per block, one line per model
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitscope.viz.save import save_figure, save_json, save_table  # noqa: E402
from vitscope.viz.titles import context_title  # noqa: E402

CMAP = "magma"          # walmer2023's CKA colour map
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINES = ("-", "--", "-.", ":")


def _key(*parts: str) -> str:
    """A file-name-safe key for the arrays saved beside a figure: ``vitA (random)`` -> ``vitA_random``."""
    return "__".join(re.sub(r"[^A-Za-z0-9.-]+", "_", str(p)).strip("_") for p in parts)
METRIC_LABELS = {"nmi": "NMI", "ari": "ARI", "purity": "purity"}


def _matrix(res: Any) -> tuple[np.ndarray, list[str] | None, list[str] | None, dict]:
    if hasattr(res, "matrix"):
        return np.asarray(res.matrix), list(res.rows), list(res.cols), dict(getattr(res, "meta", {}) or {})
    m = np.asarray(res, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D similarity matrix, got shape {m.shape}")
    return m, None, None, {}


def _ticks(ax, names: Sequence[str] | None, n: int, axis: str, max_labels: int = 24, fontsize: float = 7) -> None:
    if names is None:
        names = [str(i) for i in range(n)]
    step = max(1, int(np.ceil(n / max_labels)))
    pos = list(range(0, n, step))
    getattr(ax, f"set_{axis}ticks")(pos)
    getattr(ax, f"set_{axis}ticklabels")([names[i] for i in pos], fontsize=fontsize,
                                         rotation=90 if axis == "x" and max(len(s) for s in names) > 3 else 0)


def _default_label(names: Sequence[str] | None) -> str:
    """'block' when the names are block indices (the usual layer x layer matrix), else nothing."""
    return "block" if names is None or all(str(n).lstrip("-").isdigit() for n in names) else ""


def plot_cka(res: Any, rows: Sequence[str] | None = None, cols: Sequence[str] | None = None,
             title: str | None = None, xlabel: str | None = None, ylabel: str | None = None, ax=None,
             vmin: float | None = 0.0, vmax: float | None = 1.0, cmap: str = CMAP, annotate: bool | None = None,
             clusters: Sequence[int] | None = None, colorbar: bool = True, label: str = "CKA",
             data: str | None = None, n_images: int | None = None, tokens: str | None = None):
    """Heat map of a similarity matrix (a :class:`SimilarityResult` or an array), origin at the lower left.

    Axis labels default to "block" when rows / columns are block indices; ``data`` / ``n_images`` / ``tokens``
    are added to the title."""
    m, r0, c0, meta = _matrix(res)
    rows = list(rows) if rows is not None else r0
    cols = list(cols) if cols is not None else c0
    title = context_title(title, data, n_images, tokens)
    fig = None
    if ax is None:
        side = min(7.0, 2.6 + 0.28 * max(m.shape))
        fig, ax = plt.subplots(figsize=(side + 0.9, side + (0.2 * title.count("\n") if title else 0)),
                               layout="constrained")
    else:
        fig = ax.figure
    im = ax.imshow(m, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    _ticks(ax, cols, m.shape[1], "x")
    _ticks(ax, rows, m.shape[0], "y")
    ax.set_xlabel(xlabel or meta.get("xlabel") or _default_label(cols))
    ax.set_ylabel(ylabel or meta.get("ylabel") or _default_label(rows))
    if title:
        ax.set_title(title, fontsize=10)
    if annotate is None:
        annotate = max(m.shape) <= 8
    if annotate:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                v = m[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 * (vmax if vmax is not None else 1.0) else "white")
    if clusters is not None:
        cl = np.asarray(clusters)
        if cl.size != m.shape[0]:
            raise ValueError(f"{cl.size} cluster ids for {m.shape[0]} rows")
        # a strip above the map: the cluster of each layer (columns and rows are the same layers)
        strip = ax.inset_axes([0, 1.01, 1, 0.04], sharex=ax)
        strip.imshow(cl[None, :] % 10, cmap="tab10", aspect="auto", interpolation="nearest", vmin=0, vmax=9)
        strip.set_yticks([])
        strip.tick_params(labelbottom=False, bottom=False)
        if title:
            ax.set_title(title, fontsize=10, pad=16)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    return fig


def plot_cka_grid(pairs: Mapping[tuple[str, str], Any], title: str | None = None, cmap: str = CMAP,
                  panel: float = 2.4, data: str | None = None, n_images: int | None = None, tokens: str | None = None):
    """Grid of heat maps, one per model pair: ``{(model_a, model_b): result or matrix}``; rows are the ``a``s.

    Every panel has its layer ticks (a few per axis); the panel's x axis is the blocks of ``b``, its y axis the
    blocks of ``a``. One colour scale (0..1) and one colour bar for the grid."""
    if not pairs:
        raise ValueError("no model pairs to draw")
    rows = list(dict.fromkeys(a for a, _ in pairs))
    cols = list(dict.fromkeys(b for _, b in pairs))
    title = context_title(title, data, n_images, tokens)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(panel * len(cols) + 1.2, panel * len(rows) + 0.8),
                             squeeze=False, layout="constrained")
    im = None
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            ax = axes[i, j]
            if (a, b) not in pairs:
                ax.axis("off")
                continue
            m, rn, cn, _ = _matrix(pairs[(a, b)])
            im = ax.imshow(m, origin="lower", cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            _ticks(ax, cn, m.shape[1], "x", max_labels=4, fontsize=6)
            _ticks(ax, rn, m.shape[0], "y", max_labels=4, fontsize=6)
            ax.set_xlabel(f"{b} block", fontsize=7)
            ax.set_ylabel(f"{a} block", fontsize=7)
            ax.set_title(f"{a} x {b}", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="CKA")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_residual(res, title: str | None = None, data: str | None = None, n_images: int | None = None,
                  tokens: str | None = None):
    """Residual CKA: attention and MLP heat maps (skip x branch) and the norm ratios ||skip|| / ||branch||.

    In the ratio panel the colour is the branch and the line style and marker the tokens (all / CLS / patches)."""
    title = context_title(title, data, n_images, tokens)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    for ax, branch in zip(axes[:2], ("attn", "mlp")):
        r = getattr(res, branch)
        depth = r.matrix.shape[0]
        plot_cka(r, rows=[str(i) for i in range(depth)], cols=[str(i) for i in range(depth)], ax=ax,
                 xlabel=f"{'attention' if branch == 'attn' else 'MLP'} branch output (block)",
                 ylabel="skip input (block)", title=f"{branch}: skip vs branch", annotate=False)
    ax = axes[2]
    styles = {"all": ("-", "o"), "cls": ("--", "s"), "patches": (":", "^")}      # line and marker differ
    for branch, colour in (("attn", "C0"), ("mlp", "C3")):
        for tok, vals in res.norm_ratios[branch].items():
            ls, marker = styles.get(tok, ("-", "o"))
            ax.plot(np.arange(len(vals)), vals, ls, color=colour, marker=marker, ms=4,
                    label=f"{branch}, {tok}")          # NaN (CLS before it enters) is left out of the line
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("block")
    ax.set_ylabel("||skip|| / ||branch||")
    ax.set_title("norm ratios", fontsize=10)
    ax.legend(fontsize=7, handlelength=3.5)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _cluster_blocks(scores, blocks) -> dict[str, np.ndarray]:
    """The block index of every score: ``blocks`` is one list for all models, ``{model: list}`` or None (0..L-1)."""
    out = {}
    for name, sc in scores.items():
        n = len(next(iter(sc.values())))
        b = blocks.get(name) if isinstance(blocks, Mapping) else blocks
        b = np.arange(n) if b is None else np.asarray([int(x) for x in b])
        if len(b) != n:
            raise ValueError(f"{name}: {n} scores but {len(b)} block indices")
        out[name] = b
    return out


def plot_cluster_curves(scores: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str] | None = None,
                        title: str | None = None, xlabel: str = "block",
                        blocks: Sequence[int] | Mapping[str, Sequence[int]] | None = None, data: str | None = None,
                        n_images: int | None = None, tokens: str | None = None):
    """Clustering scores per block: ``{model: {"nmi": (L,), "ari": (L,), "purity": (L,)}}``, one panel per metric.

    ``blocks``: the model's block index of each score (one list, or one per model), e.g. ``[6, 7]`` when CLS enters
    at block 6; default 0..L-1. Models of different depth share the axis as a fraction of depth when depths
    differ (walmer2023's plots).
    """
    if not scores:
        raise ValueError("no models to plot")
    where = _cluster_blocks(scores, blocks)
    metrics = list(metrics or [m for m in ("nmi", "ari", "purity") if any(m in s for s in scores.values())])
    depths = {int(b.max()) + 1 for b in where.values()}
    relative = len(depths) > 1
    title = context_title(title, data, n_images, tokens)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics) + 1.5, 3.4), squeeze=False,
                             layout="constrained")
    for ax, met in zip(axes[0], metrics):
        for k, (name, s) in enumerate(scores.items()):
            v = np.asarray(s[met], dtype=float)
            x = (where[name] + 1) / (where[name].max() + 1) if relative else where[name]
            ax.plot(x, v, marker=_MARKERS[k % len(_MARKERS)], ls=_LINES[k % len(_LINES)], ms=3.5, label=name)
        ax.set_xlabel("relative depth" if relative else xlabel)
        if not relative:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(METRIC_LABELS.get(met, met))
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, frameon=False, loc="outside right center",
               handlelength=3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# ----------------------------------------------------------------------------- save with numbers
def plot_similarity(res, title: str | None = None, clusters: Sequence[int] | None = None, **kw):
    """:func:`plot_cka` of a :class:`SimilarityResult`, its colour bar named by its metric (CKA, RSA)."""
    return plot_cka(res, title=title, clusters=clusters, label=res.meta.get("metric", "CKA").upper(), **kw)


def save_similarity(res, stem: str | Path, formats: Sequence[str] = ("png",), title: str | None = None,
                    clusters: Sequence[int] | None = None, **kw) -> list[Path]:
    """Heat map + ``stem.matrix.npy`` + ``stem.json`` (names, settings) + ``stem.csv`` (tidy rows)."""
    fig = plot_similarity(res, title=title, clusters=clusters, **kw)
    meta = {"rows": res.rows, "cols": res.cols, **res.meta}
    arrays = {"matrix": res.matrix}
    if clusters is not None:
        meta["clusters"] = [int(c) for c in clusters]
        arrays["clusters"] = np.asarray(clusters)
    paths = save_figure(fig, stem, formats, arrays=arrays, meta=meta)
    paths.append(save_table(res.table(), Path(f"{stem}.csv"), ["row", "col", "value"]))
    return paths


def save_cka_grid(pairs: Mapping[tuple[str, str], Any], stem: str | Path, formats: Sequence[str] = ("png",),
                  title: str | None = None, **context) -> list[Path]:
    """``context``: ``data``, ``n_images``, ``tokens`` for the title."""
    fig = plot_cka_grid(pairs, title=title, **context)
    arrays = {_key(a, b): _matrix(r)[0] for (a, b), r in pairs.items()}
    meta = {"pairs": [[a, b] for a, b in pairs], "arrays": {_key(a, b): [a, b] for a, b in pairs}}
    return save_figure(fig, stem, formats, arrays=arrays, meta=meta)


def save_residual(res, stem: str | Path, formats: Sequence[str] = ("png",), title: str | None = None,
                  **context) -> list[Path]:
    """``context``: ``data``, ``n_images``, ``tokens`` for the title."""
    fig = plot_residual(res, title=title, **context)
    arrays = {"attn": res.attn.matrix, "mlp": res.mlp.matrix}
    for b, d in res.norm_ratios.items():
        for k, v in d.items():
            arrays[f"norm_{b}_{k}"] = v
    rows = []
    depth = res.attn.matrix.shape[0]
    for i in range(depth):
        row = {"block": i, "cka_attn": float(res.attn.matrix[i, i]), "cka_mlp": float(res.mlp.matrix[i, i])}
        for b, d in res.norm_ratios.items():
            for k, v in d.items():
                row[f"norm_ratio_{b}_{k}"] = float(v[i])
        rows.append(row)
    paths = save_figure(fig, stem, formats, arrays=arrays, meta={**res.meta})
    paths.append(save_table(rows, Path(f"{stem}.csv")))
    return paths


def save_cluster_curves(scores: Mapping[str, Mapping[str, Sequence[float]]], stem: str | Path,
                        formats: Sequence[str] = ("png",), title: str | None = None,
                        meta: Mapping[str, Any] | None = None,
                        blocks: Sequence[int] | Mapping[str, Sequence[int]] | None = None, **context) -> list[Path]:
    """``context``: ``data``, ``n_images``, ``tokens`` for the title."""
    fig = plot_cluster_curves(scores, title=title, blocks=blocks, **context)
    where = _cluster_blocks(scores, blocks)
    rows = [{"model": name, "block": int(where[name][i]), **{m: float(v[i]) for m, v in s.items()}}
            for name, s in scores.items() for i in range(len(where[name]))]
    arrays = {f"{_key(name)}.{m}": np.asarray(v) for name, s in scores.items() for m, v in s.items()}
    arrays.update({f"{_key(name)}.blocks": b for name, b in where.items()})
    paths = save_figure(fig, stem, formats, arrays=arrays, meta={**(meta or {}), "models": list(scores)})
    paths.append(save_table(rows, Path(f"{stem}.csv")))
    return paths


# ----------------------------------------------------------------------------- panels of an analysis result
def _panel_kinds() -> dict:
    return {"similarity": (plot_similarity, save_similarity), "grid": (plot_cka_grid, save_cka_grid),
            "residual": (plot_residual, save_residual), "curves": (plot_cluster_curves, save_cluster_curves)}


def draw_panels(panels: Mapping[str, tuple[str, Any, Mapping[str, Any]]]) -> dict:
    """``{stem: (kind, data, keywords)}`` -> ``{stem: Figure}``; kinds: similarity (a SimilarityResult), grid
    (``{(a, b): result}``), residual (a ResidualResult), curves (``{model: {metric: scores}}``)."""
    kinds = _panel_kinds()
    return {stem: kinds[kind][0](data, **{k: v for k, v in kw.items() if k != "meta"})
            for stem, (kind, data, kw) in panels.items()}


def save_panels(panels: Mapping[str, tuple[str, Any, Mapping[str, Any]]], out: str | Path,
                formats: Sequence[str] = ("png",)) -> list[Path]:
    """Each panel saved with the ``save_*`` function of its kind (the figure and the numbers behind it)."""
    kinds = _panel_kinds()
    paths: list[Path] = []
    for stem, (kind, data, kw) in panels.items():
        paths += kinds[kind][1](data, Path(out) / stem, formats, **kw)
    return paths


__all__ = [
    "draw_panels", "plot_cka", "plot_cka_grid", "plot_cluster_curves", "plot_residual", "plot_similarity",
    "save_cka_grid", "save_cluster_curves", "save_json", "save_panels", "save_residual", "save_similarity",
]
