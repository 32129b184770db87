"""Probe section: a linear probe on every block (CLS and patch mean) and the attentive probe over all blocks
(ciernik2025), on the report's evaluation images. Computation comes from ``vitscope.analysis.probes``."""
from __future__ import annotations

import numpy as np

from vitscope.report.registry import Section, analysis

DEMO_STEPS = 60
DEMO_LRS = (0.01,)
DEMO_WDS = (1e-4,)


@analysis("probes", "Linear and attentive probes", needs=("images", "labels"), order=70)
def probes_section(ctx) -> Section:
    """Half of the evaluation images (stratified) train, the other half test: a tuned linear probe on each block
    output (CLS and mean of the patch tokens, L2-normalised, trained as one batched computation), and ciernik2025's
    attentive probe over all of them (one input per block and reduction, heads = inputs)."""
    import torch
    from sklearn.model_selection import train_test_split

    from vitscope.analysis.probes import TrainConfig, l2_normalize, tune_attentive, tune_linear
    from vitscope.analysis.probes.tuning import num_classes_of
    from vitscope.viz.per_block import plot_metric_per_block
    from vitscope.viz.probes import plot_attention_heads
    from vitscope.viz.titles import context_title

    y = np.asarray(ctx.eval_labels)
    counts = np.bincount(y[y >= 0])
    # half the images train; tuning holds out a stratified 20% of those, which needs one image of every class
    if (counts[counts > 0] < 10).any() or len(counts[counts > 0]) < 2:
        return Section.skip("skipped: probes need at least two classes and 10 evaluation images per class "
                            "(raise --n-eval)")
    cls, mean = ctx.block_features("trained", "cls"), ctx.block_features("trained", "mean")
    blocks = sorted(set(cls) & set(mean), key=int)
    if not blocks:
        return Section.skip("skipped: no block has a CLS token")
    tr, te = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=0)
    inputs = [(b, "cls", l2_normalize(cls[b])) for b in blocks] + [(b, "ap", l2_normalize(mean[b])) for b in blocks]
    cfg = TrainConfig(min_steps=DEMO_STEPS, epochs=1)
    torch.manual_seed(0)
    fits = tune_linear([x[tr] for _, _, x in inputs], y[tr], [x[te] for _, _, x in inputs], y[te],
                       names=[f"{b} {r}" for b, r, _ in inputs], cfg=cfg, lrs=DEMO_LRS, wds=DEMO_WDS)
    rows = [{"model": f"{ctx.name} {r}", "block": int(b), "metric": "test balanced top-1",
             "value": f.test_metrics["balanced_top1"]} for (b, r, _), f in zip(inputs, fits)]
    sec = Section()
    where = {"data": ctx.data_label, "n_images": len(tr) + len(te)}
    chance = 1 / num_classes_of(y[tr], y[te])                      # the probes' classes
    fig = plot_metric_per_block(rows, title="linear probe per block", ylabel="test balanced top-1", chance=chance,
                                ylim=(0.0, 1.0), **where)
    sec.figure(ctx, fig, "probe_per_block", f"Linear probe per block; grey: chance ({len(tr)} train / {len(te)} test "
               f"images; demo budget: {DEMO_STEPS} steps and a {len(DEMO_LRS) * len(DEMO_WDS)}-point grid instead of "
               "ciernik2025's >= 1000 steps and 21 points).")
    stacked = np.stack([x for _, _, x in inputs], axis=1)                     # n, 2 * depth, D
    att = tune_attentive(stacked[tr], y[tr], stacked[te], y[te], num_heads=len(inputs), cfg=cfg, lrs=DEMO_LRS,
                         wds=DEMO_WDS, attn_drops=(0.0,))
    labels = [f"{b} {r}" for b, r, _ in inputs]
    fig = plot_attention_heads(att.attention, labels, title=context_title("attentive probe over all blocks", **where))
    sec.figure(ctx, fig, "probe_attention", "Attentive probe over every block's CLS and patch mean: attention of "
               "its query per head (rows) and input (columns), mean and std over the test images.",
               arrays={"mean": att.attention.mean(0)})
    best = max(fits, key=lambda f: f.test_metrics["balanced_top1"])
    last = fits[len(blocks) - 1]
    sec.add_text(f"Test balanced top-1: last block CLS linear {100 * last.test_metrics['balanced_top1']:.1f}%, best "
                 f"single input ({best.name}) {100 * best.test_metrics['balanced_top1']:.1f}%, attentive probe over "
                 f"all {len(inputs)} inputs {100 * att.test_metrics['balanced_top1']:.1f}%.")
    return sec
