"""Study adapters of the downstream evaluations: k-NN (from the cell's feature stores), retrieval on Revisited
Oxford / Paris, DAVIS label propagation and SPair keypoints (streamed from the dataset's task roots).

Each calls the library functions its command calls (`vitscope knn`, `retrieval`, `davis`, `keypoints`) with the
same options, and returns the same per-block rows (``metric`` as the command's tables name it, ``value`` in the
command's units) without the model and option columns, which the runner adds.
"""
from __future__ import annotations

import numpy as np

from vitscope.experiments.registry import register, study_rows


def _knn_options():
    from vitscope.analysis.knn import KNNOptions

    return KNNOptions


def _positive_ints(values, what: str) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"'{what}' takes positive integers, got {values!r}")


def _check_blocks(text: str) -> None:
    from vitscope.analysis.block_features import parse_blocks

    parse_blocks(text, 1000)


def _optional_int(opts: dict, key: str, minimum: int = 1) -> None:
    v = opts.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
        raise ValueError(f"'{key}' must be an integer >= {minimum} (or null), got {v!r}")


def _positive(opts: dict, key: str) -> None:
    if not opts[key] > 0:
        raise ValueError(f"'{key}' must be positive, got {opts[key]!r}")


def _blocks_of(ctx, i: int, text: str, available: list[int]) -> list[int]:
    """The blocks of ``text`` ("all", "0,3,-1", "4:8") among ``available`` (blocks that have the token)."""
    from vitscope.analysis.block_features import parse_blocks

    if text.strip().lower() == "all":
        return list(available)
    depth = ctx.model(i).cfg.depth
    want = [b + depth if b < 0 else b for b in parse_blocks(text, depth)]
    missing = [b for b in want if b not in available]
    if missing:
        raise ValueError(f"blocks {missing} have no such token in {ctx.label(i)} (it has {available})")
    return list(dict.fromkeys(want))


def _strip(rows: list[dict], keep_task: bool = False) -> list[dict]:
    """Library rows -> study rows (block, metric, value; the model and option columns come from the runner)."""
    out = []
    for r in rows:
        row = {"block": int(r["block"]), "metric": r["metric"], "value": float(r["value"])}
        if keep_task and r.get("task") is not None:
            row["task"] = r["task"]
        out.append(row)
    return out


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
def _validate_retrieval(o: dict) -> None:
    from vitscope.analysis.retrieval import PROTOCOLS

    bad = [p for p in o["protocols"] if p not in PROTOCOLS]
    if bad or not o["protocols"]:
        raise ValueError(f"'protocols' takes {', '.join(PROTOCOLS)}, got {o['protocols']!r}")
    _optional_int(o, "imsize", 8)
    _positive_ints([o["batch_size"]], "batch_size")
    _check_blocks(o["blocks"])


@register("retrieval", defaults={"tokens": "cls", "protocols": ["easy", "medium", "hard"], "imsize": None,
                                 "preprocess": "thumbnail", "multiscale": False, "crop": True, "blocks": "all",
                                 "batch_size": 32, "name": None},
          choices={"tokens": ("cls", "mean"), "preprocess": ("thumbnail", "model")}, task="revisited",
          validate=_validate_retrieval,
          description="Revisited Oxford / Paris retrieval mAP and mP@k per block (walmer2023, DINO)")
