"""The study file (YAML): models x datasets x analyses, validated with errors that name the line.

```yaml
study: walmer2023-demo                 # a name (the ``study`` column of the results table)
out: runs/walmer2023-demo              # optional; `vitscope run --out` overrides it
plugins: [my_analyses.py]           # optional: modules or .py files (next to the study file) registering analyses
features: {site: resid_post, dtype: float32, batch_size: 64}    # how feature stores are extracted
models:
  - demo-vit                                   # a name as `--model` takes it
  - {name: demo-vit-reg4, with_random: true}   # and its random-weight twin, "demo-vit-reg4 (random)"
datasets:
  - {name: shapes, data: "synthetic:n=512", limit: 256, train: "synthetic:n=1024,split=train"}
  - {name: davis, davis: /data/DAVIS}          # a task root (davis, spair, revisited) for the task evaluations
analyses:
  - attention_distance
  - {name: cluster, options: {k: 8}}
```

:func:`load_study` returns a :class:`Study`; every problem is a :class:`ConfigError` (a ``ValueError``) whose
message starts with ``FILE:LINE:`` and says what was expected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vitscope.experiments.spec import (FEATURE_DEFAULTS, RANDOM_SUFFIX, SYNTH_TASK_OPTIONS, TASKS,  # noqa: F401
                                       AnalysisSpec, ConfigError, DatasetSpec, ModelSpec, Study, parse_synthetic_task,
                                       slug)
from vitscope.experiments.spec import suggest as _suggest

TOP_KEYS = ("study", "out", "plugins", "features", "models", "datasets", "analyses", "description")
MODEL_KEYS = ("name", "label", "random", "with_random", "seed", "weights")
DATASET_KEYS = ("name", "data", "limit", "train", "train_limit") + TASKS
ANALYSIS_KEYS = ("name", "label", "options", "models", "datasets")


# ----------------------------------------------------------------------------- YAML with line numbers
class _Doc:
    """Plain Python values of a YAML document plus the line of every key path."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[tuple, int] = {}
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data = self._value(loader, node, ()) if node is not None else None
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 0
            raise ConfigError(f"{source}:{line}: invalid YAML: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: invalid YAML: {e}") from None
        finally:
            loader.dispose()

    def _value(self, loader, node, path: tuple) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict = {}
            for k_node, v_node in node.value:
                k = loader.construct_object(k_node, deep=True)
                if not isinstance(k, (str, int, float, bool)):
                    raise ConfigError(f"{self.source}:{k_node.start_mark.line + 1}: a key must be a plain name")
                k = str(k)
                if k in out:
                    raise ConfigError(f"{self.source}:{k_node.start_mark.line + 1}: {k!r} is given twice "
                                      f"(first on line {self.lines[path + (k,)]}); keep one")
                self.lines[path + (k,)] = k_node.start_mark.line + 1
                out[k] = self._value(loader, v_node, path + (k,))
                self.lines[path + (k,)] = k_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._value(loader, v, path + (i,)) for i, v in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: tuple, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.line(path)}: {message}")


def _check_keys(doc: _Doc, path: tuple, value: dict, allowed, what: str) -> None:
    for k in value:
        if k not in allowed:
            raise doc.error(path + (k,), f"unknown key {k!r} in {what}{_suggest(k, allowed)}; "
                                         f"allowed: {', '.join(allowed)}")


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def _type_name(default: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            tuple: "a list", dict: "a mapping"}.get(type(default), type(default).__name__)


def _int_or_none(doc: _Doc, path: tuple, v: Any, what: str, minimum: int = 1) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise doc.error(path, f"{what} must be an integer >= {minimum}, got {v!r}")
    return v


# ----------------------------------------------------------------------------- sections
def _models(doc: _Doc, raw: Any) -> list[ModelSpec]:
    if not isinstance(raw, list) or not raw:
        raise doc.error(("models",), "'models' must be a non-empty list of model names or "
                                     "{name: ..., random: ..., with_random: ...} entries")
    out: list[ModelSpec] = []
    for i, item in enumerate(raw):
        p = ("models", i)
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise doc.error(p, f"a model is a name or a mapping with 'name', got {item!r}")
        _check_keys(doc, p, item, MODEL_KEYS, "a model entry")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise doc.error(p, "a model entry needs 'name' (a registry name, timm/<name>, hf:<repo> or a path)")
        for flag in ("random", "with_random"):
            if flag in item and not isinstance(item[flag], bool):
                raise doc.error(p + (flag,), f"'{flag}' must be true or false, got {item[flag]!r}")
        seed = item.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise doc.error(p + ("seed",), f"'seed' must be an integer, got {seed!r}")
        weights = item.get("weights")
        if weights is not None and not isinstance(weights, str):
            raise doc.error(p + ("weights",), f"'weights' must be a path, got {weights!r}")
        label = item.get("label") or (Path(name).name if "/" in name and Path(name).exists() else name)
        if not isinstance(label, str):
            raise doc.error(p + ("label",), f"'label' must be a string, got {label!r}")
        random = bool(item.get("random", False))
        if random and item.get("with_random"):
            raise doc.error(p, "'random: true' and 'with_random: true' together make two random models; keep one")
        specs = [ModelSpec(label + (RANDOM_SUFFIX if random and not label.endswith(RANDOM_SUFFIX) else ""),
                           name, random, seed, weights)]
        if item.get("with_random"):
            specs.append(ModelSpec(label + RANDOM_SUFFIX, name, True, seed, None))
        for s in specs:
            if any(s.label == m.label for m in out):
                raise doc.error(p, f"two models are labelled {s.label!r}; give one a different 'label'")
            out.append(s)
    return out


