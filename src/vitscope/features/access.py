"""Feature access shared by every analysis: which blocks to read, how tokens are reduced to one vector per image,
image batches with each model's own preprocessing, and lazy reads of a feature store.

Token modes (where the tokens sit comes from ``model.token_layout``, never from a hard-coded ``1:``):

* ``"cls"``      the CLS token (walmer2023 "cls")
* ``"mean"``     the mean of the patch tokens
* ``"all"``      every token, flattened per image (walmer2023 "all", its default)
* ``"patches"``  the patch tokens, flattened per image (walmer2023 "spat")

Blocks are given as ``None`` / ``"all"``, a list of indices (negatives count from the end) or a string
``"0,3,-1"`` / ``"4:8"`` (end excluded); :func:`resolve_blocks` is the one parser every front end uses.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

TOKEN_MODES = ("cls", "mean", "all", "patches")
TOKENS = ("cls", "mean")     # the image-level reductions of block_features / downstream evaluations


# ----------------------------------------------------------------------------- blocks
def resolve_blocks(model, blocks: Iterable[int] | str | None = None, tokens: str = "cls") -> list[int]:
    """The block indices to read: ``None`` / ``"all"`` = every block that has the token; negatives count from
    the end; a string ``"0,3,-1"`` or ``"4:8"`` is parsed."""
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}, got {tokens!r}")
    depth = model.cfg.depth
    has = [b for b in range(depth) if tokens != "cls" or model.token_layout(b).cls is not None]
    if blocks is None or (isinstance(blocks, str) and blocks.strip().lower() in ("", "all")):
        if not has:
            raise ValueError("the model has no CLS token at any block; use tokens='mean' (--tokens mean)")
        return has
    if isinstance(blocks, str):
        blocks = parse_blocks(blocks, depth)
    out = []
    for b in blocks:
        b = int(b)
        bb = b + depth if b < 0 else b
        if not 0 <= bb < depth:
            raise ValueError(f"block {b} does not exist in a model of depth {depth}")
        if bb not in has:
            raise ValueError(f"block {bb} has no CLS token (it enters before block {model.cfg.cls_block}); choose "
                             f"blocks {has[0]}..{has[-1]} or tokens='mean'")
        if bb not in out:
            out.append(bb)
    return out


def parse_blocks(text: str, depth: int) -> list[int]:
    """``"0,3,-1"``, ``"4:8"`` (end excluded) or ``"all"`` -> block indices."""
    text = text.strip()
    if text.lower() == "all":
        return list(range(depth))
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                out += list(range(depth))[slice(int(a) if a else None, int(b) if b else None)]
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--blocks takes 'all', '0,3,-1' or '4:8', got {text!r}") from None
    if not out:
        raise ValueError(f"--blocks selects no block: {text!r}")
    return out


# ----------------------------------------------------------------------------- tokens
def layout_for(model, hook: str, grid: tuple[int, int] | None = None):
    """The token layout of the activation at ``hook`` (block i's hooks all see the tokens entering block i)."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    if m:
        return model.token_layout(int(m.group(1)), grid)
    if hook.startswith("ln_final"):
        return model.token_layout(model.cfg.depth, grid)
    if hook in ("hook_full_embed",):
        return model.token_layout(0, grid)
    raise ValueError(f"no token layout for {hook!r}: token modes apply to block activations (B, T, D)")


def reduce_tokens(acts: torch.Tensor, layout, mode: str) -> torch.Tensor:
    """(B, T, D) activations -> (B, d) for one token mode (see the module docstring)."""
    if mode not in TOKEN_MODES:
        raise ValueError(f"token mode must be one of {TOKEN_MODES}, got {mode!r}")
    if acts.ndim == 2:
        if mode in ("cls", "mean"):
            return acts
        raise ValueError(f"token mode {mode!r} needs (B, T, D) activations, got (B, D)")
    if acts.ndim != 3:
        raise ValueError(f"expected (B, T, D) activations, got shape {tuple(acts.shape)}")
    if acts.shape[1] != layout.n_tokens:
        raise ValueError(f"activations have {acts.shape[1]} tokens but the layout expects {layout.n_tokens}")
    if mode == "cls":
        return acts[:, layout.index_of("cls")]
    if mode == "mean":
        return acts[:, layout.patches].mean(dim=1)
    if mode == "patches":
        return acts[:, layout.patches].reshape(acts.shape[0], -1)
    return acts.reshape(acts.shape[0], -1)


def model_features(model, images: torch.Tensor, hooks: Sequence[str], token_mode: str) -> dict[str, torch.Tensor]:
    """Run ``model`` on a batch and return ``{hook: (B, d)}`` reduced by ``token_mode``."""
    images = images.to(model.device, model.dtype)
    grid = (images.shape[-2] // model.cfg.patch_size, images.shape[-1] // model.cfg.patch_size)
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=list(hooks))
    missing = [h for h in hooks if h not in cache]
    if missing:
        raise ValueError(f"hook(s) {missing[:3]} recorded nothing; see model.hook_names")
    return {h: reduce_tokens(cache[h], layout_for(model, h, grid), token_mode) for h in hooks}




class _MultiPreprocess:
    """Dataset transform that returns one tensor per distinct preprocessing config (picklable)."""

    def __init__(self, cfgs) -> None:
        from vitscope.models.preprocess import Preprocessor

        self.tfs = [Preprocessor(c) for c in cfgs]

    def __call__(self, img):
        return tuple(tf(img) for tf in self.tfs)


def preprocess_config(model):
    from vitscope.models.preprocess import PreprocessConfig

    return model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)


