"""``open_dataset(spec)``: one string names any image collection (the ``--data`` option of the CLI).

Forms of ``spec`` (see docs/data.md):

- ``path/to/folder``          ImageFolder layout (class sub-folders) or a flat folder / folder of video frames
- ``path/to/list.csv|.txt``   rows ``path[,label]``, paths relative to the list file
- ``path/to/shards`` or ``path/shard-{000..009}.tar`` or ``path/*.tar``   webdataset tar shards
- ``path/to/saved_hf``        a Hugging Face dataset written with ``save_to_disk``
- ``hf:NAME``                 a Hugging Face hub dataset (``datasets`` extra)
- ``path/to/video.mp4``       the frames of a video
- ``path/to/image.jpg``       a single image
- ``synthetic[:key=value,...]``  the synthetic benchmark, generated in memory
- ``builtin:samples``         a few real photographs shipped with vitscope (demos, tests)
- ``builtin:demo[?n=512,split=test]``  the synthetic benchmark the bundled demo models were trained on

Options follow a ``?``: ``hf:cifar10?split=test&image=img`` or ``shards/?split=train``; they can also be
given as keyword arguments, which win. Unknown options are an error that lists the accepted ones.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitscope.data.datasets import ImageDataset
from vitscope.data.decode import is_image_file

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"})
LIST_EXTENSIONS = frozenset({".csv", ".tsv", ".txt", ".lst"})
_GLOB = re.compile(r"[*?\[]|\{[^}]*(\.\.|,)[^}]*\}")


def _split_options(text: str, sep_re: str = r"[&,]") -> dict[str, str]:
    out = {}
    for part in re.split(sep_re, text):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"dataset option {part!r} should look like key=value")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def parse_spec(spec: str | Path) -> tuple[str, str, dict[str, str]]:
    """Split a dataset spec into (kind, target, options); kind is 'synthetic', 'hf', 'builtin' or 'path'."""
    if isinstance(spec, Path):
        return "path", str(spec), {}
    s = str(spec).strip()
    if not s:
        raise ValueError("empty dataset spec; give a folder, a list file, shards, hf:NAME or synthetic")
    if s == "synthetic" or s.startswith(("synthetic:", "synthetic?")):
        return "synthetic", "synthetic", _split_options(s[len("synthetic") + 1:])
    target, opts = s, {}
    if "?" in s and not Path(s).exists():
        head, tail = s.rsplit("?", 1)
        if "=" in tail:
            target, opts = head, _split_options(tail)
    if target.startswith("hf:"):
        return "hf", target[3:], opts
    if target.startswith("builtin:"):
        return "builtin", target[len("builtin:"):], opts
    return "path", target, opts


def _take(options: dict[str, Any], allowed: dict[str, Callable[[Any], Any]], what: str) -> dict[str, Any]:
    bad = sorted(set(options) - set(allowed))
    if bad:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"unknown option(s) {', '.join(bad)} for {what}; accepted: {accepted}")
    return {k: (allowed[k](v) if isinstance(v, str) else v) for k, v in options.items()}


def synthetic_config(spec: str):
    """The generator settings (:class:`~vitscope.data.synthetic.config.SynthConfig`) behind a ``synthetic:`` or
    ``builtin:demo`` spec, e.g. to write the demo models' data to disk with ``vitscope synth --like builtin:demo``."""
    kind, target, _ = parse_spec(spec)
    if kind not in ("synthetic", "builtin") or (kind == "builtin" and target != "demo"):
        raise ValueError(f"{spec!r} is not a synthetic data spec; give builtin:demo or synthetic:KEY=VALUE,...")
    return open_source(spec).cfg


