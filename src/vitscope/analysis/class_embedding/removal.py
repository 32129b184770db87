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
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vitscope.analysis.class_embedding.importance import (
    IMPORTANCE_METHODS, check_classifier, check_labels, importance, importance_order, random_orders,
)
from vitscope.analysis.attention.tokens import grid_of
from vitscope.hooks.interventions import drop_patches

DIRECTIONS = ("negative", "positive")
ORDERS = IMPORTANCE_METHODS + ("random",)


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
                   total: int | None = None, importances: dict | None = None) -> RemovalCurves:
    """Positive and negative removal curves over ``batches`` of (images, labels, indices...).

    ``orders``: any of grads, chefer, probe (needs ``probes`` from ``fit_token_probes``), random. One pass
    over the data; per batch the importances are computed, then the model runs once per order, direction
    and number of removed patches. ``importances``: an optional dict that receives {order: (n, N)} tensors.
    """
    from tqdm.auto import tqdm

    check_classifier(model)
    orders_l = resolve_orders(orders)
    if "probe" in orders_l and probes is None:
        raise ValueError("the probe order needs fitted per-token ridge probes (fit_token_probes on a training set; "
                         "in the command line: --probe-data SPEC)")
    res: RemovalCurves | None = None
    rand = None
    for batch in tqdm(batches, desc="removal curves", total=total, disable=not progress, leave=False):
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
        elif N != res.n_patches:
            raise ValueError(f"every image must have the same number of patches ({res.n_patches}), got {N}")
        with torch.inference_mode():
            base = model(x).argmax(-1) == y.to(model.device)
        for o in orders_l:
            if o == "random":
                for r in range(n_random):
                    c = correct_after_removal(model, x, y, rand[r], res.removed, "negative", base)
                    res.random_correct[r] += c.sum(1).numpy()
                continue
            imp = importance(model, x, y, o, probes)
            if importances is not None:
                importances.setdefault(o, []).append(imp.cpu())
            order = importance_order(imp)
            for d in DIRECTIONS:
                c = correct_after_removal(model, x, y, order, res.removed, d, base)
                res.correct[(o, d)] = res.correct.get((o, d), 0) + c.sum(1).numpy()
        res.n_images += x.shape[0]
    if res is None or res.n_images == 0:
        raise ValueError("no images for the removal curves")
    if importances is not None:
        for o in list(importances):
            if isinstance(importances[o], list):
                importances[o] = torch.cat(importances[o])
    return res
