"""Representation sections: CKA layer x layer, and k-means clustering scores per block.
Computation comes from ``vitscope.analysis.similarity`` and ``vitscope.analysis.cluster``."""
from __future__ import annotations

import numpy as np

from vitscope.report.registry import Section, analysis


@analysis("cka", "CKA between blocks", needs=("images",), order=50)
def cka_section(ctx) -> Section:
    """Linear CKA (unbiased HSIC, full data) between every pair of block outputs, on the mean of the patch
    tokens and on all tokens; and between the trained model and its random-weight twin."""
    from vitscope.analysis.similarity.cka import CKAOptions, evaluate
    from vitscope.viz.similarity import plot_cka

    n = len(ctx.eval_images)
    if n < 8:
        return Section.skip(f"skipped: CKA needs at least 8 images, got {n}")
    sec = Section()
    for mode, label in (("mean", "mean of patch tokens"), ("all", "all tokens")):
        feats = ctx.block_features("trained", mode)
        if feats is None:
            sec.add_text(f"CKA on {label} left out: the features would not fit in memory; use --n-eval lower.")
            continue
        res = evaluate({"trained": feats}, None, CKAOptions(tokens=mode)).arrays["results"][("trained", "trained")]
        fig = plot_cka(res, title=f"CKA, block outputs ({label})", xlabel="block", ylabel="block",
                       data=ctx.data_label, n_images=n)
        sec.figure(ctx, fig, f"layers_{mode}", f"Linear CKA between block outputs, {label}.",
                   arrays={"cka": res.matrix})
        if mode == "mean":
            m = res.matrix
    feats = {"trained": ctx.block_features("trained", "mean"), "random": ctx.block_features("random", "mean")}
    res = evaluate(feats, None, CKAOptions(tokens="mean")).arrays["results"][("trained", "random")]
    fig = plot_cka(res, title="CKA, trained (rows) vs random weights (columns)", xlabel="block (random)",
                   ylabel="block (trained)", data=ctx.data_label, n_images=n, tokens="mean of patch")
    sec.figure(ctx, fig, "trained_vs_random", "Where the trained model's representations still resemble those "
               "of a random network (mean of patch tokens).", arrays={"cka": res.matrix})
    sec.add_text(f"Adjacent blocks: CKA {np.mean(np.diag(m, 1)):.2f} on average; first vs last block "
                 f"{m[0, -1]:.2f}.")
    return sec


@analysis("clustering", "Clustering scores per block", needs=("images", "labels"), order=55)
def clustering(ctx) -> Section:
    """k-means (k = number of classes, seed 0, 10 inits) on the CLS token and on the mean patch token of every
    block, scored against the labels by NMI, ARI and purity (walmer2023); the random-weight twin for reference."""
    from vitscope.analysis.cluster import ClusterOptions, evaluate
    from vitscope.viz.similarity import plot_cluster_curves

    y = ctx.eval_labels
    k = len(ctx.classes)
    if len(y) < 2 * k:
        return Section.skip(f"skipped: {len(y)} labelled images are too few for k-means with k={k}")
    sec = Section()
    rows = []
    for mode, label in (("cls", "CLS token"), ("mean", "mean patch token")):
        feats = {who: ctx.block_features(who, mode) for who in ("trained", "random")}
        if not feats["trained"]:
            continue
        result = evaluate(feats, y, ClusterOptions(tokens=mode, k=k))
        curves, blocks = result.arrays["scores"], result.arrays["blocks"]
        rows += [{"tokens": label, "model": who, "block": str(b), **{m: round(float(v[j]), 4) for m, v in s.items()}}
                 for who, s in curves.items() for j, b in enumerate(blocks[who])]
        fig = plot_cluster_curves(curves, title=f"k-means on the {label} (k={k})", data=ctx.data_label,
                                  n_images=len(y), blocks=blocks)
        if blocks["trained"][0] > 0:
            sec.add_text(f"CLS exists from block {blocks['trained'][0]}: its curves are over blocks "
                         f"{blocks['trained']}.")
        sec.figure(ctx, fig, mode, f"NMI, ARI and purity per block, {label}.",
                   arrays={f"{who}_{m}": v for who, s in curves.items() for m, v in s.items()})
    sec.table(ctx, rows, "scores", "Clustering scores per block")
    return sec


@analysis("residual_cka", "Residual CKA: skip vs branches", needs=("images",), order=52)
def residual_cka(ctx) -> Section:
    """walmer2023's residual analysis: CKA between each block's skip input and its attention / MLP branch output
    (all tokens, minibatch unbiased HSIC), and the norm ratios ||skip|| / ||branch||."""
    from vitscope.analysis.similarity.cka import CKAOptions, evaluate
    from vitscope.viz.similarity import plot_residual

    if len(ctx.eval_images) < 8:
        return Section.skip(f"skipped: residual CKA needs at least 8 images, got {len(ctx.eval_images)}")
    opts = CKAOptions(comparison="residual", tokens="all", batch_size=max(ctx.batch_size, 8))
    res = evaluate({ctx.name: ctx.model}, ctx.eval_images, opts).arrays["results"][ctx.name]
    sec = Section()
    ratios = res.norm_ratios
    fig = plot_residual(res, title="residual CKA", data=ctx.data_label, n_images=res.meta["n_images"], tokens="all")
    sec.figure(ctx, fig, "residual", "Left, middle: skip input (rows) vs branch output (columns) per block; "
               "right: how much larger the residual stream is than what each branch adds.",
               arrays={"attn": res.attn.matrix, "mlp": res.mlp.matrix,
                       **{f"ratio_{b}_{t}": v for b, d in ratios.items() for t, v in d.items()}})
    rows = [{"block": i, "CKA(skip, attn)": round(float(res.attn.matrix[i, i]), 4),
             "CKA(skip, mlp)": round(float(res.mlp.matrix[i, i]), 4),
             **{f"ratio {b} ({t})": round(float(v[i]), 3) for b, d in ratios.items() for t, v in d.items()}}
            for i in range(ctx.model.cfg.depth)]
    sec.table(ctx, rows, "per_block", "Same block: similarity of each branch to its skip input, and norm ratios")
    return sec


@analysis("rsa", "RSA between blocks", needs=("images",), order=53)
def rsa_section(ctx) -> Section:
    """ciernik2025's representational similarity analysis: correlation-distance RDMs of each block's mean patch
    token, compared between blocks by Spearman correlation."""
    from vitscope.analysis.similarity.rsa import RSAOptions, evaluate
    from vitscope.viz.similarity import plot_cka

    if len(ctx.eval_images) < 4:
        return Section.skip("skipped: RSA needs at least 4 images")
    res = evaluate({"trained": ctx.block_features("trained", "mean")}, None, RSAOptions(tokens="mean")).arrays["result"]
    sec = Section()
    fig = plot_cka(res, title="RSA (Spearman of correlation RDMs)", xlabel="block", ylabel="block", vmin=None,
                   vmax=1.0, label="RSA", data=ctx.data_label, n_images=len(ctx.eval_images), tokens="mean of patch")
    sec.figure(ctx, fig, "layers", "RSA between block outputs (mean of patch tokens).", arrays={"rsa": res.matrix})
    return sec
