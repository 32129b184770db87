"""vilas2023's token-removal curves: accuracy as patch tokens are removed in the order of an importance."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis

N_CURVE = 64           # images on the curves
N_PROBE = 256          # other images the ridge probes of the probe order are fitted on
STEP = 12              # evaluate every 12th number of removed tokens
N_RANDOM = 3


@analysis("removal", "Token removal curves (vilas2023)", needs=("labels", "classifier", "cls"), order=72)
def removal_section(ctx) -> Section:
    """Accuracy as patch tokens are removed, least important first (negative) or most important first
    (positive), for vilas2023's class-embedding gradients, Chefer relevance, the per-token ridge probes' order
    and random orders; with vilas2023's AUC and the trapezoid AUC."""
    import torch

    from vitscope.analysis.class_embedding.removal import default_orders, evaluate
    from vitscope.viz.removal import plot_removal_curves
    from vitscope.viz.titles import context_title

    x, y = ctx.eval_images, torch.as_tensor(ctx.eval_labels).long()
    n = min(N_CURVE, len(x) // 2) if len(x) >= 4 else len(x)
    probe_data = None
    if len(x) - n >= 16:                                     # other images fit the probes of the probe order
        xs, ys = x[n:n + N_PROBE], y[n:n + N_PROBE]
        probe_data = list(zip(xs.split(ctx.batch_size), ys.split(ctx.batch_size)))
    result = evaluate({ctx.name: ctx.model}, [(x[:n], y[:n])], orders=default_orders(probe_data is not None),
                      n_random=N_RANDOM, step=STEP, probe_data=probe_data)
    res = result.meta["curves"][ctx.name]
    n_probe = 0 if probe_data is None else sum(len(b[1]) for b in probe_data)
    sec = Section()
    sec.add_text(
        f"Patch tokens are removed right after the position embedding, in the order of an importance, and the "
        f"accuracy on {res.n_images} images is recorded after every {STEP}th token (of {res.n_patches}). Negative: "
        f"least important first, so a good importance keeps the accuracy up; positive: most important first, so a "
        f"good importance makes it fall. Orders: vilas2023's gradients of a class-embedding loss at CLS, Chefer "
        f"relevance, the per-token ridge probes' rank sum (fitted on {n_probe} "
        f"other images), and {N_RANDOM} random orders. vilas2023 reports on ViT-B/32 (its AUC): negative 0.836 "
        f"(gradients), 0.845 (Chefer), 0.739 (linear probe), 0.716 (random); positive 0.413, 0.393, 0.683.")
    title = context_title(f"{ctx.title}: token removal", ctx.data_label, res.n_images)
    sec.figure(ctx, plot_removal_curves(res, title=title, chance=1 / ctx.model.cfg.num_classes), "curves",
               "Accuracy against the fraction of patch tokens removed; the legend gives vilas2023's AUC (normalised "
               "by the curve's maximum) and the trapezoid AUC.",
               arrays={"removed": res.removed, **{f"{o}_{d}": a for (o, d), a in res.curves().items()}})
    aucs = res.aucs()
    rows = []
    for (o, d) in res.curves():
        rows.append({"order": o, "direction": d, "auc_seed": round(aucs[(o, d, "auc_seed")], 3),
                     "auc_trapezoid": round(aucs[(o, d, "auc_trapezoid")], 3)})
    sec.table(ctx, rows, "auc", "Areas under the removal curves", columns=["order", "direction", "auc_seed",
                                                                         "auc_trapezoid"])
    return sec
