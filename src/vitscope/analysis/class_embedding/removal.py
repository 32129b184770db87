"""Token-removal curves (vilas2023, reference section 19): accuracy as patch tokens are removed in order.

Patches are ordered by decreasing importance (``vitscope.analysis.class_embedding.importance``). With k of the
N patches removed, the model runs on the remaining N - k patches (and CLS, DIST, registers), tokens removed
right after the position embedding with ``vitscope.hooks.drop_patches`` (vilas2023 indexes the sequence at the
same place), and the accuracy over the images is recorded:

- ``negative``: the least important patches go first (the model keeps the N - k most important);
- ``positive``: the most important patches go first;
- ``random``: orders shared by all images (seeded), their curves averaged; the direction does not matter.

The curves hold k = 0 (the unperturbed accuracy) .. N - 1 (one patch left), or every ``step``-th of them
(always with N - 1). Two areas under each curve are reported, named:

- ``auc_seed``: vilas2023's, over k = 1 .. N - 1 only: sum(acc) / (max(acc) * N), normalised by the curve's
  own maximum (not a trapezoid). With a ``step`` it is mean(acc) / max(acc) * (N - 1) / N over the k >= 1
  evaluated, the same number on the full grid.
- ``auc_trapezoid``: the trapezoid rule over x = k / N, k = 0 .. N - 1 (accuracy as it is, unperturbed point
  included), in [0, (N - 1) / N].

Every curve of a batch (each order and direction, and every random order) removes the same number of patches at
a step, so their forward passes are stacked into one batched pass per step (:func:`correct_after_removals`,
chunked to ``max_tokens`` tokens per pass): one pass per step instead of one per curve and step.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vitscope.analysis.api import Options, OptionError, Result, data_label, tidy_table

from vitscope.analysis.class_embedding.importance import (
    IMPORTANCE_METHODS, check_classifier, check_labels, importance, importance_order, random_orders,
)
from vitscope.analysis.attention.tokens import grid_of
from vitscope.hooks.interventions import drop_patches

DIRECTIONS = ("negative", "positive")
ORDERS = IMPORTANCE_METHODS + ("random",)
MAX_TOKENS = 2 ** 17            # tokens per forward pass when the curves of a step are stacked


def removal_mask(order: torch.Tensor, n_removed: int, direction: str) -> torch.Tensor:
    """Bool mask of the removed patches (B, N) (or (N,) for a shared order): ``order`` lists patches most
    important first; ``negative`` removes its last ``n_removed``, ``positive`` its first."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    N = order.shape[-1]
    if not 0 <= n_removed < N + 1:
        raise ValueError(f"can remove 0..{N} of {N} patches, got {n_removed}")
    gone = order[..., N - n_removed:] if direction == "negative" else order[..., :n_removed]
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return mask.scatter(-1, gone, True)


def removal_steps(n_patches: int, step: int = 1) -> np.ndarray:
    """Numbers of removed patches on a curve: 0, step, 2 step, ... and always N - 1."""
    if n_patches < 2:
        raise ValueError(f"removal curves need at least 2 patch tokens, got {n_patches}")
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}")
    return np.unique(np.r_[np.arange(0, n_patches - 1, step), n_patches - 1]).astype(np.int64)


def correct_after_removal(model, x: torch.Tensor, labels: torch.Tensor, order: torch.Tensor,
                          removed: Sequence[int], direction: str,
                          baseline: torch.Tensor | None = None) -> torch.Tensor:
    """(K, B) bool: is each image still classified correctly with ``removed[k]`` patches removed in ``order``
    ((B, N) per image or (N,) shared)? ``baseline`` (B,) is reused for k = 0 when given."""
    check_classifier(model)
    y = labels.to(model.device)
    out = []
    with torch.inference_mode():
        for k in removed:
            k = int(k)
            if k == 0:
                if baseline is None:
                    baseline = model(x).argmax(-1) == y
                out.append(baseline)
                continue
            mask = removal_mask(order.to(model.device), k, direction)
            logits = model.run_with_hooks(x, fwd_hooks=drop_patches(model, mask))
            out.append(logits.argmax(-1) == y)
    return torch.stack(out).cpu()