def _merge_short_tail(batches: Iterator[tuple], min_size: int) -> Iterator[tuple]:
    """Yield batches, merging a last batch smaller than ``min_size`` into the one before it."""
    prev = None
    for b in batches:
        if prev is not None and len(b[2]) < min_size:
            prev = tuple(_cat(p, q) for p, q in zip(prev, b))
            continue
        if prev is not None:
            yield prev
        prev = b
    if prev is not None:
        yield prev


def _cat(a, b):
    if isinstance(a, tuple):
        return tuple(torch.cat([x, y]) for x, y in zip(a, b))
    return torch.cat([a, b])


def image_batches(models: Sequence[Any], data: Any, batch_size: int = 256, limit: int | None = None,
                  num_workers: int = 0, progress: bool = False, min_size: int = 4
                  ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Batches ``([images for each model], labels, indices)`` from a dataset, a tensor or an iterable.

    An :class:`~vitscope.data.ImageDataset` is re-read with each model's own preprocessing (one decode per
    image); a tensor (N, 3, H, W) or an iterable of tensors / ``(images, labels, ...)`` tuples is used as is
    by every model. A last batch with fewer than ``min_size`` images is merged into the previous one.
    """
    from vitscope.data.datasets import ImageDataset

    def raw() -> Iterator[tuple]:
        seen = 0
        if isinstance(data, ImageDataset):
            cfgs = [preprocess_config(m) for m in models]
            uniq = list(dict.fromkeys(cfgs))
            ds = ImageDataset(data.source, transform=_MultiPreprocess(uniq), on_error=data.on_error)
            if limit is not None:
                ds = ds.subset(range(min(limit, len(ds))))
            for images, labels, idx in ds.batches(batch_size=batch_size, num_workers=num_workers,
                                                  progress=progress):
                per = [images[uniq.index(c)] for c in cfgs]
                yield tuple(per), labels, idx
            data.record_skips(ds.skipped)
            return
        if isinstance(data, torch.Tensor):
            stream = (data[s:s + batch_size] for s in range(0, data.shape[0], batch_size))
        else:
            stream = iter(data)
        for item in stream:
            if isinstance(item, (tuple, list)):
                images = item[0]
                labels = item[1] if len(item) > 1 else torch.full((images.shape[0],), -1)
            else:
                images, labels = item, torch.full((item.shape[0],), -1)
            if limit is not None and seen + images.shape[0] > limit:
                images, labels = images[:limit - seen], labels[:limit - seen]
            if images.shape[0] == 0:
                break
            idx = torch.arange(seen, seen + images.shape[0])
            seen += images.shape[0]
            yield tuple(images for _ in models), torch.as_tensor(labels), idx
            if limit is not None and seen >= limit:
                break

    n = 0
    for images, labels, idx in _merge_short_tail(raw(), min_size):
        n += 1
        yield list(images), labels, idx
    if n == 0:
        raise ValueError("no usable image: the dataset is empty or every file was skipped as unreadable; check it "
                         "with `vitscope check-data SPEC`")




class LazyRows:
    """Rows ``mask`` of a lazy array (a store's memmap), read only when converted with ``np.asarray``."""

    def __init__(self, arr: Any, mask: np.ndarray | None) -> None:
        self.arr, self.mask = arr, mask
        n = int(mask.sum()) if mask is not None else arr.shape[0]
        self.shape = (n,) + tuple(arr.shape[1:])

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self.arr if self.mask is None else self.arr[self.mask])
        return a.astype(dtype) if dtype is not None else a


