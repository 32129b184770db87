"""What the attention analyses' ``evaluate`` functions share: the models they take, the images they run on, the
attention patterns a caller may hand them instead (the report), the drawing options, and tidy tables of maps.

Images (``data``) are a dataset spec, an opened ``ImageDataset`` (re-read with each model's own preprocessing),
a list of image files, a batch of model inputs (a tensor (N, 3, H, W), already preprocessed), or
:class:`AttentionPatterns` (patterns computed by the caller).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitscope.analysis.api import OptionError, Options
from vitscope.analysis.attention.tokens import grid_of

#: fields that only change how figures look: left out of the ``options`` column, like the run-time fields
DISPLAY_FIELDS = ("cmap", "opacity", "overlay")


@dataclass
class AttentionPatterns:
    """Attention patterns already computed on some images, given to ``evaluate`` in place of the images.

    ``patterns``: ``{block: (N, H, T, T)}`` (``blocks.{b}.attn.hook_pattern``); ``images``: the model inputs
    (N, 3, H, W) they came from (needed by the gradient methods, which run the model again); ``grid``: the token
    grid (default: from ``images``, else the model's); ``masks``: object masks on the token grid (N, rows, cols)
    for the saliency IoU; ``display``: the pictures (N, h, w, 3) uint8 for figures; ``ids``: image names.
    """

    patterns: Mapping[int, torch.Tensor]
    images: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    masks: torch.Tensor | None = None
    display: Any = None
    ids: Sequence[str] | None = None
    description: str | None = None

    def __len__(self) -> int:
        return int(next(iter(self.patterns.values())).shape[0])

    def layouts(self, model) -> dict[int, Any]:
        grid = self.grid or (None if self.images is None else grid_of(self.images, model))
        return {b: model.token_layout(b, grid) for b in self.patterns}


@dataclass
class AttentionOptions(Options):
    """Base of the attention analyses' options: the drawing fields (colour map, opacity of a map over its image)
    stay out of the ``options`` column."""

    def as_json(self, exclude: Sequence[str] = ()) -> str:
        return super().as_json(tuple(exclude) + DISPLAY_FIELDS)

    def check_display(self) -> None:
        import difflib

        import matplotlib

        if hasattr(self, "cmap") and self.cmap not in matplotlib.colormaps:
            close = difflib.get_close_matches(str(self.cmap), list(matplotlib.colormaps), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError("cmap", f"`cmap` must be a Matplotlib colour map (inferno, viridis, gray, ...), got "
                                      f"{self.cmap!r}{hint}")
        if hasattr(self, "opacity"):
            self.check_number("opacity", 0, 1)

    def check_limit(self, name: str = "limit") -> None:
        """At most this many images: a positive integer or None (the same message in every command)."""
        v = getattr(self, name)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OptionError(name, f"`{name}` must be a positive number of images, got {v}")

    def check_names(self, name: str, choices: Sequence[str], upper: bool = False, message: str | None = None) -> None:
        """A non-empty list of names among ``choices`` (or ``"a,b"``), case-folded, repeats dropped; a tuple."""
        v = getattr(self, name)
        parts = v.split(",") if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]
        fold = str.upper if upper else str.lower
        names = tuple(dict.fromkeys(fold(str(p).strip()) for p in parts if str(p).strip()))
        if not names or any(p not in choices for p in names):
            raise OptionError(name, f"`{name}` {message or 'takes ' + ', '.join(choices)}; got {v!r}")
        setattr(self, name, names)

    def check_heads(self, name: str = "heads") -> None:
        """None (every head), ``"0,3,-1"`` or a list of head indices; stored as a tuple."""
        v = getattr(self, name)
        if v is None or (isinstance(v, str) and not v.strip()):
            setattr(self, name, None)
            return
        parts = v.split(",") if isinstance(v, str) else v if isinstance(v, (list, tuple)) else [v]
        try:
            heads = tuple(int(str(p).strip()) for p in parts if str(p).strip())
        except ValueError:
            heads = ()
        if not heads or any(isinstance(p, bool) or isinstance(p, float) for p in parts):
            raise OptionError(name, f"`{name}` takes comma-separated head indices (e.g. 0,3,5), got {v!r}")
        setattr(self, name, heads)

    def check_query(self, name: str = "query") -> None:
        """A query name (cls, dist, reg<k>, mean, centre, ...) or a patch; a patch (row, col) is kept as "row,col"."""
        from vitscope.analysis.attention.tokens import parse_query

        v = getattr(self, name)
        try:
            q = parse_query(v)
        except ValueError as e:
            raise OptionError(name, f"`{name}`: {e}") from None
        setattr(self, name, f"{q[0]},{q[1]}" if isinstance(q, tuple) else q)


# ----------------------------------------------------------------------------- models
def one_model(models) -> tuple[str, Any]:
    """``(label, model)`` of an analysis that runs one model: a model, or ``{label: model}`` with one entry."""
    items = as_models(models)
    if len(items) != 1:
        raise ValueError(f"this analysis runs one model at a time, got {len(items)} ({', '.join(items)}); "
                         "call evaluate once per model")
    return next(iter(items.items()))


def as_models(models) -> dict[str, Any]:
    """``{label: model}`` from a model, a list of models or a mapping."""
    if isinstance(models, Mapping):
        items = dict(models)
    else:
        items = {}
        for m in (models if isinstance(models, (list, tuple)) else [models]):
            label = model_label(m)
            while label in items:
                label += "'"
            items[label] = m
    if not items:
        raise ValueError("no model given")
    bad = [k for k, m in items.items() if not hasattr(m, "token_layout")]
    if bad:
        raise ValueError(f"expected vitscope models (HookedViT), got {type(items[bad[0]]).__name__} for {bad[0]!r}")
    return items


def model_label(model) -> str:
    from vitscope.runtime import is_random

    name = str((getattr(model, "meta", None) or {}).get("name") or "model")
    name = Path(name).name if Path(name).exists() else name
    return name + " (random)" if is_random(model) else name


def figure_stem(label: str) -> str:
    """A model label as the first part of its figures' file names (``demo-vit (random)`` -> ``demo-vit_random``)."""
    return (label.replace("/", "_").replace(":", "_").replace(" (", "_").replace(")", "").replace(" ", "_")
            or "model")


def weights_of(model) -> str | None:
    """The weights identity a row records: the checkpoint's hash, or the state dict's for random weights."""
    from vitscope.runtime import weights_hash

    return (getattr(model, "meta", None) or {}).get("weights_sha256") or weights_hash(model)


# ----------------------------------------------------------------------------- patterns
def pattern_hook(block: int) -> str:
    return f"blocks.{block}.attn.hook_pattern"


def block_of(hook_name: str) -> int:
    """``blocks.7.attn.hook_pattern`` -> 7."""
    return int(hook_name.split(".")[1])


def collect_patterns(model, x: torch.Tensor, blocks: Iterable[int] | None = None) -> dict[int, torch.Tensor]:
    """Run ``model`` on ``x`` (B, C, H, W) and return ``{block: pattern (B, H, T, T)}``.

    Stops after the last requested block (no head is run).
    """
    from vitscope.analysis.attention.tokens import normalize_block

    depth = model.cfg.depth
    blocks = sorted({normalize_block(b, depth) for b in (range(depth) if blocks is None else blocks)})
    if not blocks:
        return {}
    names = [pattern_hook(b) for b in blocks]
    with torch.inference_mode():
        _, cache = model.run_with_cache(x, names_filter=names, stop_at=blocks[-1] + 1)
    return {b: cache[pattern_hook(b)] for b in blocks}


@dataclass
class PatternBatch:
    """One batch of :func:`pattern_batches`: the patterns of the blocks asked for, their layouts, the model
    inputs (None for given patterns), the pictures (None where unknown), the images' indices and names."""

    patterns: dict[int, torch.Tensor]
    layouts: dict[int, Any]
    x: torch.Tensor | None
    display: list
    index: list[int]
    ids: list[str]


def pattern_batches(model, data, blocks: Iterable[int] | None, limit: int | None = None, batch_size: int = 8,
                    progress: bool = False) -> Iterator[PatternBatch]:
    """The attention patterns of ``blocks`` (None: every block) of ``model`` over ``data``, batch by batch: run
    on images (any ``data`` of :class:`ImageBatches`) or read from :class:`AttentionPatterns`. Raises one clear
    error when no image could be read."""
    depth = model.cfg.depth
    blocks = sorted(set(range(depth) if blocks is None else blocks))
    if isinstance(data, AttentionPatterns):
        lays = data.layouts(model)
        n = len(data) if limit is None else min(limit, len(data))
        missing = [b for b in blocks if b not in data.patterns]
        if missing:
            raise ValueError(f"the patterns given hold blocks {sorted(data.patterns)}; blocks {missing} are missing")
        names = list(data.ids) if data.ids is not None else [f"image{i}" for i in range(n)]
        disp = list(data.display[:n]) if data.display is not None else [None] * n
        yield PatternBatch({b: data.patterns[b][:n] for b in blocks}, {b: lays[b] for b in blocks},
                           None if data.images is None else data.images[:n], disp, list(range(n)), names[:n])
        return
    images = ImageBatches(model, data, limit)
    ids = images.ids
    for x, idx in images.batches(batch_size, progress):
        lays = {b: model.token_layout(b, grid_of(x, model)) for b in blocks}
        yield PatternBatch(collect_patterns(model, x, blocks), lays, x, list(images.display(x)), idx,
                           [ids[i] for i in idx])
    images.require(len(images.used))


def data_description(data) -> str | None:
    """How a result names its images: the dataset spec as given, else the dataset's own description."""
    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, (list, tuple)):
        return "image files"
    return getattr(data, "description", None)


