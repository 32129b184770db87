"""LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning"), in the NVLAMB form that timm's ``Lamb``
implements and DeiT / DeiT III and cls-register train with (``--opt lamb``).

Per step, with ``g`` the gradient divided by ``max(‖all gradients‖ / max_grad_norm, 1)`` (global clipping):

    m = β1 m + (1 - β1) g                 v = β2 v + (1 - β2) g²
    u = (m / (1 - β1^t)) / (sqrt(v / (1 - β2^t)) + eps)  + weight_decay · w
    r = ‖w‖ / ‖u‖  (1 when either norm is 0; only where weight_decay ≠ 0, unless always_adapt)
    w = w - lr · r · u

Parameters without weight decay (biases, norms, tokens: see ``param_groups``) take plain Adam steps, as in timm.
"""
from __future__ import annotations

import torch


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float | None = 1.0, always_adapt: bool = False) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Lamb needs lr, eps and weight_decay >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lamb betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      always_adapt=always_adapt))
        self.max_grad_norm = max_grad_norm

    def _clip_divisor(self) -> torch.Tensor | None:
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if self.max_grad_norm is None or not grads:
            return None
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return (norm / self.max_grad_norm).clamp(min=1.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        divisor = self._clip_divisor()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                g = p.grad if divisor is None else p.grad / divisor
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + group["eps"])
                wd = group["weight_decay"]
                if wd:
                    update.add_(p, alpha=wd)
                if wd or group["always_adapt"]:
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    update.mul_(ratio)
                p.add_(update, alpha=-group["lr"])
        return loss
