"""One optimisation step, shared by ``vitscope train``, the feature probes and the end-to-end probes."""
from __future__ import annotations

from collections.abc import Iterable

import torch


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: Iterable[torch.Tensor],
                   grad_clip: float | None = None, where: str | None = None) -> None:
    """``zero_grad``, ``backward``, clip the total gradient norm of ``params`` to ``grad_clip`` (if set), ``step``.

    ``where`` (e.g. ``"epoch 3 step 12"``): first check that the loss is finite and raise a one-line RuntimeError
    saying where it was not (this reads the loss back from the device, so it is skipped when ``where`` is None).
    """
    if where is not None and not torch.isfinite(loss):
        raise RuntimeError(f"the loss became {float(loss)} at {where}; lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
