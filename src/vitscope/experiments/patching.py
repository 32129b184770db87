"""Study adapters of the causal interventions: activation / attribution / path patching (``patching``), head and MLP
ablations (``ablation``) and head composition scores (``composition``), each calling the ``evaluate`` that
`vitscope patch`, `vitscope ablate` and `vitscope composition` call, with the same options."""
from __future__ import annotations

import dataclasses

from vitscope.analysis.patching import PatchOptions
from vitscope.analysis.patching.ablation import AblateOptions
from vitscope.analysis.patching.composition import CompositionOptions
from vitscope.experiments.registry import register, study_rows

@register("patching", options=PatchOptions,
          fields=("site", "metric", "direction", "method", "corrupt", "region", "patches", "receivers", "freeze_mlps",
                  "freeze_norm", "blocks", "limit", "seed"),
          description="activation / attribution / path patching per block x position or head (0 corrupted, 1 clean)")
def patching(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.patching import evaluate

    if opts.get("corrupt") is None:
        raise ValueError("a study's 'patching' makes its corrupted inputs from the dataset's images: set options."
                         "corrupt (edit on synthetic data, blur:S, noise:S or replace)")
    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.dataset(), PatchOptions.from_mapping(opts, device=ctx.device))
    result.save(ctx.out)                                  # every cell's row stays in the cell's patching.csv
    t = result.table
    per_block = t[t["position"].isna()] if "position" in t else t   # the study table: blocks and heads
    return study_rows(dataclasses.replace(result, table=per_block), keep=("head",))


@register("ablation", options=AblateOptions,
          fields=("method", "mean_over", "components", "blocks", "reference", "prune", "prune_step", "prune_images",
                  "limit", "seed"),
          needs=("labels",), description="accuracy and logit drop per ablated head and MLP (zero, mean, resample)")
def ablation(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.patching.ablation import evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.dataset(), AblateOptions.from_mapping(opts, device=ctx.device))
    result.save(ctx.out)
    rows = study_rows(result, keep=("head", "n_pruned"))
    for r in rows:                                        # the study table has no n_pruned column: name it in task
        n = r.pop("n_pruned", None)
        if n is not None:
            r["task"] = f"pruned {int(n)} heads"
    return rows


@register("composition", options=CompositionOptions, fields=("modes",),
          description="Q-, K-, V-composition scores between heads of different blocks (weights only)")
def composition(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.patching.composition import evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, None, CompositionOptions.from_mapping(opts))
    result.save(ctx.out)
    rows = study_rows(result, keep=("head", "block2", "head2"))
    for r in rows:                                        # the study table has no head2 column: name it in task
        r["task"] = f"reader head {int(r.pop('head2'))}"
    return rows
