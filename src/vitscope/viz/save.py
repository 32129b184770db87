"""The results format: every figure is saved with the numbers behind it, side by side."""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def save_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2))
    return path


def save_table(rows: Iterable[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write a tidy table (one dict per row) as CSV."""
    rows = list(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _jsonable(r.get(k)) for k in cols})
    return path


def save_figure(fig, stem: str | Path, formats: Sequence[str] = ("png",), dpi: int = 120,
                arrays: Mapping[str, np.ndarray] | None = None, meta: Mapping[str, Any] | None = None,
                close: bool = True) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format, plus ``stem.<key>.npy`` arrays and ``stem.json`` metadata.

    Returns every path written. The figure is closed afterwards unless ``close=False``.
    """
    import matplotlib.pyplot as plt

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        p = stem.with_name(f"{stem.name}.{fmt.lstrip('.')}")
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        written.append(p)
    for key, arr in (arrays or {}).items():
        p = stem.with_name(f"{stem.name}.{key}.npy")
        np.save(p, np.asarray(arr))
        written.append(p)
    if meta:
        written.append(save_json(meta, stem.with_name(f"{stem.name}.json")))
    if close:
        plt.close(fig)
    return written
