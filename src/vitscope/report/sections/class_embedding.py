"""Class embedding space sections (vilas2023): identifiability over blocks against random weights, and the
perturbation table. Computation comes from ``vitscope.analysis.class_embedding``."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis

LENS_IMAGES = 256               # the trained model and its random twin
PERTURB_IMAGES = 128            # three forward passes each (unperturbed, self_only, no_cls)
TOKEN_DROP_IMAGES = 32          # token dropping runs once per kept-token count; a few dozen images are enough


def _batches(ctx, images, labels, size: int):
    import torch

    y = torch.as_tensor(labels)
    return [(images[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


@analysis("logit_lens", "Class identifiability over blocks (logit lens)", needs=("labels", "classifier"),
          order=70, aliases=("identifiability",))
def logit_lens_section(ctx) -> Section:
    """Every block output projected on the classifier (final norm + head, vilas2023's logit lens): the mean
    identifiability score 1 - rank / C of the true class for the CLS and the patch tokens, against the random-weight
    twin (stars: one-sided Wilcoxon p < 0.05), and the share of identifiable (rank-0) patch tokens."""
    from vitscope.analysis.class_embedding.projection import evaluate
    from vitscope.viz.class_embedding import plot_identifiability_evolution
    from vitscope.viz.titles import context_title

    n = min(LENS_IMAGES, len(ctx.eval_labels))
    result = evaluate({ctx.name: ctx.model}, _batches(ctx, ctx.eval_images[:n], ctx.eval_labels[:n], ctx.batch_size),
                      sites=("resid",), topk=1, random_baseline=True, mask_rule=None,
                      random_models={ctx.name: ctx.random_model})
    res, rres = result.meta["lens"][ctx.name]
    t = result.table
    evo = t[(t["metric"] == "identifiability") & (t["site"] == "resid")]
    rows = evo[["model", "block", "task", "metric", "value", "token", "site", "random", "p_value",
                "significant"]].to_dict("records")
    sec = Section()
    fig = plot_identifiability_evolution(evo, res.num_classes, title=context_title(
        f"{ctx.name}: class identifiability", ctx.data_label, res.n_images))
    sec.figure(ctx, fig, "evolution", "Identifiability of the true class per block; dashed: random weights.",
               meta={"rows": rows})
    sec.add_text(f"Last block: {100 * res.token_rate():.1f}% of patch tokens identify the true class "
                 f"(random weights {100 * rres.token_rate():.1f}%, chance {100 / res.num_classes:.1f}%); "
                 f"{100 * res.image_rate():.1f}% of images have at least one such token. vilas2023 (ViT-B/32 on "
                 "ImageNet-S): 60.7% of patch tokens, 95.6% of images.")
    sec.table(ctx, [{k: r[k] for k in ("block", "token", "value", "random", "p_value")} for r in rows],
              "evolution", "Mean identifiability per block (trained, random, one-sided Wilcoxon p).")
    return sec


@analysis("perturbation", "Attention and token perturbations", needs=("labels", "classifier"), order=71)
def perturbation_section(ctx) -> Section:
    """vilas2023's perturbation table: identifiable patch tokens at the last block with every patch query attending
    only to itself (self_only) or not to CLS (no_cls) in every block, and with the context or the object tokens
    dropped (when the images have object masks)."""
    from vitscope.analysis import class_embedding as ce

    n = min(PERTURB_IMAGES, len(ctx.eval_labels))
    batches = _batches(ctx, ctx.eval_images[:n], ctx.eval_labels[:n], ctx.batch_size)
    rows = ce.attention_perturbation_rows(ctx.model, batches, model_name=ctx.name)
    if ctx.has("masks"):
        import torch

        n = min(TOKEN_DROP_IMAGES, len(ctx.eval_labels))
        idx = ctx._eval[2][:n].tolist()
        masks = torch.from_numpy(ce.class_token_masks(ctx.dataset, idx, ctx.model.cfg.grid, ctx.pcfg))
        rows += ce.token_drop_rows(ctx.model, [(ctx.eval_images[:n], torch.as_tensor(ctx.eval_labels[:n]), masks)],
                                   model_name=ctx.name)
    table = []
    for r in rows:
        if r["metric"] != "identifiable_rate":
            continue
        acc = next((a["value"] for a in rows if a["metric"] == "accuracy" and a["perturbation"] == r["perturbation"]),
                   None)
        table.append({"perturbation": r["perturbation"], "identifiable patch tokens %": round(100 * r["value"], 2),
                      "unperturbed, same patches %": (round(100 * r["baseline"], 2) if "baseline" in r else None),
                      "accuracy %": None if acc is None else round(100 * acc, 2), "images": r["n_images"]})
    sec = Section()
    sec.table(ctx, table, "table", "Identifiable patch tokens at the last block (rank 0 of the true class). vilas2023 "
              "(ViT-B/32): unperturbed 60.73%, self_only 0.13%, no_cls 60.71%; no context 44.70% (class patches "
              "71.92%), no class patches 38.68% (context 56.24%).")
    return sec
