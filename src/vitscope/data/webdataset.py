"""Webdataset tar shards in the CLIP-benchmark layout, read with Python's ``tarfile``.

Layout (as written by clip_benchmark's webdataset converter)::

    root/classnames.txt                          one class name per line (optional)
    root/zeroshot_classification_templates.txt   prompt templates (optional; kept in ``source.templates``)
    root/<split>/0.tar, 1.tar, ...               samples: ``<key>.webp|.jpg|.png`` + ``<key>.cls`` (label as text)

The spec is a shard folder, a root with split folders (``?split=test``), one ``.tar``, a glob (``*.tar``)
or a brace pattern (``shard-{000..009}.tar``). Shards are indexed once (member offsets), so any item can be
read directly, in any DataLoader worker; a shard cut short keeps the samples before the cut (with a warning).
"""
from __future__ import annotations

import glob
import os
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from vitscope.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode_image
from vitscope.data.folders import choose_split, natural_key

# image member extensions, in order of preference when a sample has several
_IMAGE_EXTS = ("webp", "jpg", "jpeg", "png", "ppm", "bmp", "tif", "tiff", "gif")
_LABEL_EXTS = ("cls", "label", "target")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's split: key = up to the first dot of the name


def expand_braces(pattern: str) -> list[str]:
    """``a{0..2}b`` -> a0b a1b a2b (zero padding kept); ``{x,y}`` -> both; nested and repeated braces work."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        items = [str(k).zfill(width) for k in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    out = []
    for it in items:
        out += expand_braces(pattern[: m.start()] + it + pattern[m.end():])
    return out


def _tars(folder: Path) -> list[Path]:
    tars = (p for p in folder.iterdir() if p.is_file() and p.suffix == ".tar")
    return sorted(tars, key=lambda p: natural_key(p.name))


def is_shard_folder(p: Path) -> bool:
    """A folder of ``.tar`` shards, or a root whose split sub-folders hold them (and no loose images)."""
    if _tars(p):
        return True
    if any(c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS for c in p.iterdir()):
        return False
    subs = [c for c in p.iterdir() if c.is_dir()]
    return bool(subs) and all(_tars(c) for c in subs if not c.name.startswith("."))


def resolve_shards(spec: str, split: str | None = None) -> tuple[list[Path], Path]:
    """The shard files of a spec, in order, and the folder where ``classnames.txt`` is looked for."""
    p = Path(spec).expanduser()
    if p.is_dir():
        shards = _tars(p)
        if shards:
            if split is not None:
                raise ValueError(f"{p} holds shards directly; the split option applies to a root with split folders")
            return shards, p
        splits = sorted(c.name for c in p.iterdir() if c.is_dir() and _tars(c))
        if not splits:
            raise ValueError(f"no .tar shards in {p} or its sub-folders")
        return _tars(p / choose_split(splits, split, str(p))), p
    if p.is_file():
        return [p], p.parent
    names = []
    for pat in expand_braces(str(p)):
        names += sorted(glob.glob(pat), key=natural_key) if glob.has_magic(pat) else [pat]
    missing = [n for n in names if not Path(n).is_file()]
    if not names or len(missing) == len(names):
        raise FileNotFoundError(f"no shard matches {spec}")
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(names)} shards of {spec} are missing (first: {missing[0]})")
    return [Path(n) for n in names], Path(names[0]).parent


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _find(name: str, *folders: Path) -> Path | None:
    for f in folders:
        if (f / name).is_file():
            return f / name
    return None


class ShardSource:
    """Samples of webdataset shards: ``ids`` are ``shard.tar#key``; images decoded from their tar member."""

    def __init__(self, shards: list[Path], meta_dir: Path) -> None:
        self.shards = [str(s) for s in shards]
        self.members: list[tuple[int, int, int, str]] = []  # shard, offset, size, extension
        labels, ids = [], []
        for si, shard in enumerate(self.shards):
            for key, (img, lab) in self._index(shard).items():
                self.members.append((si, img[0], img[1], img[2]))
                ids.append(f"{shard}#{key}")
                labels.append(lab)
        if not ids:
            raise ValueError(f"no images found in {len(self.shards)} shard(s) ({self.shards[0]} ...); expected "
                             f"members like KEY.jpg / KEY.webp / KEY.png with KEY.cls")
        self.ids = ids
        self.paths = ids
        self.labels = np.asarray(labels, dtype=np.int64)
        cn = _find("classnames.txt", meta_dir, meta_dir.parent)
        if cn is not None:
            self.classes = _read_lines(cn)
        else:
            top = int(self.labels.max())
            self.classes = [str(k) for k in range(top + 1)] if top >= 0 else []
        tp = _find("zeroshot_classification_templates.txt", meta_dir, meta_dir.parent)
        self.templates = _read_lines(tp) if tp is not None else []
        self.description = f"{len(self.shards)} tar shard(s) at {meta_dir}"
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    @staticmethod
    def _index(shard: str) -> dict[str, tuple[tuple[int, int, str] | None, int]]:
        """key -> ((offset, size, ext) of the image member, label) for one shard, in tar order."""
        images: dict[str, tuple[int, int, str]] = {}
        labels: dict[str, int] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    km = _KEY_EXT.match(m.name)
                    if not km:
                        continue
                    key, ext = km.group(1), km.group(2).lower()
                    if key not in images and key not in labels:
                        order.append(key)
                    if ext in _IMAGE_EXTS:
                        prev = images.get(key)
                        if prev is None or _IMAGE_EXTS.index(ext) < _IMAGE_EXTS.index(prev[2]):
                            images[key] = (m.offset_data, m.size, ext)
                    elif ext in _LABEL_EXTS:
                        raw = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                        try:
                            labels[key] = int(raw.split()[0]) if raw else -1
                        except ValueError:
                            labels[key] = -1
        except (tarfile.TarError, EOFError, OSError) as e:
            if not order:
                raise ValueError(f"{shard} is not a readable tar file: {e}") from e
            warnings.warn(f"{shard} is cut short or damaged ({e}); keeping the {len(order)} samples before it",
                          stacklevel=3)
        return {k: (images[k], labels.get(k, -1)) for k in order if k in images}

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_handles"] = {}  # open files stay in their process
        return d

    def load(self, i: int) -> Image.Image:
        si, offset, size, ext = self.members[i]
        if self._pid != os.getpid():  # a forked DataLoader worker: never share a file offset with the parent
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(si)
        if f is None:
            f = self._handles[si] = open(self.shards[si], "rb")  # noqa: SIM115 - kept open for later reads
        f.seek(offset)
        data = f.read(size)
        if len(data) < size:
            raise ImageDecodeError(f"{self.ids[i]}.{ext} is cut short in its shard", "truncated")
        return decode_image(data, f"{self.ids[i]}.{ext}")


def shard_source(spec: str, split: str | None = None) -> ShardSource:
    shards, meta_dir = resolve_shards(spec, split)
    return ShardSource(shards, meta_dir)
