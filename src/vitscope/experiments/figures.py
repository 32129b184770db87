"""What `vitscope results` prints and draws, from the results table alone.

* metric per block per model (every analysis with per-block rows: k-NN, retrieval, DAVIS, keypoints,
  clustering, attention distance, saliency, ...), one figure per (analysis, metric, dataset, task);
* CKA grids across models (rows with ``metric == "cka"`` and a ``model2``), one per (analysis, dataset);
* probe gains per model and experiment (rows with ``metric == "gain"``, the experiment in ``task``);
* identifiability evolution (rows with ``metric == "identifiability"``), with the chance level (the analysis's
  ``identifiability_chance`` row, else 0.5).
"""
from __future__ import annotations

import re

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitscope.experiments.spec import slug

IDENTIFIABILITY = "identifiability"
GAIN = "gain"
CKA = "cka"


def _isna(s):
    return s.isna()


def per_block_rows(df):
    """Rows that are one value per (model, block): no head, no second model, not a gain, not a p-value."""
    keep = (df["block"].notna() & _isna(df["head"]) & _isna(df["model2"]) & (df["metric"] != GAIN)
            & ~df["metric"].astype(str).str.endswith("_p_value"))
    return df[keep]


def _chance(ok, analysis: str, dataset: str) -> float:
    """The identifiability chance level the analysis recorded ((C + 1) / 2C), else 0.5."""
    c = ok[(ok["metric"] == f"{IDENTIFIABILITY}_chance") & (ok["analysis"] == analysis) & (ok["dataset"] == dataset)]
    return float(c["value"].iloc[0]) if len(c) and c["value"].nunique() == 1 else 0.5


_HIGHER = re.compile(r"^(top\d|acc|accuracy|mAP|mP@|pck|[JF]&?F?-(Mean|Recall)|J&F-Mean|nmi|ari|purity|saliency_iou|"
                     r"identifiability$|knn|auroc|pointing|r2|fve|agreement)", re.I)
_LOWER = re.compile(r"(-Decay$|^fvu|^kl$|^error|_drop$)", re.I)


_PERCENT = re.compile(r"^(top\d+_k\d+|mAP_|mP@|pck@)")


def metric_label(metric: str) -> str:
    """The y label of a metric in the study table: ``"<metric> (%)"`` for the metrics the analyses write in percent
    (k-NN top-k, retrieval mAP / mP@k, keypoint PCK), so that their axis spans 0-100; else the metric's name."""
    return f"{metric} (%)" if _PERCENT.search(str(metric)) else str(metric)


def metric_direction(metric: str) -> str | None:
    """"higher" or "lower" for metrics where a better block has a higher (accuracy, mAP, PCK, J&F, NMI ...) or
    lower (decay, FVU, KL) value; None where "best" means nothing (attention distance, CKA, norm ratios, gains)."""
    if _LOWER.search(str(metric)):
        return "lower"
    if _HIGHER.search(str(metric)):
        return "higher"
    return None


def summary_text(df, max_errors: int = 10) -> str:
    """A few lines: cells by status, models, datasets, analyses, and, for metrics where higher (or lower) is better,
    the best block of each model (:func:`metric_direction`; other metrics have no best block)."""
    lines = []
    cells = df.drop_duplicates("cell")
    st = cells["status"].value_counts().to_dict()
    studies = ", ".join(sorted(set(df["study"].dropna())))
    lines.append(f"study {studies}: {len(cells)} cells ({', '.join(f'{v} {k}' for k, v in sorted(st.items()))}), "
                 f"{int((df['status'] == 'ok').sum())} rows")
    ok = df[df["status"] == "ok"]
    for col, word in (("model", "models"), ("dataset", "datasets"), ("analysis", "analyses")):
        lines.append(f"  {word}: {', '.join(dict.fromkeys(ok[col].dropna())) or '-'}")
    pb = per_block_rows(ok)
    if not pb.empty:
        lines.append("  best block per model (value at that block), for metrics where higher or lower is better:")
        for (ana, metric, ds), g in pb.dropna(subset=["value"]).groupby(["analysis", "metric", "dataset"],
                                                                       sort=False):
            way = metric_direction(metric)
            if way is None:
                continue
            pick = g.groupby("model", sort=False)["value"]
            best = g.loc[pick.idxmax() if way == "higher" else pick.idxmin()]
            items = [f"{r.model} {r.value:.3g} @{int(r.block)}" for r in best.itertuples()]
            lines.append(f"    {ana}/{metric} ({way} is better) [{ds}]: " + "; ".join(items))
    bad = df[df["status"] != "ok"].drop_duplicates("cell")
    for r in bad.head(max_errors).itertuples():
        lines.append(f"  {r.status}: {r.cell}: {r.error}")
    if len(bad) > max_errors:
        lines.append(f"  ... and {len(bad) - max_errors} more (column 'error' of the table)")
    return "\n".join(lines)