def retrieval(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.block_features import parse_blocks, resolve_blocks
    from vitscope.analysis.retrieval import image_descriptors, retrieval_per_block
    from vitscope.data.tasks import load_revisited
    from vitscope.viz.per_block import save_metric_per_block

    gt = load_revisited(ctx.task_root("revisited"), opts["name"])
    model, label = ctx.model(0), ctx.label(0)
    t, blocks = opts["tokens"], opts["blocks"]
    want = {label: resolve_blocks(model, None if blocks.strip().lower() == "all" else
                                  parse_blocks(blocks, model.cfg.depth), t)}
    size = opts["imsize"] or int(np.max(model.cfg.img_size))
    db_imgs, q_imgs = gt.image_loaders(opts["crop"])
    kw = dict(imsize=size, preprocess=opts["preprocess"], multiscale=opts["multiscale"], tokens=t,
              batch_size=opts["batch_size"])
    fdb = image_descriptors({label: model}, db_imgs, want, **kw)[label]
    fq = image_descriptors({label: model}, q_imgs, want, **kw)[label]
    protos = list(dict.fromkeys(opts["protocols"]))
    rows = retrieval_per_block(fdb, fq, gt.queries, label, protos)
    for p in protos:
        save_metric_per_block(rows, ctx.out / f"retrieval_mAP_{p}", metric=f"mAP_{p}", ylabel="mAP (%)",
                              title=f"{label}: {gt.name} mAP, {p} ({'cropped' if opts['crop'] else 'full'} queries)")
    return _strip(rows)


# ----------------------------------------------------------------------------- DAVIS
def _validate_davis(o: dict) -> None:
    _optional_int(o, "limit")
    _optional_int(o, "tile", 8)
    for k in ("short_side", "topk", "batch_size"):
        _positive_ints([o[k]], k)
    for k in ("n_last", "radius"):
        _optional_int(o, k, 0)
    _positive(o, "temperature")
    if o["sequences"] is not None and not all(isinstance(s, str) for s in o["sequences"]):
        raise ValueError(f"'sequences' is a list of sequence names, got {o['sequences']!r}")
    if o["blocks"].strip().lower() != "all":
        try:
            [int(b) for b in o["blocks"].split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"'blocks' takes all or comma-separated indices (-1 = last), got {o['blocks']!r}"
                             ) from None


@register("davis", defaults={"blocks": "all", "split": "val", "sequences": None, "limit": None,
                             "resolution": "dino", "short_side": 480, "tile": None, "n_last": 7, "radius": 12,
                             "topk": 5, "temperature": 0.1, "batch_size": 8},
          choices={"resolution": ("dino", "squash", "dense")}, task="davis", validate=_validate_davis,
          description="DAVIS-2017 label propagation J&F per block (walmer2023, DINO)")
def davis(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.video_segmentation import davis_rows, evaluate_davis
    from vitscope.data.tasks import load_davis
    from vitscope.viz.downstream_dense import plot_propagation
    from vitscope.viz.per_block import save_metric_per_block
    from vitscope.viz.save import save_figure

    ds = load_davis(ctx.task_root("davis"), split=opts["split"], sequences=opts["sequences"])
    seqs = list(ds)[:opts["limit"]] if opts["limit"] else list(ds)
    if not seqs:
        raise ValueError(f"no DAVIS sequence to evaluate in {ctx.task_root('davis')}")
    model, label = ctx.model(0), ctx.label(0)
    prop = {k: opts[k] for k in ("resolution", "short_side", "n_last", "radius", "topk", "temperature")}
    res = evaluate_davis(model, seqs, opts["blocks"], tile=opts["tile"], batch_size=opts["batch_size"],
                         keep_predictions=True, **prop)
    rows = davis_rows(res, label, **prop, tile=int(opts["tile"] or model.cfg.img_size[0]))
    last, seq = max(res["global"]), seqs[0]
    save_figure(plot_propagation(seq.frames(), res["predictions"][last][seq.name], seq.masks(),
                                 title=f"{label}, block {last}: {seq.name}"),
                ctx.out / f"propagation_{seq.name}", meta={**ctx.meta(), "block": last, "sequence": seq.name})
    save_metric_per_block(rows, ctx.out / "davis_J_F-Mean", metric="J&F-Mean",
                          title=f"{label}: DAVIS label propagation ({opts['resolution']}), {len(seqs)} sequence(s)")
    return _strip(rows)


# ----------------------------------------------------------------------------- SPair keypoints
def _validate_keypoints(o: dict) -> None:
    _optional_int(o, "pairs_per_category", 0)
    _optional_int(o, "size", 8)
    _positive_ints([o["batch_size"]], "batch_size")
    if o["split"] not in ("test", "val", "trn"):
        raise ValueError(f"'split' takes test, val or trn, got {o['split']!r}")


@register("keypoints", defaults={"blocks": "all", "split": "test", "pairs_per_category": 20, "seed": 42,
                                 "with_replacement": False, "size": None, "batch_size": 16},
          task="spair", validate=_validate_keypoints,
          description="SPair-71k keypoint transfer PCK@0.1/0.05/0.01 per block (walmer2023)")
def keypoints(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.correspondence import evaluate_spair, sample_pairs, spair_rows
    from vitscope.data.tasks import load_spair
    from vitscope.viz.downstream_dense import plot_keypoint_matches
    from vitscope.viz.per_block import save_metric_per_block
    from vitscope.viz.save import save_figure

    pairs = sample_pairs(load_spair(ctx.task_root("spair"), split=opts["split"]), opts["pairs_per_category"] or None,
                         opts["seed"], opts["with_replacement"])
    model, label = ctx.model(0), ctx.label(0)
    res = evaluate_spair(model, pairs, opts["blocks"], size=opts["size"], batch_size=opts["batch_size"],
                         keep_matches=4)
    rows = spair_rows(res, label, size=res["size"], pairs=len(pairs), seed=opts["seed"],
                      with_replacement=opts["with_replacement"])
    last = max(res["pck"])
    save_figure(plot_keypoint_matches(res["matches"], title=f"{label}, block {last}"), ctx.out / "matches",
                meta={**ctx.meta(), "block": last, "n_outside": res["n_outside"]})
    save_metric_per_block(rows, ctx.out / "keypoints_pck_0.1", metric="pck@0.1", ylabel="PCK@0.1 (%)",
                          title=f"{label}: SPair keypoint transfer, {len(pairs)} pairs")
    return _strip(rows)
