"""Attention figures: per-head grids, block x head grids, overlays on images, heat-map frames.

Every plotting function returns a matplotlib Figure (Agg backend, constrained layout) and never calls
``plt.show()``; save it with :func:`vitscope.viz.save.save_figure` so the numbers sit beside the picture.
Grids of maps (heads, or blocks x heads) share one colour scale with a colour bar by default
(``shared_scale=False``: each panel scaled to its own min-max, no colour bar).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, figsize=(4, 3), **kw):
    """A pyplot-free Figure (constrained layout) and its axes grid (no GUI backend, nothing left open; headless)."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


# ----------------------------------------------------------------------------- array helpers
def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().float().cpu().numpy()
    return np.asarray(a)


def denormalize(x, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> np.ndarray:
    """Normalised image(s) (3, H, W) or (B, 3, H, W) -> uint8 (H, W, 3) or (B, H, W, 3) for display."""
    a = _np(x).astype(np.float32)
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    a = a * s + m
    a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.moveaxis(a, -3, -1)


def upsample(m, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Map (rows, cols) -> (H, W) float by bilinear (default) or nearest interpolation."""
    t = torch.as_tensor(_np(m), dtype=torch.float32)[None, None]
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(t, size=tuple(size), mode=mode, **kw)[0, 0].numpy()


def colorize(m, cmap: str = "inferno", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map (H, W) -> RGB uint8 (H, W, 3) through a matplotlib colour map (min-max scaled by default)."""
    a = _np(m).astype(np.float64)
    lo = np.nanmin(a) if vmin is None else vmin
    hi = np.nanmax(a) if vmax is None else vmax
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    rgb = matplotlib.colormaps[cmap](np.clip(np.nan_to_num(a), 0, 1))[..., :3]
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, m, cmap: str = "inferno", alpha: float = 0.6, mode: str = "bilinear",
            vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Blend a coloured map (rows, cols) over an RGB uint8 image (H, W, 3) -> uint8 (H, W, 3).

    The map is coloured on [vmin, vmax] (default: its own min-max)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = np.asarray(image)
    heat = colorize(upsample(m, img.shape[:2], mode), cmap, vmin, vmax)
    return (img.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha + 0.5).astype(np.uint8)


def heatmap_frame(frame: np.ndarray, m, cmap: str = "inferno", alpha: float = 0.6, layout: str = "overlay") -> np.ndarray:
    """One video frame: the map blended over the frame (``overlay``) or frame | heat map (``side``)."""
    if layout == "overlay":
        return overlay(frame, m, cmap, alpha)
    if layout == "side":
        heat = colorize(upsample(m, frame.shape[:2]), cmap)
        return np.concatenate([frame, heat], axis=1)
    raise ValueError(f"layout must be 'overlay' or 'side', got {layout!r}")


def _panel(ax, m, image=None, cmap="inferno", alpha=0.6, title=None, interp_mode="bilinear", vmin=None, vmax=None):
    if image is not None:
        ax.imshow(overlay(image, m, cmap, alpha, interp_mode, vmin, vmax) if alpha > 0 else image)
    else:
        ax.imshow(_np(m), cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _scale(maps: np.ndarray, shared: bool) -> tuple[float | None, float | None]:
    """One (vmin, vmax) for every panel, or (None, None) for each panel's own min-max."""
    if not shared:
        return None, None
    finite = maps[np.isfinite(maps)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _colorbar(fig, axes, cmap: str, vmin: float, vmax: float, label: str) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, ax=axes, shrink=0.8, aspect=30, pad=0.02)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)


# ----------------------------------------------------------------------------- figures
def plot_head_maps(maps, image: np.ndarray | None = None, overlay_image: bool = False, cmap: str = "inferno",
                   alpha: float = 0.6, ncols: int | None = None, title: str | None = None,
                   head_labels: Sequence[str] | None = None, shared_scale: bool = True, label: str = "attention"):
    """Per-head grid for one block: ``maps`` (H, rows, cols). With ``image`` it is shown first; with
    ``overlay_image`` every head is drawn over it. ``shared_scale``: one colour scale for every head, with a
    colour bar labelled ``label``; False: each head scaled to its own min-max."""
    maps = _np(maps)
    H = maps.shape[0]
    n = H + (image is not None)
    ncols = ncols or min(n, 6)
    nrows = -(-n // ncols)
    vmin, vmax = _scale(maps, shared_scale)
    fig, axes = subplots(nrows, ncols, figsize=(1.9 * ncols + (0.7 if shared_scale else 0),
                                                1.9 * nrows + (0.5 if title else 0)))
    k = 0
    if image is not None:
        _panel(axes.flat[0], None, image, alpha=0.0, title="image")
        k = 1
    for h in range(H):
        lab = head_labels[h] if head_labels else f"head {h}"
        _panel(axes.flat[k + h], maps[h], image if overlay_image else None, cmap, alpha, lab, vmin=vmin, vmax=vmax)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if shared_scale:
        _colorbar(fig, axes, cmap, vmin, vmax, label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_block_head_grid(maps, blocks: Sequence[int] | None = None, image: np.ndarray | None = None,
                         cmap: str = "inferno", alpha: float = 0.6, title: str | None = None,
                         shared_scale: bool = True, label: str = "attention", data: str | None = None,
                         n_images: int | None = None, tokens: str | None = None):
    """Block x head grid: ``maps`` (L, H, rows, cols); rows are blocks (labelled with ``blocks``), columns heads.

    ``shared_scale`` (default): one colour scale for the whole grid and a colour bar labelled ``label``; False:
    each panel scaled to its own min-max. ``data`` / ``n_images`` / ``tokens`` are added to the title.
    """
    from vitscope.viz.titles import context_title

    maps = _np(maps)
    L, H = maps.shape[:2]
    blocks = list(blocks) if blocks is not None else list(range(L))
    vmin, vmax = _scale(maps, shared_scale)
    title = context_title(title, data, n_images, tokens)
    fig, axes = subplots(L, H, figsize=(1.3 * H + 0.8 + (0.7 if shared_scale else 0),
                                        1.3 * L + (0.3 + 0.2 * title.count("\n") if title else 0.1)))
    for i in range(L):
        for h in range(H):
            ax = axes[i, h]
            _panel(ax, maps[i, h], image, cmap, alpha, vmin=vmin, vmax=vmax)
            if i == 0:
                ax.set_title(f"head {h}", fontsize=7)
            if h == 0:
                ax.set_ylabel(f"block {blocks[i]}", fontsize=7)
    if shared_scale:
        _colorbar(fig, axes, cmap, vmin, vmax, label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_image_overlays(images: Sequence[np.ndarray], maps, titles: Sequence[str] | None = None,
                        cmap: str = "inferno", alpha: float = 0.6, show_map: bool = True, title: str | None = None):
    """A batch: one row per image with the image, the overlay and (``show_map``) the raw map; each image's map
    on its own scale (the maps of different images are not comparable in general)."""
    maps = _np(maps)
    B = len(images)
    ncols = 3 if show_map else 2
    fig, axes = subplots(B, ncols, figsize=(2.4 * ncols, 2.3 * B + (0.5 if title else 0)))
    for i in range(B):
        lab = titles[i] if titles else f"image {i}"
        _panel(axes[i, 0], None, images[i], alpha=0.0, title=lab)
        _panel(axes[i, 1], maps[i], images[i], cmap, alpha, "overlay")
        if show_map:
            axes[i, 2].imshow(maps[i], cmap=cmap, interpolation="nearest")
            axes[i, 2].set_xticks([])
            axes[i, 2].set_yticks([])
            axes[i, 2].set_title("map", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_frames(frames: Sequence[np.ndarray], labels: Sequence[str] | None = None, title: str | None = None):
    """A strip of rendered frames (e.g. the first and last frames of a heat-map video)."""
    n = len(frames)
    fig, axes = subplots(1, n, figsize=(2.6 * n, 2.4))
    for i, f in enumerate(frames):
        axes[0, i].imshow(f)
        axes[0, i].set_xticks([])
        axes[0, i].set_yticks([])
        if labels:
            axes[0, i].set_title(labels[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
