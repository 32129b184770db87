"""Study adapters of the downstream evaluations: k-NN (from the cell's feature stores), retrieval on Revisited
Oxford / Paris, DAVIS label propagation and SPair keypoints (streamed from the dataset's task roots).

Each calls the ``evaluate`` its command calls (`vitscope knn`, `retrieval`, `davis`, `keypoints`) with the options
dataclass of the analysis (its defaults and validation), and returns the same per-block rows (``metric`` as the
command's tables name it, ``value`` in the command's units) without the model and option columns, which the runner
adds.
"""
from __future__ import annotations

from vitscope.analysis.correspondence import KeypointsOptions
from vitscope.analysis.retrieval import RetrievalOptions
from vitscope.analysis.video_segmentation import DavisOptions
from vitscope.experiments.registry import register, study_rows


def _knn_options():
    from vitscope.analysis.knn import KNNOptions

    return KNNOptions


# (the probe adapters' option checks)
def _positive_ints(values, what: str) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"'{what}' takes positive integers, got {values!r}")


def _optional_int(opts: dict, key: str, minimum: int = 1) -> None:
    v = opts.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
        raise ValueError(f"'{key}' must be an integer >= {minimum} (or null), got {v!r}")


# ----------------------------------------------------------------------------- k-NN
@register("knn", options=_knn_options(), fields=("tokens", "k", "temperature", "normalize", "count_unvoted",
                                                 "num_classes", "blocks"),
          store_tokens=lambda o: [o["tokens"]], needs=("labels", "train"),
          description="weighted k-NN accuracy per block, train split as memory (walmer2023, DINO)")
def knn(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.knn import KNNOptions, evaluate

    t = opts["tokens"]
    result = evaluate({ctx.label(0): (ctx.store(0, t, split="train"), ctx.store(0, t))}, None,
                      KNNOptions.from_mapping(opts, site=ctx.site, device=ctx.device))
    result.save(ctx.out, table=False)
    return study_rows(result)


# ----------------------------------------------------------------------------- retrieval
@register("retrieval", options=RetrievalOptions, fields=("tokens", "protocols", "imsize", "preprocess", "multiscale",
                                                         "crop", "blocks", "batch_size", "name"),
          task="revisited", description="Revisited Oxford / Paris retrieval mAP and mP@k per block (walmer2023, DINO)")
def retrieval(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.retrieval import evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.task_root("revisited"),
                      RetrievalOptions.from_mapping(opts, device=ctx.device))
    result.save(ctx.out, table=False)
    return study_rows(result)


# ----------------------------------------------------------------------------- DAVIS
@register("davis", options=DavisOptions, fields=("blocks", "split", "sequences", "limit", "resolution", "short_side",
                                                 "tile", "n_last", "radius", "topk", "temperature", "batch_size"),
          task="davis", description="DAVIS-2017 label propagation J&F per block (walmer2023, DINO)")
def davis(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.video_segmentation import evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.task_root("davis"),
                      DavisOptions.from_mapping(opts, device=ctx.device))
    result.save(ctx.out, table=False)
    return study_rows(result)


# ----------------------------------------------------------------------------- SPair keypoints
@register("keypoints", options=KeypointsOptions, fields=("blocks", "split", "pairs_per_category", "seed",
                                                         "with_replacement", "size", "batch_size"),
          task="spair", description="SPair-71k keypoint transfer PCK@0.1/0.05/0.01 per block (walmer2023)")
def keypoints(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.correspondence import evaluate

    result = evaluate({ctx.label(0): ctx.model(0)}, ctx.task_root("spair"),
                      KeypointsOptions.from_mapping(opts, device=ctx.device))
    result.save(ctx.out, table=False)
    return study_rows(result)
