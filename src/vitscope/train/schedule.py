"""Learning-rate schedule: linear warm-up, then cosine decay to a floor, evaluated per optimisation step."""
from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0,
              warmup_start_lr: float = 0.0) -> float:
    """Learning rate at ``step`` (0-based).

    Warm-up: linear from ``warmup_start_lr`` (at step 0) to ``base_lr`` (reached at ``warmup_steps``).
    Then cosine from ``base_lr`` to ``min_lr`` at ``total_steps``; constant ``min_lr`` after that.
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
