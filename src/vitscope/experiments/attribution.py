"""Study adapter of the attribution-map benchmark (``vitscope explain-bench``): every method x metric on the
cell's dataset; rows per method (and per randomisation stage with ``sanity: true``)."""
from __future__ import annotations

from vitscope.experiments.registry import register, study_rows


def _options():
    from vitscope.analysis.attribution_maps import ExplainOptions

    return ExplainOptions


@register("attribution-maps", options=_options(),
          fields=("methods", "metrics", "target", "block", "site", "steps", "baseline", "samples", "stdev",
                  "removal_step", "sanity", "sanity_methods", "sanity_images", "seed", "batch_size"),
          needs=("labels",),
          description="attribution maps (CAMs, gradients, occlusion, attention) ranked by deletion, insertion, "
                      "ROAD and localisation against object masks")
def attribution_maps(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.attribution_maps import ExplainOptions, evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.dataset(),
                      ExplainOptions.from_mapping(opts, device=ctx.device))
    result.save(ctx.out, table=False)
    return study_rows(result, keep=("method", "stage"))
