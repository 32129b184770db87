"""Figures for token-removal curves and per-token ridge probes (vilas2023)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

ORDER_LABELS = {"grads": "class-embedding gradients (seed)", "chefer": "Chefer relevance",
                "probe": "linear probe (ridge ranks)", "random": "random"}
ORDER_COLOURS = {"grads": "C0", "chefer": "C1", "probe": "C2", "random": "0.45"}


def _auc_text(aucs, order: str, direction: str) -> str:
    return f"{aucs[(order, direction, 'auc_seed')]:.3f} | {aucs[(order, direction, 'auc_trapezoid')]:.3f}"


def plot_removal_curves(curves, title: str | None = None, chance: float | None = None):
    """Accuracy against the fraction of patch tokens removed: ``negative`` (least important first) and
    ``positive`` (most important first) side by side, one line per order; random orders in both panels, their
    mean as a line and their range shaded. ``curves``: a :class:`~vitscope.analysis.class_embedding.removal.
    RemovalCurves`. The legend gives each curve's two AUCs: vilas2023's (normalised by the curve's maximum) and
    the trapezoid. ``chance`` (1 / C): a dashed grey line labelled "chance"."""
    import matplotlib.pyplot as plt

    x = curves.fraction
    aucs = curves.aucs()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), sharey=True, layout="constrained")
    for ax, direction, what in zip(axes, ("negative", "positive"), ("least", "most")):
        for (o, d) in curves.correct:
            if d != direction:
                continue
            acc = curves.accuracy(o, d)
            ax.plot(x, acc, marker="o", ms=2.5, color=ORDER_COLOURS.get(o),
                    label=f"{ORDER_LABELS.get(o, o)}: {_auc_text(aucs, o, d)}")
        if curves.random_correct is not None:
            per = curves.random_correct / curves.n_images
            ax.fill_between(x, per.min(0), per.max(0), color=ORDER_COLOURS["random"], alpha=0.2, lw=0)
            ax.plot(x, per.mean(0), ls="--", color=ORDER_COLOURS["random"],
                    label=f"random ({len(per)} orders): {_auc_text(aucs, 'random', 'both')}")
        if chance is not None:
            ax.axhline(float(chance), color="grey", lw=0.9, ls=":", zorder=1, label=f"chance ({float(chance):.3g})")
        ax.set_title(f"{direction}: {what} important removed first", fontsize=10)
        ax.set_xlabel("fraction of patch tokens removed")
        ax.grid(alpha=0.3)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7, frameon=False, title="AUC: seed | trapezoid", title_fontsize=7, loc="lower left")
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1.02)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def removal_figure_files(curves, meta: Mapping | None = None) -> tuple[dict, dict]:
    """What is saved beside a removal-curves figure: the curves (one array per order, ``removed``, each random
    order) and the metadata with both AUCs of every curve."""
    arrays = {"removed": curves.removed}
    for (o, d), acc in curves.curves().items():
        arrays[f"{o}_{d}"] = acc
    if curves.random_correct is not None:
        arrays["random_each"] = curves.random_correct / curves.n_images
    aucs = {f"{o}/{d}/{m}": v for (o, d, m), v in curves.aucs().items()}
    info = {**dict(meta or {}), "n_images": curves.n_images, "n_patches": curves.n_patches,
            "random_seeds": curves.seeds, "aucs": aucs}
    return arrays, info


def save_removal_curves(curves, stem: str | Path, formats: Sequence[str] = ("png",), title: str | None = None,
                        meta: Mapping | None = None) -> list[Path]:
    """Save the curves figure with the curves (.npy per order) and both AUCs (.json) beside it."""
    from vitscope.viz.save import save_figure

    arrays, info = removal_figure_files(curves, meta)
    return save_figure(plot_removal_curves(curves, title), stem, formats, arrays=arrays, meta=info)


def plot_token_probe_accuracy(accuracy: np.ndarray, tokens: Sequence[str], title: str | None = None,
                              blocks: Sequence[int] | None = None, label: str = "accuracy",
                              chance: float | None = None):
    """Heat map of a per-token probe metric, blocks x token positions (NaN where a token is absent); ``chance``
    (1 / C for accuracy) is marked on the colour bar by a dashed line labelled "chance"."""
    import matplotlib.pyplot as plt

    a = np.asarray(accuracy, float)
    L, T = a.shape
    blocks = list(blocks) if blocks is not None else list(range(L))
    fig, ax = plt.subplots(figsize=(min(max(4.6, 2.0 + 0.13 * T), 14.0), 1.2 + 0.32 * L), layout="constrained")
    im = ax.imshow(np.ma.masked_invalid(a), aspect="auto", cmap="viridis", vmin=0,
                   vmax=1 if label == "accuracy" else None, interpolation="nearest")
    ax.set_yticks(range(L), [str(b) for b in blocks])
    ax.set_ylabel("block")
    step = max(1, int(np.ceil(T / 24)))
    special = [i for i, t in enumerate(tokens) if not t.startswith("patch")]
    ticks = sorted(set(range(0, T, step)) | set(special))
    ax.set_xticks(ticks, [tokens[i].replace("patch", "") for i in ticks], rotation=90, fontsize=6)
    ax.set_xlabel("token (patch index; cls, dist, reg<k> named)")
    bar = fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    if chance is not None:
        bar.ax.axhline(float(chance), color="white", ls="--", lw=1.2, label=f"chance ({float(chance):.3g})")
        bar.ax.axhline(float(chance), color="black", ls=":", lw=1.2)
    if title:
        fig.suptitle(title, fontsize=10)             # centred on the figure: the colour bar narrows the axes
    return fig
