"""Study adapters of the probes (ciernik2025, from the cell's feature stores) and of the class-embedding analyses of
vilas2023 (logit-lens identifiability, token-removal curves; streamed from the dataset).

Each calls the ``evaluate`` its command calls (`vitscope probe`, `logit-lens`, `removal`: the options dataclass gives
the study's defaults and checks them) and only turns the result into study rows. Rows:

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

from vitscope.experiments.registry import register, study_rows

PROBE_REDUCTIONS = {"cls": "cls", "ap": "mean", "mean": "mean", "ap_all": "all"}


# ----------------------------------------------------------------------------- probes
def _probe_options():
    from vitscope.analysis.probes.experiment import ProbeOptions

    return ProbeOptions


def _probe_tokens(o: dict) -> list[str]:
    reds = {PROBE_REDUCTIONS[r] for r in o["reductions"]}
    if "tokens" in o["experiments"]:
        reds.add("all")
    return sorted(reds)


@register("probe", options=_probe_options(), needs=("labels",),
          fields=("experiments", "probes", "reductions", "per_layer", "site", "heads", "attn_drops", "lrs", "wds",
                  "epochs", "min_steps", "batch_size", "token_norm", "normalize", "clean_val", "seed",
                  "test_fraction"),
          description="linear / attentive probes on layer sets and per layer; gains over the last-layer CLS probe "
                      "(ciernik2025)")
def probe(ctx, opts: dict) -> list[dict]:
    from vitscope.analysis.probes.experiment import ProbeOptions, evaluate
    from vitscope.analysis.probes.inputs import CLS_REDUCTIONS

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
    result = evaluate(train, test, ProbeOptions.from_mapping(opts, device=ctx.device or "cpu",
                                                             model_name=ctx.label(0),
                                                             dataset_name=ctx.cell.dataset.name))
    import pandas as pd

    pd.DataFrame(result.meta["run"].rows).to_csv(ctx.out / "probe_results.csv", index=False)
    if result.meta["gains"] is not None:
        result.meta["gains"].to_csv(ctx.out / "gains.csv", index=False)
    result.save(ctx.out, table=False)
    return study_rows(result, keep=("task",))


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
