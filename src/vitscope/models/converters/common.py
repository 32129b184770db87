"""Helpers shared by the checkpoint converters: strict loading, prefix stripping, qkv fusion."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint does not match the architecture; the message lists every offending key."""


def folder_config(path: str | Path) -> dict | None:
    """The ``config.json`` of a model folder as a dict; None when ``path`` is no folder, has none, or it does not
    read as a JSON object (the checkpoint-format tests ask this of any path)."""
    p = Path(path)
    cfg = p / "config.json"
    if not p.is_dir() or not cfg.is_file():
        return None
    try:
        d = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Separate q, k, v projections (HF layout) -> one fused ``qkv`` tensor (timm layout)."""
    return torch.cat([q, k, v], dim=0)


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``sd`` into ``model``; any missing, unexpected or mis-shaped key is a CheckpointError listing them.

    Non-persistent buffers (e.g. BEiT's relative position index) are not expected in ``sd``.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}"
                         f"{' ...' if len(unexpected) > 20 else ''}")
        if shape:
            parts.append(f"shape mismatches ({len(shape)}): {shape[:20]}")
        raise CheckpointError(f"{source} does not fit the architecture: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
