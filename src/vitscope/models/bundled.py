"""Models shipped inside the package (``vitscope/assets/models/<name>``): the demo models of docs/demo-model.md.

``load_model("demo-vit")`` finds them by name, with no network; a local folder of the same name wins.
"""
from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"


def bundled_models() -> list[str]:
    """Names of the bundled models (folders with a ``config.json``)."""
    if not BUNDLED_DIR.exists():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").exists())


def bundled_path(name: str) -> Path | None:
    """The folder of bundled model ``name``, or None when there is no such model."""
    path = BUNDLED_DIR / name
    return path if name and "/" not in name and (path / "config.json").exists() else None
