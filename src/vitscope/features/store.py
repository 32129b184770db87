"""The on-disk feature store and its lazy reader.

Layout of one store (one directory per model x weights x preprocessing x dataset x split)::

    DIR/manifest.json                    what, from what, and whether it is complete
    DIR/labels.npy                       int64 (N,), -1 for unlabelled or skipped samples
    DIR/arrays/<site>/<layer>.<reduction>.npy      e.g. arrays/resid_post/11.cls.npy   (N, D)
    DIR/arrays/<site>/<reduction>.npy               global sites, e.g. arrays/ln_final/mean.npy
    DIR/progress/rank-<r>.json           per-rank progress while incomplete (removed when complete)

Every array is a plain ``.npy`` file (header + C-order rows) written in place, row ``i`` = sample ``i``;
``np.load(path, mmap_mode="r")`` maps it without reading it. Rows of skipped samples are zeros and are
listed in ``manifest["skipped"]`` (``store.valid`` is the mask).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.features.plan import canonical_site
from vitscope.features.progress import PROGRESS_DIR, covered, read_all

MANIFEST = "manifest.json"
FORMAT = "vitscope.features"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "float16"}


class IncompatibleStoreError(ValueError):
    """The output folder holds a store computed from another model, weights, preprocessing or dataset."""


class IncompleteStoreError(ValueError):
    """The store is not finished (the extraction was interrupted or is still running)."""


def array_file(site: str, layer: int | None, reduction: str) -> str:
    return f"arrays/{site}/{reduction}.npy" if layer is None else f"arrays/{site}/{layer}.{reduction}.npy"


def read_manifest(path: str | Path) -> dict:
    p = Path(path) / MANIFEST
    if not p.exists():
        raise FileNotFoundError(f"{path} is not a vitscope feature store (no {MANIFEST}); "
                                "create one with `vitscope extract` or vitscope.features.extract_features")
    m = json.loads(p.read_text())
    if m.get("format") != FORMAT:
        raise ValueError(f"{p} is not a vitscope feature-store manifest (format={m.get('format')!r})")
    if int(m.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{p} was written by a newer vitscope (store format {m['format_version']}); upgrade vitscope")
    return m


def create_arrays(store_dir: Path, manifest: dict) -> None:
    """Create every array file (header + zero-filled, sparse where the file system allows) and labels.npy."""
    store_dir = Path(store_dir)
    for a in manifest["arrays"]:
        p = store_dir / a["file"]
        p.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(p, mode="w+", dtype=np.dtype(manifest["storage_dtype"]),
                                       shape=tuple(a["shape"]))
        del mm
    mm = np.lib.format.open_memmap(store_dir / "labels.npy", mode="w+", dtype=np.int64, shape=(manifest["n"],))
    mm[:] = -1
    mm.flush()
    del mm


def remove_store(store_dir: Path) -> None:
    """Delete a vitscope store's files (only the names a store uses)."""
    store_dir = Path(store_dir)
    for name in ("arrays", PROGRESS_DIR):
        shutil.rmtree(store_dir / name, ignore_errors=True)
    for name in (MANIFEST, "labels.npy"):
        (store_dir / name).unlink(missing_ok=True)


