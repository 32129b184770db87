"""What every front end (command line, studies, report, app) needs to run an analysis, below all of them:
device choice, model loading with a seeded (and cached) random-weight twin, labels and output slugs, the weights
identity of a model, and writing tidy tables.

The same ``seed`` gives the same random twin in every command, study cell and app view: a random twin is built
by :func:`load_model` with ``pretrained=False`` and ``seed`` (default 0), never from torch's global generator.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

DEFAULT_SEED = 0
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_SIZE = 4
_HASHES: dict[int, str] = {}


def resolve_device(device: str | None = None) -> str:
    """``device`` as given, else ``cuda`` when available, else ``cpu``."""
    import torch

    if device:
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str, random: bool = False, seed: int | None = DEFAULT_SEED, device: str | None = None,
               weights: str | None = None, cache: bool = False):
    """``vitscope.load_model`` in eval mode on ``device``: pretrained weights, a local ``weights`` file, or, with
    ``random=True``, random weights drawn from ``seed`` (the same twin everywhere for the same seed).
    ``cache=True`` keeps the last few models in memory (studies and the app load the same model many times)."""
    from vitscope.models.loading import load_model as _load

    if weights is not None and random:
        raise ValueError("--weights and --random contradict each other: --random means no weights; drop one")
    dev = resolve_device(device)
    key = (str(name), bool(random), seed if random else None, str(weights) if weights else None, dev)
    if cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if weights is not None:
        m = _load(name, weights=weights, device=dev)
    else:
        m = _load(name, pretrained=not random, device=dev, seed=seed if random else None)
    m = m.eval()
    if cache:
        _CACHE[key] = m
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return m


def random_twin(model, seed: int = DEFAULT_SEED):
    """The random-weight twin of a loaded model: its architecture with weights drawn from ``seed`` (what
    ``load_model(name, random=True, seed=seed)`` builds), on the model's device and dtype, in eval mode."""
    import torch

    from vitscope.models.vit import HookedViT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        twin = HookedViT(model.cfg, model.preprocess_cfg)
    twin.meta = {**(getattr(model, "meta", None) or {}), "source": "random-init", "weights_sha256": None}
    twin.meta.pop("weights_path", None)
    return twin.to(model.device, model.dtype).eval()


def model_label(model, name: str, random: bool = False) -> str:
    """The label a model's rows carry: its registry / folder name, `` (random)`` for a random twin."""
    label = str((getattr(model, "meta", None) or {}).get("name") or Path(str(name)).name or name)
    return label + " (random)" if random else label


def is_random(model) -> bool:
    """Whether a loaded model has random weights (its ``meta`` says ``source: random-init``)."""
    return (getattr(model, "meta", None) or {}).get("source") == "random-init"


def model_meta(model, name: str | None = None, random: bool | None = None) -> dict:
    """What a results file records about the model it came from: name, random weights or not, source, weights
    hash of the file loaded, config."""
    meta = getattr(model, "meta", None) or {}
    return {"model": name if name is not None else meta.get("name"),
            "random_init": bool(is_random(model) if random is None else random), "source": meta.get("source"),
            "weights_sha256": meta.get("weights_sha256"), "config": model.cfg.to_dict()}


def load_models(names: list[str], random: bool = False, device: str | None = None, seed: int = DEFAULT_SEED,
                with_random: bool = False) -> dict:
    """``{label: model}``: every name loaded; ``random`` random-inits them all, ``with_random`` adds each one's
    random twin (seeded by ``seed``)."""
    models: dict[str, Any] = {}
    for n in names:
        for rand in ([random] + ([True] if with_random and not random else [])):
            m = load_model(n, random=rand, seed=seed, device=device)
            label = model_label(m, n, rand)
            while label in models:
                label += "'"
            models[label] = m
    return models


def clear_cache() -> None:
    _CACHE.clear()
    _HASHES.clear()


def weights_hash(model) -> str:
    """The checkpoint's sha256 (a hash of the state dict for random weights): what a results row records."""
    if id(model) not in _HASHES:
        from vitscope.features.identity import model_identity

        _HASHES[id(model)] = model_identity(model)["weights_sha256"]
    return _HASHES[id(model)]


def slug(s: str) -> str:
    """A string as a safe file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "model"


def save_tidy(rows, stem: str | Path) -> list[Path]:
    """Write a tidy table (list of dicts or DataFrame) as ``stem.csv`` and ``stem.parquet``, each atomically
    (written beside, then renamed); returns both paths."""
    import os

    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, parquet = stem.with_name(f"{stem.name}.csv"), stem.with_name(f"{stem.name}.parquet")
    for path, write in ((csv, lambda p: df.to_csv(p, index=False)), (parquet, lambda p: df.to_parquet(p, index=False))):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, path)
    return [csv, parquet]
