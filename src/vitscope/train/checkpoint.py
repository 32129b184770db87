"""Checkpoints of training: the model folder (what ``load_model`` reads) and the resumable training state.

A model folder is vitscope's native format: ``config.json`` + ``model.safetensors``. When
``vitscope.save_model`` / ``vitscope.load_model`` exist they are used; the fallback below writes and reads
the same two files (ViTConfig as JSON, the preprocessing in ``meta["preprocess"]``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _loading():
    try:
        from vitscope.models import loading
    except ImportError:
        return None
    return loading if hasattr(loading, "load_model") and hasattr(loading, "save_model") else None


def save_model_folder(model, folder: str | Path) -> Path:
    """Write ``model`` (a HookedViT) as a vitscope-native folder; returns the folder."""
    folder = Path(folder)
    loading = _loading()
    if loading is not None:
        loading.save_model(model, folder)
        return folder
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg.to_dict()
    if model.preprocess_cfg is not None:
        cfg["meta"] = {**cfg.get("meta", {}), "preprocess": model.preprocess_cfg.to_dict()}
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "vitscope"})
    os.replace(tmp, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def load_any(name_or_path: str | Path, pretrained: bool = True):
    """A model from a registry name, hub id or local folder/file (``vitscope.load_model``), or a folder
    written by :func:`save_model_folder`."""
    loading = _loading()
    if loading is not None:
        return loading.load_model(str(name_or_path), pretrained=pretrained)
    folder = Path(name_or_path)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"{folder} is not a vitscope model folder (config.json + model.safetensors)")
    from safetensors.torch import load_file

    from vitscope.models import HookedViT, PreprocessConfig, ViTConfig
    from vitscope.models.converters.common import load_strict

    d = json.loads((folder / "config.json").read_text())
    pre = (d.get("meta") or {}).get("preprocess")
    model = HookedViT(ViTConfig.from_dict(d), preprocess_cfg=PreprocessConfig(**pre) if pre else None)
    load_strict(model, load_file(str(folder / "model.safetensors")), source=str(folder))
    return model.eval()


# ----------------------------------------------------------------------------- training state (resume)
STATE_FILE = "train_state.pt"


def save_train_state(folder: str | Path, state: dict[str, Any]) -> Path:
    """Optimizer state, epoch, best accuracy, ... next to the last model (atomic replace)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / STATE_FILE)
    return folder / STATE_FILE


def load_train_state(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (was the run started with this --out?)")
    return torch.load(path, map_location="cpu", weights_only=True)
