"""ciernik2025's tuning: stratified 20% validation split, lr x weight-decay grid, selection by validation balanced top-1,
retraining on the whole training set, test metrics; for the attentive probe each attention dropout (0, 0.1, 0.3) is
a separate search and the one with the best validation score is kept.

The grid (and, for linear probes, every layer) trains as one batched computation (``batched.py``). A configuration
replaces the best only when strictly better, so ties keep the earlier one (lr outer 0.1, 0.01, 0.001; weight decay
inner, ascending); when every validation score is 0 that is the first configuration (ciernik2025's code then keeps
its starting values lr = 0, weight decay = 0, i.e. an untrained probe). Validation features are jittered like the training features by default, as in the seed (its
validation split is a subset of the jittered training set); ``jitter_val=False`` scores them clean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vitscope.analysis.probes.attentive import attention_over_inputs
from vitscope.analysis.probes.batched import AttentiveGrid, linear_logits, train_linear_grid
from vitscope.analysis.probes.metrics import batched_balanced_top1, probe_metrics
from vitscope.analysis.probes.train import (LR_GRID, WD_GRID, ProbeTrainConfig, adjust_batch_size, check_training_data,
                                            grid, jitter, split_batch_size)

ATTN_DROPS = (0.0, 0.1, 0.3)


@dataclass
class ProbeFit:
    """One tuned probe: the chosen configuration, the validation grid, metrics, test logits and the trained head."""

    name: str
    kind: str                                    # "linear" or "attentive"
    lr: float
    weight_decay: float
    attn_drop: float | None
    val_grid: list[dict]                         # {lr, weight_decay, attn_drop, val_balanced_top1}
    train_metrics: dict[str, float]
    test_metrics: dict[str, float]
    test_logits: np.ndarray                      # (M, C)
    test_targets: np.ndarray                     # (M,)
    head: Any = None                             # (weight, bias) for linear, an AttentiveProbe for attentive
    attention: np.ndarray | None = None          # attentive: test attention weights (M, H, N)
    info: dict = field(default_factory=dict)

    @property
    def best_val(self) -> float:
        return max(r["val_balanced_top1"] for r in self.val_grid if r.get("attn_drop") == self.attn_drop) \
            if self.val_grid else float("nan")

    @property
    def test_predictions(self) -> np.ndarray:
        return self.test_logits.argmax(-1)


def num_classes_of(y_train: np.ndarray, y_test: np.ndarray | None = None, classes: list | None = None) -> int:
    c = int(y_train.max()) + 1
    if y_test is not None and len(y_test):
        c = max(c, int(y_test.max()) + 1)
    return max(c, len(classes or []))


def check_labels(y_train: np.ndarray, y_test: np.ndarray | None, classes: list | None = None) -> None:
    """One clear line for label problems: one class only, a test class absent from the training split."""
    tr = np.unique(y_train)
    if len(tr) < 2:
        raise ValueError(f"the training split has only one class ({tr[0] if len(tr) else 'none'}); a probe needs at "
                         "least two classes")
    if y_test is not None:
        missing = sorted(set(np.unique(y_test).tolist()) - set(tr.tolist()))
        if missing:
            names = [classes[i] if classes and i < len(classes) else str(i) for i in missing[:5]]
            raise ValueError(f"class(es) {', '.join(names)} appear in the test split but not in the training split; "
                             "use a training set that covers every class")


def val_split(y: np.ndarray, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's stratified ``train_test_split(test_size=fraction, random_state=seed)`` on the row indices."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    small = np.flatnonzero((counts > 0) & (counts < 2))
    if len(small):
        raise ValueError(f"class {int(small[0])} has a single training sample; the stratified validation split needs "
                         "at least 2 per class (add samples or drop that class)")
    try:
        tr, va = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
    except ValueError as e:
        raise ValueError(f"stratified {fraction:.0%} validation split failed: {e}") from None
    return np.sort(tr), np.sort(va)


def _t(a, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), device=device)


def _maybe_jitter(x: torch.Tensor, cfg: ProbeTrainConfig, on: bool, batch_axis: int = 0) -> torch.Tensor:
    if not on or cfg.jitter_p <= 0:
        return x
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed + 1)
    if batch_axis == 0:
        return jitter(x, gen, cfg.jitter_p, cfg.jitter_std)
    return jitter(x.transpose(0, 1), gen, cfg.jitter_p, cfg.jitter_std).transpose(0, 1)


# ----------------------------------------------------------------------------- linear probes, one per input
def tune_linear(train: list[np.ndarray], y_train: np.ndarray, test: list[np.ndarray], y_test: np.ndarray,
                names: list[str] | None = None, cfg: ProbeTrainConfig = ProbeTrainConfig(), lrs=LR_GRID, wds=WD_GRID,
                val_fraction: float = 0.2, jitter_val: bool = True, num_classes: int | None = None,
                device: str | torch.device = "cpu", progress=None) -> list[ProbeFit]:
    """One tuned linear probe per input (each (N, D_i)); inputs of one width train as one batched computation."""
    names = names or [f"input{i}" for i in range(len(train))]
    check_labels(y_train, y_test)
    C = num_classes or num_classes_of(y_train, y_test)
    configs = grid(lrs, wds)
    g_lr = [c[0] for c in configs]
    g_wd = [c[1] for c in configs]
    tr_idx, va_idx = val_split(y_train, val_fraction, cfg.seed)
    bs_full = adjust_batch_size(cfg.batch_size, len(y_train))
    bs_tr = split_batch_size(bs_full, len(tr_idx))
    yt = torch.as_tensor(y_train)
    out: list[ProbeFit | None] = [None] * len(train)
    by_width: dict[int, list[int]] = {}
    for i, f in enumerate(train):
        by_width.setdefault(f.reshape(len(f), -1).shape[1], []).append(i)
    for width, idx in by_width.items():
        X = torch.stack([_t(train[i].reshape(len(y_train), -1), device).float() for i in idx])      # L, N, D
        check_training_data(X.transpose(0, 1), yt, f"training features of {names[idx[0]]}")
        W, b, _ = train_linear_grid(X[:, tr_idx], yt[tr_idx], g_lr, g_wd, cfg, C, batch_size=bs_tr,
                                    progress=progress)
        Xv = _maybe_jitter(X[:, va_idx], cfg, jitter_val, batch_axis=1)
        scores = batched_balanced_top1(linear_logits(Xv, W, b), _t(y_train[va_idx], device)).cpu().numpy()  # L, G
        best = [int(np.argmax(s)) for s in scores]                                    # first of equal maxima
        lr_b = [[g_lr[k]] for k in best]
        wd_b = [[g_wd[k]] for k in best]
        W, b, info = train_linear_grid(X, yt, lr_b, wd_b, cfg, C, batch_size=bs_full, progress=progress)
        Xt = torch.stack([_t(test[i].reshape(len(y_test), -1), device).float() for i in idx])
        with torch.no_grad():
            test_logits = linear_logits(Xt, W, b)[:, 0]                                # L, M, C
            train_logits = linear_logits(X, W, b)[:, 0]
        for j, i in enumerate(idx):
            out[i] = ProbeFit(
                name=names[i], kind="linear", lr=g_lr[best[j]], weight_decay=g_wd[best[j]], attn_drop=None,
                val_grid=[{"lr": a, "weight_decay": w, "attn_drop": None, "val_balanced_top1": float(s)}
                          for a, w, s in zip(g_lr, g_wd, scores[j])],
                train_metrics=probe_metrics(train_logits[j], yt.to(device)),
                test_metrics=probe_metrics(test_logits[j], _t(y_test, device)),
                test_logits=test_logits[j].cpu().numpy(), test_targets=np.asarray(y_test),
                head=(W[j, 0].cpu(), b[j, 0].cpu()), info={**info, "width": width})
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- attentive probe
def _config_chunk(n_configs: int, batch: int, heads: int, dim: int, budget: float) -> int:
    per = 4.0 * batch * heads * dim * 6                                                 # bytes per config, roughly
    return int(max(1, min(n_configs, budget // per)))


def _fit_attentive_grid(x, y, lrs, wds, heads, C, cfg, drop, bs, device, budget, progress):
    """Train len(lrs) attentive probes in chunks that fit ``budget`` bytes; returns the grids and their slices."""
    chunk = _config_chunk(len(lrs), bs, heads, x.shape[-1], budget)
    grids = []
    for s in range(0, len(lrs), chunk):
        g = AttentiveGrid(x.shape[-1], heads, C, len(lrs[s:s + chunk]), seed=cfg.seed, attn_drop=drop, device=device)
        g.fit(x, y, lrs[s:s + chunk], wds[s:s + chunk], cfg, batch_size=bs, progress=progress)
        grids.append((s, g))
    return grids


def tune_attentive(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray,
                   num_heads: int, name: str = "attentive", cfg: ProbeTrainConfig = ProbeTrainConfig(), lrs=LR_GRID,
                   wds=WD_GRID, attn_drops=ATTN_DROPS, val_fraction: float = 0.2, jitter_val: bool = True,
                   num_classes: int | None = None, device: str | torch.device = "cpu",
                   memory_budget: float = 2e9, progress=None) -> ProbeFit:
    """The tuned attentive probe on stacked inputs (N, T, D): the grid per attention dropout, the best by validation
    balanced top-1, retrained on the whole training set; test logits and attention weights (M, H, T)."""
    check_labels(y_train, y_test)
    C = num_classes or num_classes_of(y_train, y_test)
    configs = grid(lrs, wds)
    g_lr = [c[0] for c in configs]
    g_wd = [c[1] for c in configs]
    x = _t(train, device).float()
    yt = torch.as_tensor(y_train)
    check_training_data(x, yt, f"training features of {name}")
    tr_idx, va_idx = val_split(y_train, val_fraction, cfg.seed)
    bs_full = adjust_batch_size(cfg.batch_size, len(y_train))
    bs_tr = split_batch_size(bs_full, len(tr_idx))
    xv = _maybe_jitter(x[va_idx], cfg, jitter_val)
    yv = _t(y_train[va_idx], device)
    val_grid, best = [], (-1.0, 0, 0.0)
    for drop in attn_drops:
        for s, g in _fit_attentive_grid(x[tr_idx], yt[tr_idx], g_lr, g_wd, num_heads, C, cfg, drop, bs_tr, device,
                                        memory_budget, progress):
            scores = batched_balanced_top1(g.logits(xv), yv).cpu().numpy()
            for j, sc in enumerate(scores):
                k = s + j
                val_grid.append({"lr": g_lr[k], "weight_decay": g_wd[k], "attn_drop": drop,
                                 "val_balanced_top1": float(sc)})
                if sc > best[0]:
                    best = (float(sc), k, drop)
    _, k, drop = best
    final = AttentiveGrid(x.shape[-1], num_heads, C, 1, seed=cfg.seed, attn_drop=drop, device=device)
    info = final.fit(x, yt, [g_lr[k]], [g_wd[k]], cfg, batch_size=bs_full, progress=progress)
    probe = final.probe(0)
    xt = _t(test, device).float()
    test_logits, attn = attention_over_inputs(probe, xt)
    with torch.no_grad():
        train_logits = final.logits(x)[0]
    return ProbeFit(name=name, kind="attentive", lr=g_lr[k], weight_decay=g_wd[k], attn_drop=drop, val_grid=val_grid,
                    train_metrics=probe_metrics(train_logits, yt.to(device)),
                    test_metrics=probe_metrics(test_logits, _t(y_test, device)),
                    test_logits=test_logits.cpu().numpy(), test_targets=np.asarray(y_test), head=probe.cpu(),
                    attention=attn.numpy(), info={**info, "num_heads": num_heads, "tokens": int(x.shape[1])})


def steps_of(n: int, cfg: ProbeTrainConfig, val_fraction: float = 0.2) -> tuple[int, int]:
    """(steps of one grid training on the training part, steps of the final training) for a progress bar."""
    from vitscope.analysis.probes.train import schedule

    bs_full = adjust_batch_size(cfg.batch_size, n)
    n_tr = n - int(np.ceil(n * val_fraction))
    bs_tr = split_batch_size(bs_full, n_tr)
    nb, ep = schedule(n_tr, bs_tr, cfg.epochs, cfg.min_steps)
    nb2, ep2 = schedule(n, bs_full, cfg.epochs, cfg.min_steps)
    return nb * ep, nb2 * ep2


def linear_steps(n: int, cfg: ProbeTrainConfig, widths: int = 1, val_fraction: float = 0.2) -> int:
    """Optimiser steps (progress ticks) of :func:`tune_linear` on ``n`` samples whose inputs have ``widths``
    distinct widths (each width trains as one batched grid, then once more with the chosen configurations)."""
    grid_steps, final = steps_of(n, cfg, val_fraction)
    return widths * (grid_steps + final)


def attentive_steps(n: int, cfg: ProbeTrainConfig, n_configs: int, heads: int, dim: int, drops: int,
                    memory_budget: float = 2e9, val_fraction: float = 0.2) -> int:
    """Optimiser steps (progress ticks) of :func:`tune_attentive`: per attention dropout the grid in chunks that fit
    ``memory_budget``, then the final training."""
    grid_steps, final = steps_of(n, cfg, val_fraction)
    n_tr = n - int(np.ceil(n * val_fraction))
    bs_tr = split_batch_size(adjust_batch_size(cfg.batch_size, n), n_tr)
    chunk = _config_chunk(n_configs, bs_tr, heads, dim, memory_budget)
    return drops * -(-n_configs // chunk) * grid_steps + final