def _cka_pairs(g) -> dict[tuple[str, str], Any]:
    """``{(model, model2): SimilarityResult}`` of the CKA rows, rows and columns named by the table's block numbers
    (a model whose CLS enters late has blocks 6, 7, not 0, 1)."""
    from vitscope.analysis.similarity.compare import SimilarityResult

    pairs: dict[tuple[str, str], Any] = {}
    for (a, b), p in g.groupby(["model", "model2"], sort=False):
        m = p.pivot_table(index="block", columns="block2", values="value", aggfunc="mean")
        rows, cols = [str(int(x)) for x in m.index], [str(int(x)) for x in m.columns]
        pairs[(a, b)] = SimilarityResult(m.to_numpy(), rows, cols, {"metric": "cka"})
        if a != b and (b, a) not in pairs:
            pairs[(b, a)] = SimilarityResult(m.to_numpy().T, cols, rows, {"metric": "cka"})
    models = list(dict.fromkeys([a for a, _ in pairs] + [b for _, b in pairs]))
    return {(a, b): pairs[(a, b)] for a in models for b in models if (a, b) in pairs}


def write_figures(df, out_dir: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Draw every comparison figure the table has rows for; returns the image paths (numbers saved beside)."""
    from vitscope.viz.per_block import save_metric_per_block
    from vitscope.viz.save import save_figure

    out_dir = Path(out_dir)
    ok = df[df["status"] == "ok"]
    written: list[Path] = []
    fmt0 = formats[0]

    pb = per_block_rows(ok)
    for (ana, metric, ds, task), g in pb.groupby(["analysis", "metric", "dataset", pb["task"].fillna("")],
                                               sort=False):
        stem = out_dir / "per_block" / "__".join(slug(x) for x in (ana, metric, ds, task) if x)
        title = f"{metric} ({ana}{', ' + task if task else ''})"        # the dataset: the title's second line
        table = g[["model", "block", "metric", "value", "task", "dataset", "analysis"]]
        if metric == IDENTIFIABILITY:
            from vitscope.viz.experiments import plot_identifiability

            paths = save_figure(plot_identifiability(table, title=title, chance=_chance(ok, ana, ds), data=ds), stem,
                                formats)
            table.to_csv(stem.with_name(stem.name + ".csv"), index=False)
        else:
            paths = save_metric_per_block(table, stem, metric=metric, formats=formats, title=title, data=ds,
                                          ylabel=metric_label(metric))
        written += [p for p in paths if p.suffix == f".{fmt0}"]

    cka = ok[(ok["metric"] == CKA) & ok["model2"].notna() & ok["block2"].notna()]
    for (ana, ds), g in cka.groupby(["analysis", "dataset"], sort=False):
        from vitscope.viz.similarity import save_cka_grid

        stem = out_dir / "cka" / f"{slug(ana)}__{slug(ds)}"
        paths = save_cka_grid(_cka_pairs(g), stem, formats, title=f"{ana} across models", data=ds)
        g.to_csv(stem.with_name(stem.name + ".csv"), index=False)
        written += [p for p in paths if p.suffix == f".{fmt0}"]

    gains = ok[ok["metric"] == GAIN]
    for ana, g in gains.groupby("analysis", sort=False):
        from vitscope.viz.experiments import plot_probe_gains

        stem = out_dir / "probes" / f"{slug(ana)}__gains"
        sets = list(dict.fromkeys(g["dataset"].dropna()))
        paths = save_figure(plot_probe_gains(g, title=f"{ana}: gain per model and experiment",
                                             data=sets[0] if len(sets) == 1 else
                                             f"mean over {len(sets)} datasets" if sets else None),
                            stem, formats)
        g.to_csv(stem.with_name(stem.name + ".csv"), index=False)
        written += [p for p in paths if p.suffix == f".{fmt0}"]
    return written