class FeatureStore:
    """Lazy, read-only access to a feature store.

    ``store["resid_post", 11, "cls"]`` (or ``store.get("resid_post", 11, "cls")``) is a read-only
    ``np.memmap`` of shape (N, ...): nothing is read until you index it. Global sites take no layer:
    ``store["ln_final", "cls"]``. ``store.load(...)`` reads one array into memory, optionally only valid rows.
    """

    def __init__(self, path: str | Path, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._index = {(a["site"], a["layer"], a["reduction"]): a for a in manifest["arrays"]}
        self._open: dict[tuple, np.memmap] = {}

    # ------------------------------------------------------------------ what is inside
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    def __len__(self) -> int:
        return self.n

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def reductions(self) -> list[str]:
        return list(self.manifest["reductions"])

    @property
    def dtype(self) -> str:
        """The requested dtype (float32, float16 or bfloat16); see ``storage_dtype`` for what is on disk."""
        return self.manifest["dtype"]

    @property
    def storage_dtype(self) -> np.dtype:
        return np.dtype(self.manifest["storage_dtype"])

    @property
    def ids(self) -> list[str] | None:
        return self.manifest.get("ids")

    @property
    def paths(self) -> list[str] | None:
        return self.manifest.get("paths")

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes") or [])

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        return self.manifest.get("preprocessing")

    @property
    def skipped(self) -> list[dict]:
        """Samples left out (bad files): dicts with index, id, reason, kind."""
        if self.complete:
            return list(self.manifest.get("skipped", []))
        _, sk = read_all(self.path)
        return [{"index": i, **r} for i, r in sorted(sk.items())]

    @property
    def valid(self) -> np.ndarray:
        """bool (N,): False for skipped samples (and, in an incomplete store, for rows not written yet)."""
        mask = np.ones(self.n, dtype=bool)
        if not self.complete:
            done, _ = read_all(self.path)
            mask[:] = False
            for a, b in done:
                mask[a:b] = True
        for r in self.skipped:
            mask[int(r["index"])] = False
        return mask

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,), -1 where a sample has no label or was skipped."""
        return np.load(self.path / "labels.npy", mmap_mode="r")

    def keys(self) -> list[tuple[str, int | None, str]]:
        return list(self._index)

    def __iter__(self) -> Iterator[tuple[str, int | None, str]]:
        return iter(self._index)

    def __contains__(self, key) -> bool:
        try:
            self._key(key)
        except KeyError:
            return False
        return True

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(a["shape"])) * self.storage_dtype.itemsize for a in self.manifest["arrays"])

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"FeatureStore({str(self.path)!r}, {state}, N={self.n}, model={self.model.get('name')!r}, "
                f"sites={self.sites}, layers={_short(self.layers)}, reductions={self.reductions}, "
                f"dtype={self.dtype})")

    # ------------------------------------------------------------------ reading
    def _key(self, key) -> tuple[str, int | None, str]:
        if not isinstance(key, tuple) or len(key) not in (2, 3):
            raise KeyError(f"index a store with (site, layer, reduction) or (site, reduction) for global sites, "
                           f"got {key!r}")
        if len(key) == 2:
            site, reduction = key
            layer = None
        else:
            site, layer, reduction = key
        try:
            name, is_block, fixed = canonical_site(str(site))
        except ValueError as e:
            raise KeyError(str(e)) from None
        if fixed is not None:
            if layer is not None and int(layer) != fixed:
                raise KeyError(f"site {site!r} names block {fixed} but layer {layer} was given")
            layer = fixed
        if is_block and layer is None:
            raise KeyError(f"site {name!r} is per block: give a layer, e.g. store[{name!r}, {self.layers[-1]}, "
                           f"{reduction!r}]")
        if layer is not None:
            layer = int(layer)
            if layer < 0 and self.manifest.get("model", {}).get("config", {}).get("depth"):
                layer += int(self.manifest["model"]["config"]["depth"])
        k = (name, layer, str(reduction))
        if k not in self._index:
            raise KeyError(f"no array {k} in this store; it holds sites {self.sites}, layers {_short(self.layers)}, "
                           f"reductions {self.reductions}")
        return k

    def __getitem__(self, key) -> np.memmap:
        k = self._key(key)
        if k not in self._open:
            self._open[k] = np.load(self.path / self._index[k]["file"], mmap_mode="r")
        return self._open[k]

    def get(self, site: str, layer: int | None = None, reduction: str = "cls") -> np.memmap:
        """The lazy array of (site, layer, reduction); ``layer`` is None for global sites (ln_final, embed)."""
        return self[(site, reduction)] if layer is None else self[(site, layer, reduction)]

    def load(self, site: str, layer: int | None = None, reduction: str = "cls", valid_only: bool = False,
             dtype=None) -> np.ndarray:
        """Read one whole array into memory (the only reader that does), optionally only valid rows / as ``dtype``."""
        arr = self.get(site, layer, reduction)
        out = np.asarray(arr[self.valid]) if valid_only else np.array(arr)
        return out.astype(dtype, copy=False) if dtype is not None else out

    def file(self, site: str, layer: int | None = None, reduction: str = "cls") -> Path:
        k = self._key((site, reduction) if layer is None else (site, layer, reduction))
        return self.path / self._index[k]["file"]


def _short(xs: list) -> str:
    if len(xs) > 6 and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}..{xs[-1]}"
    return str(xs)


def open_store(path: str | Path, allow_incomplete: bool = False) -> FeatureStore:
    """Open a feature store for lazy reading; refuses an incomplete one unless ``allow_incomplete=True``."""
    path = Path(path)
    manifest = read_manifest(path)
    store = FeatureStore(path, manifest)
    if not store.complete and not allow_incomplete:
        done, _ = read_all(path)
        raise IncompleteStoreError(
            f"{path} is an incomplete feature store ({covered(done)} of {store.n} samples written); run the same "
            "extraction again to finish it, or open it with allow_incomplete=True to read the rows written so far")
    return store