def open_store_any(store):
    if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        from vitscope.features import open_store

        return open_store(store)
    return store


def store_name(store) -> str:
    model = getattr(store, "model", {}) or {}
    return str(model.get("name") or getattr(store, "path", "store"))


def common_valid(stores: Sequence[Any]) -> np.ndarray:
    """Rows valid in every store; the stores must describe the same samples in the same order."""
    n = {s.n for s in stores}
    if len(n) > 1:
        raise ValueError(f"the feature stores hold different numbers of samples {sorted(n)}; CKA compares the same "
                         f"images seen by two models, so extract both from the same dataset")
    ids = [s.ids for s in stores if getattr(s, "ids", None)]
    if len(ids) > 1 and any(i != ids[0] for i in ids[1:]):
        raise ValueError("the feature stores hold different samples (their ids differ); extract both from the "
                         "same dataset in the same order")
    valid = np.ones(stores[0].n, dtype=bool)
    for s in stores:
        valid &= np.asarray(s.valid)
    return valid


def store_features(store, site: str = "resid_post", reduction: str = "cls", layers: Sequence[int] | None = None,
                   valid: np.ndarray | None = None) -> dict[str, LazyRows]:
    """``{"<layer>": lazy (n_valid, d) rows}`` for one site and reduction of a feature store (nothing read yet)."""
    store = open_store_any(store)
    if reduction not in store.reductions:
        raise ValueError(f"the store at {getattr(store, 'path', '?')} has reductions {store.reductions}, not "
                         f"{reduction!r}; extract it with --tokens {reduction}")
    layers = list(store.layers if layers is None else layers)
    valid = np.asarray(store.valid) if valid is None else valid
    mask = None if valid.all() else valid
    return {str(layer): LazyRows(store[site, layer, reduction], mask) for layer in layers}




def store_layers(store, blocks: Iterable[int] | str | None = None) -> list[int]:
    """The layers of a feature store that ``blocks`` (``None`` / ``"all"``, ``"0,3,-1"``, ``"4:8"``, a list) names;
    negatives count from the model's depth. A layer the store does not hold is one line naming the fix."""
    layers = list(store.layers)
    if blocks is None or (isinstance(blocks, str) and blocks.strip().lower() in ("", "all")):
        return layers
    depth = int((getattr(store, "model", {}) or {}).get("config", {}).get("depth") or (max(layers) + 1))
    want = parse_blocks(blocks, depth) if isinstance(blocks, str) else [int(b) for b in blocks]
    want = list(dict.fromkeys(b + depth if b < 0 else b for b in want))
    missing = [b for b in want if b not in layers]
    if missing:
        raise ValueError(f"the store holds layers {layers}, not {missing}; extract them with --blocks")
    return want


def store_labels(store) -> np.ndarray:
    """The labels of a store's valid rows."""
    return np.asarray(store.labels)[np.asarray(store.valid)]


