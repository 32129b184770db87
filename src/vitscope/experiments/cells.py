"""A study expands into cells: one analysis on one model (or one pair of models) and one dataset.

A cell is named by a stable hash of everything that decides its numbers (the analysis and its resolved
options, the model entries, the dataset entry, the feature site and dtype, the study name), so changing any
option makes a new cell whose rows are never mixed with the old ones. Cells of the same (model, dataset)
share one feature store (:func:`store_tokens` collects the token reductions all of them need).
"""
from __future__ import annotations

import hashlib

from vitscope.experiments.spec import (Cell, ConfigError, DatasetSpec, ModelSpec, Study, canonical,  # noqa: F401
                                       pair_key, slug)

HASH_LEN = 12


def cell_hash(study: str, kind: str, analysis: str, models: tuple[ModelSpec, ...], dataset: DatasetSpec,
              options: dict, features: dict) -> str:
    """sha256 (first 12 hex digits) of what decides the cell's rows."""
    key = {"study": study, "kind": kind, "analysis": analysis, "models": [m.key() for m in models],
           "dataset": dataset.key(), "options": options, "features": features}
    return hashlib.sha256(canonical(key).encode()).hexdigest()[:HASH_LEN]


def _selected(names: list[str] | None, m: ModelSpec) -> bool:
    return names is None or m.label in names or m.name in names


def _where(study: Study, a) -> str:
    return f"{study.path}:{a.line}" if study.path else f"analysis {a.label!r}"


def _datasets_of(study: Study, a, adapter) -> list[DatasetSpec]:
    """The datasets an analysis runs on: those it names, else every dataset that has what it reads (images, or
    its task root)."""
    def has(d: DatasetSpec) -> bool:
        return bool(d.task(adapter.task)) if adapter.task else d.data is not None

    what = f"a '{adapter.task}' task root" if adapter.task else "'data' (images)"
    if a.datasets is not None:
        chosen = [d for d in study.datasets if d.name in a.datasets]
        lacking = [d.name for d in chosen if not has(d)]
        if lacking:
            raise ConfigError(f"{_where(study, a)}: {a.kind} reads {what}, which dataset {lacking[0]!r} does not "
                              f"have; add it to that dataset or leave it out of 'datasets'")
        return chosen
    chosen = [d for d in study.datasets if has(d)]
    if not chosen:
        raise ConfigError(f"{_where(study, a)}: {a.kind} reads {what}, and no dataset of the study has one"
                          + (f"; add e.g. '{adapter.task}: synthetic' (or a folder) to a dataset" if adapter.task
                             else ""))
    return chosen


def expand(study: Study) -> list[Cell]:
    """Every cell of the study, in the order of the analyses, datasets and models of the file."""
    from vitscope.experiments.analyses import REGISTRY

    cells: list[Cell] = []
    for a in study.analyses:
        adapter = REGISTRY[a.kind]
        uses_store = bool(adapter.tokens(a.options))
        feats = {k: study.features[k] for k in ("site", "dtype")} if uses_store else {}
        models = [m for m in study.models if _selected(a.models, m)]
        datasets = _datasets_of(study, a, adapter)
        for d in datasets:
            if "train" in adapter.needs and not d.train:
                raise ConfigError(f"{_where(study, a)}: {a.kind} needs a train split: add 'train: SPEC' to dataset "
                                  f"{d.name!r} or limit the analysis to other datasets with 'datasets: [...]'")
            if adapter.scope == "pair":
                groups = [(models[i], models[j]) for i in range(len(models)) for j in range(i, len(models))]
            else:
                groups = [(m,) for m in models]
            for ms in groups:
                h = cell_hash(study.name, a.kind, a.label, ms, d, a.options, feats)
                names = "+".join(dict.fromkeys(slug(m.label) for m in ms))
                cid = f"{slug(a.label)}__{names}__{slug(d.name)}__{h}"
                cells.append(Cell(cid, h, study.name, a.label, a.kind, ms, d, dict(a.options), feats))
    return cells


def store_tokens(study: Study, cells: list[Cell]) -> dict[str, list[str]]:
    """``{"<model label>|<dataset name>": [reductions]}``: what the shared feature store of each pair holds."""
    from vitscope.experiments.analyses import REGISTRY

    out: dict[str, set[str]] = {}
    for c in cells:
        toks = REGISTRY[c.kind].tokens(c.options)
        for m in c.models:
            out.setdefault(pair_key(m.label, c.dataset.name), set()).update(toks)
    return {k: sorted(v) for k, v in out.items()}
