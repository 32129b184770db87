"""Revisited Oxford 5k / Paris 6k: ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` beside a ``jpg/`` folder.

The ground truth is a pickle: ``{"imlist": [db names], "qimlist": [query names], "gnd": [per query
{"bbx": [x0, y0, x1, y1], "easy": [db indices], "hard": [...], "junk": [...]}]}``. A pickle can run code when
loaded, so it is read with :func:`safe_load_pickle`, which accepts only plain containers, numbers, strings,
bytes and NumPy arrays, and refuses anything else with :class:`UnsafePickleError`.

Protocols (Radenovic et al. 2018): easy: positives easy, ignored junk + hard; medium: positives easy + hard,
ignored junk; hard: positives hard, ignored junk + easy.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitscope.data.tasks.base import TaskImages, require

# (module, name) pairs a ground-truth pickle may reference: NumPy array / dtype / scalar reconstruction,
# the bytes helper protocol-2 pickles use, and set / frozenset.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset"),
}


def gnd_choice_message(root: Path, found: list[Path], option: str = "load_revisited(root, name)") -> str:
    """What to say when a folder holds no ground truth or several: which ones, and how to choose."""
    if not found:
        return f"no ground truth (gnd_<name>.pkl) in {root}; give the Revisited folder (roxford5k, rparis6k)"
    names = ", ".join(p.stem[len("gnd_"):] for p in found)
    return f"{root} holds {len(found)} ground truths ({names}); choose one with {option}"


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle referenced something other than plain data; it was not loaded."""


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, f, source: str) -> None:
        super().__init__(f, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.source} refers to {module}.{name}; only plain containers, numbers, strings "
                                f"and NumPy arrays are accepted in a ground-truth pickle, so it was not loaded")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source} uses persistent ids; refused")


