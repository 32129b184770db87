"""Attribution maps ranked by faithfulness and localisation: a few methods on a few images (seconds)."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis

N_IMAGES = 4
METHODS = ("gradcam", "saliency", "integrated-gradients", "chefer2021-generic", "rollout", "random")


@analysis("attribution_maps", "Attribution maps ranked (deletion, insertion, ROAD, pointing game)",
          needs=("labels", "classifier", "masks"), order=74)
def attribution_maps_section(ctx) -> Section:
    """Grad-CAM, saliency, Integrated Gradients (16 steps), chefer2021-generic, rollout and a random control on a
    few images: deletion / insertion AUC on tokens, ROAD, pointing game, energy pointing game, IoU and AUROC against
    the object masks, each method ranked."""
    import numpy as np
    import torch

    from vitscope.analysis.attention.saliency import crop_mask_like_preprocess
    from vitscope.analysis.attribution_maps import ExplainOptions, evaluate

    n = min(N_IMAGES, len(ctx.images))
    masks = torch.from_numpy(np.stack([crop_mask_like_preprocess(m, ctx.pcfg) > 0.5
                                       for m in ctx.object_masks("images")[:n]]))
    opts = ExplainOptions(methods=METHODS, steps=16, removal_step=16, road_fractions=(0.5,),
                          batch_size=n)
    result = evaluate({ctx.name: ctx.model}, (ctx.images[:n], torch.as_tensor(ctx.labels[:n]).long(), masks),
                      opts)
    figs = result.set_context(data=ctx.data_label).figures()         # images given as tensors have no name
    sec = Section()
    sec.add_text(f"{len(METHODS)} attribution methods on {n} images, explaining the true class. Deletion removes the "
                 f"most relevant patch tokens first (lower AUC is better), insertion keeps only the most relevant "
                 f"(higher is better), ROAD imputes the most / least relevant pixels (combined: (LeRF - MoRF) / 2, "
                 f"higher is better); the pointing game, energy pointing game, IoU and AUROC score the map against "
                 f"the object mask. `vitscope explain-bench` runs every method on more images. {result.summary}.")
    for name, fig in figs.items():
        if name.startswith(("attribution_ranking", "attribution_examples")):
            sec.figure(ctx, fig, name, "Methods ranked per metric (colour: rank, text: value)."
                       if "ranking" in name else "Each method's map over the image; white: the object's outline.")
    t = result.table
    sec.table(ctx, t[t["metric"].isin(("deletion_auc", "insertion_auc", "road_combined", "pointing_game"))]
              .to_dict("records"), "ranking", "Faithfulness and pointing game per method",
              columns=["method", "metric", "value", "rank"])
    return sec
