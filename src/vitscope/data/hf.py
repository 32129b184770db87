"""Hugging Face ``datasets``: a dataset saved with ``save_to_disk``, or a hub name (``hf:NAME``).

``datasets`` is an optional extra (``pip install 'vitscope[hf]'``), imported only here. Images are read
undecoded from the Arrow table and decoded by vitscope, so a bad image is skipped like a bad file.
The image column is the one with an ``Image`` feature (or ``?image=COLUMN``); the label column is the
``ClassLabel`` one, else ``label``/``labels``/``fine_label``/``target`` (or ``?label=COLUMN``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from vitscope.data.decode import ImageDecodeError, decode_image, load_image
from vitscope.data.folders import choose_split

_LABEL_NAMES = ("label", "labels", "fine_label", "target", "cls", "class")
_IMAGE_NAMES = ("image", "img", "jpg", "png", "webp", "pixel_values")


def _datasets():
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError("reading Hugging Face datasets needs the 'datasets' package: "
                           "pip install 'vitscope[hf]'") from e
    return datasets


def is_saved_hf_dataset(p: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (p / "dataset_dict.json").is_file() or ((p / "dataset_info.json").is_file() and (p / "state.json").is_file())


def _pick_split(dd, split: str | None, where: str):
    split = choose_split(list(dd.keys()), split, where)
    return dd[split], split


class HFSource:
    """Rows of a ``datasets.Dataset``; ``ids`` are ``<where>[<split>]#<row>``."""

    def __init__(self, ds, where: str, split: str | None, image: str | None = None, label: str | None = None) -> None:
        datasets = _datasets()
        feats = ds.features
        if image is None:
            cands = [c for c, f in feats.items() if isinstance(f, datasets.Image)]
            cands = cands or [c for c in _IMAGE_NAMES if c in feats]
            if not cands:
                raise ValueError(f"no image column in {where} (columns: {', '.join(feats)}); "
                                 f"name it with ?image=COLUMN")
            image = cands[0]
        elif image not in feats:
            raise ValueError(f"image column {image!r} not in {where}; columns: {', '.join(feats)}")
        if isinstance(feats[image], datasets.Image):
            ds = ds.cast_column(image, datasets.Image(decode=False))
        if label is None:
            cl = [c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)]
            label = cl[0] if cl else next((c for c in _LABEL_NAMES if c in feats), None)
        elif label not in feats:
            raise ValueError(f"label column {label!r} not in {where}; columns: {', '.join(feats)}")
        n = len(ds)
        if n == 0:
            raise ValueError(f"{where} [{split}] has no rows")
        self.classes: list[str] = []
        if label is None:
            self.labels = np.full(n, -1, dtype=np.int64)
        elif isinstance(feats[label], datasets.ClassLabel):
            self.labels = np.asarray(ds[label], dtype=np.int64)
            self.classes = list(feats[label].names)
        else:
            raw = ds[label]
            if raw and isinstance(raw[0], str):
                self.classes = sorted(set(raw))
                index = {c: k for k, c in enumerate(self.classes)}
                self.labels = np.asarray([index[v] for v in raw], dtype=np.int64)
            else:
                self.labels = np.asarray([-1 if v is None else int(v) for v in raw], dtype=np.int64)
                top = int(self.labels.max())
                self.classes = [str(k) for k in range(top + 1)] if top >= 0 else []
        self.ds, self.image_column, self.label_column = ds, image, label
        tag = f"{where}[{split}]" if split else where
        self.ids = [f"{tag}#{i}" for i in range(n)]
        self.paths = self.ids
        self.description = f"Hugging Face dataset {tag}"

    def load(self, i: int) -> Image.Image:
        v = self.ds[i][self.image_column]
        if isinstance(v, Image.Image):
            return v.convert("RGB")
        if isinstance(v, dict):
            if v.get("bytes"):
                return decode_image(v["bytes"], self.ids[i])
            if v.get("path"):
                return load_image(v["path"])
        if isinstance(v, (bytes, bytearray)):
            return decode_image(bytes(v), self.ids[i])
        if isinstance(v, str):
            return load_image(v)
        if v is None:
            raise ImageDecodeError(f"{self.ids[i]} has no image", "empty")
        arr = np.asarray(v)
        if arr.ndim in (2, 3):
            return to_pil(arr)
        raise ImageDecodeError(f"{self.ids[i]}: cannot read a {type(v).__name__} as an image", "not_image")


def disk_source(path: str | Path, split: str | None = None, image: str | None = None,
                label: str | None = None) -> HFSource:
    """A dataset folder written by ``save_to_disk`` (a Dataset, or a DatasetDict with ``?split=``)."""
    datasets = _datasets()
    path = Path(path)
    obj = datasets.load_from_disk(str(path))
    if isinstance(obj, datasets.DatasetDict):
        obj, split = _pick_split(obj, split, str(path))
    elif split is not None:
        raise ValueError(f"{path} holds one split; drop ?split={split}")
    return HFSource(obj, str(path), split, image, label)


def _load_offline_aware(datasets, name: str, config, split, revision):
    """``load_dataset``; when the hub cannot be reached (or HF_HUB_OFFLINE=1) only the local cache is read, at
    once and quietly, and a miss is one line instead of minutes of retries."""
    import contextlib
    import logging

    from huggingface_hub import constants

    from vitscope.hub import host_reachable, offline as hub_offline

    local = Path(name).exists()
    offline = not local and (hub_offline() or not host_reachable(constants.ENDPOINT))
    if not offline:
        return datasets.load_dataset(name, config, split=split, revision=revision)
    quiet = [logging.getLogger(n) for n in ("huggingface_hub", "datasets", "fsspec")]
    levels = [lg.level for lg in quiet]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    old_env = {k: os.environ.get(k) for k in env}
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        os.environ.update(env)
        with contextlib.suppress(AttributeError):
            datasets.config.HF_DATASETS_OFFLINE = True
            datasets.config.HF_HUB_OFFLINE = True
        try:
            return datasets.load_dataset(name, config, split=split, revision=revision)
        except Exception as e:  # noqa: BLE001 - any miss of the offline cache
            raise ValueError(f"cannot load hf:{name}: the Hugging Face hub cannot be reached and the dataset is not "
                             f"in the local cache ({type(e).__name__}); copy a filled cache (HF_HOME) here, or use "
                             f"a local folder (`save_to_disk`, ImageFolder) as --data") from None
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def hub_source(name: str, split: str | None = None, image: str | None = None, label: str | None = None,
               config: str | None = None, revision: str | None = None) -> HFSource:
    """``datasets.load_dataset(name)`` (hub name or local data folder), one split."""
    datasets = _datasets()
    if not name:
        raise ValueError("hf: needs a dataset name, e.g. hf:cifar10?split=test")
    obj = _load_offline_aware(datasets, name, config, split, revision)
    if isinstance(obj, datasets.DatasetDict):
        obj, split = _pick_split(obj, split, f"hf:{name}")
    return HFSource(obj, f"hf:{name}", split, image, label)
