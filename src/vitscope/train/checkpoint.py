"""The resumable training state (optimizer, epoch, history) kept beside ``<out>/last``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

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
