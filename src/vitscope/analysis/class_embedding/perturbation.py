"""Attention and token perturbations measured in class space (vilas2023, reference sections 17-18).

- ``self_only`` / ``no_cls`` in every block (``vitscope.hooks.attention_perturbation``): the share of tokens of the
  last block output whose true class is rank 0, against the unperturbed model;
- token dropping (``vitscope.hooks.drop_patches``): keep only the class-labelled patches ("no_context") or only the
  context patches ("no_class"); the share of the remaining tokens with rank 0, against the unperturbed share of the
  same kind of patches (pooled).

Rates count patch tokens (decision 3); ``tokens="all"`` counts CLS and the other prefix tokens too, as vilas2023's
perturbed numbers do.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from vitscope.analysis.class_embedding.metrics import class_rank
from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings
from vitscope.analysis.class_embedding.projection import ClassProjection, resolve_projection

ATTENTION_KINDS = ("none", "self_only", "no_cls")
TOKEN_KINDS = ("no_context", "no_class")
TOKEN_SETS = ("patches", "all")
KEEP_RULES = ("mixed", "vilas2023")


def last_block_ranks(model, images: torch.Tensor, labels: torch.Tensor, projection: ClassProjection,
                     hooks: Sequence = ()) -> torch.Tensor:
    """(B, T) rank of the true class at every token of the last block output, with ``hooks`` applied."""
    got: dict[str, torch.Tensor] = {}

    def fn(act: torch.Tensor, hook) -> None:                                          # B, T, D
        logits = projection(act)
        got["rank"] = class_rank(logits, labels[:, None].to(logits.device).expand(logits.shape[:2]))

    name = f"blocks.{model.cfg.depth - 1}.hook_resid_post"
    with torch.inference_mode():
        model.run_with_hooks(images.to(model.device, model.dtype), fwd_hooks=list(hooks) + [(name, fn)])
    return got["rank"].cpu()


def _token_index(model, T: int, tokens: str) -> torch.Tensor:
    """Positions of the patch tokens (``tokens="patches"``) or of every token, at the output of a model whose
    sequence has ``T`` tokens there (fewer patches after dropping)."""
    lay = model.token_layout(model.cfg.depth)
    if tokens == "all":
        return torch.arange(T)
    n_patch = T - (lay.n_tokens - lay.n_patches)
    return torch.arange(lay.patches.start, lay.patches.start + n_patch)


def _check(model, labels, C: int, tokens: str) -> torch.Tensor:
    if tokens not in TOKEN_SETS:
        raise ValueError(f"tokens must be one of {TOKEN_SETS}, got {tokens!r}")
    labels = torch.as_tensor(labels).long().flatten()
    if (labels < 0).any():
        raise ValueError("the images have no class labels; perturbations are measured on labelled images")
    if (labels >= C).any():
        raise ValueError(f"label {int(labels.max())} is outside the head's {C} classes (0..{C - 1})")
    return labels


def attention_perturbation_rows(model, batches: Iterable, kinds: Sequence[str] = ATTENTION_KINDS,
                                projection: ClassProjection | ClassEmbeddings | None = None,
                                blocks: Sequence[int] | None = None,
                                tokens: str = "patches", model_name: str = "model",
                                progress: bool = False) -> list[dict]:
    """Share of tokens of the last block whose true class is rank 0, unperturbed ("none") and under each attention
    perturbation in ``blocks`` (default: every block). Per image the share of ``tokens``, averaged over images;
    also the model's accuracy under each perturbation. ``batches``: ``(images, labels, ...)`` tuples."""
    from vitscope.hooks import attention_perturbation

    proj = resolve_projection(model, projection)
    bad = [k for k in kinds if k not in ATTENTION_KINDS]
    if bad:
        raise ValueError(f"unknown perturbation {bad}; expected among {ATTENTION_KINDS}")
    hooks = {k: ([] if k == "none" else attention_perturbation(model, k, blocks)) for k in kinds}
    share = {k: 0.0 for k in kinds}
    correct = {k: 0 for k in kinds}
    n = 0
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="attention perturbations", unit="batch")
    own_head = proj.own_head
    for batch in it:
        x, y = batch[0], _check(model, batch[1], proj.num_classes, tokens)
        n += len(y)
        for k in kinds:
            logits_out: dict = {}
            hk = list(hooks[k])
            if own_head:
                hk.append(("hook_logits", lambda t, hook, d=logits_out: d.__setitem__("l", t)))
            r = last_block_ranks(model, x, y, proj, hk)
            idx = _token_index(model, r.shape[1], tokens)
            share[k] += float((r[:, idx] == 0).double().mean(1).sum())
            if own_head:
                correct[k] += int((logits_out["l"].argmax(-1).cpu() == y).sum())
    if n == 0:
        raise ValueError("no images to perturb")
    blk = "all" if blocks is None else ",".join(str(b) for b in blocks)
    rows = []
    for k in kinds:
        rows.append(dict(model=model_name, block=model.cfg.depth - 1, task="perturbation", metric="identifiable_rate",
                         value=share[k] / n, perturbation=k, tokens=tokens, blocks=blk, n_images=n))
        if own_head:
            rows.append(dict(model=model_name, block=model.cfg.depth - 1, task="perturbation", metric="accuracy",
                             value=correct[k] / n, perturbation=k, tokens="pooled", blocks=blk, n_images=n))
    return rows


