"""Probes on a feature store: layer sets x probe kinds, tuned, with tidy results (what ``vitscope probe`` runs).

Experiments: a named layer set (``last``, ``middle``, ``quarterly``, ``all``, ``tokens``) or an explicit input list,
with CLS and AP (``reductions``); its name is the set's name, suffixed with the reductions when they are not
``cls, ap`` (``last_cls`` is the baseline every gain is measured against). ``per_layer=True`` adds one linear probe per
block of ``site`` and per reduction, plus the final layer, all trained as one batched computation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vitscope.analysis.probes.attentive import default_heads, pad_stack
from vitscope.analysis.probes.inputs import (CLS_REDUCTIONS, LAYER_SETS, ProbeInput, check_pair, concat_inputs,
                                             as_store, load_inputs, parse_inputs, seed_order, store_cls_from,
                                             store_depth)
from vitscope.analysis.probes.stats import results_rows
from vitscope.analysis.probes.train import ProbeTrainConfig
from vitscope.analysis.probes.tuning import ATTN_DROPS, ProbeFit, check_labels, num_classes_of, tune_attentive, tune_linear

PROBES = ("linear", "attentive")


@dataclass
class ProbeRun:
    model: str
    dataset: str
    rows: list[dict] = field(default_factory=list)
    fits: dict[tuple[str, str], tuple[ProbeFit, list[ProbeInput]]] = field(default_factory=dict)
    per_layer: list[dict] = field(default_factory=list)          # model, block, task, metric, value, input
    classes: list[str] = field(default_factory=list)
    depth: int = 0


def experiment_name(spec: str, reductions: tuple[str, ...]) -> str:
    reds = tuple("ap" if r == "mean" else r for r in reductions)
    if spec in LAYER_SETS and spec != "tokens" and reds != ("cls", "ap"):
        return f"{spec}_{'+'.join(reds)}"
    return spec if spec in LAYER_SETS else spec.replace(",", "+")


def _split_rows(store, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    labels = np.asarray(store.labels)
    rows = np.flatnonzero(np.asarray(store.valid) & (labels >= 0))
    if len(rows) < 4:
        raise ValueError(f"the store {store.path} has {len(rows)} labelled samples; probes need more")
    try:
        tr, te = train_test_split(rows, test_size=test_fraction, stratify=labels[rows], random_state=seed)
    except ValueError as e:
        raise ValueError(f"cannot split {store.path} into train and test ({e}); give --test-store instead") from None
    return np.sort(tr), np.sort(te)


def _check_stores(train, test) -> None:
    if test is None:
        return
    a = (train.manifest.get("model") or {}).get("config") or {}
    b = (test.manifest.get("model") or {}).get("config") or {}
    if a.get("embed_dim") != b.get("embed_dim") or a.get("depth") != b.get("depth"):
        raise ValueError(f"the training store {train.path} and the test store {test.path} come from different "
                         "architectures; extract both with the same model")


def probe_store(train_store, test_store=None, experiments=("last", "all"), probes=PROBES,
                reductions: tuple[str, ...] = ("cls", "ap"), site: str = "ln2", per_layer: bool = False,
                baseline: bool = True, cfg: ProbeTrainConfig = ProbeTrainConfig(), test_fraction: float = 0.25,
                heads: int | None = None, attn_drops=ATTN_DROPS, lrs=None, wds=None, normalize: bool = True,
                token_norm: str = "token", jitter_val: bool = True, device="cpu", model: str | None = None,
                dataset: str | None = None, memory_budget: float = 2e9, progress=None, log=None) -> ProbeRun:
    """Tune every requested probe on the store(s) and collect tidy results (see the module docstring).

    ``train_store`` / ``test_store``: a feature store, or a list of stores of the same samples read as one
    (:class:`~vitscope.analysis.probes.inputs.StoreGroup`; a late-CLS model's CLS store and AP store).
    """
    from vitscope.analysis.probes.train import LR_GRID, WD_GRID

    lrs, wds = lrs or LR_GRID, wds or WD_GRID
    train_store = as_store(train_store)
    test_store = None if test_store is None else as_store(test_store)
    _check_stores(train_store, test_store)
    bad = [p for p in probes if p not in PROBES]
    if bad:
        raise ValueError(f"unknown probe kind {bad[0]!r}; choose among {', '.join(PROBES)}")
    depth = store_depth(train_store)
    cls_from = store_cls_from(train_store)
    model = model or (train_store.manifest.get("model") or {}).get("name") or "model"
    dataset = dataset or (train_store.manifest.get("dataset") or {}).get("description") or "dataset"
    if test_store is None:
        tr_rows, te_rows = _split_rows(train_store, test_fraction, cfg.seed)
        test_store = train_store
    else:
        tr_rows = te_rows = None
    run = ProbeRun(model=model, dataset=dataset, classes=train_store.classes, depth=depth)
    load = dict(normalize=normalize, token_norm=token_norm)

    def inputs_of(inputs):
        ftr, ytr = load_inputs(train_store, inputs, rows=tr_rows, **load)
        fte, yte = load_inputs(test_store, inputs, rows=te_rows, **load)
        check_pair(ftr, fte, inputs)
        check_labels(ytr, yte, train_store.classes)
        return ftr, ytr, fte, yte

    C = None
    todo: list[tuple[str, str, list[ProbeInput]]] = []
    if baseline and "linear" in probes:
        todo.append(("linear", "last_cls", parse_inputs("last", depth, train_store.sites, site)[:1]))
    for spec in experiments:
        reds = tuple(reductions)
        if spec in LAYER_SETS:
            from vitscope.analysis.probes.inputs import _final_site, layer_set

            final = _final_site(train_store.sites)
            inputs = layer_set(spec, depth, site=site, final=final, reductions=reds, cls_from=cls_from)
        else:
            inputs = parse_inputs(spec, depth, train_store.sites, site, cls_from)
        name = experiment_name(spec, reds)
        for p in probes:
            if p == "linear" and name == "last_cls" and baseline:
                continue
            todo.append((p, name, seed_order(inputs)))
    for probe, name, inputs in todo:
        ftr, ytr, fte, yte = inputs_of(inputs)
        C = C or num_classes_of(ytr, yte, train_store.classes)
        if log:
            log(f"{probe} probe, {name}: {len(inputs)} input(s), {len(ytr)} train / {len(yte)} test")
        if probe == "linear":
            fit = tune_linear([concat_inputs(ftr)], ytr, [concat_inputs(fte)], yte, names=[name], cfg=cfg, lrs=lrs,
                              wds=wds, jitter_val=jitter_val, num_classes=C, device=device, progress=progress)[0]
        else:
            all_tokens = any(f.ndim == 3 for f in ftr)
            xtr = pad_stack([_torch(f) for f in ftr]).numpy()
            xte = pad_stack([_torch(f) for f in fte], dim=xtr.shape[-1]).numpy()
            h = heads or default_heads(len(inputs), all_tokens)
            fit = tune_attentive(xtr, ytr, xte, yte, num_heads=h, name=name, cfg=cfg, lrs=lrs, wds=wds,
                                 attn_drops=attn_drops, jitter_val=jitter_val, num_classes=C, device=device,
                                 memory_budget=memory_budget, progress=progress)
        run.fits[(probe, name)] = (fit, inputs)
        run.rows += results_rows(fit, model, dataset, name, name)
    if per_layer:
        from vitscope.analysis.probes.inputs import _final_site

        final = _final_site(train_store.sites)
        layers = [i for i in train_store.layers] if site in train_store.sites else []
        inputs = [ProbeInput(site, i, r) for r in reductions for i in layers
                  if not (r in CLS_REDUCTIONS and i < cls_from)] + [ProbeInput(final, None, r) for r in reductions]
        inputs = [ProbeInput(i.site, i.layer, "mean" if i.reduction == "ap" else i.reduction) for i in inputs]
        ftr, ytr, fte, yte = inputs_of(inputs)
        C = C or num_classes_of(ytr, yte, train_store.classes)
        if log:
            log(f"linear probe per layer: {len(inputs)} inputs as one batched computation")
        fits = tune_linear(ftr, ytr, fte, yte, names=[i.name for i in inputs], cfg=cfg, lrs=lrs, wds=wds,
                           jitter_val=jitter_val, num_classes=C, device=device, progress=progress)
        for inp, fit in zip(inputs, fits):
            red = "ap" if inp.reduction == "mean" else inp.reduction
            exp = f"layer_{'final' if inp.layer is None else inp.layer}_{red}"
            run.fits[("linear", exp)] = (fit, [inp])
            run.rows += results_rows(fit, model, dataset, exp, inp.name)
            block = depth if inp.layer is None else inp.layer
            for metric in ("top1", "balanced_top1"):
                run.per_layer.append({"model": f"{model} {red}", "block": block, "task": "linear probe",
                                      "metric": f"test {metric}", "value": fit.test_metrics[metric],
                                      "input": inp.name})
    return run


def _torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))
