"""What an analysis adapter sees of its cell: models, dataset, shared feature stores, options, output folder.

Models and datasets are loaded on first use and kept for the other cells run by the same process. Feature
stores live in ``STUDY_DIR/stores/``, one per (model, dataset, split): the first cell that needs one extracts it
(``vitscope.features.extract_features``) under a lock, every other cell of that pair reuses it. A store holds
every token reduction the study's analyses read for that pair; a reduction that exists only from some block on
(CLS entering late, cls-register) is kept in a store of those blocks.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vitscope.experiments.spec import FEATURE_DEFAULTS, Cell, DatasetSpec, ModelSpec, canonical, pair_key, slug

_MODELS: dict[tuple, Any] = {}
_DATASETS: dict[tuple, Any] = {}
_HASHES: dict[int, str] = {}


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
                 device: str | None = None, progress: bool = False, features: dict | None = None) -> None:
        self.cell = cell
        self.study_dir = Path(study_dir)
        self.store_tokens = store_tokens or {}
        self.features = {**FEATURE_DEFAULTS, **(features or {}), **cell.features}
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
            if d.data is None:
                raise ValueError(f"dataset {d.name!r} has no images ('data'), only task roots")
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

    def store_path(self, i: int, reduction: str, split: str = "test", sites: tuple[str, ...] | None = None,
                   tokens: tuple[str, ...] | None = None) -> tuple[Path, list[int], list[str]]:
        """(folder, layers, reductions) of the shared store of model ``i`` that holds ``reduction``.

        By default the store has the study's feature site and every reduction the study reads for this pair at the
        same blocks; ``sites`` / ``tokens`` ask for a store of its own (the probes: ``ln2`` + ``ln_final``)."""
        m = self.cell.models[i]
        layers = self.layers(i, reduction)
        if not layers:
            raise ValueError(f"{m.label} has no {reduction!r} token at any block")
        if tokens is not None:
            group = sorted(set(tokens) | {reduction})
        else:
            wanted = self.store_tokens.get(pair_key(m.label, self.cell.dataset.name)) or [reduction]
            if reduction not in wanted:
                wanted = sorted(set(wanted) | {reduction})
            group = sorted(r for r in wanted if self.layers(i, r) == layers)
        spec, limit = self._spec(split)
        site_key: Any = self.site if sites is None else list(sites)
        key = {"model": {k: v for k, v in m.key().items() if k != "label"}, "data": spec, "limit": limit,
               "site": site_key, "dtype": self.features.get("dtype", "float32"), "layers": layers,
               "tokens": group}
        h = hashlib.sha256(canonical(key).encode()).hexdigest()[:10]
        name = f"{slug(m.label)}__{slug(self.cell.dataset.name)}{'' if split == 'test' else '__' + split}__{h}"
        return self.study_dir / "stores" / name, layers, group

    def store(self, i: int = 0, reduction: str = "cls", split: str = "test", sites: tuple[str, ...] | None = None,
              tokens: tuple[str, ...] | None = None):
        """The feature store of model ``i`` on the cell's dataset holding ``reduction`` (extracted once, shared).

        With ``features: {nproc_per_node: K}`` (K > 1) the extraction runs as ``torchrun --nproc_per_node=K -m
        vitscope extract ...`` (a subprocess, the samples split between K ranks, e.g. the GPUs of a SLURM node)."""
        from vitscope.outlock import store_lock
        from vitscope.features import extract_features, open_store

        path, layers, group = self.store_path(i, reduction, split, sites, tokens)
        site_list = (self.site,) if sites is None else tuple(sites)
        with store_lock(path.with_name(path.name + ".lock")):
            try:
                store = open_store(path)
                if store.model.get("weights_sha256") == self.weights_hash(i):
                    return store
            except (FileNotFoundError, ValueError):
                pass
            from vitscope.features import IncompatibleStoreError

            kw = dict(layers=layers, sites=site_list, tokens=tuple(group),
                      batch_size=int(self.features.get("batch_size", 64)),
                      dtype=self.features.get("dtype", "float32"), num_workers=0, device=self.device,
                      progress=self.progress)
            nproc = int(self.features.get("nproc_per_node") or 1)
            if nproc > 1:
                store = self._torchrun_extract(i, split, path, nproc, kw)
            else:
                try:                                    # resumes a store whose extraction was interrupted
                    store = extract_features(self.model(i), self.dataset(split, i), path, **kw)
                except IncompatibleStoreError:          # the weights behind this name changed: extract again
                    store = extract_features(self.model(i), self.dataset(split, i), path, resume=False, **kw)
            self.stores_extracted.append(path.name)
            return store

    def extract_command(self, i: int, split: str, path: Path, nproc: int, kw: dict, resume: bool = True) -> list[str]:
        """The ``torchrun`` command line that extracts the store at ``path`` with ``nproc`` processes."""
        import sys

        m: ModelSpec = self.cell.models[i]
        spec, limit = self._spec(split)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "vitscope", "extract", "-m", m.name, "-d", spec, "-o", str(path),
               "--blocks", ",".join(map(str, kw["layers"])), "-s", ",".join(kw["sites"]), "-t", ",".join(kw["tokens"]),
               "-b", str(kw["batch_size"]), "--dtype", kw["dtype"], "-w", "0", "-q"]
        if m.random:
            cmd += ["--random", "--seed", str(m.seed)]
        elif m.weights:
            cmd += ["--weights", m.weights]
        if limit is not None:
            cmd += ["--limit", str(limit)]
        if self.device is not None and str(self.device).startswith("cpu"):
            cmd += ["--device", "cpu"]                  # on GPUs each rank takes the GPU of its local rank
        if not resume:
            cmd.append("--no-resume")
        return cmd

    def _torchrun_extract(self, i: int, split: str, path: Path, nproc: int, kw: dict):
        import subprocess

        from vitscope.features import open_store

        log = path.with_name(path.name + ".torchrun.log")
        for resume in (True, False):
            cmd = self.extract_command(i, split, path, nproc, kw, resume)
            with open(log, "w") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
            if rc == 0:
                break
            text = log.read_text(errors="replace")
            if resume and "IncompatibleStoreError" in text:     # the weights behind this name changed
                continue
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise RuntimeError(f"torchrun extraction of {path.name} failed (exit {rc}): {tail} (log: {log})")
        store = open_store(path)
        if store.model.get("weights_sha256") != self.weights_hash(i):
            raise RuntimeError(f"the store {path.name} extracted by torchrun holds other weights than {self.label(i)}; "
                               "were the model's files changed during the run?")
        return store

    # ------------------------------------------------------------------ task roots
    def task_root(self, kind: str) -> Path:
        """The dataset's ``kind`` root (davis, spair, revisited): its folder, or the synthetic benchmark's, written
        once into ``STUDY_DIR/data/`` (under a lock) from ``synthetic[:options]``."""
        from vitscope.data.tasks.synthetic import is_synthetic, task_root

        value = self.cell.dataset.task(kind)
        if not value:
            raise ValueError(f"dataset {self.cell.dataset.name!r} has no {kind!r} root; add '{kind}: FOLDER' (or "
                             f"'{kind}: synthetic') to it in the study file")
        if not is_synthetic(value) and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{kind} root {Path(value).expanduser()} of dataset {self.cell.dataset.name!r} "
                                    f"not found")
        from vitscope.outlock import store_lock

        return task_root(value, kind, self.study_dir / "data", lock=store_lock)


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
