"""Interventions built on hooks: attention perturbations, token dropping, head ablation (vilas2023).

Each function returns a list of ``(hook_name, fn)`` pairs to pass to ``model.run_with_hooks`` or
``model.hooks(...)``, so interventions compose with each other and with caching::

    hooks = attention_perturbation(model, "self_only") + ablate_heads(model, {3: [0, 2]})
    logits = model.run_with_hooks(x, fwd_hooks=hooks)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

PERTURBATIONS = ("self_only", "no_cls", "no_cls_renorm")


def _blocks(model, blocks: Iterable[int] | None) -> list[int]:
    depth = model.cfg.depth
    out = list(range(depth)) if blocks is None else [int(b) for b in blocks]
    bad = [b for b in out if not 0 <= b < depth]
    if bad:
        raise ValueError(f"blocks {bad} do not exist; this model has blocks 0..{depth - 1}")
    return out


def attention_perturbation(model, kind: str, blocks: Iterable[int] | None = None) -> list:
    """Hooks that edit the attention pattern of patch-token queries in ``blocks`` (default: all).

    - ``self_only``: every patch query attends only to itself (its row becomes one-hot on the diagonal).
    - ``no_cls``: patch queries give zero attention to CLS; rows are *not* renormalised (vilas2023).
    - ``no_cls_renorm``: as ``no_cls``, then each patch-query row is renormalised to sum to 1.
    Queries of CLS, DIST and registers are left unchanged. Works with tokens that enter later:
    at a block without CLS, ``no_cls`` does nothing there.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; expected one of {PERTURBATIONS}")
    hooks = []
    for b in _blocks(model, blocks):
        def fn(pattern: torch.Tensor, hook, b=b):                                     # B, H, T, T
            lay = model.token_layout(b)
            n_patch = pattern.shape[-1] - (lay.n_tokens - lay.n_patches)
            q = torch.arange(lay.patches.start, lay.patches.start + n_patch, device=pattern.device)
            out = pattern.clone()
            if kind == "self_only":
                out[:, :, q, :] = 0
                out[:, :, q, q] = 1
            elif lay.cls is not None:
                out[:, :, q, lay.cls] = 0
                if kind == "no_cls_renorm":
                    rows = out[:, :, q, :]
                    out[:, :, q, :] = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
            return out
        hooks.append((f"blocks.{b}.attn.hook_pattern", fn))
    return hooks


def drop_patches(model, drop: torch.Tensor | Sequence[int]) -> list:
    """A hook that removes patch tokens right after the position embedding (context or object tokens).

    ``drop``: patch indices (row-major over the grid), a bool mask of shape (N,) shared by the batch,
    or a bool mask (B, N) that drops the same *number* of patches in every image. Registers and CLS
    tokens that enter later are unaffected. Token layouts of later blocks then hold fewer patches;
    ``kept_patches(mask)`` tells which ones remain.
    """
    if model.cfg.rel_pos_bias:
        raise ValueError("dropping tokens is not defined for relative-position-bias models (BEiT)")
    lay = model.token_layout(0)

    def fn(x: torch.Tensor, hook):                                                   # B, T, D
        B, T, D = x.shape
        n_patch = T - (lay.n_tokens - lay.n_patches)
        mask = _as_mask(drop, n_patch, B, x.device)                                  # B, N bool
        n_keep = (~mask).sum(1)
        if (n_keep != n_keep[0]).any():
            raise ValueError("every image of the batch must drop the same number of patches; "
                             "run images with different masks one at a time (batch size 1)")
        patches = x[:, lay.patches.start:lay.patches.start + n_patch]                # B, N, D
        kept = patches[~mask].reshape(B, int(n_keep[0]), D)                          # B, N_keep, D
        return torch.cat([x[:, :lay.patches.start], kept, x[:, lay.patches.start + n_patch:]], dim=1)

    return [("hook_full_embed", fn)]


def _as_mask(drop, n_patch: int, batch: int, device) -> torch.Tensor:
    d = torch.as_tensor(drop, device=device)
    if d.dtype == torch.bool:
        if d.shape[-1] != n_patch:
            raise ValueError(f"drop mask has {d.shape[-1]} entries but the image has {n_patch} patches")
        return d.expand(batch, n_patch) if d.ndim == 1 else d
    mask = torch.zeros(n_patch, dtype=torch.bool, device=device)
    if d.numel() and (d.min() < 0 or d.max() >= n_patch):
        raise ValueError(f"patch indices must be in [0, {n_patch - 1}]")
    mask[d.long()] = True
    return mask.expand(batch, n_patch)


def kept_patches(drop, n_patch: int) -> torch.Tensor:
    """Indices of the patches that remain after ``drop_patches(model, drop)`` (shared mask only)."""
    return (~_as_mask(drop, n_patch, 1, "cpu")[0]).nonzero().flatten()


def ablate_heads(model, heads: Mapping[int, Iterable[int]], mode: str = "zero",
                 means: Mapping[int, torch.Tensor] | None = None) -> list:
    """Hooks that zero- or mean-ablate attention heads: ``heads={block: [head, ...]}``.

    The head's output ``z`` (``blocks.{b}.attn.hook_z``, B, T, H, Dh) is replaced before the output
    projection. ``mode="mean"`` uses ``means[block]`` (shape (H, Dh) or (T, H, Dh), e.g. averaged over
    a reference set) when given, otherwise the mean over the current batch and tokens.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    H = model.cfg.num_heads
    hooks = []
    for b, hs in heads.items():
        _blocks(model, [b])
        hs = sorted(set(int(h) for h in hs))
        if any(not 0 <= h < H for h in hs):
            raise ValueError(f"heads {hs} out of range; block {b} has heads 0..{H - 1}")

        def fn(z: torch.Tensor, hook, b=b, hs=hs):                                   # B, T, H, Dh
            z = z.clone()
            if mode == "zero":
                z[:, :, hs] = 0
            elif means is not None and b in means:
                z[:, :, hs] = means[b].to(z)[..., hs, :]
            else:
                z[:, :, hs] = z[:, :, hs].mean(dim=(0, 1), keepdim=True)
            return z
        hooks.append((f"blocks.{b}.attn.hook_z", fn))
    return hooks
