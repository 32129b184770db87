"""ciernik2025's probe metrics: top-k accuracy and balanced top-k accuracy.

``balanced_topk`` is the mean, over the classes present in the targets, of the share of that class's samples whose
label is among the k highest logits. Top-5 values are NaN when the largest label is below 5 (fewer than 6 classes
seen), as in the seed.
"""
from __future__ import annotations

import math

import torch


def _topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C) logits, (N,) targets -> bool (N,) whether the target is among the k highest logits."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices                                           # N, k
    return (top == targets[:, None]).any(dim=-1)


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Share of samples whose label is among the k highest logits."""
    targets = torch.as_tensor(targets, device=logits.device).long()
    if len(targets) == 0:
        return math.nan
    return float(_topk_hits(logits, targets, k).float().mean())


def balanced_topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Mean over the classes present in ``targets`` of each class's top-k accuracy."""
    targets = torch.as_tensor(targets, device=logits.device).long()
    if len(targets) == 0:
        return math.nan
    hits = _topk_hits(logits, targets, k).float()
    n = torch.bincount(targets).float()
    per = torch.bincount(targets, weights=hits, minlength=len(n))
    present = n > 0
    return float((per[present] / n[present]).mean())


def probe_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """top1, top5, balanced_top1, balanced_top5 (the top-5 values NaN when the largest label is < 5)."""
    targets = torch.as_tensor(targets, device=logits.device).long()
    small = int(targets.max()) < 5 if len(targets) else True
    return {
        "top1": topk_accuracy(logits, targets, 1),
        "top5": math.nan if small else topk_accuracy(logits, targets, 5),
        "balanced_top1": balanced_topk_accuracy(logits, targets, 1),
        "balanced_top5": math.nan if small else balanced_topk_accuracy(logits, targets, 5),
    }


def batched_balanced_top1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Balanced top-1 of many probes at once: logits (..., N, C), targets (N,) -> (...)."""
    targets = targets.long()
    n = torch.bincount(targets).to(logits.dtype)
    present = n > 0
    hits = (logits.argmax(-1) == targets).to(logits.dtype)                          # ..., N
    onehot = torch.nn.functional.one_hot(targets, len(n)).to(logits.dtype)          # N, K
    per = hits @ onehot                                                             # ..., K
    return (per[..., present] / n[present]).mean(-1)
