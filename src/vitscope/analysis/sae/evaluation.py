"""The evaluation API of SAEs: :class:`SAEOptions` and :func:`evaluate` (one tidy table per call)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitscope.analysis.api import Options, Result, data_label, tidy_table
from vitscope.analysis.sae.train import TrainOptions

SPLICE_METRICS = ("top1_agreement", "kl", "accuracy", "knn_top1")


@dataclass
class SAEOptions(Options):
    """Every default of ``vitscope sae eval``."""

    limit: int | None = 512               # images of the data used
    factors: bool = True                  # features against the generating factors (synthetic data only)
    splice: bool = True                   # the model's behaviour with the SAE spliced in
    dense: float = 0.1                    # a latent active on more than this share of tokens is dense
    knn_k: int = 20
    seed: int = 0
    batch_size: int = 64
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self.check_int("limit", optional=True)
        self.check_number("dense", 0, 1, low_open=True)
        self.check_int("knn_k")
        self.check_int("batch_size")


@dataclass
class SAEStudyOptions(TrainOptions):
    """A study's ``sae`` analysis: the grid of :class:`~.train.TrainOptions` trained on the cell's feature store,
    then measured by :func:`evaluate` on ``eval_limit`` images of the cell's dataset."""

    eval_limit: int | None = 256
    factors: bool = True
    splice: bool = True
    device: str | None = None

    def validate(self) -> None:
        super().validate()
        self.check_int("eval_limit", optional=True)

    def train_options(self) -> TrainOptions:
        names = TrainOptions.field_names()
        return TrainOptions(**{k: v for k, v in self.to_dict().items() if k in names})

    def eval_options(self) -> SAEOptions:
        return SAEOptions(limit=self.eval_limit, factors=self.factors, splice=self.splice, seed=self.seed,
                          device=self.device, progress=self.progress)


def _as_saes(saes) -> dict[str, object]:
    from vitscope.analysis.sae.io import load_sae

    if isinstance(saes, Mapping):
        items = dict(saes)
    else:
        items = {}
        for s in saes if isinstance(saes, (list, tuple)) else [saes]:
            name = Path(s).name if isinstance(s, (str, Path)) else str(s.cfg.meta.get("name") or f"sae{len(items)}")
            items[name] = s
    return {k: load_sae(v) if isinstance(v, (str, Path)) else v for k, v in items.items()}


def _images(model, data, limit: int | None):
    """(images (N, 3, H, W), labels (N,), the dataset) with the model's preprocessing."""
    from vitscope.features.access import open_dataset_any, preprocess_config
    from vitscope.models.preprocess import Preprocessor

    ds = open_dataset_any(data, transform=Preprocessor(preprocess_config(model)))
    n = len(ds) if limit is None else min(limit, len(ds))
    imgs, labels, idx = [], [], []
    for i in range(n):
        item = ds[i]
        if item[0] is None or not isinstance(item[0], torch.Tensor):
            continue                                   # an unreadable file: skipped, as the data layer does
        imgs.append(item[0])
        labels.append(int(item[1]))
        idx.append(i)
    if not imgs:
        raise ValueError("no usable image in the data; check it with `vitscope check-data SPEC`")
    return torch.stack(imgs), np.asarray(labels), ds, idx


