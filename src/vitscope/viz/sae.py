"""Figures of SAE evaluations: latent density, sparsity against reconstruction, features against known factors,
and a latent's patch heat map."""
from __future__ import annotations

import numpy as np

from vitscope.viz.titles import context_title


def plot_density(density: dict[str, np.ndarray], bins: int = 30, data: str | None = None,
                 n_images: int | None = None, tokens: str | None = None):
    """Histogram of log10 latent firing frequency, one line per SAE (dead latents counted in the title); ``data``,
    ``n_images``, ``tokens``: the title's context line (:mod:`vitscope.viz.titles`)."""
    import matplotlib.pyplot as plt

    from vitscope.analysis.sae.metrics import density_histogram

    fig, ax = plt.subplots(figsize=(6, 3.5))
    dead = []
    for name, d in density.items():
        counts, edges = density_histogram(np.asarray(d), bins)
        ax.stairs(counts, edges, label=name)
        dead.append(int((np.asarray(d) == 0).sum()))
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(context_title(f"latent density (dead: {', '.join(map(str, dead))})", data, n_images, tokens),
                 fontsize=10)
    if len(density) <= 8:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_sparsity_fidelity(table, data: str | None = None, n_images: int | None = None, tokens: str | None = None):
    """FVU against L0, one point per SAE (the sparsity / reconstruction trade-off); ``data``, ``n_images``,
    ``tokens``: the title's context line."""
    import matplotlib.pyplot as plt

    w = table.pivot_table(index="sae", columns="metric", values="value", aggfunc="first")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(w["l0"], w["fvu"])
    for name, r in w.iterrows():
        ax.annotate(str(name), (r["l0"], r["fvu"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.margins(x=0.25, y=0.2)                          # room for the labels beside the outermost points
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("FVU")
    l0 = w["l0"].to_numpy(dtype=float)
    if l0.size and l0.min() > 0 and l0.max() / l0.min() >= 10:     # log only over a decade or more: a narrow
        ax.set_xscale("log")                                        # log axis labels every minor tick
    ax.set_title(context_title("sparsity vs reconstruction", data, n_images, tokens), fontsize=10)
    fig.tight_layout()
    return fig


def plot_factors(rows, data: str | None = None, n_images: int | None = None, tokens: str | None = None):
    """Per generating factor: the best unit's AUROC (mean over the factor's concepts) for each basis, and as a black
    tick the held-out AUROC of a linear probe on the raw neurons (the stream's linear ceiling when it is no wider than
    the probe; the axis starts at 0.5, an AUROC's chance level); ``data``, ``n_images``, ``tokens``: the title's
    context line."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    g = df.groupby(["factor", "basis"])["best_auroc"].mean().unstack("basis")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bases = list(g.columns)
    x = np.arange(len(g))
    width = 0.8 / max(1, len(bases))
    for j, b in enumerate(bases):
        ax.bar(x + j * width - 0.4 + width / 2, g[b].values, width, label=b)
    if "probe_auroc" in df and (df["basis"] == "neurons").any():     # the stream's linear ceiling, per factor
        ceil = df[df["basis"] == "neurons"].groupby("factor")["probe_auroc"].mean().reindex(g.index)
        ax.scatter(x, ceil.values, marker="_", s=900, color="k", lw=1.5, zorder=3,
                   label="linear probe on the neurons")
    ax.axhline(0.9, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, g.index, rotation=20)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("best-unit AUROC")
    ax.set_title(context_title("best unit per generating factor (AUROC, mean over its values)", data, n_images,
                               tokens), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), markerscale=0.3, frameon=False)
    fig.tight_layout()
    return fig


def plot_latent_patches(image: np.ndarray, heat: np.ndarray, ax=None, title: str | None = None):
    """An image (H, W, 3) with a latent's activation over its patches (g, g) drawn on top."""
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(image)
    h, w = image.shape[:2]
    ax.imshow(heat, cmap="inferno", alpha=0.55, extent=(0, w, h, 0), interpolation="nearest",
              vmin=0, vmax=max(float(heat.max()), 1e-9))
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=7)
    return fig or ax.figure
