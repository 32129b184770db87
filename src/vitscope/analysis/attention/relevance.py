"""Gradient-weighted attention: vit-explain's gradient rollout and the two methods of Chefer et al. (vilas2023).

Both need the gradient of a class score with respect to every block's attention probabilities. The
patterns are captured by hooks on ``blocks.{i}.attn.hook_pattern`` (which switches the model to the explicit
attention path) and stored **by block index**; the gradients are taken with ``torch.autograd.grad`` with
respect to exactly those tensors, so gradient ``i`` always belongs to pattern ``i`` (public code that
collects gradients with backward hooks gets them in reverse order and zips them with the wrong blocks).
The model's parameter ``.grad`` fields are not touched.

- **Gradient rollout** (vit-explain): Ā = clamp(mean_heads(A ⊙ ∂s/∂A), min=0), then the rollout steps
  (optional discard, + I, row renormalisation, J_n = Â_n · J_{n-1}).
- **chefer2021-generic** ("Generic Attention-model Explainability for Interpreting Bi-Modal and
  Encoder-Decoder Transformers", Chefer, Gur & Wolf, ICCV 2021): Ā = mean_heads(clamp(∂s/∂A ⊙ A, min=0));
  R ← R + Ā · R, R starting at the identity.
- **chefer2021-lrp** ("Transformer Interpretability Beyond Attention Visualization", Chefer, Gur & Wolf,
  CVPR 2021, "Transformer Attribution"): LRP relevance of the attention in place of A, see
  :mod:`~vitscope.analysis.attention.lrp`.

Note the order of clamp and mean differs between gradient rollout and the Chefer rules; both are kept as
published. Tokens entering late are handled as in :mod:`~vitscope.analysis.attention.rollout`.

One set of method names serves Python, the command line, the report and the app (:data:`METHODS`); older
names are accepted as aliases (:data:`METHOD_ALIASES`, :func:`resolve_method`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from vitscope.analysis.attention.maps import block_of, pattern_hook
from vitscope.analysis.attention.rollout import (
    Attribution, _blocks, add_identity_and_normalize, discard_lowest, resolve_discard_rule, rollout_map,
    rollout_matrices,
)
from vitscope.analysis.attention.tokens import grid_of, normalize_block, resolve_query
from vitscope.models.layout import TokenLayout


METHODS = ("rollout", "grad-rollout", "chefer2021-generic", "chefer2021-lrp")
GRADIENT_METHODS = METHODS[1:]
METHOD_ALIASES = {"grad": "grad-rollout", "grad_rollout": "grad-rollout", "gradient-rollout": "grad-rollout",
                  "chefer": "chefer2021-generic", "generic": "chefer2021-generic",
                  "transformer-attribution": "chefer2021-lrp", "transformer_attribution": "chefer2021-lrp"}
METHOD_TITLES = {"rollout": "attention rollout", "grad-rollout": "gradient rollout (vit-explain)",
                 "chefer2021-generic": "Generic Attention-model Explainability (Chefer et al., ICCV 2021)",
                 "chefer2021-lrp": "Transformer Attribution (Chefer et al., CVPR 2021)"}


def resolve_method(name: str, allowed: Sequence[str] = METHODS) -> str:
    """A method name or alias (``grad``, ``grad_rollout``, ``chefer``, ...) -> its name in :data:`METHODS`."""
    key = str(name).strip().lower()
    m = METHOD_ALIASES.get(key, key.replace("_", "-"))
    m = METHOD_ALIASES.get(m, m)
    if m not in allowed:
        raise ValueError(f"method must be one of {', '.join(allowed)} (aliases: "
                         f"{', '.join(k for k, v in METHOD_ALIASES.items() if v in allowed)}), got {name!r}")
    return m


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
                     start_block: int = 0, end_block: int | None = None,
                     discard_rule: str = "exclude-cls") -> torch.Tensor:
    """vit-explain's gradient rollout -> J (B, T_end, T_end).

    ``discard_rule``: see :func:`~vitscope.analysis.attention.rollout.discard_lowest`; ``"vit-explain"`` is
    that code's gradient rule, which zeroes the lowest entries CLS->CLS included (``"all"``).
    """
    rule = resolve_discard_rule(discard_rule, gradient=True)
    pats, blocks = _blocks(patterns, start_block, end_block)
    grads = dict(gradients) if isinstance(gradients, Mapping) else dict(enumerate(gradients))
    lays = dict(layouts) if isinstance(layouts, Mapping) else dict(enumerate(layouts))
    _check({b: pats[b] for b in blocks}, grads)
    mats = {}
    for b in blocks:
        a = (pats[b].float() * grads[b].float()).mean(1).clamp(min=0)               # B, T, T
        a = discard_lowest(a, discard_ratio, keep=lays[b].cls, rule=rule)
        mats[b] = add_identity_and_normalize(a)
    return rollout_matrices(mats, lays, blocks)


def chefer_relevance(patterns: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                     gradients: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                     layouts: Mapping[int, TokenLayout] | Sequence[TokenLayout], start_block: int = 0,
                     end_block: int | None = None) -> torch.Tensor:
    """chefer2021-generic relevance R (B, T_end, T_end): R ← R + mean_heads(clamp(∇A ⊙ A, 0)) · R."""
    pats, blocks = _blocks(patterns, start_block, end_block)
    grads = dict(gradients) if isinstance(gradients, Mapping) else dict(enumerate(gradients))
    lays = dict(layouts) if isinstance(layouts, Mapping) else dict(enumerate(layouts))
    _check({b: pats[b] for b in blocks}, grads)
    mats = {b: (grads[b].float() * pats[b].float()).clamp(min=0).mean(1) for b in blocks}
    return rollout_matrices(mats, lays, blocks, residual="add")


def relevance_from_model(model, x: torch.Tensor, target=None, method: str = "chefer2021-generic",
                         discard_ratio: float = 0.0, start_block: int = 0, end_block: int = -1, query="cls",
                         normalize: str | None = "max",
                         score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         discard_rule: str = "exclude-cls") -> Attribution:
    """Run the model and return :class:`~vitscope.analysis.attention.rollout.Attribution`
    ``(maps (B, rows, cols), matrix (B, T, T), targets (B,))``.

    ``method``: ``"chefer2021-generic"`` (alias ``"chefer"``), ``"chefer2021-lrp"`` (alias
    ``"transformer-attribution"``) or ``"grad-rollout"`` (aliases ``"grad"``, ``"grad_rollout"``).
    ``score_fn(output) -> (B,)`` explains another score than a class logit (needed for models without a
    classification head; not for chefer2021-lrp, which starts from the class). ``normalize``: ``"max"``,
    ``"minmax"`` or None.
    """
    method = resolve_method(method, GRADIENT_METHODS)
    depth = model.cfg.depth
    start, end = normalize_block(start_block, depth), normalize_block(end_block, depth)
    if start > end:
        raise ValueError(f"start_block {start_block} comes after end_block {end_block}")
    grid = grid_of(x, model)
    resolve_query(query, model.token_layout(end, grid), model.cfg)
    if method == "chefer2021-lrp":
        from vitscope.analysis.attention.lrp import check_supported

        if score_fn is not None:
            raise ValueError("chefer2021-lrp propagates the relevance of a class; score_fn is not supported")
        check_supported(model)
    pats, grads, _, targets = attention_with_gradients(model, x, target, blocks=range(start, end + 1),
                                                       score_fn=score_fn)
    lays = {b: model.token_layout(b, grid) for b in pats}
    if method == "chefer2021-generic":
        M = chefer_relevance(pats, grads, lays, start, end)
    elif method == "grad-rollout":
        M = gradient_rollout(pats, grads, lays, discard_ratio, start, end, discard_rule=discard_rule)
    else:
        from vitscope.analysis.attention.lrp import lrp_attention_relevance, transformer_attribution

        cams = lrp_attention_relevance(model, x, targets)
        M = transformer_attribution(cams, grads, lays, start, end).to(torch.promote_types(x.dtype, torch.float32))
    return Attribution(rollout_map(M, lays[end], query, normalize, cfg=model.cfg), M, targets)
