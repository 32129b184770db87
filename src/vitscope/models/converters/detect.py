"""Which converter reads a checkpoint: :func:`detect_format` tells the format from tell-tale keys."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

FORMATS = ("vitscope", "timm", "timm_beit", "dino", "dinov2", "dinov3", "mae", "mocov3", "hf")

_HF_MARKERS = ("vit.embeddings.", "deit.embeddings.", "beit.embeddings.", "dinov2.embeddings.",
               "embeddings.patch_embeddings", "vision_model.", "encoder.layer.", "embeddings.cls_token")
_TIMM_EXTRAS = ("head.weight", "head_dist.weight", "norm_pre.weight", "reg_token", "dist_token",
                "fc_norm.weight", "pre_logits.fc.weight")


def _is_tensor_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and bool(d) and any(isinstance(v, torch.Tensor) for v in d.values())


def _is_dinov3(keys) -> bool:
    """Official DINOv3 backbone keys: its storage (register) tokens or its RoPE periods."""
    names = {str(k).split("backbone.")[-1] for k in keys}
    return bool({"storage_tokens", "rope_embed.periods"} & names)


def _is_dinov2(keys) -> bool:
    """Official DINOv2 backbone keys: LayerScale plus DINOv2's mask token or ``register_tokens``."""
    names = {str(k).split("backbone.")[-1] for k in keys}
    return any(".ls1.gamma" in k for k in names) and bool({"mask_token", "register_tokens"} & names)


def detect_format(sd: Mapping[str, Any]) -> str:
    """Which converter reads this checkpoint: one of :data:`FORMATS`.

    Works on a raw loaded checkpoint (with ``model`` / ``state_dict`` / ``teacher`` wrappers) or on the flat
    state dict inside it. A headless timm-layout backbone (official DINO, timm's ``.dino`` / ``.mae`` weights)
    reads as ``"dino"``; its keys are timm's, so ``"dino"`` and ``"timm"`` convert it the same way.
    """
    if not isinstance(sd, Mapping):
        raise ValueError(f"expected a checkpoint dict, got {type(sd).__name__}")
    if not _is_tensor_dict(sd):                             # a wrapper: look inside
        if isinstance(sd.get("teacher"), Mapping) or isinstance(sd.get("student"), Mapping):
            inner = sd.get("teacher") if isinstance(sd.get("teacher"), Mapping) else sd["student"]
            return "dinov3" if _is_dinov3(inner) else "dinov2" if _is_dinov2(inner) else "dino"
        if isinstance(sd.get("state_dict"), Mapping):
            inner = sd["state_dict"]
            if any(str(k).startswith(("module.base_encoder.", "base_encoder.")) for k in inner):
                return "mocov3"
            return detect_format(inner)
        if isinstance(sd.get("model"), Mapping):
            fmt = detect_format(sd["model"])
            return "mae" if fmt == "dino" else fmt          # MAE releases a headless encoder under "model"
        if isinstance(sd.get("module"), Mapping):
            return detect_format(sd["module"])
        raise ValueError(f"no tensors and no known wrapper (model, state_dict, teacher) among the top-level "
                         f"keys {sorted(map(str, sd))[:10]}")
    keys = [str(k) for k in sd]
    ks = set(keys)
    if any(k.startswith(("module.base_encoder.", "base_encoder.", "module.momentum_encoder.")) for k in keys):
        return "mocov3"
    if any(m in k for k in keys for m in _HF_MARKERS):
        return "hf"
    if "ln_final.weight" in ks or any(k.startswith("blocks.") and (".ln1." in k or ".ln2." in k) for k in keys):
        return "vitscope"
    if _is_dinov3(keys):
        return "dinov3"
    if any(k.startswith(("backbone.", "module.backbone.")) for k in keys):
        return "dinov2" if _is_dinov2(keys) else "dino"
    if any(k.startswith("decoder_") for k in keys):
        return "mae"
    flat = {k[len("module."):] if k.startswith("module.") else k for k in keys}
    if "patch_embed.proj.weight" not in flat:
        raise ValueError(f"unrecognised checkpoint layout (first keys: {sorted(keys)[:8]}); vitscope reads "
                         f"timm, BEiT, official DINO / DINOv2 / MAE / MoCo-v3, transformers and vitscope checkpoints")
    if _is_dinov2(flat):
        return "dinov2"
    if any(k.endswith(("attn.q_bias", "relative_position_bias_table", ".gamma_1")) for k in flat):
        return "timm_beit"
    if any(k in flat for k in _TIMM_EXTRAS) or any(".ls1." in k for k in flat):
        return "timm"
    return "dino"
