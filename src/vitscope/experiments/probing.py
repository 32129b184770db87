"""Study adapters of the probes (ciernik2025, from the cell's feature stores) and of the class-embedding analyses of
vilas2023 (logit-lens identifiability, token-removal curves; streamed from the dataset).

Each calls the library functions its command calls (`vitscope probe`, `logit-lens`, `removal`) with the same
options. Rows:

* ``probe``: per probe run (``task`` = ``probe:experiment``, e.g. ``attentive:all``) the test metrics
  (``test_balanced_top1``, ``test_top1``, in [0, 1]) and ``gain``, test balanced top-1 minus the last-layer CLS
  linear probe of the same model and dataset in percentage points (``vitscope.analysis.probes.stats.gains``);
  with ``per_layer``, ``test_balanced_top1`` / ``test_top1`` per block (``task`` = ``per-layer cls`` / ``per-layer
  ap``; the final norm is block = depth);
* ``logit_lens``: ``identifiability`` per block (``task`` = the token kind, ``cls`` / ``patches``), its chance level
  ``identifiability_chance`` ((C + 1) / 2C), ``token_rate`` and ``image_rate`` at the last block, ``accuracy``;
* ``removal``: ``auc_seed`` and ``auc_trapezoid`` per curve (``task`` = ``<order> <direction>``); the curves
  themselves are in the cell folder (``removal_<model>.*``, ``removal_curves.csv``).
"""
from __future__ import annotations

import numpy as np

from vitscope.experiments.analyses import register
from vitscope.experiments.downstream import _optional_int, _positive_ints

PROBE_REDUCTIONS = {"cls": "cls", "ap": "mean", "mean": "mean", "ap_all": "all"}