def evaluate(saes, data=None, options: SAEOptions | None = None, model=None, **overrides) -> Result:
    """Measure SAEs on images: reconstruction and sparsity, the model with each SAE spliced in (with zero- and
    mean-ablation bounds), and, on the synthetic benchmark, features against the generating factors.

    Args:
        saes: SAE folders / files (vitscope, SAELens, saev), :class:`~.models.SAE` objects, or ``{name: either}``.
        data: images (a dataset spec or an opened dataset); ``builtin:demo`` for the bundled demo models.
        options: :class:`SAEOptions` (keyword overrides are applied on top).
        model: the model the SAEs read (default: the model named in the first SAE's metadata).

    Returns a :class:`~vitscope.analysis.api.Result`; rows per SAE: ``l0``, ``fvu``, ``cosine``, ``dead_fraction``,
    ``dense_fraction``; ``<variant>_<metric>`` for variants ``sae``, ``zero``, ``mean``, ``original`` and metrics
    ``top1_agreement``, ``kl``, ``accuracy``, ``knn_top1``, plus ``sae_kl_recovered``; ``factor_best_auroc``,
    ``factor_units_to_0.9`` and ``factor_probe_auroc`` (a linear probe on the basis' 64 best units; on the raw
    neurons of a stream of width <= 64, its linear ceiling) per basis and concept (columns ``basis``, ``factor``,
    ``concept``).
    """
    from vitscope.analysis.sae.factors import factor_bases, factor_scores, patch_concepts
    from vitscope.analysis.sae.hooks import (block_patch_acts, check_width, input_tokens, model_name, sae_site,
                                             site_hook)
    from vitscope.analysis.sae.metrics import activation_metrics, spliced_metrics

    opts = (options or SAEOptions()).replace(**overrides) if overrides else (options or SAEOptions())
    items = _as_saes(saes)
    if not items:
        raise ValueError("no SAE to evaluate")
    if model is None:
        name = next(iter(items.values())).cfg.meta.get("model")
        if not name:
            raise ValueError("the SAE does not name its model; pass model= (--model on the command line)")
        from vitscope.runtime import load_model

        model = load_model(name, device=opts.device)
    model.eval()
    for s in items.values():
        check_width(s, model)
    if data is None:
        raise ValueError("evaluating an SAE needs images: give data (--data SPEC; builtin:demo for demo-vit)")
    images, labels, ds, idx = _images(model, data, opts.limit)
    label = model_name(model)
    rows, density, factor_rows = [], {}, []
    source = getattr(ds, "source", None)
    synthetic = hasattr(source, "sample") and hasattr(source, "cfg")
    concepts_cache = {}
    for sname, sae in items.items():
        block, tokens = int(sae.cfg.block[0]), sae.cfg.tokens
        base = {"model": label, "block": block, "sae": sname, "arch": sae.arch, "width": sae.cfg.width,
                "k": sae.cfg.k[0] if sae.arch in ("topk", "batchtopk", "matryoshka") else None, "tokens": tokens,
                "site": sae_site(sae)[0]}
        if getattr(sae.cfg, "centre", "none") != "none":           # a column only where an SAE is centred
            base["centre"] = sae.cfg.centre
        x = block_patch_acts(model, images, block, input_tokens(sae), opts.batch_size, site_hook(sae, block))
        m, dens = activation_metrics(sae, x.split(4096), opts.dense)
        density[sname] = dens
        rows += [{**base, "metric": k, "value": v} for k, v in m.items() if k != "tokens"]
        if opts.splice:
            sp = spliced_metrics(model, sae, images, labels if (labels >= 0).all() else None, block,
                                 tokens if tokens != "mean" else "patches", opts.batch_size, opts.knn_k, opts.seed)
            for variant, vals in sp.items():
                rows += [{**base, "metric": f"{variant}_{k}", "value": v} for k, v in vals.items()]
        if opts.factors and synthetic and tokens == "patches":
            grid = model.cfg.img_size[0] // model.cfg.patch_size if isinstance(model.cfg.img_size, (list, tuple)) \
                else model.cfg.img_size // model.cfg.patch_size
            if grid not in concepts_cache:
                concepts_cache[grid] = patch_concepts(source, idx, grid)
            fr = factor_scores(factor_bases(model, sae, images, block, opts.seed, opts.batch_size),
                               concepts_cache[grid], opts.seed)
            for r in fr:
                r.update(sae=sname)
                factor_rows.append(r)
                for key in ("best_auroc", "units_to_0.9", "probe_auroc"):
                    rows.append({**base, "metric": f"factor_{key}", "value": r[key], "basis": r["basis"],
                                 "factor": r["factor"], "concept": r["concept"]})
    table = tidy_table(rows, "sae", opts, dataset=getattr(ds, "description", None))
    first = next(iter(items))
    v = {r["metric"]: r["value"] for r in rows if r["sae"] == first and "basis" not in r}
    summary = (f"{len(items)} SAE(s) on {len(images)} images of {label}: {first} L0 {v['l0']:.1f}, "
               f"FVU {v['fvu']:.3f}")
    if "sae_top1_agreement" in v:
        summary += f", spliced top-1 agreement {100 * v['sae_top1_agreement']:.1f}%, KL {v['sae_kl']:.3f}"
    other = sorted({str(m) for s in items.values() if (m := (s.cfg.meta or {}).get("model")) and str(m) != label})
    if other:                                # allowed (same width), but the numbers describe a transplanted SAE
        summary += f"; note: trained on {', '.join(other)}, measured on {label}"
    modes = {input_tokens(s) for s in items.values()}
    context = {"data": data_label(data) or data_label(ds), "n_images": len(images),
               "tokens": modes.pop() if len(modes) == 1 else None}
    return Result("sae", table, summary, opts, arrays={"density": density, "factors": factor_rows},
                  meta={"n_images": len(images), "context": context}, draw=_draw)


def _draw(result: Result) -> dict:
    import pandas as pd

    from vitscope.viz.sae import plot_density, plot_factors, plot_sparsity_fidelity

    t = result.table
    ctx = result.context()
    figs = {"sae_density": plot_density(result.arrays["density"], **ctx)}
    core = t[t["metric"].isin(["l0", "fvu"])]
    figs["sae_sparsity_fidelity"] = (plot_sparsity_fidelity(core, **ctx), core)
    if result.arrays.get("factors"):
        df = pd.DataFrame(result.arrays["factors"])
        first = df["sae"].iloc[0]
        shown = df[df["sae"] == first]
        tokens = "centred" if ctx.get("tokens") == "centred" else "patches"                   # patch SAEs only
        figs["sae_factors"] = (plot_factors(shown, **result.context(tokens=tokens)), shown)
    return figs
