"""Probes on a feature store: layer sets x probe kinds, tuned, with tidy results (what ``vitscope probe`` runs).

Experiments: a named layer set (``last``, ``middle``, ``quarterly``, ``all``, ``tokens``) or an explicit input list,
with CLS and AP (``reductions``); its name is the set's name, suffixed with the reductions when they are not
``cls, ap`` (``last_cls`` is the baseline every gain is measured against). ``per_layer=True`` adds one linear probe per
block of ``site`` and per reduction, plus the final layer, all trained as one batched computation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vitscope.analysis.api import Options, OptionError, Result, tidy_table
from vitscope.analysis.probes.attentive import default_heads, pad_stack
from vitscope.analysis.probes.inputs import (CLS_REDUCTIONS, LAYER_SETS, ProbeInput, as_store, check_input,
                                             check_pair, concat_inputs, input_width, load_inputs, parse_inputs,
                                             seed_order, store_cls_from, store_depth)
from vitscope.analysis.probes.stats import results_rows
from vitscope.analysis.probes.train import ProbeTrainConfig
from vitscope.analysis.probes.tuning import (ATTN_DROPS, ProbeFit, attentive_steps, check_labels, linear_steps,
                                             num_classes_of, tune_attentive, tune_linear)

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
    num_classes: int | None = None                               # C of the probes (chance: 1 / C)
    n_train: int | None = None                                   # images the probes were trained / tested on
    n_test: int | None = None


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
                dataset: str | None = None, memory_budget: float = 2e9, progress=None, log=None,
                total=None) -> ProbeRun:
    """Tune every requested probe on the store(s) and collect tidy results (see the module docstring).

    ``train_store`` / ``test_store``: a feature store, or a list of stores of the same samples read as one
    (:class:`~vitscope.analysis.probes.inputs.StoreGroup`; a late-CLS model's CLS store and AP store). Every input
    is checked against the stores before any training. ``progress(n)`` is called per optimiser step, ``total(n)``
    once with the number of steps planned, ``log(line)`` when a probe starts.
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
        run.n_train, run.n_test = len(ytr), len(yte)
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
    layer_inputs: list[ProbeInput] = []
    if per_layer:
        from vitscope.analysis.probes.inputs import _final_site

        final = _final_site(train_store.sites)
        layers = [i for i in train_store.layers] if site in train_store.sites else []
        layer_inputs = [ProbeInput(site, i, r) for r in reductions for i in layers
                        if not (r in CLS_REDUCTIONS and i < cls_from)] + [ProbeInput(final, None, r) for r in reductions]
        layer_inputs = [ProbeInput(i.site, i.layer, "mean" if i.reduction == "ap" else i.reduction)
                        for i in layer_inputs]
    every = [i for _, _, inputs in todo for i in inputs] + layer_inputs
    for st in dict.fromkeys([train_store, test_store]):          # every input exists, before any training
        for inp in dict.fromkeys(every):
            check_input(st, inp)
    if total is not None:
        n_train = len(tr_rows) if tr_rows is not None else int(
            (np.asarray(train_store.valid) & (np.asarray(train_store.labels) >= 0)).sum())
        total(planned_steps(train_store, todo, layer_inputs, n_train, cfg, heads, len(attn_drops),
                            len(lrs) * len(wds), memory_budget))
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
        inputs = layer_inputs
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
    run.num_classes = C
    return run


def planned_steps(store, todo, layer_inputs, n_train: int, cfg: ProbeTrainConfig, heads: int | None, n_drops: int,
                  n_configs: int, memory_budget: float = 2e9) -> int:
    """How many optimiser steps :func:`probe_store` takes (its progress ticks), from the store's array shapes."""
    total = 0
    for probe, _, inputs in todo:
        if probe == "linear":
            total += linear_steps(n_train, cfg)
        else:
            all_tokens = any(i.reduction == "all" for i in inputs)
            h = heads or default_heads(len(inputs), all_tokens)
            dim = max(input_width(store, i) for i in inputs)
            total += attentive_steps(n_train, cfg, n_configs, h, dim, n_drops, memory_budget)
    if layer_inputs:
        total += linear_steps(n_train, cfg, len({input_width(store, i) for i in layer_inputs}))
    return total


def _torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------- the evaluation entry point
REDUCTIONS = ("cls", "ap", "mean", "ap_all")
SITES = ("ln2", "resid_post", "resid_mid", "resid_pre", "ln1", "attn_out", "mlp_out")


@dataclass
class ProbeOptions(Options):
    """Options of :func:`evaluate` (``vitscope probe``, the study analysis ``probe``); ciernik2025's recipe."""

    experiments: tuple[str, ...] = ("last", "all")         # layer sets or input lists ('ln2.3.cls,ln_final.ap')
    probes: tuple[str, ...] = PROBES                       # linear, attentive
    reductions: tuple[str, ...] = ("cls", "ap")            # of each layer: cls, ap (patch mean), ap_all
    per_layer: bool = False                                # also a linear probe on every block, batched
    site: str = "ln2"                                      # store site of the intermediate layers
    heads: int | None = None                               # attentive heads (default: inputs; 8 for all tokens)
    attn_drops: tuple[float, ...] = ATTN_DROPS             # each its own grid; the best by validation is kept
    lrs: tuple[float, ...] | None = None                   # default 0.1, 0.01, 0.001
    wds: tuple[float, ...] | None = None                   # default logspace(-6, 0, 7)
    epochs: int = 40                                       # at least min_steps steps
    min_steps: int = 1000
    batch_size: int = 2048                                 # before ciernik2025's rule
    token_norm: str = "token"                              # all-token inputs: token, or over_tokens
    normalize: bool = True                                 # L2 per sample and input at load
    clean_val: bool = False                                # score validation without jitter (the seed jitters it)
    seed: int = 0                                          # split, initialisation, order, jitter
    test_fraction: float = 0.25                            # held out when there is no test store
    model_name: str | None = None                          # labels in the results table (default: the store's)
    dataset_name: str | None = None
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self._names("experiments", split=False)
        if not self.experiments and not self.per_layer:
            raise OptionError("experiments", "nothing to probe: give `experiments` (layer sets) or per_layer")
        for e in self.experiments:
            if e not in LAYER_SETS and "." not in e:
                raise OptionError("experiments", f"`experiments` are layer sets ({', '.join(LAYER_SETS)}) or input "
                                                 f"lists such as 'ln2.3.cls,ln_final.ap', got {e!r} (unknown layer "
                                                 "set)")
        self._names("probes", PROBES)
        self._names("reductions", REDUCTIONS)
        self.check_choice("site", SITES)
        self.check_int("heads", optional=True)
        for name in ("attn_drops", "lrs", "wds"):
            self._numbers(name, optional=name != "attn_drops")
        self.check_int("epochs")
        self.check_int("min_steps", minimum=0)
        self.check_int("batch_size")
        self.check_choice("token_norm", ("token", "over_tokens"))
        self.check_int("seed", minimum=0)
        self.check_number("test_fraction", 0, 1, low_open=True, high_open=True)

    def _names(self, name: str, known: tuple[str, ...] | None = None, split: bool = True) -> None:
        """A list of names (or one comma-separated string when ``split``), stored as a tuple without repeats."""
        v = getattr(self, name)
        items = (v.split(",") if split else [v]) if isinstance(v, str) else list(v or ())
        if not all(isinstance(x, str) for x in items):
            raise OptionError(name, f"`{name}` takes a list of names, got {v!r}")
        items = [x.strip() for x in items if x.strip()]
        if known is not None and (not items or any(x not in known for x in items)):
            raise OptionError(name, f"`{name}` takes {', '.join(known)}, got {v!r}")
        setattr(self, name, tuple(dict.fromkeys(items)))

    def _numbers(self, name: str, optional: bool) -> None:
        """A non-empty list of numbers (or a comma-separated string), stored as a tuple of floats."""
        v = getattr(self, name)
        if v is None and optional:
            return
        items = v.split(",") if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else []
        try:
            ok = bool(items) and not any(isinstance(x, bool) for x in items)
            vals = tuple(float(x) for x in items)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise OptionError(name, f"`{name}` takes a list of numbers, got {v!r}")
        setattr(self, name, vals)

    def train_config(self) -> ProbeTrainConfig:
        return ProbeTrainConfig(epochs=self.epochs, min_steps=self.min_steps, batch_size=self.batch_size, seed=self.seed)

    def as_json(self, exclude=()) -> str:
        return super().as_json(tuple(exclude) + ("model_name", "dataset_name"))


def evaluate(stores, test=None, options: ProbeOptions | None = None, **overrides) -> Result:
    """Linear and attentive probes over one, several or all layers of a feature store (ciernik2025's recipe, tuned
    over lr x weight decay as one batched computation), and the gain of each over the last-layer CLS linear probe.

    Args:
        stores: the training feature store (``vitscope extract``; a path or an opened store), or a list of stores of
            the same samples read as one (a late-CLS model: its CLS store and its AP store).
        test: the test store(s) of the same model; None holds out a stratified ``test_fraction`` of ``stores``.
        options: :class:`ProbeOptions` (keyword overrides on top).

    Returns a :class:`~vitscope.analysis.api.Result` whose table has, per probe run (``task`` =
    ``probe:experiment``), ``test_balanced_top1`` and ``test_top1`` (in [0, 1]) and ``gain`` (test balanced top-1
    minus the ``linear:last_cls`` probe's, in percentage points); with ``per_layer``, those per block (``task`` =
    ``per-layer cls`` / ``per-layer ap``; the final layer is block = depth). ``meta["run"]`` is the
    :class:`ProbeRun` (every split's metrics, the fits, heads and logits; :func:`save_run` writes them);
    ``figures()`` draws each attentive probe's attention and the per-layer accuracy.
    """
    import pandas as pd

    from vitscope.analysis.probes.stats import gains
    from vitscope.features.access import open_store_any
    from vitscope.runtime import resolve_device

    opts = options if options is not None else ProbeOptions()
    opts = opts.replace(**overrides) if overrides else opts
    opener = (lambda s: [open_store_any(x) for x in s] if isinstance(s, (list, tuple)) else open_store_any(s))
    bar = None
    if opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="probe steps", unit="step")
    try:
        run = probe_store(opener(stores), None if test is None else opener(test), experiments=opts.experiments,
                          probes=opts.probes, reductions=opts.reductions, site=opts.site, per_layer=opts.per_layer,
                          cfg=opts.train_config(), test_fraction=opts.test_fraction, heads=opts.heads,
                          attn_drops=opts.attn_drops, lrs=opts.lrs, wds=opts.wds, normalize=opts.normalize,
                          token_norm=opts.token_norm, jitter_val=not opts.clean_val,
                          device=resolve_device(opts.device), model=opts.model_name, dataset=opts.dataset_name,
                          progress=None if bar is None else bar.update, log=None if bar is None else bar.write,
                          total=None if bar is None else (lambda n: (setattr(bar, "total", n), bar.refresh())))
    finally:
        if bar is not None:
            bar.close()                  # before any error line, so that it is not glued to the bar
    rows: list[dict] = []
    for (p, exp), (fit, _) in run.fits.items():
        if not exp.startswith("layer_"):
            rows += [{"model": run.model, "task": f"{p}:{exp}", "metric": f"test_{m}", "value": float(
                fit.test_metrics[m]), "probe": p, "experiment": exp} for m in ("balanced_top1", "top1")]
    g = None
    if ("linear", "last_cls") in run.fits:
        table = pd.DataFrame(run.rows)
        g = gains(table[~table["experiment"].str.startswith("layer_")])
        rows += [{"model": run.model, "task": r.run, "metric": "gain", "value": 100.0 * float(r.gain)}
                 for r in g.itertuples() if r.run != "linear:last_cls"]
    for r in run.per_layer:
        rows.append({"model": run.model, "block": int(r["block"]), "task": f"per-layer {r['model'].rsplit(' ', 1)[-1]}",
                     "metric": r["metric"].replace(" ", "_"), "value": float(r["value"]), "input": r["input"]})
    base = run.fits.get(("linear", "last_cls"))
    best = max(((k, f) for k, (f, _) in run.fits.items() if not k[1].startswith("layer_")),
               key=lambda kf: kf[1].test_metrics["balanced_top1"], default=None)
    summary = f"probed {run.model}: {len(run.fits)} probes"
    if best is not None:
        summary += (f"; best test balanced top-1 {100 * best[1].test_metrics['balanced_top1']:.1f}% "
                    f"({best[0][0]}:{best[0][1]})")
    if base is not None:
        summary += f", last-layer CLS linear {100 * base[0].test_metrics['balanced_top1']:.1f}%"
    n = None if run.n_train is None else run.n_train + run.n_test
    return Result("probe", tidy_table(rows, "probe", opts, dataset=run.dataset), summary, opts,
                  meta={"run": run, "gains": g, "context": {"data": run.dataset, "n_images": n}}, draw=_draw)