def correct_after_removals(model, x: torch.Tensor, labels: torch.Tensor,
                           curves: Sequence[tuple[torch.Tensor, str]], removed: Sequence[int],
                           baseline: torch.Tensor | None = None, max_tokens: int = MAX_TOKENS,
                           step_done: Callable[[], None] | None = None) -> torch.Tensor:
    """(n_curves, K, B) bool: :func:`correct_after_removal` for several curves at once. ``curves``: ``(order,
    direction)`` pairs, ``order`` (B, N) per image or (N,) shared. At each number of removed patches every curve's
    images go through the model together, stacked and cut into passes of at most ``max_tokens`` tokens."""
    check_classifier(model)
    B = x.shape[0]
    y = labels.to(model.device)
    orders = [(o.to(model.device), d) for o, d in curves]
    n = len(orders)
    out = torch.empty(n, len(removed), B, dtype=torch.bool)
    image = torch.arange(n * B, device=model.device) % B                          # stacked row -> image
    n_tokens = model.token_layout(model.cfg.depth, grid_of(x, model)).n_tokens
    with torch.inference_mode():
        for kk, k in enumerate(int(k) for k in removed):
            if k == 0:
                if baseline is None:
                    baseline = model(x).argmax(-1) == y
                out[:, kk] = baseline.cpu()
            else:
                masks = torch.cat([removal_mask(o, k, d).expand(B, o.shape[-1]) for o, d in orders])   # n B, N
                rows = max(1, max_tokens // max(1, n_tokens - k))
                hits = []
                for s in range(0, n * B, rows):
                    img = image[s:s + rows]
                    logits = model.run_with_hooks(x[img], fwd_hooks=drop_patches(model, masks[s:s + rows]))
                    hits.append(logits.argmax(-1) == y[img])
                out[:, kk] = torch.cat(hits).view(n, B).cpu()
            if step_done is not None:
                step_done()
    return out


def auc_seed(acc: np.ndarray, removed: np.ndarray, n_patches: int) -> float:
    """vilas2023's AUC: over k >= 1, mean(acc) / max(acc) * (N - 1) / N (= sum / (max * N) on the full grid)."""
    acc, removed = np.asarray(acc, float), np.asarray(removed)
    a = acc[removed >= 1]
    if a.size == 0 or a.max() <= 0:
        return float("nan")
    return float(a.mean() / a.max() * (n_patches - 1) / n_patches)


def auc_trapezoid(acc: np.ndarray, removed: np.ndarray, n_patches: int) -> float:
    """Trapezoid area under accuracy against the fraction of patches removed (k / N)."""
    acc, x = np.asarray(acc, float), np.asarray(removed, float) / n_patches
    return float(np.sum((x[1:] - x[:-1]) * (acc[1:] + acc[:-1]) / 2))


AUCS = {"auc_seed": auc_seed, "auc_trapezoid": auc_trapezoid}


@dataclass
class RemovalCurves:
    """Correct counts per order and direction at each number of removed patches.

    ``correct[(order, direction)]``: (K,) numbers of correctly classified images; ``random_correct``: (R, K),
    one row per random order (seed ``seeds[r]``), removed in the ``negative`` sense of that order.
    """

    n_patches: int
    removed: np.ndarray
    n_images: int = 0
    correct: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    random_correct: np.ndarray | None = None
    seeds: list[int] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> np.ndarray:
        return self.removed / self.n_patches

    def accuracy(self, order: str, direction: str = "negative") -> np.ndarray:
        """Accuracy curve (K,); ``random``: the mean of the random orders' curves (any direction)."""
        if self.n_images == 0:
            raise ValueError("no images were evaluated")
        if order == "random":
            if self.random_correct is None:
                raise ValueError("no random orders were evaluated")
            return self.random_correct.mean(0) / self.n_images
        if (order, direction) not in self.correct:
            raise ValueError(f"no curve for order {order!r}, direction {direction!r}; have "
                             f"{sorted(self.correct)}")
        return self.correct[(order, direction)] / self.n_images

    def curves(self) -> dict[tuple[str, str], np.ndarray]:
        """{(order, direction): accuracy}; random appears once, with direction ``both``."""
        out = {(o, d): self.accuracy(o, d) for o, d in self.correct}
        if self.random_correct is not None:
            out[("random", "both")] = self.accuracy("random")
        return out

    def aucs(self) -> dict[tuple[str, str, str], float]:
        """{(order, direction, metric): value} for both AUCs of every curve."""
        return {(o, d, name): fn(acc, self.removed, self.n_patches)
                for (o, d), acc in self.curves().items() for name, fn in AUCS.items()}

    def curve_rows(self, model_name: str = "model") -> list[dict]:
        """Tidy rows: model, order, direction, seed, removed, fraction_removed, metric (accuracy), value."""
        rows = []
        for (o, d), acc in self.curves().items():
            for k, a in zip(self.removed, acc):
                rows.append({"model": model_name, "order": o, "direction": d, "seed": None, "removed": int(k),
                             "fraction_removed": float(k / self.n_patches), "metric": "accuracy",
                             "value": float(a)})
        if self.random_correct is not None:
            for s, c in zip(self.seeds, self.random_correct):
                for k, a in zip(self.removed, c / self.n_images):
                    rows.append({"model": model_name, "order": "random", "direction": "both", "seed": int(s),
                                 "removed": int(k), "fraction_removed": float(k / self.n_patches),
                                 "metric": "accuracy", "value": float(a)})
        return rows

    def auc_rows(self, model_name: str = "model") -> list[dict]:
        """Tidy rows: model, order, direction, metric (auc_seed, auc_trapezoid), value, n_images, n_patches."""
        return [{"model": model_name, "order": o, "direction": d, "metric": m, "value": v,
                 "n_images": self.n_images, "n_patches": self.n_patches}
                for (o, d, m), v in self.aucs().items()]


def resolve_orders(orders: str | Iterable[str]) -> list[str]:
    items = [s.strip() for s in orders.split(",")] if isinstance(orders, str) else [str(s) for s in orders]
    items = [s for s in items if s]
    bad = [s for s in items if s not in ORDERS]
    if bad or not items:
        raise ValueError(f"unknown order(s) {bad or items}; choose among {', '.join(ORDERS)}")
    return list(dict.fromkeys(items))


def removal_curves(model, batches: Iterable, orders: str | Iterable[str] = ("grads", "chefer", "random"),
                   probes=None, n_random: int = 10, seed: int = 0, step: int = 1, progress: bool = False,
                   total: int | None = None, importances: dict | None = None,
                   max_tokens: int = MAX_TOKENS) -> RemovalCurves:
    """Positive and negative removal curves over ``batches`` of (images, labels, indices...).

    ``orders``: any of grads, chefer, probe (needs ``probes`` from ``fit_token_probes``), random. One pass
    over the data; per batch the importances are computed, then every curve (order x direction, and each random
    order) runs at each number of removed patches, all curves of a step stacked in one batched pass
    (:func:`correct_after_removals`). ``importances``: an optional dict that receives {order: (n, N)} tensors.
    ``total``: the number of batches (for the progress bar, which counts removal steps).
    """
    from tqdm.auto import tqdm

    check_classifier(model)
    orders_l = resolve_orders(orders)
    if "probe" in orders_l and probes is None:
        raise ValueError("the probe order needs fitted per-token ridge probes (fit_token_probes on a training set; "
                         "in the command line: --train-data SPEC)")
    res: RemovalCurves | None = None
    rand = None
    bar = None
    for batch in batches:
        x, y = batch[0].to(model.device, model.dtype), batch[1]
        y = check_labels(model, y, x.shape[0])
        grid = grid_of(x, model)
        N = model.token_layout(0, grid).n_patches
        if res is None:
            res = RemovalCurves(N, removal_steps(N, step), orders=orders_l)
            if "random" in orders_l:
                rand = random_orders(N, n_random, seed)
                res.seeds = [seed + i for i in range(n_random)]
                res.random_correct = np.zeros((n_random, len(res.removed)), np.int64)
            bar = tqdm(desc="removal curves", total=None if total is None else total * len(res.removed),
                       unit="step", disable=not progress, leave=False)
        elif N != res.n_patches:
            raise ValueError(f"every image must have the same number of patches ({res.n_patches}), got {N}")
        with torch.inference_mode():
            base = model(x).argmax(-1) == y.to(model.device)
        curves: list[tuple[tuple[str, Any], torch.Tensor, str]] = []
        for o in orders_l:
            if o == "random":
                curves += [(("random", r), rand[r], "negative") for r in range(n_random)]
                continue
            imp = importance(model, x, y, o, probes)
            if importances is not None:
                importances.setdefault(o, []).append(imp.cpu())
            order = importance_order(imp)
            curves += [((o, d), order, d) for d in DIRECTIONS]
        c = correct_after_removals(model, x, y, [(order, d) for _, order, d in curves], res.removed, base,
                                   max_tokens, step_done=lambda: bar.update(1))
        for (key, _, _), ci in zip(curves, c):
            if key[0] == "random":
                res.random_correct[key[1]] += ci.sum(1).numpy()
            else:
                res.correct[key] = res.correct.get(key, 0) + ci.sum(1).numpy()
        res.n_images += x.shape[0]
    if bar is not None:
        bar.close()
    if res is None or res.n_images == 0:
        raise ValueError("no images for the removal curves")
    if importances is not None:
        for o in list(importances):
            if isinstance(importances[o], list):
                importances[o] = torch.cat(importances[o])
    return res


def removal_work(n_images: int, n_patches: int, orders: Sequence[str], n_random: int, step: int) -> dict:
    """How much work a set of removal curves is: patch counts per curve, curves, and image passes (images x patch
    counts x curves), to say before it starts."""
    orders = resolve_orders(orders)
    steps = len(removal_steps(n_patches, step))
    curves = 2 * len([o for o in orders if o != "random"]) + (n_random if "random" in orders else 0)
    return {"images": n_images, "patch_counts": steps, "curves": curves, "image_passes": n_images * steps * curves}


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class RemovalOptions(Options):
    """Options of :func:`evaluate` (``vitscope removal``, the study analysis ``removal``, the report's ``removal``
    section)."""

    orders: tuple[str, ...] = ("grads", "chefer", "random")   # grads, chefer, probe (needs probe_data), random
    n_random: int = 10                     # random orders; order i seeded seed + i (vilas2023: 0..9)
    seed: int = 0
    step: int = 1                          # evaluate every step-th number of removed patches
    batch_size: int = 64
    limit: int | None = None               # at most this many images of the data
    probe_limit: int | None = None         # at most this many images of the probe data
    max_tokens: int = MAX_TOKENS           # tokens per stacked forward pass
    progress: bool = False

    def validate(self) -> None:
        from vitscope.analysis.class_embedding.inputs import check_limit

        try:
            self.orders = tuple(resolve_orders(self.orders))
        except ValueError as e:
            raise OptionError("orders", f"`orders`: {e}") from None
        if "random" in self.orders and (isinstance(self.n_random, bool) or not isinstance(self.n_random, int)
                                        or self.n_random < 1):
            raise OptionError("n_random", f"`n_random` must be at least 1 (or leave random out of the orders), got "
                                          f"{self.n_random!r}")
        self.check_int("seed", minimum=0)
        self.check_int("step")
        self.check_int("batch_size")
        check_limit(self)
        check_limit(self, "probe_limit")
        self.check_int("max_tokens")

    def as_json(self, exclude=()) -> str:
        return super().as_json(tuple(exclude) + ("max_tokens",))


def default_orders(with_probe: bool) -> tuple[str, ...]:
    """grads, chefer, probe (when there are images to fit the probes on), random."""
    return ("grads", "chefer") + (("probe",) if with_probe else ()) + ("random",)


def evaluate(models, data=None, options: RemovalOptions | None = None, *, probe_data=None,
             log: Callable[[str], None] | None = None, **overrides) -> Result:
    """Token-removal curves (vilas2023): accuracy as patch tokens are removed, least (negative) or most (positive)
    important first, for the gradient, Chefer, per-token-probe and random orders, with both AUCs.

    Args:
        models: a model, a list or ``{label: model}`` (each with a classification head).
        data: labelled images of the head's classes: a dataset spec, an opened dataset or ``[(images, labels)]``.
        options: :class:`RemovalOptions` (keyword overrides on top).
        probe_data: labelled images to fit the per-token ridge probes of the ``probe`` order on (another split).
        log: called with one line per model saying how much work its curves are, before they start.

    Returns a :class:`~vitscope.analysis.api.Result`: rows ``model, metric, value`` with ``order``, ``direction``,
    ``task`` (``<order> <direction>``): ``auc_seed`` / ``auc_trapezoid`` per curve, and the curves themselves
    (``metric`` = ``accuracy``, with ``removed``, ``fraction_removed``, ``seed``); ``meta["curves"]`` holds each
    model's :class:`RemovalCurves`, ``arrays`` the importances (``importance_<model>_<order>``).
    """
    from vitscope.analysis.class_embedding.inputs import as_models, labelled_images, model_batches, options_of
    from vitscope.analysis.probes.ridge import fit_token_probes
    from vitscope.runtime import slug

    opts = options_of(RemovalOptions, options, overrides)
    items = as_models(models)
    if "probe" in opts.orders and probe_data is None:
        raise ValueError("the probe order needs --train-data SPEC (old spelling --probe-data): labelled images to "
                         "fit the per-token ridge probes on (another split than --data)")
    for label, model in items.items():
        if model.cfg.head == "none":
            raise ValueError(f"{label} has no classification head: removal curves measure class accuracy; use a "
                             "model with a classifier")
        if not model.cfg.class_token and {"grads", "chefer"} & set(opts.orders):
            raise ValueError(f"{label} has no CLS token, which the grads and chefer orders read; pass --orders "
                             "probe,random")
    rows, curves, arrays, work, summary = [], {}, {}, {}, []
    ds = None
    for label, model in items.items():
        ds, labels = labelled_images(data, "--data", "removal curves", opts.limit)
        n = None if labels is None else len(labels)
        C = model.cfg.num_classes
        if labels is not None and len(labels) and labels.max() >= C:
            raise ValueError(f"--data has labels up to {int(labels.max())} but {label}'s head has {C} classes; use "
                             "the dataset the model was trained on")
        n_patches = model.token_layout(0).n_patches
        if opts.step > n_patches - 2:
            raise OptionError("step", f"`step` must be at most {n_patches - 2} for {n_patches} patch tokens (a curve "
                                      f"needs two points after the first removal), got {opts.step}")
        work[label] = w = removal_work(n or 0, n_patches, opts.orders, opts.n_random, opts.step)
        if log is not None:
            log(f"removal curves of {label}: {w['images'] if n is not None else '?'} images x {w['patch_counts']} "
                f"patch counts x {w['curves']} curves = {w['image_passes']:,} image passes"
                + (", after fitting the per-token probes" if "probe" in opts.orders else ""))
        probes = None
        if "probe" in opts.orders:
            pds, plabels = labelled_images(probe_data, "--train-data", "the probe order", opts.probe_limit)
            pn = None if plabels is None else len(plabels)
            probes = fit_token_probes(model, model_batches(model, pds, opts.batch_size),
                                      model.cfg.num_classes, sites=("resid_post",), progress=opts.progress,
                                      total=None if pn is None else -(-pn // opts.batch_size))
        imps: dict = {}
        res = removal_curves(model, model_batches(model, ds, opts.batch_size), orders=opts.orders,
                             probes=probes, n_random=opts.n_random, seed=opts.seed, step=opts.step,
                             progress=opts.progress, total=None if n is None else -(-n // opts.batch_size),
                             importances=imps, max_tokens=opts.max_tokens)
        curves[label] = res
        arrays.update({f"importance_{slug(label)}_{o}": imp.numpy() for o, imp in imps.items()})
        rows += [{**r, "task": f"{r['order']} {r['direction']}"} for r in res.auc_rows(label) + res.curve_rows(label)]
        aucs = res.aucs()
        parts = [f"{o} {aucs[(o, 'negative', 'auc_seed')]:.3f}/{aucs[(o, 'positive', 'auc_seed')]:.3f}"
                 for o in opts.orders if o != "random"]
        if "random" in opts.orders:
            parts.append(f"random {aucs[('random', 'both', 'auc_seed')]:.3f}")
        summary.append(f"{label}: " + ", ".join(parts))
    table = tidy_table(rows, "removal", opts, dataset=getattr(ds, "description", None))
    for col in ("removed", "n_images", "n_patches"):            # integers, missing on the other kind of row
        if col in table:
            table[col] = table[col].astype("Int64")
    context = {"data": data_label(data) or data_label(ds), "n_images": {k: c.n_images for k, c in curves.items()}}
    return Result("removal", table, "removal curves (vilas2023 AUC negative/positive): " + "; ".join(summary), opts,
                  arrays=arrays, meta={"curves": curves, "work": work, "dataset": ds, "context": context,
                                       "num_classes": {k: m.cfg.num_classes for k, m in items.items()}},
                  draw=_draw)


def _draw(result: Result) -> dict:
    """The curves of each model (both directions), with the curves and AUCs saved beside the figure."""
    from vitscope.runtime import slug
    from vitscope.viz.removal import plot_removal_curves, removal_figure_files

    figs = {}
    for label, res in result.meta["curves"].items():
        shown = result.table[(result.table["model"] == label) & (result.table["metric"] != "accuracy")]
        arrays, info = removal_figure_files(res, {"model": label, "orders": list(result.options.orders),
                                                  "step": result.options.step})
        C = result.meta.get("num_classes", {}).get(label)
        figs[f"removal_{slug(label)}"] = (plot_removal_curves(res, title=result.titled(f"{label}: token removal",
                                                                                       label),
                                                              chance=1 / C if C else None),
                                          shown, {"arrays": arrays, "meta": info})
    return figs