def open_source(spec: str | Path, **options):
    """The source behind a spec (what :class:`ImageDataset` wraps); see :func:`open_dataset`."""
    kind, target, opts = parse_spec(spec)
    opts.update(options)
    if kind == "synthetic":
        from vitscope.data.synthetic.config import config_from_options
        from vitscope.data.synthetic.objects import SyntheticSource

        from vitscope.data.synthetic.config import option_names

        cfg, rest = config_from_options(opts)
        bad = sorted(set(rest) - {"n", "split", "per_class"})
        if bad:
            raise ValueError(f"unknown option(s) {', '.join(bad)} for synthetic; accepted: "
                             f"{', '.join(sorted({'n', 'split', 'per_class', *option_names()}))}")
        rest = _take(rest, {"n": int, "split": str, "per_class": int}, "synthetic")
        n = rest.get("n", rest["per_class"] * cfg.n_classes if "per_class" in rest else 100 * cfg.n_classes)
        return SyntheticSource(cfg, n, rest.get("split", "train"))
    if kind == "builtin" and target == "demo":
        from vitscope.bundled import DEMO_DATA, DEMO_DATA_DEFAULTS

        allowed = {"n", "split", "per_class"}
        bad = sorted(set(opts) - allowed)
        if bad:
            raise ValueError(f"unknown option(s) {', '.join(bad)} for builtin:demo; accepted: n, per_class, split")
        return open_source(DEMO_DATA, **{**DEMO_DATA_DEFAULTS, **opts})
    if kind == "builtin":
        if target != "samples":
            raise ValueError(f"unknown built-in dataset {target!r}; available: samples, demo")
        from vitscope.data.samples import SampleSource

        _take(opts, {}, "builtin:samples")
        return SampleSource()
    if kind == "hf":
        from vitscope.data.hf import hub_source

        o = _take(opts, {"split": str, "image": str, "label": str, "config": str, "revision": str}, "hf:")
        return hub_source(target, **o)
    return _path_source(target, opts)


def _path_source(target: str, opts: dict[str, Any]):
    p = Path(target).expanduser()
    if _GLOB.search(target) and not p.exists():
        from vitscope.data.webdataset import shard_source

        return shard_source(target, **_take(opts, {"split": str}, "tar shards"))
    if not p.exists():
        parent = p.parent if str(p.parent) not in ("", ".") else Path(".")
        hint = ""
        if parent.is_dir():
            near = sorted(c.name for c in parent.iterdir() if c.name.lower().startswith(p.name[:3].lower()))[:5]
            if near:
                hint = f" (in {parent}: {', '.join(near)})"
        elif not parent.exists():
            hint = f" (its folder {parent} does not exist either)"
        raise FileNotFoundError(f"dataset not found: {p}{hint}")
    if p.is_file():
        suf = p.suffix.lower()
        if suf == ".tar":
            from vitscope.data.webdataset import shard_source

            return shard_source(str(p), **_take(opts, {"split": str}, "tar shards"))
        if suf in VIDEO_EXTENSIONS:
            from vitscope.data.video import video_source

            return video_source(p, **_take(opts, {"stride": int, "max_frames": int, "start": int}, "a video"))
        if suf in LIST_EXTENSIONS:
            from vitscope.data.folders import list_source

            _take(opts, {}, "a list file")
            return list_source(p)
        if is_image_file(p):
            from vitscope.data.folders import FileSource

            _take(opts, {}, "an image file")
            return FileSource([str(p)], description=f"image {p}")
        raise ValueError(f"cannot read {p} as a dataset: expected a folder, a list (.csv/.txt), tar shards, "
                         f"a video or an image")
    # a folder
    from vitscope.data.hf import is_saved_hf_dataset

    if is_saved_hf_dataset(p):
        from vitscope.data.hf import disk_source

        return disk_source(p, **_take(opts, {"split": str, "image": str, "label": str}, "a saved HF dataset"))
    from vitscope.data.webdataset import is_shard_folder

    if is_shard_folder(p):
        from vitscope.data.webdataset import shard_source

        return shard_source(str(p), **_take(opts, {"split": str}, "tar shards"))
    from vitscope.data.folders import folder_source

    return folder_source(p, **_take(opts, {"layout": str}, "an image folder"))


def open_dataset(spec: str | Path, transform=None, on_error: str = "skip", **options) -> ImageDataset:
    """Open any image collection as an :class:`ImageDataset`; ``ds[i] -> (image, label or -1, i)``.

    ``transform`` maps a PIL RGB image to what a batch holds (default: ImageNet eval preprocessing at 224 px).
    ``on_error="skip"`` leaves undecodable files out and lists them in ``ds.skipped``; ``"raise"`` stops.
    A path that does not exist, or a folder without images, raises at once, before any work starts.
    """
    return ImageDataset(open_source(spec, **options), transform=transform, on_error=on_error)
