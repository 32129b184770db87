"""Patch-token feature maps of every chosen block from one forward pass (what the dense evaluations read).

The patch tokens are located with the model's token layout at each block, so models with registers, a
distillation token or CLS / registers entering at a later block are handled (no hard-coded ``1:``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

SITE = "hook_resid_post"


def resolve_blocks(model, blocks: Sequence[int] | str | None) -> list[int]:
    """``None`` / ``"all"``: every block; else the listed blocks (negative counts from the end), checked. Patch
    tokens exist at every block, so this is the shared resolver with ``tokens="mean"``."""
    from vitscope.features.access import resolve_blocks as resolve

    out = resolve(model, blocks, tokens="mean")
    if not out:
        raise ValueError("no block chosen")
    return out


@torch.inference_mode()
def block_patch_features(model, images: torch.Tensor, blocks: Sequence[int], site: str = SITE,
                         device: str | torch.device = "cpu") -> dict[int, torch.Tensor]:
    """{block: (B, rows, cols, D) float32 on ``device``}: the patch tokens of ``blocks.{b}.<site>`` for a batch
    of preprocessed images (B, 3, H, W), H and W multiples of the patch size. One forward pass."""
    p = model.cfg.patch_size
    grid = (images.shape[-2] // p, images.shape[-1] // p)
    hooks = {b: f"blocks.{b}.{site}" for b in blocks}
    x = images.to(model.device, next(model.parameters()).dtype)
    _, cache = model.run_with_cache(x, names_filter=list(hooks.values()))
    out = {}
    for b, h in hooks.items():
        acts = cache[h]                                                    # B, T, D
        lay = model.token_layout(b, grid)
        if acts.shape[1] != lay.n_tokens:
            raise RuntimeError(f"block {b} gave {acts.shape[1]} tokens, the layout expects {lay.n_tokens}")
        out[b] = acts[:, lay.patches].reshape(acts.shape[0], grid[0], grid[1], -1).float().to(device)
    return out