def token_drop_rows(model, batches: Iterable, projection: ClassProjection | ClassEmbeddings | None = None,
                    tokens: str = "patches", model_name: str = "model", progress: bool = False,
                    keep: str = "mixed") -> list[dict]:
    """vilas2023's token perturbations. ``batches``: ``(images, labels, masks)`` with ``masks`` (B, N_patch) bool
    marking the class-labelled patches (see ``metrics.class_token_masks``).

    Rows: "no_context" (only class-labelled patches kept) with its baseline, the unperturbed rank-0 share of the
    class-labelled patches (pooled); "no_class" (only context patches kept) against the unperturbed context
    patches. ``n_images`` says how many images count in each row.

    ``keep``: which images count. "mixed" (default): those with both class-labelled and context patches; an image
    whose mask marks every patch (or none) is left out of both rows and both baselines, since one of its two
    perturbations would remove every patch and the other none. "vilas2023": every image, as vilas2023's code: a
    perturbation that removes every patch runs on the prefix tokens (CLS) alone, one that removes none is the
    unperturbed model, and the baselines pool the patches of all images. With ``tokens="patches"`` an image left
    without a patch token has nothing to count and stays out of that row's mean (``tokens="all"`` counts its CLS,
    as vilas2023's rates do).
    """
    from vitscope.hooks import drop_patches

    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be one of {KEEP_RULES}, got {keep!r}")
    proj = resolve_projection(model, projection)
    lay = model.token_layout(model.cfg.depth)
    lay0 = model.token_layout(0)
    prefix_at_input = lay0.n_tokens - lay0.n_patches                  # tokens left when every patch is dropped
    acc = {k: [0.0, 0] for k in TOKEN_KINDS}                # sum of per-image shares, images
    base = {"no_context": [0, 0], "no_class": [0, 0]}         # pooled rank-0 tokens, tokens
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="token perturbations", unit="batch")
    for batch in it:
        if len(batch) < 3:
            raise ValueError("token perturbations need object masks with the images: (images, labels, masks)")
        x, y = batch[0], _check(model, batch[1], proj.num_classes, tokens)
        m = torch.as_tensor(np.asarray(batch[2]) if not isinstance(batch[2], torch.Tensor) else batch[2]).bool()
        m = m.reshape(len(y), -1)
        if m.shape[1] != lay.n_patches:
            raise ValueError(f"masks have {m.shape[1]} cells per image but the model sees {lay.n_patches} patch "
                             f"tokens ({lay.grid[0]}x{lay.grid[1]}); resize the masks to the token grid")
        ok = m.any(1) & (~m).any(1) if keep == "mixed" else torch.ones(len(m), dtype=torch.bool)
        if not ok.any():
            continue
        x, y, m = x[ok], y[ok], m[ok]
        r = last_block_ranks(model, x, y, proj)                                      # B, T
        pr = r[:, lay.patches]
        base["no_context"][0] += int((pr[m] == 0).sum())
        base["no_context"][1] += int(m.sum())
        base["no_class"][0] += int((pr[~m] == 0).sum())
        base["no_class"][1] += int((~m).sum())
        for kind, drop in (("no_context", ~m), ("no_class", m)):
            n_keep = (~drop).sum(1)
            for kept in n_keep.unique().tolist():                                   # same count -> one batch
                if kept == 0 and (tokens == "patches" or prefix_at_input == 0):
                    continue                                                        # no token left to count
                sel = n_keep == kept
                rr = last_block_ranks(model, x[sel], y[sel], proj, drop_patches(model, drop[sel]))
                idx = _token_index(model, rr.shape[1], tokens)
                acc[kind][0] += float((rr[:, idx] == 0).double().mean(1).sum())
                acc[kind][1] += int(sel.sum())
    rows = []
    for kind in TOKEN_KINDS:
        s, n = acc[kind]
        bs, bn = base[kind]
        rows.append(dict(model=model_name, block=model.cfg.depth - 1, task="perturbation",
                         metric="identifiable_rate", value=s / n if n else float("nan"), perturbation=kind,
                         tokens=tokens, baseline=bs / bn if bn else float("nan"),
                         baseline_tokens="class" if kind == "no_context" else "context", n_images=n))
    return rows
