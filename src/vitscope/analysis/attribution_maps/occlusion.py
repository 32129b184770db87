"""Occlusion (Zeiler & Fergus 2014) on the model's patch grid.

Each patch of the grid is replaced by ``baseline`` (one forward pass per patch, batched); the attribution of a pixel
is ``s(x) - s(x with its patch occluded)``: Captum's ``Occlusion`` with a sliding window and stride of one patch
(``(C, p, p)``), so the occluded squares are exactly the tokens the model sees.
"""
from __future__ import annotations

import torch

from vitscope.analysis.attribution_maps.gradients import PixelAttribution, _targets


def occlusion(model, x: torch.Tensor, target=None, baseline: float = 0.0, patch_size: int | None = None,
              batch_size: int = 64) -> PixelAttribution:
    """Score drop when each patch of the model's grid is replaced by ``baseline`` (B, C, H, W attributions: each
    pixel carries its patch's drop; the map is their sum over channels)."""
    t, logits = _targets(model, x, target)
    p = int(patch_size or model.cfg.patch_size)
    B, C, H, W = x.shape
    rows, cols = H // p, W // p
    if rows * p != H or cols * p != W:
        raise ValueError(f"occlusion needs images divisible by the patch size {p}, got {H}x{W}")
    base = logits.gather(1, t[:, None].to(logits.device))[:, 0].float()
    drops = torch.empty(B, rows, cols, dtype=torch.float32, device=x.device)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    with torch.inference_mode():
        for i in range(B):
            for s in range(0, len(cells), batch_size):
                chunk = cells[s:s + batch_size]
                xs = x[i][None].repeat(len(chunk), 1, 1, 1)
                for j, (r, c) in enumerate(chunk):
                    xs[j, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = baseline
                out = model(xs)[:, int(t[i])].float()
                for j, (r, c) in enumerate(chunk):
                    drops[i, r, c] = base[i] - out[j]
    a = drops.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None].expand(B, C, H, W).to(x.dtype)
    return PixelAttribution(a, a.sum(1), t)