def _draw(result: Result) -> dict:
    """The attention of each attentive probe over its inputs (mean and std over the test images beside it) and the
    per-layer linear accuracy (balanced top-1 as a fraction, on 0-1, with chance 1 / C)."""
    from vitscope.runtime import slug
    from vitscope.viz.per_block import plot_metric_per_block
    from vitscope.viz.probes import plot_attention_heads

    run = result.meta["run"]
    figs = {}
    for (probe, exp), (fit, inputs) in run.fits.items():
        if fit.attention is None:
            continue
        labels = [i.label for i in inputs] if len(inputs) == fit.attention.shape[-1] else None
        shown = result.table[result.table["task"] == f"{probe}:{exp}"]
        figs[f"attention_{slug(exp)}"] = (
            plot_attention_heads(fit.attention, labels, title=result.titled(f"{run.model}: attentive probe, {exp}")),
            shown,
            {"arrays": {"mean": fit.attention.mean(0), "std": fit.attention.std(0)},
             "meta": {"inputs": labels, "experiment": exp}})
    if run.per_layer:
        import pandas as pd

        per = pd.DataFrame(run.per_layer)
        figs["accuracy_per_layer"] = (plot_metric_per_block(
            per, metric="test balanced_top1", title=f"{run.model}: linear probe per layer",
            ylabel="test balanced top-1", chance=1 / run.num_classes if run.num_classes else None, ylim=(0.0, 1.0),
            **result.context()), per)
    return figs


