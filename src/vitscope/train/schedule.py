"""The learning-rate schedule of every trainer in vitscope (``vitscope train``, the feature probes, the end-to-end
probes): linear warm-up, then cosine decay to a floor, evaluated per optimisation step."""
from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, base_lr, warmup_steps: int = 0, min_lr: float = 0.0,
              warmup_start_lr: float = 0.0):
    """Learning rate at ``step`` (0-based).

    Warm-up: linear from ``warmup_start_lr`` (at step 0) to ``base_lr`` (reached at ``warmup_steps``).
    Then ``min_lr + (base_lr - min_lr)(1 + cos(pi s / S)) / 2`` with ``s = step - warmup_steps`` and
    ``S = total_steps - warmup_steps``; constant ``min_lr`` from ``total_steps`` on. ``base_lr`` may be a tensor
    (one rate per configuration of a batched grid).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    decay = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / decay, 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