# ----------------------------------------------------------------------------- probes
def _validate_probe(o: dict) -> None:
    from vitscope.analysis.probes.experiment import PROBES
    from vitscope.analysis.probes.inputs import LAYER_SETS

    for key, known in (("probes", PROBES), ("reductions", tuple(PROBE_REDUCTIONS))):
        bad = [x for x in o[key] if x not in known]
        if bad or not o[key]:
            raise ValueError(f"'{key}' takes {', '.join(known)}, got {o[key]!r}")
    if not o["experiments"] and not o["per_layer"]:
        raise ValueError("nothing to probe: give 'experiments' (layer sets) or per_layer: true")
    for e in o["experiments"]:
        if not isinstance(e, str) or (e not in LAYER_SETS and "." not in e):
            raise ValueError(f"'experiments' are layer sets ({', '.join(LAYER_SETS)}) or input lists such as "
                             f"'ln2.3.cls,ln_final.ap', got {e!r}")
    if o["site"] not in ("ln2", "resid_post", "resid_mid", "resid_pre", "ln1", "attn_out", "mlp_out"):
        raise ValueError(f"'site' is a block site such as ln2 (ciernik2025) or resid_post, got {o['site']!r}")
    if o["token_norm"] not in ("token", "over_tokens"):
        raise ValueError(f"'token_norm' is token or over_tokens, got {o['token_norm']!r}")
    for key in ("lrs", "wds", "attn_drops"):
        v = o[key]
        if v is not None and (not isinstance(v, list) or not v or
                              not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ValueError(f"'{key}' is a list of numbers, got {v!r}")
    for key in ("epochs", "min_steps", "batch_size"):
        _positive_ints([o[key]], key)
    _optional_int(o, "heads")
    if not 0 < o["test_fraction"] < 1:
        raise ValueError(f"'test_fraction' must be between 0 and 1, got {o['test_fraction']!r}")


def _probe_tokens(o: dict) -> list[str]:
    reds = {PROBE_REDUCTIONS[r] for r in o["reductions"]}
    if "tokens" in o["experiments"]:
        reds.add("all")
    return sorted(reds)


@register("probe", defaults={"experiments": ["last", "all"], "probes": ["linear", "attentive"],
                             "reductions": ["cls", "ap"], "per_layer": False, "site": "ln2", "heads": None,
                             "attn_drops": [0.0, 0.1, 0.3], "lrs": None, "wds": None, "epochs": 40,
                             "min_steps": 1000, "batch_size": 2048, "token_norm": "token", "normalize": True,
                             "clean_val": False, "seed": 0, "test_fraction": 0.25},
          needs=("labels",), validate=_validate_probe,
          description="linear / attentive probes on layer sets and per layer; gains over the last-layer CLS probe "
                      "(ciernik2025)")
def probe(ctx, opts: dict) -> list[dict]:
    import pandas as pd

    from vitscope.analysis.probes.experiment import probe_store
    from vitscope.analysis.probes.inputs import CLS_REDUCTIONS
    from vitscope.analysis.probes.stats import gains
    from vitscope.analysis.probes.train import TrainConfig
    from vitscope.viz.per_block import save_metric_per_block

    model = ctx.model(0)
    final = "clip_proj" if model.cfg.head == "clip_proj" else "ln_final"
    sites = tuple(dict.fromkeys((opts["site"], final)))
    toks = tuple(_probe_tokens(opts))
    first = "cls" if "cls" in toks else toks[0]
    rest = tuple(t for t in toks if t not in CLS_REDUCTIONS)

    def stores(split: str):
        """The probe store; for a model whose CLS enters late, a second store with the other reductions at every
        block, read together (StoreGroup)."""
        if first in CLS_REDUCTIONS and rest and ctx.layers(0, rest[0]) != ctx.layers(0, first):
            cls_only = tuple(t for t in toks if t in CLS_REDUCTIONS)
            return [ctx.store(0, first, split, sites=sites, tokens=cls_only),
                    ctx.store(0, rest[0], split, sites=sites, tokens=rest)]
        return ctx.store(0, first, split, sites=sites, tokens=toks)

    if ctx.cell.dataset.train:                     # the train split trains, the test split scores
        train, test = stores("train"), stores("test")
    else:                                          # a stratified share of the one split is held out
        train, test = stores("test"), None
    cfg = TrainConfig(epochs=opts["epochs"], min_steps=opts["min_steps"], batch_size=opts["batch_size"],
                      seed=opts["seed"])
    floats = (lambda v: None if v is None else tuple(float(x) for x in v))
    run = probe_store(train, test, experiments=tuple(opts["experiments"]), probes=tuple(opts["probes"]),
                      reductions=tuple(opts["reductions"]), site=opts["site"], per_layer=opts["per_layer"], cfg=cfg,
                      test_fraction=opts["test_fraction"], heads=opts["heads"], attn_drops=floats(opts["attn_drops"]),
                      lrs=floats(opts["lrs"]), wds=floats(opts["wds"]), normalize=opts["normalize"],
                      token_norm=opts["token_norm"], jitter_val=not opts["clean_val"], device=ctx.device or "cpu",
                      model=ctx.label(0), dataset=ctx.cell.dataset.name)
    table = pd.DataFrame(run.rows)
    table.to_csv(ctx.out / "probe_results.csv", index=False)
    rows: list[dict] = []
    for (p, exp), (fit, _) in run.fits.items():
        if exp.startswith("layer_"):
            continue
        for m in ("balanced_top1", "top1"):
            rows.append({"task": f"{p}:{exp}", "metric": f"test_{m}", "value": float(fit.test_metrics[m])})
    if ("linear", "last_cls") in run.fits:
        g = gains(table[~table["experiment"].str.startswith("layer_")])
        g.to_csv(ctx.out / "gains.csv", index=False)
        rows += [{"task": r.run, "metric": "gain", "value": 100.0 * float(r.gain)}
                 for r in g.itertuples() if r.run != "linear:last_cls"]
    if run.per_layer:
        for r in run.per_layer:
            red = r["model"].rsplit(" ", 1)[-1]
            rows.append({"block": int(r["block"]), "task": f"per-layer {red}",
                         "metric": r["metric"].replace(" ", "_"), "value": float(r["value"])})
        save_metric_per_block(run.per_layer, ctx.out / "accuracy_per_layer", metric="test balanced_top1",
                              title=f"{ctx.label(0)}: linear probe per layer", ylabel="test balanced top-1")
    return rows


# ----------------------------------------------------------------------------- logit lens
def _lens_options():
    from vitscope.analysis.class_embedding.projection import LogitLensOptions

    return LogitLensOptions


RATES = ("token_rate", "image_rate", "accuracy")


@register("logit_lens", options=_lens_options(), needs=("labels",),
          fields=("sites", "topk", "prescale", "random_baseline", "per_class", "batch_size", "seed"),
          description="logit lens: identifiability of CLS and patch tokens per block (vilas2023)")
def logit_lens(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.class_embedding.projection import LogitLensOptions, evaluate

    label = ctx.label(0)
    o = LogitLensOptions.from_mapping(opts, random_baseline=opts["random_baseline"] and not ctx.cell.models[0].random,
                                      mask_rule=None, device=ctx.device)
    result = evaluate({label: ctx.model(0)}, ctx.dataset(), o)
    result.save(ctx.out, table=False)
    t = result.table[result.table["model"] == label]
    site, last = result.meta["site"][label], int(t["block"].max())
    evo = t[(t["metric"] == "identifiability") & (t["site"] == site)]
    rows = [{"block": int(r.block), "task": r.token, "metric": "identifiability", "value": float(r.value)}
            for r in evo.itertuples()]
    for r in evo[evo["random"].notna()].itertuples() if "random" in evo else ():
        rows += [{"block": int(r.block), "task": r.token, "metric": "identifiability_random", "value": r.random},
                 {"block": int(r.block), "task": r.token, "metric": "identifiability_p_value", "value": r.p_value}]
    rows.append({"metric": "identifiability_chance", "value": float(evo["chance"].iloc[0])})
    rates = t[t["metric"].isin(RATES) & (t["block"] == last) & t["site"].isin((site, "logits", "class_embeddings"))]
    return rows + [{"task": r.token, "metric": r.metric, "value": float(r.value)} for r in rates.itertuples()]


# ----------------------------------------------------------------------------- removal curves
def _removal_options():
    from vitscope.analysis.class_embedding.removal import RemovalOptions

    return RemovalOptions


@register("removal", options=_removal_options(), fields=("orders", "n_random", "seed", "step", "batch_size"),
          needs=("labels",),
          description="token-removal curves and their AUCs (vilas2023); the probe order fits on the train split")
def removal(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.class_embedding.removal import RemovalOptions, evaluate

    label = ctx.label(0)
    result = evaluate({label: ctx.model(0)}, ctx.dataset(), RemovalOptions.from_mapping(opts),
                      probe_data=ctx.dataset("train") if "probe" in opts["orders"] else None)  # another split
    result.save(ctx.out, table=False)
    t = result.table
    t[t["metric"] == "accuracy"].to_csv(ctx.out / "removal_curves.csv", index=False)
    return [{"task": r.task, "metric": r.metric, "value": float(r.value)} for r in t[t["metric"] != "accuracy"].itertuples()]
