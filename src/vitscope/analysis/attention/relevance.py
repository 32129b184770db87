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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitscope.analysis.api import Drawn, OptionError, Result
from vitscope.analysis.attention.common import (
    AttentionOptions, AttentionPatterns, ImageBatches, PatternBatch, block_of, check_block, data_description,
    map_frame, one_model, options_of, pattern_batches, pattern_hook, weights_of,
)
from vitscope.analysis.attention.rollout import (
    Attribution, _blocks, add_identity_and_normalize, discard_lowest, resolve_discard_rule, rollout_map,
    rollout_matrices,
)
from vitscope.analysis.attention.tokens import grid_of, normalize_block, resolve_query
from vitscope.models.layout import TokenLayout
from vitscope.runtime import model_meta


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
    return _relevance(model, x, target, method, discard_ratio, start_block, end_block, query, normalize, score_fn,
                      discard_rule)[0]


def _relevance(model, x, target, method, discard_ratio, start_block, end_block, query, normalize, score_fn,
               discard_rule) -> tuple[Attribution, torch.Tensor]:
    """:func:`relevance_from_model` and the logits of the forward pass it explains."""
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
    pats, grads, logits, targets = attention_with_gradients(model, x, target, blocks=range(start, end + 1),
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
    return Attribution(rollout_map(M, lays[end], query, normalize, cfg=model.cfg), M, targets), logits


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class RolloutOptions(AttentionOptions):
    """Options of :func:`evaluate` (``vitscope rollout``, the app's rollout view, the report's rollout and
    relevance)."""

    method: str = "rollout"             # rollout, grad-rollout, chefer2021-generic or chefer2021-lrp (METHODS)
    head_fusion: str = "mean"           # rollout: mean, max or min
    discard_ratio: float = 0.0          # rollout / grad-rollout: zero this share of the lowest entries per block
    discard_rule: str = "exclude-cls"   # which entries the discard zeroes (DISCARD_RULES)
    normalize: str = "max"              # map scaling: max, minmax or none
    start_block: int = 0
    end_block: int = -1
    query: str = "cls"                  # row read from the rolled-out matrix
    target: int | None = None           # class explained by the gradient methods (None: the predicted one)
    limit: int | None = 8
    batch_size: int = 8
    cmap: str = "inferno"
    opacity: float = 0.6
    progress: bool = False

    def validate(self) -> None:
        from vitscope.analysis.attention.rollout import (DISCARD_RULES, NORMALIZATIONS, ROLLOUT_FUSIONS,
                                                         resolve_discard_rule)

        try:
            self.method = resolve_method(self.method)
        except ValueError as e:
            raise OptionError("method", f"`method`: {e}") from None
        self.check_choice("head_fusion", ROLLOUT_FUSIONS)
        self.check_number("discard_ratio", 0, 1, high_open=True)
        try:
            resolve_discard_rule(self.discard_rule)
        except ValueError:
            self.check_choice("discard_rule", DISCARD_RULES)
        self.check_choice("normalize", NORMALIZATIONS)
        self.check_int("start_block", minimum=None)
        self.check_int("end_block", minimum=None)
        self.check_query()
        self.check_int("target", minimum=0, optional=True)
        self.check_limit()
        self.check_int("batch_size")
        self.check_display()


def evaluate(models, data=None, options: RolloutOptions | None = None, **overrides) -> Result:
    """Attention rollout, gradient rollout or Chefer et al.'s relevance of every image (``options.method``).

    Args:
        models: one model (or ``{label: model}`` with one entry); the gradient methods need a classification head.
        data: images (a dataset spec, an ``ImageDataset``, image files, model inputs (N, 3, H, W)) or
            :class:`~vitscope.analysis.attention.common.AttentionPatterns` (rollout reads them; the gradient
            methods run the model on their ``images``).
        options: :class:`RolloutOptions` (keyword overrides are applied on top).

    Returns a :class:`~vitscope.analysis.api.Result`: one row per image x patch (``metric``: the method), with
    ``image``, ``row``, ``col`` and, for the gradient methods, ``target`` (the class explained) and
    ``target_logit``; ``arrays``: ``maps`` (N, rows, cols), ``matrix`` (N, T, T), ``targets``, ``target_logits``.
    ``figures()`` draws every image with its map.
    """
    import pandas as pd

    from vitscope.analysis.api import tidy_table
    from vitscope.analysis.attention.rollout import rollout_from_patterns

    opts = options_of(RolloutOptions, options, overrides)
    label, model = one_model(models)
    method, gradient = opts.method, opts.method != "rollout"
    if gradient and model.cfg.head == "none":
        raise OptionError("method", f"`method` {method} explains a class score, and this model has no "
                                    f"classification head; use rollout")
    start, end = check_block(model, opts.start_block, "start_block"), check_block(model, opts.end_block, "end_block")
    if start > end:
        raise OptionError("start_block", f"`start_block` {opts.start_block} comes after `end_block` "
                                         f"{opts.end_block}")
    resolve_query(opts.query, model.token_layout(end), model.cfg)
    if gradient and isinstance(data, AttentionPatterns):
        if data.images is None:
            raise ValueError(f"{method} runs the model again: give the patterns with their images")
        data = data.images
    out: dict[str, list] = {k: [] for k in ("maps", "matrix", "targets", "logits", "display", "index", "ids")}
    blocks = None if gradient else range(start, end + 1)
    for batch in (_image_batches(model, data, opts) if gradient else
                  pattern_batches(model, data, blocks, opts.limit, opts.batch_size, opts.progress)):
        if gradient:
            att, logits = _relevance(model, batch.x, opts.target, method, opts.discard_ratio, start, end,
                                     opts.query, opts.normalize, None, opts.discard_rule)
            out["targets"].append(att.targets.cpu())
            out["logits"].append(logits.float().gather(1, att.targets[:, None]).squeeze(1).cpu())
        else:
            att = rollout_from_patterns(batch.patterns, batch.layouts, opts.head_fusion, opts.discard_ratio, start,
                                        end, opts.query, opts.normalize, opts.discard_rule, model.cfg)
        out["maps"].append(att.maps.detach().float().cpu())
        out["matrix"].append(att.matrix.detach().float().cpu())
        for k in ("display", "index", "ids"):
            out[k] += getattr(batch, k)
    arrays = {k: torch.cat(v).numpy() for k, v in out.items() if k in ("maps", "matrix", "targets", "logits") and v}
    arrays.update(index=np.asarray(out["index"]),
                  display=out["display"] if all(d is not None for d in out["display"]) else None)
    cols = dict(image=out["ids"])
    if gradient:
        cols.update(target=arrays["targets"].tolist(), target_logit=arrays["logits"].tolist())
    df = map_frame(arrays["maps"], metric=method, **cols)
    df.insert(0, "model", label)
    df.insert(1, "block", end)
    table = tidy_table(df, "rollout", opts, dataset=data_description(data), weights={label: weights_of(model)})
    what = METHOD_TITLES[method] + (f" ({opts.head_fusion}, discard {opts.discard_ratio:g})"
                                    if method == "rollout" else "")
    n = len(out["ids"])
    summary = f"{label}: {what} of {n} image(s)" + (
        f", explaining class(es) {', '.join(map(str, sorted(set(arrays['targets'].tolist()))))}" if gradient else "")
    return Result("rollout", table, summary, opts, arrays,
                  meta={"model": label, "what": what, "ids": out["ids"], "record": model_meta(model, label)},
                  draw=_draw)


def _image_batches(model, data, opts):
    """Batches of model inputs for the gradient methods (no patterns collected: they run the model themselves)."""
    images = ImageBatches(model, data, opts.limit)
    ids = images.ids
    for x, idx in images.batches(opts.batch_size, opts.progress):
        yield PatternBatch({}, {}, x, list(images.display(x)), idx, [ids[i] for i in idx])
    images.require(len(images.used))


def _draw(result: Result) -> dict:
    """Every image, its map over it and the map alone."""
    from vitscope.viz.attention import plot_image_overlays

    o: RolloutOptions = result.options
    a, m = result.arrays, result.meta
    if a.get("display") is None:
        return {}
    names = [Path(i).name for i in m["ids"]]
    targets = a["targets"].tolist() if "targets" in a else []
    titles = [f"{n} (class {t})" for n, t in zip(names, targets)] if targets else names
    fig = plot_image_overlays(a["display"], a["maps"], titles, cmap=o.cmap, alpha=o.opacity, title=m["what"])
    meta = {**m["record"], "images": m["ids"], "method": o.method, "head_fusion": o.head_fusion,
            "discard_ratio": o.discard_ratio, "discard_rule": o.discard_rule, "normalize": o.normalize,
            "start_block": o.start_block, "query": o.query, "targets": targets}
    return {o.method: Drawn(fig, arrays={"maps": a["maps"]}, meta=meta)}
