"""Task roots given as ``synthetic[:options]``: the synthetic benchmark's DAVIS-, SPair- and Revisited-style sets,
written to disk once and then read like the real ones (``vitscope davis / keypoints / retrieval``, studies).

``synthetic:size=64,videos=4,frames=12`` takes the generator's options (``vitscope.data.synthetic``: size, classes,
seed, difficulty, ...) and the writer's counts of its kind: ``videos`` / ``frames`` (davis), ``pairs`` (spair),
``landmarks`` (revisited). The same spec is written to the same folder, ``<cache>/synthetic-<kind>__<hash>``.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

SYNTH_TASK_OPTIONS = {"davis": ("videos", "frames"), "spair": ("pairs",), "revisited": ("landmarks",)}
SUBFOLDER = {"davis": "davis", "spair": "spair", "revisited": "revisited/rsynth"}


def default_cache() -> Path:
    """Where synthetic task roots given to the Python API are written: ``$VITSCOPE_CACHE/tasks`` (default
    ``~/.cache/vitscope/tasks``). Commands write them into their output folder, studies into the study folder."""
    return Path(os.environ.get("VITSCOPE_CACHE", "~/.cache/vitscope")).expanduser() / "tasks"


def is_synthetic(value) -> bool:
    return isinstance(value, str) and (value == "synthetic" or value.startswith("synthetic:"))


def parse_synthetic_task(spec: str, kind: str) -> tuple[dict, dict]:
    """``synthetic[:k=v,...]`` of a task root -> (generator options, writer counts); unknown keys are a ValueError."""
    from vitscope.data.synthetic.config import config_from_options, option_names

    if kind not in SYNTH_TASK_OPTIONS:
        raise ValueError(f"a synthetic task root is one of {', '.join(SYNTH_TASK_OPTIONS)}, got {kind!r}")
    body = spec.split(":", 1)[1] if ":" in spec else ""
    opts: dict[str, str] = {}
    for item in re.split(r"[,&]", body):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"synthetic options are key=value pairs, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        opts[k] = v
    extra = SYNTH_TASK_OPTIONS[kind]
    bad = [k for k in opts if k not in option_names() and k not in extra]
    if bad:
        near = difflib.get_close_matches(bad[0], [*option_names(), *extra], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown synthetic option {bad[0]!r}{hint} for {kind}; it takes the generator's options "
                         f"(size, classes, seed, difficulty, ...) and {', '.join(extra)}")
    counts = {}
    for k in extra:
        if k in opts:
            v = opts.pop(k)
            if not v.isdigit() or int(v) < 1:
                raise ValueError(f"synthetic option {k!r} must be a positive integer, got {v!r}")
            counts[k] = int(v)
    cfg, _ = config_from_options(opts)
    return cfg.to_dict(), counts


def synthetic_task_root(spec: str, kind: str, cache: str | Path,
                        lock: Callable[[Path], contextlib.AbstractContextManager] | None = None) -> Path:
    """The folder of the synthetic ``kind`` set ``spec`` under ``cache`` (written there on first use, atomically:
    into a temporary folder, then renamed). ``lock(path)``: a context manager held while writing, for callers that
    share ``cache`` between processes."""
    cfg, counts = parse_synthetic_task(spec, kind)
    key = json.dumps({"kind": kind, "cfg": cfg, "counts": counts}, sort_keys=True, separators=(",", ":"), default=str)
    folder = Path(cache) / f"synthetic-{kind}__{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    done = folder / "synth.json"
    if not done.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with (lock(folder.with_name(folder.name + ".lock")) if lock else contextlib.nullcontext()):
            if not done.exists():
                from vitscope.data.synthetic import SynthConfig, write

                tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                write(tmp, SynthConfig(**cfg), formats=[kind], **counts)
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
    return folder / SUBFOLDER[kind]


def task_root(value: str | Path, kind: str, cache: str | Path,
              lock: Callable[[Path], contextlib.AbstractContextManager] | None = None) -> Path:
    """A task root as a folder: ``value`` itself (which must exist), or the synthetic set it names, written under
    ``cache`` (:func:`synthetic_task_root`)."""
    if is_synthetic(str(value)):
        return synthetic_task_root(str(value), kind, cache, lock)
    root = Path(value).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{kind} root not found: {root} (a folder, or synthetic[:options] for the "
                                f"synthetic benchmark's {kind}-style set)")
    return root