def safe_load_pickle(path_or_bytes: str | Path | bytes, source: str | None = None):
    """Load a pickle of plain data (dict, list, tuple, set, str, bytes, int, float, bool, None, NumPy arrays)."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, source = bytes(path_or_bytes), source or "<bytes>"
    else:
        p = require(Path(path_or_bytes), "pickle file")
        data, source = p.read_bytes(), source or str(p)
    try:
        return _SafeUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise ValueError(f"{source} is not a readable pickle: {e}") from e


def _indices(v) -> np.ndarray:
    if v is None:
        return np.zeros(0, np.int64)
    return np.asarray(v, dtype=np.int64).reshape(-1)


@dataclass
class RevisitedQuery:
    """A query: its image name, its box (x0, y0, x1, y1) and the database indices of each kind of positive."""

    name: str
    bbx: np.ndarray
    easy: np.ndarray
    hard: np.ndarray
    junk: np.ndarray

    def positives(self, protocol: str = "medium") -> np.ndarray:
        pos = {"easy": self.easy, "medium": np.concatenate([self.easy, self.hard]), "hard": self.hard}
        return pos[_check(protocol)]

    def ignored(self, protocol: str = "medium") -> np.ndarray:
        return {"easy": np.concatenate([self.junk, self.hard]), "medium": self.junk,
                "hard": np.concatenate([self.junk, self.easy])}[_check(protocol)]


def _check(protocol: str) -> str:
    if protocol not in ("easy", "medium", "hard"):
        raise ValueError(f"protocol must be 'easy', 'medium' or 'hard', got {protocol!r}")
    return protocol


class Revisited(TaskImages):
    """Database ``imlist`` and ``queries`` (:class:`RevisitedQuery`); images are ``jpg/<name>.jpg``."""

    def __init__(self, root: str | Path, name: str | None = None, image_dir: str = "jpg", ext: str = ".jpg") -> None:
        root = Path(root)
        if root.is_file():
            gnd_file, root = root, root.parent
        else:
            require(root, "Revisited dataset folder")
            if name is None:
                found = sorted(root.glob("gnd_*.pkl"))
                if len(found) != 1:
                    raise ValueError(gnd_choice_message(root, found))
                gnd_file = found[0]
            else:
                gnd_file = require(root / f"gnd_{name}.pkl", "Revisited ground truth")
        cfg = safe_load_pickle(gnd_file)
        if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
            raise ValueError(f"{gnd_file} is not a Revisited ground truth (expected keys imlist, qimlist, gnd)")
        if len(cfg["gnd"]) != len(cfg["qimlist"]):
            raise ValueError(f"{gnd_file}: {len(cfg['gnd'])} ground-truth entries for {len(cfg['qimlist'])} queries")
        self.name = gnd_file.stem[len("gnd_"):] if gnd_file.stem.startswith("gnd_") else gnd_file.stem
        self.root, self.image_dir, self.ext = root, root / image_dir, ext
        self.imlist = [str(s) for s in cfg["imlist"]]
        n = len(self.imlist)
        self.queries = []
        for q, g in zip(cfg["qimlist"], cfg["gnd"]):
            item = RevisitedQuery(str(q), np.asarray(g.get("bbx", [np.nan] * 4), np.float64).reshape(-1),
                                  _indices(g.get("easy")), _indices(g.get("hard")), _indices(g.get("junk")))
            for kind in ("easy", "hard", "junk"):
                bad = getattr(item, kind)[(getattr(item, kind) < 0) | (getattr(item, kind) >= n)]
                if len(bad):
                    raise ValueError(f"{gnd_file}: query {q} lists {kind} index {int(bad[0])} "
                                     f"outside the {n} database images")
            self.queries.append(item)
        self.description = f"Revisited {self.name} ({n} images, {len(self.queries)} queries)"

    def __len__(self) -> int:
        return len(self.imlist)

    def db_path(self, i: int) -> str:
        return str(self.image_dir / (self.imlist[i] + self.ext))

    def query_path(self, q: int) -> str:
        return str(self.image_dir / (self.queries[q].name + self.ext))

    def image_paths(self) -> list[str]:
        """The database images (queries: :meth:`query_paths`)."""
        return [self.db_path(i) for i in range(len(self.imlist))]

    def query_paths(self) -> list[str]:
        return [self.query_path(q) for q in range(len(self.queries))]

    def query_dataset(self, transform=None, on_error: str = "skip", crop: bool = True):
        """The query images as an ImageDataset, cropped to their box (the protocol's default) unless ``crop=False``."""
        from vitscope.data.datasets import ImageDataset

        return ImageDataset(QuerySource(self, crop), transform=transform, on_error=on_error)

    def image_loaders(self, crop: bool = True) -> tuple[list, list]:
        """Zero-argument image loaders of the database and of the queries (cropped to their box when ``crop``)."""
        from functools import partial

        from vitscope.data.decode import load_image

        qs = QuerySource(self, crop)
        return [partial(load_image, p) for p in self.image_paths()], [partial(qs.load, i) for i in range(len(qs.paths))]


class QuerySource:
    """Query images, optionally cropped to the query box."""

    def __init__(self, gt: Revisited, crop: bool) -> None:
        self.paths = gt.query_paths()
        self.ids = self.paths
        self.boxes = [q.bbx for q in gt.queries]
        self.crop = crop
        self.labels = np.full(len(self.paths), -1, dtype=np.int64)
        self.classes: list[str] = []
        self.description = f"{gt.description} queries"

    def load(self, i: int):
        from vitscope.data.decode import load_image

        img = load_image(self.paths[i])
        return crop_to_box(img, self.boxes[i]) if self.crop else img


def crop_to_box(img, bbx):
    """A query image cropped to its box (x0, y0, x1, y1), rounded to whole pixels; unchanged without a box."""
    b = np.asarray(bbx if bbx is not None else [], dtype=np.float64).reshape(-1)
    if len(b) != 4 or not np.isfinite(b).all():
        return img
    return img.crop(tuple(int(round(v)) for v in b))


class ImageLoader:
    """A zero-argument loader of one image (decoded when called), optionally cropped to a box; ``id`` names it in
    a skip report."""

    def __init__(self, id: str, path: str | None = None, array: np.ndarray | None = None, box=None) -> None:
        self.id, self.path, self.array, self.box = id, path, array, box

    def __call__(self):
        from PIL import Image

        from vitscope.data.decode import load_image

        img = load_image(self.path) if self.array is None else Image.fromarray(self.array)
        return img if self.box is None else crop_to_box(img, self.box)


def revisited_loaders(gt, crop: bool = True) -> tuple[list[ImageLoader], list[ImageLoader]]:
    """Image loaders of the database and of the queries (cropped to their box when ``crop``, the protocol).

    ``gt``: a :class:`Revisited` (files), or the synthetic benchmark's retrieval set (images in memory,
    ``vitscope.data.synthetic.retrieval_set``)."""
    if isinstance(gt, Revisited):
        db = [ImageLoader(p, p) for p in gt.image_paths()]
        qs = [ImageLoader(p, p, box=q.bbx if crop else None) for p, q in zip(gt.query_paths(), gt.queries)]
        return db, qs
    db = [ImageLoader(n, array=a) for n, a in zip(gt.db_names, gt.db_images)]
    qs = [ImageLoader(n, array=a, box=g["bbx"] if crop else None)
          for n, a, g in zip(gt.query_names, gt.query_images, gt.gnd)]
    return db, qs


def revisited_queries(gt) -> list:
    """The ground truth of each query (:class:`RevisitedQuery` or a ``gnd`` dict), for the scorer."""
    return list(gt.queries) if isinstance(gt, Revisited) else list(gt.gnd)


def revisited_description(gt) -> str:
    if isinstance(gt, Revisited):
        return gt.description
    return f"the synthetic Revisited set ({len(gt.db_images)} images, {len(gt.query_images)} queries)"


def load_revisited(root: str | Path, name: str | None = None) -> Revisited:
    """Read ``gnd_<name>.pkl`` from a folder (or the pkl path itself) with the images in ``jpg/``."""
    return Revisited(root, name)