def _datasets(doc: _Doc, raw: Any) -> list[DatasetSpec]:
    if not isinstance(raw, list) or not raw:
        raise doc.error(("datasets",), "'datasets' must be a non-empty list of data specs or "
                                       "{name: ..., data: ..., limit: ...} entries")
    out: list[DatasetSpec] = []
    for i, item in enumerate(raw):
        p = ("datasets", i)
        if isinstance(item, str):
            item = {"data": item}
        if not isinstance(item, dict):
            raise doc.error(p, f"a dataset is a data spec or a mapping with 'data', got {item!r}")
        _check_keys(doc, p, item, DATASET_KEYS, "a dataset entry")
        tasks = {t: _task_root(doc, p + (t,), t, item[t]) for t in TASKS if t in item}
        data = item.get("data")
        if data is None and tasks:
            pass
        elif not isinstance(data, str) or not data.strip():
            raise doc.error(p, "a dataset entry needs 'data': a --data spec (folder, list, shards, hf:NAME, "
                               "synthetic:...; see docs/data.md), or a task root (davis, spair, revisited)")
        if data is None:
            name = item.get("name") or "+".join(tasks)
        else:
            name = item.get("name") or slug(data.split(":", 1)[0] if data.startswith("synthetic") else Path(data).name)
        if not isinstance(name, str):
            raise doc.error(p + ("name",), f"'name' must be a string, got {name!r}")
        train = item.get("train")
        if train is not None and not isinstance(train, str):
            raise doc.error(p + ("train",), f"'train' must be a data spec string, got {train!r}")
        spec = DatasetSpec(name, data, _int_or_none(doc, p + ("limit",), item.get("limit"), "'limit'"), train,
                           _int_or_none(doc, p + ("train_limit",), item.get("train_limit"), "'train_limit'"),
                           **tasks)
        if any(d.name == spec.name for d in out):
            raise doc.error(p, f"two datasets are named {spec.name!r}; give each a different 'name'")
        out.append(spec)
    return out


