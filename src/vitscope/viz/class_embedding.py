"""Figures of the class embedding space (vilas2023): identifiability over blocks, change rates, residual match,
class- vs context-labelled tokens, memories and perturbations. Each takes the tidy rows of
``vitscope.analysis.class_embedding`` and returns a Figure."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _df(rows):
    import pandas as pd

    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def _colours(names):
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def plot_identifiability_evolution(rows, num_classes: int | None = None, title: str | None = None):
    """Mean identifiability score per block, CLS and patch tokens (one panel each), trained (solid) against the
    random-weight model (dashed); a star marks blocks where trained > random (one-sided Wilcoxon, p < 0.05).
    The dotted line is chance, (C + 1) / 2C (0.5 for many classes)."""
    import matplotlib.pyplot as plt

    df = _df(rows)
    df = df[df["metric"] == "identifiability"]
    kinds = [k for k in ("cls", "patches") if k in set(df["token"])]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.3), layout="constrained", squeeze=False)
    colours = _colours(list(dict.fromkeys(df["model"])))
    for ax, kind in zip(axes[0], kinds):
        for name, part in df[df["token"] == kind].groupby("model", sort=False):
            part = part.sort_values("block")
            c = colours[name]
            ax.plot(part["block"], part["value"], "-o", ms=3.5, color=c, label=name)
            if "random" in part and part["random"].notna().any():
                ax.plot(part["block"], part["random"], "--", color=c, alpha=0.7, label=f"{name} (random)")
                if "significant" in part.columns:
                    sig = part[part["significant"].fillna(False).astype(bool)]
                    ax.plot(sig["block"], sig["value"] + 0.02, "*", color=c, ms=7, ls="none")
        if num_classes:
            ax.axhline((num_classes + 1) / (2 * num_classes), color="grey", ls=":", lw=1, label="chance")
        ax.set_title("CLS token" if kind == "cls" else "patch tokens")
        ax.set_xlabel("block")
        ax.set_ylabel("identifiability (1 - rank / C)")
        ax.set_ylim(0.3, 1.05)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_change_rates(rows, title: str | None = None):
    """Block change rate (true-class logit rises from block b-1 to b) and branch change rates (the attention / MLP
    output of block b projects higher than block b-1's output), CLS and patch tokens."""
    import matplotlib.pyplot as plt

    df = _df(rows)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), layout="constrained")
    for ax, kind in zip(axes, ("cls", "patches")):
        for metric, style in (("block_change", "-o"), ("attn_change", "-s"), ("mlp_change", "-^")):
            part = df[(df["metric"] == metric) & (df["token"] == kind)].sort_values("block")
            if len(part):
                ax.plot(part["block"], part["value"], style, ms=3.5, label=metric.replace("_", " "))
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1)
        ax.set_title("CLS token" if kind == "cls" else "patch tokens")
        ax.set_xlabel("block")
        ax.set_ylabel("share of tokens")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_residual_match(rows, title: str | None = None):
    """Share of tokens whose top-1 class of the block output equals that of the attention output, the MLP output,
    the previous block, or none of them ("composition")."""
    import matplotlib.pyplot as plt

    df = _df(rows)
    fig, ax = plt.subplots(figsize=(4.8, 3.2), layout="constrained")
    for metric in ("match_attn", "match_mlp", "match_prev", "composition"):
        part = df[df["metric"] == metric].sort_values("block")
        if len(part):
            ax.plot(part["block"], part["value"], "-o", ms=3.5, label=metric.replace("_", " "))
    ax.set_ylim(0, 1)
    ax.set_xlabel("block")
    ax.set_ylabel("share of tokens (top-1 class)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or "residual match", fontsize=10)
    return fig


def plot_class_context(rows, title: str | None = None):
    """Mean of class-labelled minus context-labelled patch tokens per block; stars where the permutation p < 0.05."""
    import matplotlib.pyplot as plt

    df = _df(rows)
    fig, ax = plt.subplots(figsize=(4.8, 3.2), layout="constrained")
    for metric, part in df.groupby("metric", sort=False):
        part = part.sort_values("block")
        line = ax.plot(part["block"], part["value"], "-o", ms=3.5, label=metric.replace("class_minus_context_", ""))
        sig = part[part["p_value"] < 0.05]
        ax.plot(sig["block"], sig["value"], "*", ms=9, color=line[0].get_color(), ls="none")
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("block")
    ax.set_ylabel("class - context")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or "class- vs context-labelled tokens", fontsize=10)
    return fig


