"""The linear probe (``nn.Linear(in, C)`` on concatenated, L2-normalised inputs) and the probe-head file format.

Probe heads are saved as safetensors (the tensors) + JSON (what they were trained on), never pickled::

    save_linear_head("runs/probe/head", weight, bias, {"model": "dino-vits16", "inputs": ["ln_final.cls"]})
    weight, bias, meta = load_linear_head("runs/probe/head")      # (C, D), (C,), dict

writes / reads ``head.safetensors`` and ``head.json``. ``meta`` always records ``kind``, ``num_classes`` and
``in_features``; the probe CLI adds the model, the inputs (site, layer, reduction), the normalisation (features were
L2-normalised per sample before the head: apply the same before using ``weight`` as class embeddings), the class
names and the chosen learning rate / weight decay.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FORMAT = "vitscope.probe"


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> list[Path]:
    """``path.safetensors`` + ``path.json``: tensors and metadata (JSON-serialisable) side by side."""
    from safetensors.torch import save_file

    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(st))
    js.write_text(json.dumps({"format": FORMAT, **meta}, indent=2, default=str))
    return [st, js]


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    st, js = _paths(path)
    if not st.exists():
        raise FileNotFoundError(f"no probe file {st}; save one with `vitscope probe --save-heads` or save_linear_head")
    meta = json.loads(js.read_text()) if js.exists() else {}
    return load_file(str(st)), meta


def save_linear_head(path: str | Path, weight: torch.Tensor, bias: torch.Tensor | None,
                     meta: dict[str, Any] | None = None) -> list[Path]:
    """Save a linear head: weight (C, D), bias (C,) or None, and metadata. Returns the files written."""
    weight = torch.as_tensor(weight)
    if weight.ndim != 2:
        raise ValueError(f"a linear head's weight is (classes, features), got shape {tuple(weight.shape)}")
    tensors = {"weight": weight.float()}
    if bias is not None:
        bias = torch.as_tensor(bias).float()
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias shape {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")
        tensors["bias"] = bias
    m = {"kind": "linear", "num_classes": int(weight.shape[0]), "in_features": int(weight.shape[1]), **(meta or {})}
    return save_tensors(path, tensors, m)


def load_linear_head(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(weight (C, D), bias (C,), meta) of a head saved by :func:`save_linear_head` (a zero bias when it had none)."""
    t, meta = load_tensors(path)
    if "weight" not in t or t["weight"].ndim != 2:
        raise ValueError(f"{_paths(path)[0]} is not a linear probe head (no 2-D 'weight' tensor)")
    w = t["weight"]
    return w, t.get("bias", torch.zeros(w.shape[0])), meta
