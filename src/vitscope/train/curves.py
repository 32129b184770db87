"""Loss and accuracy curves of a training run (a matplotlib Figure; saved with its numbers)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def plot_curves(history: Sequence[Mapping], title: str | None = None):
    """history: one dict per epoch with epoch, train_loss, val_loss, train_acc, val_acc -> Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ep = np.array([h["epoch"] for h in history], dtype=float)
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_l, ax_a = fig.subplots(1, 2)
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        ax_l.plot(ep, [h.get(key, np.nan) for h in history], style, ms=3, label=key.replace("_", " "))
    for key, style in (("train_acc", "-o"), ("val_acc", "-s")):
        ax_a.plot(ep, [100 * h.get(key, np.nan) for h in history], style, ms=3, label=key.replace("_", " "))
    best = int(np.nanargmax([h.get("val_acc", np.nan) for h in history])) if history else None
    if best is not None:
        ax_a.axvline(ep[best], color="grey", lw=0.8, ls=":")
        ax_a.annotate(f"best {100 * history[best]['val_acc']:.1f}%", (ep[best], 100 * history[best]["val_acc"]),
                      textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax_l.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_a.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
