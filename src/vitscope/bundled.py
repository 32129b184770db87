"""What ships inside the package: the demo models of docs/demo-model.md (``vitscope/assets/models/<name>``) and the
synthetic benchmark they were trained on (:data:`DEMO_DATA`, which ``builtin:demo`` names). Below both
``vitscope.models`` and ``vitscope.data``; also importable as ``vitscope.models.bundled``.

``load_model("demo-vit")`` finds them by name, with no network; a local folder of the same name wins.
"""
from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "assets" / "models"


def bundled_models() -> list[str]:
    """Names of the bundled models (folders with a ``config.json``)."""
    if not BUNDLED_DIR.exists():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").exists())


def bundled_path(name: str) -> Path | None:
    """The folder of bundled model ``name``, or None when there is no such model."""
    path = BUNDLED_DIR / name
    return path if name and "/" not in name and (path / "config.json").exists() else None


# The synthetic benchmark the bundled demo models were trained on (docs/demo-model.md). They are near chance on
# other synthetic specs, so `builtin:demo` names it and commands use it when a bundled model meets no --data. Every
# setting is pinned, so that a change of the difficulty presets does not change the demo's images.
DEMO_DATA = ("synthetic:size=64,classes=8,difficulty=easy,jitter=0,scale_min=0.1,scale_max=0.2,noise=0.02,"
             "clutter=0,texture=0.15,contrast=0.45,rotation=30,stripes=0,stretch=0.05")
DEMO_DATA_DEFAULTS = {"n": "512", "split": "test"}


def is_bundled(model) -> bool:
    """Whether ``model`` (a loaded model) is one of the bundled demo models."""
    path = (getattr(model, "meta", None) or {}).get("weights_path")
    try:
        return path is not None and Path(path).resolve().parent.parent == BUNDLED_DIR
    except OSError:
        return False
