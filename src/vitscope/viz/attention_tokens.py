"""CLS / register pages (cls-register), position-embedding similarity grids and patch-embedding filters (probing-vits)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vitscope.viz.attention import _colorbar, _panel, _scale, subplots


def plot_token_page(image: np.ndarray | None, maps, token: str, block: int, cmap: str = "inferno",
                    ncols: int | None = None, shared_scale: bool = True, title: str | None = None):
    """One PDF page: the image and the per-head maps (H, rows, cols) of ``token``'s attention over patches.

    ``shared_scale``: one colour scale for every head with a colour bar (False: each head's own min-max);
    ``title`` replaces the default "<TOKEN> -> patches, block <b>"."""
    maps = np.asarray(maps, float)
    H = maps.shape[0]
    n = H + (image is not None)
    ncols = min(ncols or 6, n)
    nrows = -(-n // ncols)
    vmin, vmax = _scale(maps, shared_scale)
    fig, axes = subplots(nrows, ncols, figsize=(2.1 * ncols + (0.7 if shared_scale else 0), 2.1 * nrows + 0.6))
    k = 0
    if image is not None:
        _panel(axes.flat[0], None, image, alpha=0.0, title="image")
        k = 1
    for h in range(H):
        _panel(axes.flat[k + h], maps[h], None, cmap, 0.0, f"head {h}", vmin=vmin, vmax=vmax)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if shared_scale:
        _colorbar(fig, axes, cmap, vmin, vmax, "attention")
    name = token.upper() if token in ("cls", "dist") else token
    fig.suptitle(title or f"{name} -> patches, block {block}", fontsize=11)
    return fig


def tokens_pdf(path: str | Path, image: np.ndarray | None, maps: Mapping[str, np.ndarray], block: int,
               cmap: str = "inferno") -> Path:
    """Multi-page PDF: one page per token (CLS first, then each register), image + per-head maps."""
    from matplotlib.backends.backend_pdf import PdfPages

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with PdfPages(path) as pdf:
        for token, m in maps.items():
            fig = plot_token_page(image, m, token, block, cmap)
            pdf.savefig(fig)
    return path


def plot_position_similarity(sim, cmap: str = "viridis", title: str | None = "Position embedding similarity"):
    """probing-vits's grid: for each patch (i, j), the cosine similarity of its embedding to all patches."""
    sim = np.asarray(sim, float)
    R, C = sim.shape[:2]
    fig, axes = subplots(R, C, figsize=(0.55 * C + 1.6, 0.55 * R + 1.0))
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
    im = None
    for i in range(R):
        for j in range(C):
            ax = axes[i, j]
            im = ax.imshow(sim[i, j], cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(str(i + 1), fontsize=6, rotation=0, labelpad=6)
            if i == R - 1:
                ax.set_xlabel(str(j + 1), fontsize=6)
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    fig.supxlabel("patch column", fontsize=8)
    fig.supylabel("patch row", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_patch_filters(filters, ncols: int = 7, title: str | None = "Patch-embedding filters"):
    """RGB filters (n, p, p, C) in [0, 1]; C = 3 shown in colour, other C as the mean over channels."""
    f = np.asarray(filters, float)
    n = f.shape[0]
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = subplots(nrows, ncols, figsize=(max(1.1 * ncols, 3.0), 1.1 * nrows + 0.5))
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        img = f[k] if f.shape[-1] == 3 else f[k].mean(-1)
        ax.imshow(img, interpolation="nearest", cmap=None if f.shape[-1] == 3 else "gray")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
