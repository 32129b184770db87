"""Qualitative figures of the dense evaluations: propagated masks over frames (DAVIS) and matched keypoints
(SPair). Each returns a matplotlib Figure; save it with ``vitscope.viz.save.save_figure``."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _colour(ids: np.ndarray) -> np.ndarray:
    from vitscope.data.tasks.davis import davis_palette

    pal = np.asarray(davis_palette(), dtype=np.uint8).reshape(256, 3)
    return pal[np.asarray(ids, dtype=np.uint8)]


def plot_propagation(frames: np.ndarray, pred_ids: np.ndarray, gt_ids: np.ndarray | None = None, n_show: int = 6,
                     alpha: float = 0.55, title: str | None = None, contours: bool = True):
    """Frames (T, H, W, 3) uint8 with the propagated object ids (T, H, W) over them, ``n_show`` frames spread
    over the clip; a second row with the ground truth when given. Frame 0 shows the given first mask. With
    ``contours`` each object's boundary is drawn in its colour (a contour of its mask at 0.5)."""
    import matplotlib.pyplot as plt

    T = len(frames)
    idx = np.unique(np.linspace(0, T - 1, min(n_show, T)).round().astype(int))
    rows = 2 if gt_ids is not None else 1
    fig, axes = plt.subplots(rows, len(idx), figsize=(1.7 * len(idx), 1.8 * rows), squeeze=False,
                             layout="constrained")
    for j, t in enumerate(idx):
        for r, ids in enumerate([pred_ids] + ([gt_ids] if gt_ids is not None else [])):
            ax = axes[r, j]
            img = frames[t].astype(np.float32)
            m = np.asarray(ids[t]) > 0
            over = img.copy()
            over[m] = (1 - alpha) * img[m] + alpha * _colour(ids[t])[m]
            ax.imshow(over.astype(np.uint8))
            if contours:
                _draw_contours(ax, np.asarray(ids[t]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
        axes[0, 0].set_ylabel("propagated", fontsize=8)
        if gt_ids is not None:
            axes[1, 0].set_ylabel("ground truth", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _draw_contours(ax, ids: np.ndarray) -> None:
    """The boundary of each object id > 0 of ``ids`` (H, W), in the object's palette colour, on ``ax``."""
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    for k in np.unique(ids):
        if k > 0:
            ax.contour((ids == k).astype(np.float32), levels=[0.5], colors=[_colour(np.array([k]))[0] / 255.0],
                       linewidths=1.0)
    ax.set_xlim(xlim)                                   # keep the picture's extent (contour autoscales)
    ax.set_ylim(ylim)


def plot_keypoint_matches(matches: Sequence[dict], n_show: int = 4, title: str | None = None):
    """Source / target image pairs side by side: source keypoints, ground-truth target keypoints (circles) and
    predictions (crosses: green when within alpha = 0.1 of the target box's longer side, red otherwise), with a
    line from each ground truth to its prediction. ``matches``: the ``evaluate_spair(..., keep_matches=n)``
    entries."""
    import textwrap

    import matplotlib.pyplot as plt

    show = list(matches)[:n_show]
    if not show:
        raise ValueError("no keypoint matches to draw")
    # one row per pair, headed by the pair's name across both panels (SPair names are long: they would run into
    # the neighbouring panel's title if they were part of it)
    fig = plt.figure(figsize=(4.4, 2.35 * len(show)), layout="constrained")
    rows = fig.subfigures(len(show), 1, squeeze=False)[:, 0]
    cmap = plt.get_cmap("tab10")
    for row, m in zip(rows, show):
        a, b = row.subplots(1, 2)
        row.suptitle(textwrap.fill(str(m["pair"]), 60), fontsize=7)
        a.imshow(m["src_image"])
        b.imshow(m["trg_image"])
        ok = np.linalg.norm(np.asarray(m["pred"], float) - m["trg_kps"], axis=1) < 0.1 * m["threshold"]
        for k, ((sx, sy), (tx, ty), (px, py)) in enumerate(zip(m["src_kps"], m["trg_kps"], m["pred"])):
            c = cmap(k % 10)
            a.plot(sx, sy, "o", ms=5, mfc=c, mec="white", mew=0.8)
            b.plot(tx, ty, "o", ms=5, mfc="none", mec=c, mew=1.2)
            b.plot(px, py, "x", ms=6, color="lime" if ok[k] else "red", mew=1.5)
            b.plot([tx, px], [ty, py], "-", color=c, lw=0.8, alpha=0.8)
        a.set_title("source", fontsize=7)
        b.set_title(f"target: {int(ok.sum())}/{len(ok)} within 0.1 L", fontsize=7)
        for ax in (a, b):
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
