"""vitscope: probe, measure and visualise Vision Transformers.

The public names below are imported on first use (PEP 562), so that ``import vitscope`` and the command line's
``--help`` start without importing torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "open_dataset": "vitscope.data",
    "load_image": "vitscope.data.decode",
    "extract_features": "vitscope.features",
    "ActivationCache": "vitscope.hooks",
    "HookPoint": "vitscope.hooks",
    "HookedViT": "vitscope.models",
    "PreprocessConfig": "vitscope.models",
    "TokenLayout": "vitscope.models",
    "ViTConfig": "vitscope.models",
    "load_model": "vitscope.models.loading",
    "save_model": "vitscope.models.loading",
    "list_models": "vitscope.models.registry",
}
_SUBMODULES = ("analysis", "app", "data", "experiments", "features", "hooks", "models", "report", "train", "viz")

__all__ = sorted([*_LAZY, "__version__", "features"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"vitscope.{name}")
    else:
        raise AttributeError(f"module 'vitscope' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
