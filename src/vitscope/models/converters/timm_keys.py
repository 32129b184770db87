"""What a timm state dict's keys and shapes say about the architecture, shared by the ViT and Eva converters."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from vitscope.models.converters.common import CheckpointError


def block_ids(sd: Mapping[str, torch.Tensor]) -> list[int]:
    return sorted({int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})


def check_supported_keys(sd: Mapping[str, torch.Tensor], arch: str) -> None:
    markers = {"mlp.w12.": "SwiGLU MLP with DINOv2's packed weights", ".rel_pos.": "relative position MLP",
               "attn.gate.": "gated attention", "attn_pool.pos_embed": "attention pool with a position embedding"}
    for k in sd:
        for m, what in markers.items():
            if m in k:
                raise CheckpointError(f"{arch}: key {k!r} belongs to a {what}, which HookedViT does not implement")


def block_kinds_from_tensors(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Block and head features that the tensors show (gated MLP, norms, biases, attention pool), timm names."""
    out: dict[str, Any] = {}
    g = sd.get("blocks.0.mlp.fc1_g.weight")
    if g is not None:
        out.update(gated_mlp=True, mlp_dim=int(g.shape[0]))
    out["mlp_norm"] = "blocks.0.mlp.norm.weight" in sd
    out["attn_out_norm"] = "blocks.0.attn.norm.weight" in sd
    out["qk_norm"] = "blocks.0.attn.q_norm.weight" in sd
    out["patch_norm"] = "patch_embed.norm.weight" in sd
    out["proj_bias"] = "blocks.0.attn.proj.bias" in sd
    out["mlp_bias"] = "blocks.0.mlp.fc2.bias" in sd
    if "blocks.0.norm1.weight" in sd:
        out["norm"] = "layernorm" if "blocks.0.norm1.bias" in sd else "rmsnorm"
    if "attn_pool.latent" in sd:
        fc1 = sd.get("attn_pool.mlp.fc1.weight")
        out.update(global_pool="map", map_mlp=fc1 is not None, map_q_proj="attn_pool.q.weight" in sd,
                   map_qkv_bias="attn_pool.kv.bias" in sd)
        if fc1 is not None:
            out["map_mlp_dim"] = int(fc1.shape[0])
    return out


def patch_multiple(img: tuple[int, int], patch: int, meta: dict[str, Any]) -> tuple[int, int]:
    """``img`` rounded down to a multiple of the patch size (SigLIP so400m/14 at 384 px: a 27 x 27 grid, 378 px),
    with a note in ``meta``: timm's strided patch embedding ignores the last rows and columns of such inputs."""
    fit = (img[0] // patch * patch, img[1] // patch * patch)
    if fit != tuple(img):
        meta["img_size_note"] = (f"timm feeds {img[0]}x{img[1]} px and its patch embedding ignores the last "
                                 f"{img[0] - fit[0]} rows / {img[1] - fit[1]} columns; vitscope takes the centre "
                                 f"{fit[0]}x{fit[1]} crop of the same resized image")
    return fit
