"""k-NN classification per block (DINO protocol, walmer2023), trained model against its random-weight twin."""
from __future__ import annotations

import numpy as np

from vitscope.report.registry import Section, analysis

KS = (10, 20, 100, 200)


def knn_rows(ctx, seed: int = 0) -> tuple[list[dict], int, int, str]:
    """k-NN rows of the trained model and its random twin: the evaluation images split in two halves (seeded),
    one half voting for the other. Returns (rows, n_train, n_test, token mode); the number of classes is
    :func:`num_classes`."""
    from vitscope.analysis.knn import KNNOptions, evaluate
    from vitscope.features.access import FeatureSplit

    y = np.asarray(ctx.eval_labels)
    mode = "cls" if ctx.block_features("trained", "cls") else "mean"
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = np.sort(perm[len(y) // 2:]), np.sort(perm[: len(y) // 2])
    ks = [k for k in KS if k <= len(tr)] or [len(tr)]
    splits = {}
    for who, label in (("trained", ctx.name), ("random", f"{ctx.name} (random)")):
        f = ctx.block_features(who, mode)
        splits[label] = FeatureSplit({b: v[tr] for b, v in f.items()}, y[tr], {b: v[te] for b, v in f.items()}, y[te])
    result = evaluate(splits, None, KNNOptions(k=tuple(ks), tokens=mode, num_classes=num_classes(ctx)))
    return result.table.to_dict("records"), len(tr), len(te), mode


def num_classes(ctx) -> int:
    """The classes the k-NN votes among: the dataset's, or the largest label + 1 when that is more."""
    return max(len(ctx.classes), int(np.asarray(ctx.eval_labels).max()) + 1)


@analysis("knn", "k-NN classification per block", needs=("images", "labels"), order=56)
def knn_section(ctx) -> Section:
    """Weighted k-NN (cosine similarity, votes exp(s / 0.07), DINO's protocol) on each block's CLS token: half of
    the evaluation images vote for the other half; the random-weight twin for reference."""
    from vitscope.analysis.knn import chance_percent
    from vitscope.viz.per_block import plot_metric_per_block

    if len(ctx.eval_labels) < 20:
        return Section.skip(f"skipped: k-NN needs at least 20 labelled images, got {len(ctx.eval_labels)}")
    rows, n_tr, n_te, mode = ctx.memo("knn_rows", lambda: knn_rows(ctx))
    ks = sorted({r["k"] for r in rows})
    k = 20 if 20 in ks else ks[0]
    sec = Section()
    for m in ("top1", "top5"):
        fig = plot_metric_per_block(rows, metric=f"{m}_k{k}", ylabel=f"{m.replace('top', 'top-')} accuracy (%)",
                                    title=f"k-NN, k={k} ({n_tr} train / {n_te} test)", data=ctx.data_label,
                                    n_images=n_tr + n_te, tokens=mode, chance=chance_percent(num_classes(ctx),
                                                                                             int(m[3:])))
        sec.figure(ctx, fig, f"{m}_k{k}", f"k-NN {m.replace('top', 'top-')} accuracy per block (k={k}); dashed: "
                   f"random weights; grey: chance.")
    best = {who: max((r for r in rows if r["metric"] == f"top1_k{k}" and (r["model"] == ctx.name) == (who == 0)),
                     key=lambda r: r["value"]) for who in (0, 1)}
    sec.add_text(f"Best top-1 (k={k}): {best[0]['value']:.1f}% at block {best[0]['block']}; random weights "
                 f"{best[1]['value']:.1f}% (block {best[1]['block']}).")
    sec.table(ctx, [r for r in rows if r["k"] == k], "per_block", f"k-NN accuracy per block, k={k} (all k in the CSV)",
              columns=["model", "block", "metric", "value"])
    ctx.save_table(rows, "all_k")
    return sec