def _task_root(doc: _Doc, path: tuple, kind: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise doc.error(path, f"'{kind}' must be a folder (the {kind} root) or synthetic[:options], got {value!r}")
    if value == "synthetic" or value.startswith("synthetic:"):
        try:
            parse_synthetic_task(value, kind)
        except (ValueError, TypeError) as e:
            raise doc.error(path, f"'{kind}': {e}") from None
    return value


def _analyses(doc: _Doc, raw: Any, models: list[ModelSpec], datasets: list[DatasetSpec]) -> list[AnalysisSpec]:
    from vitscope.experiments.analyses import REGISTRY

    if not isinstance(raw, list) or not raw:
        raise doc.error(("analyses",), f"'analyses' must be a non-empty list; known analyses: {', '.join(REGISTRY)}")
    out: list[AnalysisSpec] = []
    for i, item in enumerate(raw):
        p = ("analyses", i)
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise doc.error(p, f"an analysis is a name or a mapping with 'name' and 'options', got {item!r}")
        _check_keys(doc, p, item, ANALYSIS_KEYS, "an analysis entry")
        kind = item.get("name")
        if kind not in REGISTRY:
            raise doc.error(p + ("name",) if "name" in item else p,
                            f"unknown analysis {kind!r}{_suggest(kind, REGISTRY)}; known: {', '.join(REGISTRY)}")
        adapter = REGISTRY[kind]
        opts = item.get("options") or {}
        if not isinstance(opts, dict):
            raise doc.error(p + ("options",), f"'options' must be a mapping, got {opts!r}")
        resolved = dict(adapter.defaults)
        for k, v in opts.items():
            op = p + ("options", k)
            if k not in adapter.defaults:
                raise doc.error(op, f"{kind} has no option {k!r}{_suggest(k, adapter.defaults)}; its options: "
                                    f"{', '.join(adapter.defaults) or 'none'}")
            if isinstance(adapter.defaults[k], (list, tuple)) and not isinstance(v, (list, dict)):
                v = [v]                                   # a single value where a list is taken
            if not _type_ok(v, adapter.defaults[k]):
                raise doc.error(op, f"option {k!r} of {kind} must be {_type_name(adapter.defaults[k])}, got {v!r}")
            choices = adapter.choices.get(k)
            vals = v if isinstance(v, list) else [v]
            bad = [x for x in vals if choices is not None and x not in choices]
            if bad:
                raise doc.error(op, f"option {k!r} of {kind} takes {', '.join(map(str, choices))}; got {bad[0]!r}")
            resolved[k] = v
        if adapter.validate is not None:
            try:
                adapter.validate(resolved)
            except ValueError as e:
                raise doc.error(p + ("options",), f"{kind}: {e}") from None
        sel: dict[str, list[str] | None] = {}
        for key, known in (("models", [m.label for m in models] + [m.name for m in models]),
                           ("datasets", [d.name for d in datasets])):
            v = item.get(key)
            if v is None:
                sel[key] = None
                continue
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise doc.error(p + (key,), f"'{key}' must be a list of names")
            for j, x in enumerate(v):
                if x not in known:
                    raise doc.error(p + (key, j), f"{x!r} is not one of the study's {key}{_suggest(x, known)}")
            sel[key] = v
        label = item.get("label") or kind
        if not isinstance(label, str):
            raise doc.error(p + ("label",), f"'label' must be a string, got {label!r}")
        if any(a.label == label for a in out):
            raise doc.error(p, f"analysis {label!r} appears twice; give the second one a 'label' "
                               f"(e.g. label: {label}-2) to run it with other options")
        out.append(AnalysisSpec(label, kind, resolved, sel["models"], sel["datasets"], doc.line(p)))
    return out


def _features(doc: _Doc, raw: Any) -> dict[str, Any]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise doc.error(("features",), "'features' must be a mapping (site, dtype, batch_size, nproc_per_node)")
    _check_keys(doc, ("features",), raw, tuple(FEATURE_DEFAULTS), "'features'")
    out = dict(FEATURE_DEFAULTS)
    out.update(raw)
    if out["dtype"] not in ("float32", "float16", "bfloat16"):
        raise doc.error(("features", "dtype"), f"'dtype' takes float32, float16 or bfloat16, got {out['dtype']!r}")
    _int_or_none(doc, ("features", "batch_size"), out["batch_size"], "'batch_size'")
    _int_or_none(doc, ("features", "nproc_per_node"), out["nproc_per_node"], "'nproc_per_node'")
    if not isinstance(out["site"], str):
        raise doc.error(("features", "site"), f"'site' must be a site name such as resid_post, got {out['site']!r}")
    try:
        from vitscope.features.plan import canonical_site

        canonical_site(out["site"])
    except ValueError as e:
        raise doc.error(("features", "site"), str(e)) from None
    return out


def load_plugins(plugins: list[str], base: Path | None) -> None:
    """Import plugin modules (dotted names) or ``.py`` files (relative to ``base``) that register analyses."""
    import importlib
    import importlib.util
    import sys

    for p in plugins:
        if p.endswith(".py"):
            path = Path(p)
            if not path.is_absolute() and base is not None:
                path = base / path
            if not path.exists():
                raise FileNotFoundError(f"plugin file {path} not found; give a path relative to the study file")
            name = f"vitscope_study_plugin_{slug(path.stem)}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(p)


def parse_study(text: str, source: str = "<study>", base: Path | None = None) -> Study:
    """Validate a study given as YAML text (``source`` names it in errors; ``base`` resolves plugin paths)."""
    doc = _Doc(text, source)
    raw = doc.data
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}:1: a study file is a mapping with study, models, datasets and analyses")
    _check_keys(doc, (), raw, TOP_KEYS, "the study file")
    for key in ("study", "models", "datasets", "analyses"):
        if key not in raw:
            raise doc.error((), f"missing '{key}'; a study needs study (a name), models, datasets and analyses")
    name = raw["study"]
    if not isinstance(name, str) or not name.strip():
        raise doc.error(("study",), f"'study' must be a name, got {name!r}")
    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(x, str) for x in plugins):
        raise doc.error(("plugins",), "'plugins' must be a list of module names or .py files")
    try:
        load_plugins(plugins, base)
    except (ImportError, FileNotFoundError) as e:
        raise doc.error(("plugins",), f"cannot import plugin: {e}") from None
    out = raw.get("out")
    if out is not None and not isinstance(out, str):
        raise doc.error(("out",), f"'out' must be a folder path, got {out!r}")
    models = _models(doc, raw["models"])
    datasets = _datasets(doc, raw["datasets"])
    return Study(name=name, path=None, out=out, models=models, datasets=datasets,
                 analyses=_analyses(doc, raw["analyses"], models, datasets), features=_features(doc, raw.get("features")),
                 plugins=list(plugins), description=str(raw.get("description") or ""))


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; errors are :class:`ConfigError` naming ``FILE:LINE``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"study file {path} not found")
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"{path}: a study file is YAML (.yaml or .yml)")
    study = parse_study(path.read_text(), str(path), base=path.parent.resolve())
    study.path = path.resolve()
    study.plugins = [str((path.parent / p).resolve()) if p.endswith(".py") else p for p in study.plugins]
    return study
