"""Study adapter of the sparse autoencoders (``sae``): the grid of SAEs trained on the cell's feature store (the
train split when the dataset has one) with the trainer `vitscope sae train` runs, then measured on the cell's
dataset by the ``evaluate`` that `vitscope sae eval` calls. One row per SAE, block and metric; the SAE's name is the
``task`` (with the basis and concept for the factor rows)."""
from __future__ import annotations

from vitscope.analysis.sae.evaluation import SAEStudyOptions
from vitscope.experiments.registry import register, study_rows

FIELDS = ("site", "blocks", "tokens", "arch", "width", "k", "l1", "lr", "steps", "batch_size", "chunk_images",
          "warmup", "seed", "eval_limit", "factors", "splice")


@register("sae", options=SAEStudyOptions, fields=FIELDS,
          description="sparse autoencoders per block: L0, FVU, spliced top-1 agreement and KL, factor AUROCs")
def sae(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.sae import evaluate, train_saes

    o = SAEStudyOptions.from_mapping(opts, device=ctx.device)
    split = "train" if ctx.cell.dataset.train else "test"
    store = ctx.store(0, o.tokens, split, sites=(o.site,), tokens=(o.tokens,))
    saes = train_saes(store, o.train_options(), out=ctx.out / "saes", provenance={"model": ctx.label(0)})
    result = evaluate(saes, ctx.dataset(), o.eval_options(), model=ctx.model(0))
    result.save(ctx.out)
    rows = study_rows(result, keep=("sae", "basis", "concept"))
    for r in rows:                                        # the study table has no sae / basis column: name it in task
        what = [r.pop("sae")] + [f"{k}={r.pop(k)}" for k in ("basis", "concept") if k in r]
        r["task"] = " ".join(what)
    return rows
