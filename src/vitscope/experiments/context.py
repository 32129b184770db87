"""What an analysis adapter sees of its cell: models, dataset, shared feature stores, options, output folder.

Models and datasets are loaded on first use and kept for the other cells run by the same process. Feature
stores live in ``STUDY_DIR/stores/``, one per (model, dataset, split): the first cell that needs one extracts it
(``vitscope.features.extract_features``) under a lock, every other cell of that pair reuses it. A store holds
every token reduction the study's analyses read for that pair; a reduction that exists only from some block on
(CLS entering late, seed 004) is kept in a store of those blocks.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vitscope.experiments.cells import Cell, canonical, pair_key
from vitscope.experiments.config import DatasetSpec, ModelSpec, slug

_MODELS: dict[tuple, Any] = {}
_DATASETS: dict[tuple, Any] = {}
_HASHES: dict[int, str] = {}


def clear_caches() -> None:
    _MODELS.clear()
    _DATASETS.clear()
    _HASHES.clear()


def load_study_model(spec: ModelSpec, device: str | None = None):
    """The model of a study entry (random ones seeded), cached per process."""
    key = (spec.name, spec.random, spec.seed, spec.weights, device)
    if key not in _MODELS:
        from vitscope.models.loading import load_model

        if len(_MODELS) >= 4:                           # keep a few models, not every model of a big study
            _MODELS.pop(next(iter(_MODELS)))
        if spec.weights:
            m = load_model(spec.name, weights=spec.weights, device=device)
        else:
            m = load_model(spec.name, pretrained=not spec.random, device=device, seed=spec.seed)
        _MODELS[key] = m.eval()
    return _MODELS[key]


def weights_hash(model) -> str:
    """The weights hash the feature store records (the checkpoint's sha256, else one of the state dict)."""
    if id(model) not in _HASHES:
        from vitscope.features.identity import model_identity

        _HASHES[id(model)] = model_identity(model)["weights_sha256"]
    return _HASHES[id(model)]


def token_exists(layout, reduction: str) -> bool:
    if reduction == "cls":
        return layout.cls is not None
    if reduction == "dist":
        return layout.dist is not None
    if reduction == "cls+mean":
        return layout.cls is not None
    if reduction == "registers":
        return bool(layout.registers)
    return True


class CellContext:
    """The cell being run: ``model(i)``, ``dataset(split)``, ``raw_dataset()``, ``store(i, tokens, split)``,
    ``options``, ``out`` (the cell's folder for figures and arrays), ``label(i)``, ``meta()``."""

    def __init__(self, cell: Cell, study_dir: str | Path, store_tokens: dict[str, list[str]] | None = None,
                 device: str | None = None, progress: bool = False) -> None:
        self.cell = cell
        self.study_dir = Path(study_dir)
        self.store_tokens = store_tokens or {}
        self.device = device
        self.progress = progress
        self.out = self.study_dir / "cells" / cell.id
        self.out.mkdir(parents=True, exist_ok=True)
        self.stores_extracted: list[str] = []

    # ------------------------------------------------------------------ what the cell is about
    @property
    def options(self) -> dict:
        return self.cell.options

    @property
    def site(self) -> str:
        return self.cell.features.get("site", "resid_post")

    @property
    def same_models(self) -> bool:
        return len({m.label for m in self.cell.models}) == 1

    def label(self, i: int = 0) -> str:
        return self.cell.models[i].label

    def model(self, i: int = 0):
        return load_study_model(self.cell.models[i], self.device)

    def weights_hash(self, i: int = 0) -> str:
        return weights_hash(self.model(i))

    def meta(self) -> dict:
        return {"study": self.cell.study, "cell": self.cell.id, "analysis": self.cell.analysis,
                "models": [m.key() for m in self.cell.models], "dataset": self.cell.dataset.key(),
                "options": self.cell.options}

    # ------------------------------------------------------------------ data
    def _spec(self, split: str) -> tuple[str, int | None]:
        d: DatasetSpec = self.cell.dataset
        if split == "test":
            return d.data, d.limit
        if split == "train":
            if not d.train:
                raise ValueError(f"dataset {d.name!r} has no train split; add 'train: SPEC' to it in the study file")
            return d.train, d.train_limit
        raise ValueError(f"split is 'test' or 'train', got {split!r}")

    def dataset(self, split: str = "test", i: int = 0):
        """The dataset with model ``i``'s preprocessing, cut to the entry's limit."""
        from vitscope.data import open_dataset
        from vitscope.models.preprocess import PreprocessConfig, Preprocessor

        model = self.model(i)
        spec, limit = self._spec(split)
        pcfg = model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)
        key = (spec, limit, canonical(pcfg.to_dict()) if hasattr(pcfg, "to_dict") else repr(pcfg))
        if key not in _DATASETS:
            ds = open_dataset(spec, transform=Preprocessor(pcfg))
            if limit is not None and limit < len(ds):
                ds = ds.subset(range(limit))
            if len(ds) == 0:
                raise ValueError(f"dataset {self.cell.dataset.name!r} ({spec}) has no images")
            _DATASETS[key] = ds
        return _DATASETS[key]

    def raw_dataset(self, split: str = "test"):
        """The dataset without preprocessing (images as decoded, masks for the tasks that have them), cut to limit."""
        from vitscope.data import open_dataset

        spec, limit = self._spec(split)
        ds = open_dataset(spec)
        if limit is not None and limit < len(ds):
            src = getattr(ds, "source", None)
            if src is not None and hasattr(src, "sample") and hasattr(src, "ids"):
                return _Limited(ds, limit)
            ds = ds.subset(range(limit))
        return ds

    # ------------------------------------------------------------------ feature stores
    def layers(self, i: int, reduction: str) -> list[int]:
        """Blocks whose output has ``reduction`` (CLS only from the block where it enters)."""
        model = self.model(i)
        return [b for b in range(model.cfg.depth) if token_exists(model.token_layout(b), reduction)]

    def store_path(self, i: int, reduction: str, split: str = "test") -> tuple[Path, list[int], list[str]]:
        """(folder, layers, reductions) of the shared store of model ``i`` that holds ``reduction``."""
        m = self.cell.models[i]
        wanted = self.store_tokens.get(pair_key(m.label, self.cell.dataset.name)) or [reduction]
        if reduction not in wanted:
            wanted = sorted(set(wanted) | {reduction})
        layers = self.layers(i, reduction)
        if not layers:
            raise ValueError(f"{m.label} has no {reduction!r} token at any block")
        group = sorted(r for r in wanted if self.layers(i, r) == layers)
        spec, limit = self._spec(split)
        key = {"model": {k: v for k, v in m.key().items() if k != "label"}, "data": spec, "limit": limit,
               "site": self.site, "dtype": self.cell.features.get("dtype", "float32"), "layers": layers,
               "tokens": group}
        h = hashlib.sha256(canonical(key).encode()).hexdigest()[:10]
        name = f"{slug(m.label)}__{slug(self.cell.dataset.name)}{'' if split == 'test' else '__' + split}__{h}"
        return self.study_dir / "stores" / name, layers, group

    def store(self, i: int = 0, reduction: str = "cls", split: str = "test"):
        """The feature store of model ``i`` on the cell's dataset holding ``reduction`` (extracted once, shared)."""
        from vitscope.experiments.locks import store_lock
        from vitscope.features import extract_features, open_store

        path, layers, group = self.store_path(i, reduction, split)
        with store_lock(path.with_name(path.name + ".lock")):
            try:
                store = open_store(path)
                if store.model.get("weights_sha256") == self.weights_hash(i):
                    return store
            except (FileNotFoundError, ValueError):
                pass
            from vitscope.features import IncompatibleStoreError

            kw = dict(layers=layers, sites=(self.site,), tokens=tuple(group),
                      batch_size=int(self.cell.features.get("batch_size", 64)),
                      dtype=self.cell.features.get("dtype", "float32"), num_workers=0, device=self.device,
                      progress=self.progress)
            try:                                    # resumes a store whose extraction was interrupted
                store = extract_features(self.model(i), self.dataset(split, i), path, **kw)
            except IncompatibleStoreError:          # the weights behind this name changed: extract again
                store = extract_features(self.model(i), self.dataset(split, i), path, resume=False, **kw)
            self.stores_extracted.append(path.name)
            return store


class _Limited:
    """The first ``n`` items of a synthetic dataset, keeping ``.source.sample`` (masks) reachable."""

    def __init__(self, ds, n: int) -> None:
        self.ds, self.n = ds, n
        self.source = _LimitedSource(ds.source, n)

    def __len__(self) -> int:
        return self.n


class _LimitedSource:
    def __init__(self, src, n: int) -> None:
        self.src, self.n = src, n
        self.ids = list(src.ids)[:n]

    def sample(self, i: int):
        return self.src.sample(i)