def save_run(run: ProbeRun, out, save_heads: bool = True) -> list:
    """Write a probe run: ``results.csv`` / ``.parquet`` (every split's metrics), ``val_grid``, the test logits and
    predictions per probe (``logits/``) and, with ``save_heads``, the trained probes (``heads/``, safetensors +
    JSON)."""
    from pathlib import Path

    import pandas as pd

    from vitscope.analysis.probes.attentive import save_attentive_probe
    from vitscope.analysis.probes.linear import save_linear_head
    from vitscope.runtime import save_tidy, slug

    out = Path(out)
    written = save_tidy(run.rows, out / "results")
    grids = []
    (out / "logits").mkdir(parents=True, exist_ok=True)
    for (probe, exp), (fit, inputs) in run.fits.items():
        tag = f"{probe}_{slug(exp)}"
        grids += [{"probe": probe, "experiment": exp, **r} for r in fit.val_grid]
        np.save(out / "logits" / f"{tag}.npy", fit.test_logits)
        pd.DataFrame({"row": np.arange(len(fit.test_targets)), "target": fit.test_targets,
                      "prediction": fit.test_predictions}).to_csv(out / "logits" / f"{tag}.predictions.csv",
                                                                  index=False)
        meta = {"model": run.model, "dataset": run.dataset, "experiment": exp, "lr": fit.lr,
                "weight_decay": fit.weight_decay, "attn_drop": fit.attn_drop, "classes": run.classes,
                "inputs": [{"site": i.site, "layer": i.layer, "reduction": i.reduction} for i in inputs],
                "normalize": "l2 per sample and input (all-token inputs: per token)",
                "test_metrics": fit.test_metrics}
        if save_heads and probe == "linear":
            written += save_linear_head(out / "heads" / tag, fit.head[0], fit.head[1], meta)
        elif save_heads:
            written += save_attentive_probe(out / "heads" / tag, fit.head, meta)
    written += save_tidy(grids, out / "val_grid")
    return written
