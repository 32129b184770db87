"""Per-head direct logit attribution: how much each attention head writes, directly, into the true-class logit.

A head's output at token t, ``blocks.{i}.attn.hook_result[:, t, h]`` (times LayerScale where the model has it),
is one of the vectors that sum to the final stream at t. The logit lens reads ``W_y · norm(stream) + b_y``; with
the final norm's scale frozen at its value on the final stream (``sigma_t``), the norm is linear and each part
contributes

    dla(part) = (part - mean(part)) · (gamma ⊙ w_y) / sigma_t

(``w_y`` the class vector pulled back through the CLIP projection when the class embeddings live after it;
``gamma`` the final norm's weight; for a head on L2-normalised features, ``sigma_t`` also holds that length,
frozen at its value on the final stream). Summed over every part written into the stream at t (embeddings, heads,
projection biases, MLP outputs) this gives the lens logit minus ``beta · w_y + b_y``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vitscope.analysis.api import Result, data_label, tidy_table
from vitscope.analysis.class_embedding.inputs import ClassSpaceOptions
from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings, check_targets, resolve_class_embeddings


def _final_index(model, block: int, grid: tuple[int, int]) -> torch.Tensor:
    """For each token entering ``block``, its index in the output tokens (tokens are inserted, never removed)."""
    lay, out = model.token_layout(block, grid), model.token_layout(model.cfg.depth, grid)
    idx = torch.empty(lay.n_tokens, dtype=torch.long)
    for a, b in ((lay.cls, out.cls), (lay.dist, out.dist)):
        if a is not None:
            idx[a] = b
    for a, b in zip(lay.registers, out.registers):
        idx[a] = b
    idx[lay.patches] = torch.arange(out.patches.start, out.patches.stop)
    return idx


@torch.no_grad()
def head_logit_attribution(model, images: torch.Tensor, target, *, embeddings: ClassEmbeddings | None = None,
                           blocks=None) -> torch.Tensor:
    """Each head's direct contribution to the true-class logit, per token and block -> (B, len(blocks), H, T).

    ``images`` (B, 3, H, W); ``target`` (B,) class indices; ``embeddings``: the class embeddings of the lens
    (``ClassEmbeddings`` or a ``ClassProjection``; default: the model's own head; a headless model needs them);
    ``blocks``: which blocks (default all; negative counts from the end). T is the number of output tokens, in the
    output's order (``model.token_layout(depth)``); a token that enters after a block (late CLS or registers) is
    NaN there.
    """
    cfg = model.cfg
    if cfg.res_post_norm:
        raise ValueError("per-head logit attribution needs pre-norm blocks: in residual post-norm blocks the "
                         "norm after attention mixes the heads, so no head has a direct contribution of its own")
    emb = resolve_class_embeddings(model, embeddings)
    target = check_targets(target, emb.num_classes)
    if images.ndim != 4 or len(target) != images.shape[0]:
        raise ValueError(f"expected images (B, C, H, W) and B targets, got {tuple(images.shape)} and {len(target)}")
    depth = cfg.depth
    blocks = list(range(depth)) if blocks is None else [b + depth if b < 0 else b for b in blocks]
    if any(not 0 <= b < depth for b in blocks):
        raise ValueError(f"blocks must be in [-{depth}, {depth - 1}], got {blocks}")
    grid = (images.shape[-2] // cfg.patch_size, images.shape[-1] // cfg.patch_size)

    direction = emb.directions(model, target).to(model.dtype)                    # B, D
    norm = emb._norm(model)
    if norm is not None:
        direction = direction - direction.mean(-1, keepdim=True)                  # centring, folded in
    numer: dict[int, torch.Tensor] = {}

    def keep_result(result: torch.Tensor, hook) -> None:                         # B, T, H, D
        b = int(hook.name.split(".")[1])
        ls = model.blocks[b].ls1
        scaled = direction * ls.gamma if hasattr(ls, "gamma") else direction     # B, D
        numer[b] = torch.einsum("bthd,bd->bth", result, scaled).float()          # B, T, H

    final: dict[str, torch.Tensor] = {}
    hooks = [(f"blocks.{b}.attn.hook_result", keep_result) for b in blocks]
    hooks.append((f"blocks.{depth - 1}.hook_resid_post", lambda t, hook: final.__setitem__("h", t.float())))
    with model.hooks(hooks):
        model(images.to(device=model.device, dtype=model.dtype))
    h = final["h"]                                                                # B, T, D
    if norm is not None:
        sigma = (h.var(-1, unbiased=False) + norm.eps).sqrt()                    # B, T
    else:
        sigma = torch.ones(h.shape[:2], device=h.device)
    if emb.l2_normalize:                       # a head on L2-normalised features: that length frozen too
        sigma = sigma * emb.features(model, h.to(model.dtype), unit=False).float().norm(dim=-1)
    out = torch.full((h.shape[0], len(blocks), cfg.num_heads, h.shape[1]), float("nan"), device=h.device)
    for i, b in enumerate(blocks):
        idx = _final_index(model, b, grid).to(h.device)
        out[:, i, :, idx] = (numer[b] / sigma[:, idx, None]).transpose(1, 2)     # B, H, T_b
    return out


class AttributionMeans:
    """Mean attribution per block, head and token group over images, summed batch by batch (what
    :func:`attribution_table` computes on one tensor, for a dataset that does not fit in memory)."""

    def __init__(self, model, blocks=None) -> None:
        depth = model.cfg.depth
        self.model = model
        self.blocks = list(range(depth)) if blocks is None else [b + depth if b < 0 else b for b in blocks]
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.n_images = 0

    def update(self, dla: torch.Tensor) -> None:
        """Add a batch of :func:`head_logit_attribution` output (B, L, H, T)."""
        lay = self.model.token_layout(self.model.cfg.depth, _grid_of(self.model, dla.shape[-1]))
        groups = {"patches": list(range(lay.patches.start, lay.patches.stop))}
        if lay.cls is not None:
            groups = {"cls": [lay.cls], **groups}
        if lay.registers:
            groups["registers"] = list(lay.registers)
        for tokens, idx in groups.items():
            vals = dla[..., idx].double().cpu()                                   # B, L, H, k
            ok = ~torch.isnan(vals)
            s = torch.where(ok, vals, torch.zeros_like(vals)).sum(dim=(0, 3))     # L, H
            n = ok.sum(dim=(0, 3))
            self.sums[tokens] = self.sums.get(tokens, 0) + s
            self.counts[tokens] = self.counts.get(tokens, 0) + n
        self.n_images += dla.shape[0]

    def rows(self, model_name: str | None = None) -> list[dict]:
        """Tidy rows (``model, block, head, tokens, metric, value``); NaN where a group had no token yet."""
        name = model_name or self.model.cfg.meta.get("name", "model")
        rows = []
        for tokens, s in self.sums.items():
            n = self.counts[tokens]
            mean = torch.where(n > 0, s / n.clamp_min(1), torch.full_like(s, float("nan")))
            for i, b in enumerate(self.blocks):
                for h in range(mean.shape[1]):
                    rows.append({"model": name, "block": b, "head": h, "tokens": tokens,
                                 "metric": "direct_logit_attribution", "value": float(mean[i, h])})
        return rows


def attribution_table(dla: torch.Tensor, model, blocks=None, model_name: str | None = None) -> list[dict]:
    """Tidy rows (``model, block, head, tokens, metric, value``) of the mean attribution over images: ``tokens``
    is "cls" (when the output has CLS), "patches" (mean over patch tokens) or "registers"; NaN entries (tokens
    not yet entered) are left out of the means."""
    acc = AttributionMeans(model, blocks)
    acc.update(dla)
    return acc.rows(model_name)


def _grid_of(model, n_tokens: int) -> tuple[int, int]:
    """The patch grid of an output with ``n_tokens`` tokens (the model's own grid, or a square one)."""
    lay = model.token_layout(model.cfg.depth)
    n_patch = n_tokens - (lay.n_tokens - lay.n_patches)
    if n_patch == lay.n_patches:
        return lay.grid
    side = int(round(n_patch ** 0.5))
    if side * side != n_patch:
        raise ValueError(f"cannot tell the patch grid of {n_tokens} output tokens; pass square inputs")
    return (side, side)


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class AttributionOptions(ClassSpaceOptions):
    """Options of :func:`evaluate` (``vitscope attribution``)."""

    batch_size: int = 32
    blocks: str | None = None              # None (all), "0,3,-1" or "2:4"

    def validate(self) -> None:
        super().validate()
        if isinstance(self.blocks, (list, tuple)):
            self.blocks = ",".join(str(int(b)) for b in self.blocks)
        self.check_blocks("blocks")


def evaluate(models, data=None, options: AttributionOptions | None = None, **overrides) -> Result:
    """Per-head direct logit attribution: each attention head's direct share of the true-class logit per block and
    token group (CLS, patches, registers), averaged over the images. Rows: ``model, block, head, tokens, metric
    (direct_logit_attribution), value, n_images``; ``figures()`` draws a block x head map per model."""
    from vitscope.analysis.class_embedding import inputs as I
    from vitscope.features.access import resolve_blocks

    opts = I.options_of(AttributionOptions, options, overrides)
    rows, summary, ds, counts = [], [], None, {}
    for label, model in I.as_models(models).items():
        emb = I.class_embeddings(model, label, opts)
        ds = I.labelled_dataset(data, model, opts)
        I.check_classes(model, ds, emb)
        blk = None if opts.blocks is None else resolve_blocks(model, opts.blocks, "mean")
        acc = AttributionMeans(model, blk)
        for images, labels, _, _ in I.labelled_batches([model], ds, opts):
            acc.update(head_logit_attribution(model, images[0], labels, embeddings=emb, blocks=blk))
        mine = [dict(model=r["model"], block=r["block"], task="attribution", metric=r["metric"], value=r["value"],
                     head=r["head"], tokens=r["tokens"], n_images=acc.n_images) for r in acc.rows(label)]
        rows += mine
        counts[label] = acc.n_images
        group = "cls" if any(r["tokens"] == "cls" for r in mine) else "patches"
        top = max((r for r in mine if r["tokens"] == group and r["value"] == r["value"]), key=lambda r: r["value"])
        summary.append(f"{label}: largest direct share block {top['block']} head {top['head']} "
                       f"({top['value']:.3f} at {top['tokens']}) over {acc.n_images} images")
    table = tidy_table(rows, "attribution", opts, dataset=getattr(ds, "description", None))
    return Result("attribution", table, "; ".join(summary), opts, draw=_draw,
                  meta={"dataset": ds, "context": {"data": data_label(data) or data_label(ds), "n_images": counts}})


def _draw(result: Result) -> dict:
    from vitscope.runtime import slug
    from vitscope.viz.logit_attribution import plot_head_attribution

    return {f"{slug(label)}/head_attribution": (
        plot_head_attribution(part, tokens="all", title=result.titled(f"{label}: direct true-class logit per head",
                                                                      label)), part)
        for label, part in result.table.groupby("model", sort=False)}
