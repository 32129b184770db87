"""What a study is made of: its model, dataset and analysis entries, and the cells they expand into.

Plain data (no YAML, no registry): the parser (:mod:`~vitscope.experiments.config`), the expansion
(:mod:`~vitscope.experiments.cells`), the runner and the adapters' :class:`~vitscope.experiments.context.CellContext`
all read these types, so they sit below all of them.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RANDOM_SUFFIX = " (random)"
FEATURE_DEFAULTS = {"site": "resid_post", "dtype": "float32", "batch_size": 64, "nproc_per_node": 1}
TASKS = ("davis", "spair", "revisited")          # task roots a dataset entry may name (besides its images)
from vitscope.data.tasks.synthetic import SYNTH_TASK_OPTIONS, parse_synthetic_task  # noqa: F401


def slug(s: str) -> str:
    """A string as a safe file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


class ConfigError(ValueError):
    """A study file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class ModelSpec:
    label: str
    name: str
    random: bool = False
    seed: int = 0
    weights: str | None = None

    def key(self) -> dict:
        return {"label": self.label, "name": self.name, "random": self.random, "seed": self.seed,
                "weights": self.weights}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    data: str | None
    limit: int | None = None
    train: str | None = None
    train_limit: int | None = None
    davis: str | None = None          # task roots: a folder, or "synthetic[:options]" (written into the study)
    spair: str | None = None
    revisited: str | None = None

    def key(self) -> dict:
        out = {"name": self.name, "data": self.data, "limit": self.limit, "train": self.train,
               "train_limit": self.train_limit}
        out.update({t: getattr(self, t) for t in TASKS if getattr(self, t) is not None})
        return out

    def task(self, kind: str) -> str | None:
        return getattr(self, kind) if kind in TASKS else None


@dataclass
class AnalysisSpec:
    label: str
    kind: str                        # the registered analysis name
    options: dict[str, Any]          # resolved: defaults merged with the file's options
    models: list[str] | None = None
    datasets: list[str] | None = None
    line: int = 0


@dataclass
class Study:
    name: str
    path: Path | None
    out: str | None
    models: list[ModelSpec]
    datasets: list[DatasetSpec]
    analyses: list[AnalysisSpec]
    features: dict[str, Any] = field(default_factory=lambda: dict(FEATURE_DEFAULTS))
    plugins: list[str] = field(default_factory=list)
    description: str = ""

    def model(self, label: str) -> ModelSpec:
        return next(m for m in self.models if m.label == label)

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)


@dataclass(frozen=True)
class Cell:
    id: str                       # file-name-safe: <analysis>__<models>__<dataset>__<hash>
    hash: str
    study: str
    analysis: str                 # the label of the analysis entry
    kind: str                     # the registered analysis
    models: tuple[ModelSpec, ...]
    dataset: DatasetSpec
    options: dict[str, Any]
    features: dict[str, Any]

    @property
    def model_labels(self) -> list[str]:
        return [m.label for m in self.models]

    def describe(self) -> str:
        return f"{self.analysis} | {' x '.join(dict.fromkeys(self.model_labels))} | {self.dataset.name}"

    def to_dict(self) -> dict:
        return {"id": self.id, "hash": self.hash, "study": self.study, "analysis": self.analysis, "kind": self.kind,
                "models": [m.key() for m in self.models], "dataset": self.dataset.key(), "options": self.options,
                "features": self.features}

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        return cls(d["id"], d["hash"], d["study"], d["analysis"], d["kind"],
                   tuple(ModelSpec(**m) for m in d["models"]), DatasetSpec(**d["dataset"]), dict(d["options"]),
                   dict(d["features"]))


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def suggest(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    near = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def pair_key(model_label: str, dataset: str) -> str:
    return f"{model_label}|{dataset}"
