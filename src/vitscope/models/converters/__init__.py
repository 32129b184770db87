"""Checkpoint converters, one module per source format, and ``detect_format`` that picks one by tell-tale keys.

Formats: ``vitscope`` (HookedViT's own keys), ``timm`` (timm's VisionTransformer), ``timm_beit`` (timm's Beit
and official BEiT checkpoints), ``dino`` (official DINO backbones and any headless timm-layout backbone),
``dinov3`` (official DINOv3 backbones), ``mae`` (official MAE checkpoints), ``mocov3`` (official MoCo-v3
checkpoints), ``hf`` (transformers). ``timm`` covers timm's Eva class (DINOv3, EVA-02, RoPE-ViT, PE) too.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vitscope.models.converters.detect import FORMATS, detect_format


def convert_state_dict(sd: Mapping[str, Any], cfg, fmt: str | None = None) -> dict[str, torch.Tensor]:
    """Convert ``sd`` (format ``fmt`` or detected) to vitscope keys for ``cfg``; load with ``load_strict``."""
    fmt = fmt or detect_format(sd)
    if fmt == "vitscope":
        from vitscope.models.converters.timm import unwrap_state_dict

        return unwrap_state_dict(sd)
    if fmt in ("timm", "timm_beit", "beit"):
        from vitscope.models.converters.timm import convert_timm_state_dict

        return convert_timm_state_dict(sd, cfg)
    if fmt in ("dino", "dinov2", "dinov3", "mae", "mocov3"):
        from vitscope.models.converters import official

        return getattr(official, f"convert_{fmt}")(sd, cfg)
    if fmt == "hf":
        from vitscope.models.converters.hf import convert_hf_state_dict

        return convert_hf_state_dict(sd, cfg, cfg.meta.get("model_type", "vit"))
    raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")


__all__ = ["FORMATS", "convert_state_dict", "detect_format"]
