"""Gradient-weighted attention: vit-explain's gradient rollout and Chefer et al.'s relevance (seed 001).

Both need the gradient of a class score with respect to every block's attention probabilities. The
patterns are captured by hooks on ``blocks.{i}.attn.hook_pattern`` (which switches the model to the explicit
attention path) and stored **by block index**; the gradients are taken with ``torch.autograd.grad`` with
respect to exactly those tensors, so gradient ``i`` always belongs to pattern ``i`` (public code that
collects gradients with backward hooks gets them in reverse order and zips them with the wrong blocks).
The model's parameter ``.grad`` fields are not touched.

- **Gradient rollout** (vit-explain): Ā = clamp(mean_heads(A ⊙ ∂s/∂A), min=0), then the rollout steps
  (optional discard, + I, row renormalisation, J_n = Â_n · J_{n-1}).
- **Chefer relevance** (Chefer et al. 2021, "Generic attention-model explainability"):
  Ā = mean_heads(clamp(∂s/∂A ⊙ A, min=0)); R ← R + Ā · R, R starting at the identity.

Note the order of clamp and mean differs between the two; both are kept as published.
Tokens entering late are handled as in :mod:`~vitscope.analysis.attention.rollout`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from vitscope.analysis.attention.maps import block_of, pattern_hook
from vitscope.analysis.attention.rollout import (
    _blocks, add_identity_and_normalize, discard_lowest, rollout_map, rollout_matrices,
)
from vitscope.analysis.attention.tokens import grid_of, normalize_block, resolve_query
from vitscope.models.layout import TokenLayout


def class_targets(logits: torch.Tensor, target) -> torch.Tensor:
    """None -> predicted class per sample; an int -> that class for all; a sequence -> one per sample."""
    B = logits.shape[0]
    if target is None:
        return logits.argmax(-1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(B)
    if t.numel() != B:
        raise ValueError(f"expected one target class or one per sample ({B}), got {t.numel()}")
    if (t < 0).any() or (t >= logits.shape[-1]).any():
        raise ValueError(f"target classes must be in [0, {logits.shape[-1] - 1}], got {t.tolist()}")
    return t


def attention_with_gradients(model, x: torch.Tensor, target=None, blocks: Sequence[int] | None = None,
                             score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Run the model and return ``(patterns, gradients, logits, targets)``.

    ``patterns`` / ``gradients``: {block: (B, H, T_b, T_b)}, detached. The score is the logit of ``target``
    (None: the predicted class) summed over the batch — samples do not interact, so each sample's gradient is
    that of its own score. ``score_fn(logits) -> (B,)`` replaces the class logit by any score.
    """
    if model.cfg.head == "none" and score_fn is None:
        raise ValueError("this model has no classification head; pass score_fn to say which score to explain")
    depth = model.cfg.depth
    blocks = sorted({normalize_block(b, depth) for b in (range(depth) if blocks is None else blocks)})
    store: dict[int, torch.Tensor] = {}

    def keep(t: torch.Tensor, hook) -> None:
        store[block_of(hook.name)] = t

    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)      # gradients flow even if the weights are frozen
        with model.hooks([(pattern_hook(b), keep) for b in blocks]):
            logits = model(x)
        targets = class_targets(logits, None if score_fn is not None else target)
        score = score_fn(logits) if score_fn is not None else logits.gather(1, targets[:, None]).squeeze(1)
        grads = torch.autograd.grad(score.sum(), [store[b] for b in blocks], allow_unused=True)
    pats = {b: store[b].detach() for b in blocks}
    grad_d = {b: (torch.zeros_like(pats[b]) if g is None else g.detach()) for b, g in zip(blocks, grads)}
    return pats, grad_d, logits.detach(), targets.detach()


def _check(pats, grads):
    for b in pats:
        if b not in grads or grads[b].shape != pats[b].shape:
            raise ValueError(f"block {b}: gradient missing or of a different shape than its pattern")


def gradient_rollout(patterns: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                     gradients: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                     layouts: Mapping[int, TokenLayout] | Sequence[TokenLayout], discard_ratio: float = 0.0,
                     start_block: int = 0, end_block: int | None = None) -> torch.Tensor:
    """vit-explain's gradient rollout -> J (B, T_end, T_end)."""
    pats, blocks = _blocks(patterns, start_block, end_block)
    grads = dict(gradients) if isinstance(gradients, Mapping) else dict(enumerate(gradients))
    lays = dict(layouts) if isinstance(layouts, Mapping) else dict(enumerate(layouts))
    _check({b: pats[b] for b in blocks}, grads)
    mats = {}
    for b in blocks:
        a = (pats[b].float() * grads[b].float()).mean(1).clamp(min=0)               # B, T, T
        a = discard_lowest(a, discard_ratio, keep=lays[b].cls)
        mats[b] = add_identity_and_normalize(a)
    return rollout_matrices(mats, lays, blocks)


def chefer_relevance(patterns: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                     gradients: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                     layouts: Mapping[int, TokenLayout] | Sequence[TokenLayout], start_block: int = 0,
                     end_block: int | None = None) -> torch.Tensor:
    """Chefer et al.'s relevance R (B, T_end, T_end): R ← R + mean_heads(clamp(∇A ⊙ A, 0)) · R."""
    pats, blocks = _blocks(patterns, start_block, end_block)
    grads = dict(gradients) if isinstance(gradients, Mapping) else dict(enumerate(gradients))
    lays = dict(layouts) if isinstance(layouts, Mapping) else dict(enumerate(layouts))
    _check({b: pats[b] for b in blocks}, grads)
    mats = {b: (grads[b].float() * pats[b].float()).clamp(min=0).mean(1) for b in blocks}
    return rollout_matrices(mats, lays, blocks, residual="add")


def relevance_from_model(model, x: torch.Tensor, target=None, method: str = "chefer", discard_ratio: float = 0.0,
                         start_block: int = 0, end_block: int = -1, query="cls", normalize: str | None = "max",
                         score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Run the model and return (maps (B, rows, cols), matrix (B, T, T), targets (B,)).

    ``method``: ``"chefer"`` (relevance) or ``"grad_rollout"`` (vit-explain). ``score_fn(output) -> (B,)``
    explains another score than a class logit (needed for models without a classification head).
    """
    depth = model.cfg.depth
    start, end = normalize_block(start_block, depth), normalize_block(end_block, depth)
    grid = grid_of(x, model)
    resolve_query(query, model.token_layout(end, grid), model.cfg)
    pats, grads, _, targets = attention_with_gradients(model, x, target, blocks=range(start, end + 1),
                                                       score_fn=score_fn)
    lays = {b: model.token_layout(b, grid) for b in pats}
    if method == "chefer":
        M = chefer_relevance(pats, grads, lays, start, end)
    elif method == "grad_rollout":
        M = gradient_rollout(pats, grads, lays, discard_ratio, start, end)
    else:
        raise ValueError(f"method must be 'chefer' or 'grad_rollout', got {method!r}")
    return rollout_map(M, lays[end], query, normalize, cfg=model.cfg), M, targets