# ----------------------------------------------------------------------------- images
@dataclass
class ImageBatches:
    """Images for one model: ``batches()`` yields ``(x (B, 3, H, W) on the model's device, indices)``; ``ids``
    names every image; ``display(x)`` gives the pictures a figure draws (uint8)."""

    model: Any
    data: Any
    limit: int | None = None
    dataset: Any = None
    pcfg: Any = None
    tensor: torch.Tensor | None = None
    used: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        from vitscope.features.access import model_images, preprocess_config

        if isinstance(self.data, torch.Tensor):
            if self.data.ndim != 4:
                raise ValueError(f"expected model inputs (N, 3, H, W), got a tensor of shape {tuple(self.data.shape)}")
            self.tensor = self.data if self.limit is None else self.data[:self.limit]
            self.pcfg = preprocess_config(self.model)
        elif self.data is None:
            raise ValueError("no images: give a dataset spec, an ImageDataset, image files or a batch tensor")
        else:
            self.dataset, self.pcfg = model_images(self.model, self.data, self.limit)

    def __len__(self) -> int:
        return len(self.tensor) if self.tensor is not None else len(self.dataset)

    @property
    def ids(self) -> list[str]:
        if self.tensor is not None:
            return [f"image{i}" for i in range(len(self.tensor))]
        return list(self.dataset.ids)

    @property
    def description(self) -> str | None:
        if isinstance(self.data, (str, Path)):
            return str(self.data)
        if self.dataset is not None:
            return self.dataset.description
        return None

    def batches(self, batch_size: int, progress: bool = False) -> Iterator[tuple[torch.Tensor, list[int]]]:
        m = self.model
        if self.tensor is not None:
            for s in range(0, len(self.tensor), batch_size):
                idx = list(range(s, min(s + batch_size, len(self.tensor))))
                self.used += idx
                yield self.tensor[s:s + batch_size].to(m.device, m.dtype), idx
            return
        try:
            for x, _, idx in self.dataset.batches(batch_size=batch_size, progress=progress):
                self.used += idx.tolist()
                yield x.to(m.device, m.dtype), idx.tolist()
        finally:
            from vitscope.features.access import record_skips

            record_skips(self.data, self.dataset)

    def display(self, x: torch.Tensor) -> np.ndarray:
        from vitscope.viz.attention import denormalize

        return denormalize(x.detach().float().cpu(), self.pcfg.mean, self.pcfg.std)

    @property
    def skipped(self) -> list:
        return [] if self.dataset is None else self.dataset.skipped

    def require(self, n_done: int) -> None:
        from vitscope.features.access import require_images

        if self.dataset is not None:
            require_images(n_done, self.dataset)
        elif n_done == 0:
            raise ValueError("no images: the batch is empty")


