"""Small feature stores written from arrays, for the SAE tests (the layout of vitscope.features.store)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_store(path: Path, arrays: dict, labels=None, depth: int = 4, name: str = "planted") -> Path:
    """``arrays``: {(site, layer, reduction): (N, ...) float array} -> a complete store at ``path``."""
    from vitscope.features.store import FORMAT, FORMAT_VERSION, array_file

    path = Path(path)
    (path / "arrays").mkdir(parents=True, exist_ok=True)
    n = next(iter(arrays.values())).shape[0]
    meta = []
    for (site, layer, red), a in arrays.items():
        f = array_file(site, layer, red)
        (path / f).parent.mkdir(parents=True, exist_ok=True)
        np.save(path / f, np.ascontiguousarray(a, dtype=np.float32))
        meta.append({"site": site, "layer": layer, "reduction": red, "file": f, "shape": list(a.shape)})
    lab = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    np.save(path / "labels.npy", lab)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": True, "n": n,
                "model": {"name": name, "config": {"depth": depth}},
                "sites": sorted({k[0] for k in arrays}), "layers": sorted({k[1] for k in arrays}),
                "reductions": sorted({k[2] for k in arrays}), "dtype": "float32", "storage_dtype": "float32",
                "arrays": meta, "ids": [f"s{i}" for i in range(n)], "paths": None, "classes": [], "skipped": []}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def planted(n_images: int = 400, tokens: int = 16, d: int = 32, atoms: int = 64, active: int = 3,
            noise: float = 0.01, seed: int = 0):
    """Activations made as sparse codes times a known dictionary plus noise: (x (N, T, d), dictionary (atoms, d))."""
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(atoms, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    rows = n_images * tokens
    codes = np.zeros((rows, atoms))
    for i in range(rows):
        idx = rng.choice(atoms, active, replace=False)
        codes[i, idx] = rng.uniform(0.5, 2.0, size=active)
    x = codes @ D + noise * rng.normal(size=(rows, d)) + 0.3
    return x.reshape(n_images, tokens, d).astype(np.float32), D