def plot_memories(rows, title: str | None = None):
    """Class-value agreement (trained vs random weights), key-value agreement rate (true vs random class) and
    compositionality, per block, for the attention and MLP memories."""
    import matplotlib.pyplot as plt

    df = _df(rows)
    panels = [("class_value_agreement", "max cosine (class, value)"), ("key_value_agreement", "% agreeing tokens"),
              ("compositionality", "% tokens")]
    panels = [p for p in panels if p[0] in set(df["metric"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2), layout="constrained", squeeze=False)
    for ax, (metric, ylabel) in zip(axes[0], panels):
        part = df[df["metric"] == metric]
        if "tokens" in part and metric == "key_value_agreement":
            part = part[part["tokens"] == "all"]
        for i, kind in enumerate(("attn", "mlp")):
            p = part[part["kind"] == kind].sort_values("block")
            if not len(p):
                continue
            ax.plot(p["block"], p["value"], "-o", ms=3.5, color=f"C{i}", label=kind)
            if "random" in p and p["random"].notna().any():
                base = "random weights" if metric == "class_value_agreement" else "random class"
                ax.plot(p["block"], p["random"], "--", color=f"C{i}", alpha=0.7, label=f"{kind} ({base})")
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_xlabel("block")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_perturbation(rows, title: str | None = None, order: Sequence[str] = ("none", "self_only", "no_cls",
                                                                              "no_context", "no_class"),
                      chance: float | None = None):
    """Share of identifiable tokens at the last block, unperturbed and under each perturbation (bars); for token
    dropping, the unperturbed share of the same kind of patches is drawn as a grey tick. ``chance`` (in %, 100 / C:
    a token is identifiable when its true class ranks first of C): a dashed grey line labelled "chance"."""
    import matplotlib.pyplot as plt

    df = _df(rows)
    df = df[df["metric"] == "identifiable_rate"]
    models = list(dict.fromkeys(df["model"]))
    kinds = [k for k in order if k in set(df["perturbation"])]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 1.1 * len(kinds) * max(1, len(models)) ** 0.5), 3.2),
                           layout="constrained")                       # at least the width of a two-line title
    w = 0.8 / max(len(models), 1)
    for j, name in enumerate(models):
        part = df[df["model"] == name].set_index("perturbation")
        xs = np.arange(len(kinds)) + (j - (len(models) - 1) / 2) * w
        vals = [100 * float(part.loc[k, "value"]) if k in part.index else np.nan for k in kinds]
        ax.bar(xs, vals, w * 0.9, label=name)
        for x, v in zip(xs, vals):
            if np.isfinite(v):
                ax.text(x, v + 1, f"{v:.1f}", ha="center", fontsize=7)
        if "baseline" in part:
            for x, k in zip(xs, kinds):
                if k in part.index and np.isfinite(part.loc[k, "baseline"]):
                    ax.hlines(100 * part.loc[k, "baseline"], x - w * 0.45, x + w * 0.45, color="k", lw=2)
    if chance is not None:
        ax.axhline(float(chance), color="grey", lw=0.9, ls="--", zorder=0, label=f"chance ({float(chance):.3g})")
    ax.set_xticks(np.arange(len(kinds)), [k.replace("_", " ") for k in kinds], fontsize=8)
    ax.set_ylabel("% identifiable tokens (last block)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    if "baseline" in df and df["baseline"].notna().any():
        ax.plot([], [], color="k", lw=2, label="unperturbed, same kind of patches")
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.set_title(title or "perturbations", fontsize=10)
    return fig