def split_dataset(ds, test_fraction: float, seed: int = 0):
    """A seeded random split of one dataset into (train, test) subsets, each in the dataset's order."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    n = len(ds)
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"a test fraction of {test_fraction} of {n} images leaves an empty train or test part")
    return ds.subset(sorted(perm[n_test:].tolist())), ds.subset(sorted(perm[:n_test].tolist()))


# ----------------------------------------------------------------------------- image-level block features
@dataclass
class FeatureSplit:
    """Features already in memory, split in two: ``{block: (N, D)}`` and labels for the part that is searched
    (``train``) and the part that asks (``test``). What an analysis takes when a caller (the report, a notebook)
    holds the features itself."""

    train: Mapping[Any, Any]
    train_labels: Any
    test: Mapping[Any, Any]
    test_labels: Any


def forward_block_features(model, images, blocks: Sequence[int], tokens: str = "cls") -> dict[int, Any]:
    """Run ``model`` once on a batch (B, 3, H, W); ``{block: (B, D) float32 CPU tensor}``."""
    import torch

    hooks = {b: f"blocks.{b}.hook_resid_post" for b in blocks}
    x = images.to(model.device, model.dtype)
    grid = (x.shape[-2] // model.cfg.patch_size, x.shape[-1] // model.cfg.patch_size)
    with torch.inference_mode():
        _, cache = model.run_with_cache(x, names_filter=list(hooks.values()))
    out = {}
    for b, h in hooks.items():
        t = cache[h]                                                                   # B, T, D
        lay = model.token_layout(b, grid)                                              # what block b received
        f = t[:, lay.index_of("cls")] if tokens == "cls" else t[:, lay.patches].mean(dim=1)
        out[b] = f.float().cpu()
    return out


def collect_block_features(models: Mapping[str, Any], data, blocks: Mapping[str, Sequence[int]] | None = None,
                           tokens: str = "cls", batch_size: int = 64, limit: int | None = None,
                           progress: bool = False) -> tuple[dict[str, dict[int, np.ndarray]], np.ndarray]:
    """``({model: {block: (N, D) float32}}, labels (N,))`` of a dataset, each image decoded once and run once per
    model with that model's own preprocessing. ``blocks``: ``{model: blocks}`` (default every block with the
    token). For datasets too large to hold in memory, write a feature store (``vitscope extract``) instead."""
    names = list(models)
    bl = {n: resolve_blocks(models[n], None if blocks is None else blocks.get(n), tokens) for n in names}
    parts: dict[str, dict[int, list]] = {n: {b: [] for b in bl[n]} for n in names}
    labels = []
    for images, lab, _ in image_batches([models[n] for n in names], data, batch_size, limit, progress=progress,
                                        min_size=1):
        for n, x in zip(names, images):
            for b, f in forward_block_features(models[n], x, bl[n], tokens).items():
                parts[n][b].append(f.numpy())
        labels.append(np.asarray(lab))
    if not labels:
        raise ValueError("no images were read; check the dataset")
    feats = {n: {b: np.concatenate(v) for b, v in parts[n].items()} for n in names}
    return feats, np.concatenate(labels).astype(np.int64)


def open_dataset_any(data, transform=None):
    """A dataset spec string (``vitscope.data.open_dataset``) opened; an opened dataset is returned as is."""
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        from vitscope.data import open_dataset

        return open_dataset(str(data), transform=transform)
    return data


# ----------------------------------------------------------------------------- images for one model
def model_images(model, data, limit: int | None = None):
    """``(ImageDataset, PreprocessConfig)``: ``data`` read with ``model``'s own preprocessing, at most ``limit``
    images.

    ``data``: a dataset spec (``vitscope.data.open_dataset``), an opened ``ImageDataset`` (re-read with this
    model's preprocessing; its files skipped as unreadable are recorded back into it by :func:`record_skips`),
    or a list of image files.
    """
    from vitscope.data import ImageDataset, open_dataset
    from vitscope.data.folders import FileSource
    from vitscope.models.preprocess import Preprocessor

    pcfg = preprocess_config(model)
    tf = Preprocessor(pcfg)
    if isinstance(data, ImageDataset):
        ds = ImageDataset(data.source, transform=tf, on_error=data.on_error)
    elif isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        ds = open_dataset(str(data), transform=tf)
    elif isinstance(data, (list, tuple)) and data and all(isinstance(p, str) or hasattr(p, "__fspath__")
                                                          for p in data):
        from pathlib import Path

        missing = [str(p) for p in data if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"image file not found: {missing[0]}")
        ds = ImageDataset(FileSource([str(p) for p in data], description="image files"), transform=tf)
    else:
        raise ValueError(f"expected images as a dataset spec, an ImageDataset or a list of image files, got "
                         f"{type(data).__name__}")
    if limit is not None and limit < len(ds):
        ds = ds.subset(range(limit))
    if len(ds) == 0:
        raise ValueError("the dataset has no images")
    return ds, pcfg


def record_skips(data, ds) -> None:
    """Copy the files ``ds`` (from :func:`model_images`) skipped into ``data`` when ``data`` is a dataset."""
    if hasattr(data, "record_skips") and data is not ds:
        data.record_skips(ds.skipped)


def require_images(n_done: int, ds) -> None:
    """After a pass over ``ds``: one clear line when not a single image could be used."""
    if n_done > 0:
        return
    skipped = len(getattr(ds, "skipped", []) or [])
    raise ValueError(f"no usable image: all {skipped or len(ds)} file(s) were skipped as unreadable; "
                     "check the files with `vitscope check-data SPEC`")
