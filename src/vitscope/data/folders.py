"""Image files on disk: a folder of class sub-folders (ImageFolder), a flat folder, a CSV / text list."""
from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from vitscope.data.decode import IMAGE_EXTENSIONS, is_image_file, load_image

_EXT_HINT = ", ".join(sorted(e for e in IMAGE_EXTENSIONS if e in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif"}))


class FileSource:
    """Samples that are image files. Labels -1 where unknown; classes indexed by label.

    ``task``: the annotated structure the files come from (COCO, PartImageNet, ...), for analyses that read
    its annotations (``masks(i, level)``); None for plain image collections.
    """

    def __init__(self, paths: list[str], labels=None, classes: list[str] | None = None,
                 description: str = "files", task=None) -> None:
        self.paths = [str(p) for p in paths]
        self.ids = self.paths
        self.labels = (np.full(len(self.paths), -1, dtype=np.int64) if labels is None
                       else np.asarray(labels, dtype=np.int64))
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.labels)} labels for {len(self.paths)} files")
        self.classes = list(classes or [])
        self.description = description
        self.task = task

    def load(self, i: int) -> Image.Image:
        return load_image(self.paths[i])


def choose_split(splits: list[str], split: str | None, where: str) -> str:
    """The split ``?split=NAME`` asks for among ``splits`` (the only one when not asked); ValueError otherwise."""
    if split is None:
        if len(splits) > 1:
            raise ValueError(f"{where} has several splits ({', '.join(splits)}); choose one with ?split=NAME")
        return splits[0]
    if split not in splits:
        raise ValueError(f"split {split!r} not found in {where}; available: {', '.join(splits)}")
    return split


def natural_key(text: str) -> list:
    """Sort key that orders numbers by value: ``frame2`` before ``frame10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _walk_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively, following links, hidden entries skipped), in natural order
    of the relative path (``frame2`` before ``frame10``)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    return sorted(found, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def folder_source(root: str | Path, layout: str = "auto") -> FileSource:
    """A folder of images: ``layout="imagefolder"`` (class = first-level sub-folder), ``"flat"`` (no labels,
    every image under the folder) or ``"auto"`` (ImageFolder when sub-folders hold images, else flat)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if layout not in ("auto", "imagefolder", "flat"):
        raise ValueError(f"layout must be 'auto', 'imagefolder' or 'flat', got {layout!r}")
    dirs = _class_dirs(root)
    per_class = {d.name: _walk_images(d) for d in dirs} if layout != "flat" else {}
    if layout == "auto":
        layout = "imagefolder" if any(per_class.values()) else "flat"
    if layout == "flat":
        files = _walk_images(root)
        if not files:
            raise ValueError(f"no images found in {root} (looked for {_EXT_HINT}, ... files)")
        return FileSource([str(p) for p in files], description=f"flat folder {root}")
    top = [p for p in root.iterdir() if p.is_file() and is_image_file(p)]
    if top:
        warnings.warn(f"{root}: {len(top)} images at the top level are ignored (ImageFolder layout: one "
                      f"sub-folder per class); use layout='flat' to read every image without labels", stacklevel=3)
    classes = [d.name for d in dirs]
    paths, labels = [], []
    for k, name in enumerate(classes):
        paths += [str(p) for p in per_class[name]]
        labels += [k] * len(per_class[name])
    if not paths:
        raise ValueError(f"no images found in the class folders of {root}")
    return FileSource(paths, labels, classes, description=f"image folder {root}")


def _parse_label(v: str) -> int | str:
    v = v.strip()
    try:
        return int(v)
    except ValueError:
        return v


_HEADER_NAMES = {"path", "file", "filename", "filepath", "file_name", "image", "img", "image_path",
                 "label", "class", "target", "category", "class_name", "y"}


def _read_rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if path.suffix.lower() in (".csv", ".tsv") or any("," in ln or "\t" in ln for ln in lines[:50]):
        delim = "\t" if path.suffix.lower() == ".tsv" or (lines and "\t" in lines[0] and "," not in lines[0]) else ","
        rows = [r for r in csv.reader(lines, delimiter=delim)]
    else:  # "path label" or "path" per line; a path may contain spaces when it has no label
        rows = []
        for ln in lines:
            ln = ln.strip()
            parts = ln.rsplit(None, 1)
            if len(parts) == 2 and not (path.parent / ln).exists():
                rows.append(parts)
            else:
                rows.append([ln])
    if rows and {c.strip().lower() for c in rows[0]} & _HEADER_NAMES and not (path.parent / rows[0][0]).exists():
        rows = rows[1:]
    return rows


def list_source(list_file: str | Path) -> FileSource:
    """A CSV or text file of ``path[,label]`` rows (header optional, paths relative to the file's folder).

    Labels are integers or class names; class names become labels in sorted order. Listed files that do not
    exist are skipped at read time (reason "missing"); when none exists this is an error before any work starts.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"list file not found: {list_file}")
    rows = _read_rows(list_file)
    if not rows:
        raise ValueError(f"{list_file} lists no images")
    base = list_file.parent
    paths = [str(Path(r[0].strip()) if Path(r[0].strip()).is_absolute() else base / r[0].strip()) for r in rows]
    raw = [_parse_label(r[1]) if len(r) > 1 and r[1].strip() != "" else -1 for r in rows]
    if any(isinstance(v, str) for v in raw):
        names = sorted({v for v in raw if isinstance(v, str)})
        if any(isinstance(v, int) and v != -1 for v in raw):
            raise ValueError(f"{list_file} mixes integer labels and class names; use one or the other")
        classes = names
        labels = [classes.index(v) if isinstance(v, str) else -1 for v in raw]
    else:
        labels = raw
        top = max(labels)
        classes = [str(k) for k in range(top + 1)] if top >= 0 else []
    if not any(Path(p).exists() for p in paths):
        raise FileNotFoundError(f"none of the {len(paths)} files listed in {list_file} exists (first: {paths[0]}); "
                                f"relative paths are read from the list file's folder {base}")
    return FileSource(paths, labels, classes, description=f"list {list_file}")
