"""Causal interventions: activation patching per block x position and per head, mean ablations of heads and MLPs,
and head composition scores."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis

N_PAIRS = 4            # pairs of the head grid
N_ABLATE = 64          # evaluation images of the ablations


def _pairs(ctx):
    """Synthetic pairs that differ in one object when the data is the synthetic benchmark, else the first images
    with a blur corruption (0.5 patch widths)."""
    from vitscope.analysis.patching import make_pairs, synthetic_pairs
    from vitscope.analysis.patching.pairs import synthetic_source

    if synthetic_source(ctx.dataset) is not None:
        return synthetic_pairs(ctx.model, ctx.dataset, n=N_PAIRS), "edit"
    return make_pairs(ctx.model, ctx.images[:N_PAIRS], corrupt="blur:0.5"), "blur:0.5"


@analysis("patching", "Activation patching and ablations", needs=("images", "classifier"), order=76)
def patching_section(ctx) -> Section:
    """Where the evidence for the prediction sits (activation patching of the residual stream per block x position,
    of each head's output), what each head and MLP contributes (mean ablation) and how heads compose."""
    import torch

    from vitscope.analysis.patching import PatchOptions, evaluate
    from vitscope.analysis.patching import ablation as abl
    from vitscope.analysis.patching import composition as comp
    from vitscope.analysis.patching.pairs import PatchPairs

    pairs, how = _pairs(ctx)
    one = PatchPairs(pairs.clean[:1], pairs.corrupted[:1], None if pairs.labels is None else pairs.labels[:1],
                     None if pairs.changed is None else pairs.changed[:1], pairs.names[:1], pairs.description)
    sec = Section()
    what = ("its copy with the object swapped for another class's shape (outlined)" if how == "edit" else
            "a blurred copy (0.5 patch widths)")
    res = evaluate({ctx.name: ctx.model}, one, PatchOptions(site="resid_pre"))
    sec.add_text(f"Activation patching (denoising): the clean image's activation of one block x position is put "
                 f"into the run of {what}; the true-class logit is normalised so that 0 is the corrupted run and 1 "
                 f"the clean one. {res.summary}.")
    for name, fig in res.figures().items():
        sec.figure(ctx, fig, name, "Block x position effects over the image grid (CLS and other tokens beside); "
                                   "one colour scale, diverging around 0.")
    heads = evaluate({ctx.name: ctx.model}, pairs, PatchOptions(site="z"))
    for name, fig in heads.figures().items():
        sec.figure(ctx, fig, name, f"Each head's output (hook_z) patched, over {len(pairs)} pairs.")
    ctx.save_table(res.table.to_dict("records"), "patching_resid_pre")
    ctx.save_table(heads.table.to_dict("records"), "patching_z")
    x = ctx.eval_images[:N_ABLATE]
    y = torch.as_tensor(ctx.eval_labels[:N_ABLATE]).long() if ctx.has("labels") else \
        ctx.model(x.to(ctx.model.device)).argmax(-1).cpu()
    ablated = abl.evaluate({ctx.name: ctx.model}, (x, y), abl.AblateOptions(method="mean"))
    ablated.set_context(data=ctx.data_label)                        # images given as tensors have no name
    figs = ablated.figures()
    sec.figure(ctx, figs["ablation_logit_drop"], "ablation_logit_drop",
               f"Mean ablation (per position, over the same {len(x)} images) of each head and MLP: the drop of the "
               "mean true-class logit.")
    sec.add_text(ablated.summary + ".")
    t = ablated.table
    top = t[t["metric"].isin(["head_logit_drop", "mlp_logit_drop"])].nlargest(8, "value")
    sec.table(ctx, top.to_dict("records"), "ablation_top", "The components whose mean ablation costs the most logit",
              columns=["block", "component", "head", "metric", "value"])
    ctx.save_table(ablated.table.to_dict("records"), "ablation")
    scores = comp.evaluate({ctx.name: ctx.model})
    sec.figure(ctx, scores.figures()["composition"], "composition",
               "Q-, K- and V-composition scores between heads of different blocks (Elhage et al. 2021).")
    sec.add_text(scores.summary + ".")
    return sec
