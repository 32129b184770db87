"""SPair-71k: ``PairAnnotation/<split>/<pair>.json`` (one file per pair), ``JPEGImages/<category>/<name>.jpg``
and ``Layout/large/<trn|val|test>.txt`` (pair names ``<id>-<src>-<trg>:<category>``).

In a pair json: ``src_imname``, ``trg_imname``, ``category``, ``src_kps`` / ``trg_kps`` (N lists ``[x, y]``,
corresponding row by row), ``kps_ids`` (their semantic ids), ``src_bndbox`` / ``trg_bndbox``
(``[x0, y0, x1, y1]``), ``src_imsize`` / ``trg_imsize`` (``[width, height, channels]``), and the
difficulty flags ``viewpoint_variation``, ``scale_variation``, ``truncation``, ``occlusion``, ``mirror``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitscope.data.tasks.base import TaskImages, require

_SPLIT_FILES = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}
FLAGS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "mirror")


@dataclass
class SPairPair:
    """One annotated pair. src_kps, trg_kps (N, 2) float (x, y) in pixels, row k of one matches row k of the
    other; kps_ids (N,) int; src_bbox, trg_bbox (4,) float (x0, y0, x1, y1); src_size, trg_size (width, height)."""

    name: str
    category: str
    src_path: str
    trg_path: str
    src_kps: np.ndarray
    trg_kps: np.ndarray
    kps_ids: np.ndarray
    src_bbox: np.ndarray
    trg_bbox: np.ndarray
    src_size: tuple[int, int]
    trg_size: tuple[int, int]
    flags: dict[str, int] = field(default_factory=dict)

    def pck_threshold(self, alpha: float) -> float:
        """alpha x the larger side of the target box: a keypoint within this distance counts as correct."""
        x0, y0, x1, y1 = self.trg_bbox
        return float(alpha * max(x1 - x0, y1 - y0))


def _kps(v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 2))
    if a.ndim == 2 and a.shape[0] == 2 and a.shape[1] != 2:  # some conversions store (2, N)
        a = a.T
    return a.reshape(-1, 2)


def read_pair(path: str | Path, image_root: str | Path) -> SPairPair:
    d = json.loads(Path(path).read_text())
    missing = [k for k in ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox")
               if k not in d]
    if missing:
        raise ValueError(f"{path} is not a SPair-71k pair annotation (missing {', '.join(missing)})")
    cat = d["category"]
    src, trg = _kps(d["src_kps"]), _kps(d["trg_kps"])
    if len(src) != len(trg):
        raise ValueError(f"{path}: {len(src)} source keypoints but {len(trg)} target keypoints")
    ids = np.asarray([int(k) for k in d.get("kps_ids", range(len(src)))], dtype=np.int64)
    root = Path(image_root)
    size = lambda v: (int(v[0]), int(v[1])) if v else (0, 0)  # noqa: E731 - [width, height, channels]
    return SPairPair(Path(path).stem, cat, str(root / cat / d["src_imname"]), str(root / cat / d["trg_imname"]),
                     src, trg, ids, np.asarray(d["src_bndbox"], np.float64), np.asarray(d["trg_bndbox"], np.float64),
                     size(d.get("src_imsize")), size(d.get("trg_imsize")),
                     {k: int(d[k]) for k in FLAGS if k in d})


class SPair(TaskImages):
    """``ds[i]`` is a :class:`SPairPair`, in the order of the layout file (or file names)."""

    def __init__(self, root: str | Path, split: str = "test", categories: list[str] | None = None,
                 max_pairs_per_category: int | None = None) -> None:
        root = require(Path(root), "SPair-71k folder")
        if split not in _SPLIT_FILES:
            raise ValueError(f"split must be one of {sorted(_SPLIT_FILES)}, got {split!r}")
        ann_dir = require(root / "PairAnnotation" / split if (root / "PairAnnotation" / split).is_dir()
                          else root / "PairAnnotation" / _SPLIT_FILES[split], "SPair-71k pair annotations")
        layout = root / "Layout" / "large" / f"{_SPLIT_FILES[split]}.txt"
        if layout.is_file():
            names = [ln.strip() for ln in layout.read_text().splitlines() if ln.strip()]
        else:
            names = sorted(p.stem for p in ann_dir.glob("*.json"))
        if not names:
            raise ValueError(f"no pairs listed for split {split!r} in {root}")
        per_cat: dict[str, int] = {}
        self.pairs = []
        for n in names:
            cat = n.rsplit(":", 1)[1] if ":" in n else None
            if categories is not None and cat is not None and cat not in categories:
                continue
            pair = read_pair(require(ann_dir / f"{n}.json", "SPair-71k pair file"), root / "JPEGImages")
            if categories is not None and pair.category not in categories:
                continue
            if max_pairs_per_category is not None and per_cat.get(pair.category, 0) >= max_pairs_per_category:
                continue
            per_cat[pair.category] = per_cat.get(pair.category, 0) + 1
            self.pairs.append(pair)
        self.categories = sorted(per_cat)
        self.description = f"SPair-71k {split} ({len(self.pairs)} pairs)"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> SPairPair:
        return self.pairs[i]

    def image_paths(self) -> list[str]:
        """Every image once (sources and targets), in order of first use."""
        return list(dict.fromkeys(p for pair in self.pairs for p in (pair.src_path, pair.trg_path)))


def load_spair(root: str | Path, split: str = "test", categories: list[str] | None = None,
               max_pairs_per_category: int | None = None) -> SPair:
    """Read SPair-71k pairs of a split (``max_pairs_per_category=20`` is walmer2023's evaluation subset)."""
    return SPair(root, split, categories, max_pairs_per_category)