# ----------------------------------------------------------------------------- tables of maps
def map_frame(maps: np.ndarray, **columns):
    """A stack of maps (K, rows, cols) as a tidy DataFrame (``row``, ``col``, ``value``), one row per cell;
    ``columns`` are constants, or sequences with one value per map."""
    import pandas as pd

    m = np.asarray(maps, dtype=np.float64)
    K, rows, cols = m.shape
    n = rows * cols
    r, c = np.divmod(np.arange(n), cols)
    data = {}
    for k, v in columns.items():
        if isinstance(v, (list, tuple, np.ndarray)):
            arr = np.empty(K, dtype=object)
            arr[:] = list(v)
            data[k] = np.repeat(arr, n)
        else:
            data[k] = [v] * (K * n)
    data.update(row=np.tile(r, K), col=np.tile(c, K), value=m.reshape(-1))
    return pd.DataFrame(data)


def check_block(model, block: int, name: str = "block") -> int:
    """``block`` (negative counts from the end) as an index of ``model``, or an error naming the option."""
    depth = model.cfg.depth
    b = block + depth if block < 0 else block
    if not 0 <= b < depth:
        raise OptionError(name, f"`{name}` {block} does not exist in a model of depth {depth} (use 0..{depth - 1}, "
                                f"or -1 for the last)")
    return b


def options_of(cls, options=None, overrides: Mapping[str, Any] | None = None):
    """``options`` (an instance of ``cls``, a mapping of its fields, or None for the defaults) with ``overrides``."""
    if options is None or isinstance(options, Mapping):
        return cls.from_mapping(options or {}, **(overrides or {}))
    if not isinstance(options, cls):
        raise TypeError(f"expected {cls.__name__}, got {type(options).__name__}")
    return options.replace(**overrides) if overrides else options


def query_slug(query: str) -> str:
    """A query as a file-name part: ``"3,4"`` -> ``r3c4``."""
    q = str(query).strip().lower().replace(" ", "")
    if "," in q:
        r, c = q.split(",", 1)
        return f"r{r}c{c}"
    return q


def resolve_heads(heads, num_heads: int, name: str = "heads") -> list[int] | None:
    """Head indices (negatives count from the end) checked against ``num_heads``; None means every head."""
    if heads is None:
        return None
    out = []
    for h in heads:
        if not -num_heads <= h < num_heads:
            raise OptionError(name, f"`{name}`: head {h} does not exist; the model has {num_heads} heads "
                                    f"(0-{num_heads - 1})")
        out.append(h % num_heads)
    return out
