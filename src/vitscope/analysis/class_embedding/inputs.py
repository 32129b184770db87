"""What every class-embedding analysis (vilas2023) reads, in one place: labelled images (a dataset spec, an opened
dataset, in-memory batches, or ImageNet-S labelled by the head's classes, optionally the first N images of each
class), the class embeddings (the model's own head, a ``.npy`` matrix or a linear head fitted on the last layer),
the check that the labels are classes of those embeddings, object masks on the token grid, and the options they
share (:class:`ClassSpaceOptions`).

The ``evaluate`` entry points of ``projection`` (the logit lens), ``memories``, ``perturbation``, ``attribution``
and ``removal`` build on these; the command line, the study adapters and the report only call ``evaluate``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.analysis.api import Options, OptionError

MASK_RULES = ("majority", "any", "bicubic")
LABELS_HELP = ("a folder with one sub-folder per class, a list file with labels, or synthetic:...")


# ----------------------------------------------------------------------------- shared options
@dataclass
class ClassSpaceOptions(Options):
    """Options every class-embedding analysis shares: which images, which class embeddings, how to run.

    ``class_embeddings``: a ``(classes, width)`` ``.npy`` file (or a :class:`ClassEmbeddings`) for a model without
    a classifier; ``class_names``: its rows' names, one per line; ``head``: a linear head on the last layer saved by
    ``vitscope probe`` (a folder or ``.safetensors``). ``imagenet_s``: an ImageNet-S root instead of ``data``,
    labelled by the head's classes (``class_index``: one wnid per line, line k = class k)."""

    per_class: int | None = None           # the first N images of each class (vilas2023: 5)
    limit: int | None = None               # at most this many images
    batch_size: int = 64
    imagenet_s: str | None = None
    class_index: str | None = None
    class_embeddings: Any = None
    class_names: str | None = None
    head: str | None = None
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self.check_int("per_class", optional=True)
        check_limit(self)
        self.check_int("batch_size")

    def as_json(self, exclude=()) -> str:
        skip = set(exclude) | {"progress"}
        if self.class_embeddings is not None and not isinstance(self.class_embeddings, (str, Path)):
            skip.add("class_embeddings")
        return super().as_json(tuple(skip))


def check_limit(opts: Options, name: str = "limit") -> None:
    """``limit``: None or a positive number of images (one message for every command)."""
    v = getattr(opts, name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise OptionError(name, f"`{name}` must be a positive number of images, got {v!r}")


def options_of(cls, options, overrides: Mapping[str, Any]):
    """``options`` (default ``cls()``) with ``overrides`` applied (validated again)."""
    opts = options if options is not None else cls()
    if not isinstance(opts, cls):
        raise TypeError(f"options must be {cls.__name__}, got {type(opts).__name__}")
    return opts.replace(**overrides) if overrides else opts


# ----------------------------------------------------------------------------- models
def as_models(models) -> dict[str, Any]:
    """One model, a list of models or ``{label: model}`` -> ``{label: model}`` (labels from ``model.meta``)."""
    if isinstance(models, Mapping):
        return dict(models)
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    out: dict[str, Any] = {}
    for m in items:
        label = str((getattr(m, "meta", None) or {}).get("name") or "model")
        while label in out:
            label += "'"
        out[label] = m
    if not out:
        raise ValueError("no model to evaluate")
    return out


# ----------------------------------------------------------------------------- images
def labelled_dataset(data, model=None, opts: ClassSpaceOptions | None = None):
    """The labelled images of ``data`` (a spec string or an opened dataset), or ImageNet-S (``opts.imagenet_s``)
    labelled by the head's classes; ``opts.per_class`` keeps the first N images of each class. In-memory batches
    (a list of ``(images, labels)``) and tensors are returned as they are."""
    from vitscope.data.datasets import ImageDataset

    opts = opts or ClassSpaceOptions()
    if opts.imagenet_s is not None:
        if data is not None:
            raise ValueError("give either --data or --imagenet-s, not both")
        from vitscope.analysis.class_embedding.images import imagenet_s_dataset

        return imagenet_s_dataset(opts.imagenet_s, head_classes(model, opts.class_index), per_class=opts.per_class)
    if data is None:
        raise ValueError(f"no images: pass --data SPEC with class labels ({LABELS_HELP}) or --imagenet-s ROOT")
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        from vitscope.data import open_dataset

        spec = str(data)
        ds = open_dataset(spec)
    elif isinstance(data, ImageDataset):
        spec, ds = getattr(data, "description", "the dataset"), data
    else:
        return data
    if len(ds) == 0:
        raise ValueError(f"the dataset {spec!r} has no images")
    if not len(ds.classes) or (np.asarray(ds.labels) < 0).any():
        raise ValueError(f"the dataset {spec!r} has no class labels; vilas2023's analyses need labelled images "
                         f"({LABELS_HELP})")
    return per_class_subset(ds, opts.per_class)


def labelled_images(data, option: str = "--data", what: str = "the analysis", limit: int | None = None):
    """``(images, labels)``: a dataset spec or an opened dataset (every image labelled; the first ``limit``), or
    in-memory ``[(images, labels), ...]`` batches as they are; ``labels`` (N,) of the images read (None when
    unknown)."""
    from vitscope.data.datasets import ImageDataset
    from vitscope.features.access import open_dataset_any

    if data is None:
        raise ValueError(f"{what} need labelled images: pass {option} SPEC ({LABELS_HELP})")
    ds = open_dataset_any(data)
    if not isinstance(ds, ImageDataset):
        if isinstance(ds, (list, tuple)):
            return ds, np.concatenate([np.asarray(b[1]) for b in ds]) if len(ds) else np.zeros(0, np.int64)
        return ds, None
    if limit is not None and limit < len(ds):
        ds = ds.subset(range(limit))
    if len(ds) == 0:
        raise ValueError(f"{option} {str(data)!r} has no images")
    labels = np.asarray(ds.labels)
    if labels.size and (labels < 0).any():
        raise ValueError(f"{what} needs class labels, and {option} {str(data)!r} has images without one; use "
                         f"{LABELS_HELP}")
    return ds, labels


def head_classes(model, class_index: str | None) -> list[str]:
    """The head's classes: ``class_index`` (one wnid per line, line k = class k) or the model's class names."""
    if class_index is not None:
        path = Path(class_index)
        if not path.is_file():
            raise FileNotFoundError(f"class-index file {path} does not exist; expected one wnid per line")
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    classes = list(((model.cfg.meta or {}) if model is not None else {}).get("classes") or [])
    if not classes:
        raise ValueError("--imagenet-s needs the head's classes: pass --class-index FILE (one wnid per line, line k "
                         "= head class k; ImageNet-1k: the 1000 wnids in sorted order)")
    return classes


def per_class_subset(ds, per_class: int | None):
    """The first ``per_class`` images of each class, in the dataset's order (vilas2023 takes 5 per class)."""
    if per_class is None:
        return ds
    counts: dict[int, int] = {}
    keep = []
    for i, y in enumerate(np.asarray(ds.labels).tolist()):
        counts[y] = counts.get(y, 0) + 1
        if counts[y] <= per_class:
            keep.append(i)
    return ds.subset(keep)


def check_classes(model, ds, emb=None, names_given: bool = False) -> None:
    """Labels must index the classes of the head (or of the given class embeddings); names are compared when
    known."""
    labels = getattr(ds, "labels", None)
    if labels is None or not len(labels):
        return
    if emb is None:
        C, names, what = model.cfg.num_classes, (model.cfg.meta or {}).get("classes"), "the model's head"
    else:
        C, names, what = emb.num_classes, emb.classes, "the class embeddings"
    labels = np.asarray(labels)
    if int(labels.max()) >= C:
        raise ValueError(f"the dataset has labels up to {int(labels.max())} but {what} "
                         f"{'predicts' if emb is None else 'have'} {C} classes; give images of those classes")
    classes = list(getattr(ds, "classes", None) or [])
    if names and classes and not names_given and list(names) != classes[:len(names)]:
        raise ValueError(f"the dataset's classes ({', '.join(classes[:4])}...) are not the classes of {what} "
                         f"({', '.join(list(names)[:4])}...); give images of those classes, in that order")


# ----------------------------------------------------------------------------- class embeddings
def class_embeddings(model, label: str, opts: ClassSpaceOptions):
    """The class embeddings the options give (None: the model's own head); one line when there are none."""
    from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings

    given = opts.class_embeddings
    if given is not None and opts.head is not None:
        raise ValueError("give either --class-embeddings or --head, not both")
    if opts.class_names is not None and given is None:
        raise ValueError("--class-names names the rows of --class-embeddings; pass --class-embeddings FILE.npy too "
                         "(a --head carries its class names)")
    if isinstance(given, ClassEmbeddings):
        emb = given
    elif given is not None:
        names = None
        if opts.class_names is not None:
            path = Path(opts.class_names)
            if not path.is_file():
                raise FileNotFoundError(f"class-names file {path} does not exist; expected one name per line")
            names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        emb = ClassEmbeddings.from_npy(given, classes=names)
    elif opts.head is not None:
        emb = ClassEmbeddings.from_head(opts.head)
    elif model.cfg.head not in ("linear", "distilled"):
        raise ValueError(f"{label} has no classifier (head={model.cfg.head!r}) to project onto: pass "
                         "--class-embeddings FILE.npy (a (classes, width) matrix, e.g. CLIP text embeddings of class "
                         "prompts) or --head DIR (a linear probe on the last layer: `vitscope extract ... -s ln_final "
                         "-t cls` then `vitscope probe -l last`)")
    else:
        return None
    import torch

    with torch.no_grad():                                      # width errors here, before any image is read
        emb.features(model, torch.zeros(1, model.cfg.embed_dim, device=model.device, dtype=model.dtype))
    return emb


# ----------------------------------------------------------------------------- masks and batches
def has_class_masks(ds) -> bool:
    """Whether ``ds`` can give each image's class mask (synthetic shapes, ImageNet-S, COCO, PartImageNet)."""
    from vitscope.analysis.class_embedding.metrics import mask_kind

    return mask_kind(ds) is not None


def labelled_batches(models: list, ds, opts: ClassSpaceOptions, mask_rule: str | None = None
                     ) -> Iterator[tuple[list, Any, Any, Any]]:
    """``(per-model images, labels, dataset indices, class masks or None)`` per batch, each image decoded once
    and preprocessed for each model; masks on the first model's token grid by ``mask_rule``."""
    import torch

    from vitscope.analysis.class_embedding.metrics import class_token_masks
    from vitscope.features.access import image_batches, preprocess_config

    pcfg = preprocess_config(models[0])
    for images, labels, idx in image_batches(models, ds, opts.batch_size, opts.limit, progress=opts.progress,
                                             min_size=1):
        masks = None
        if mask_rule is not None:
            masks = torch.from_numpy(class_token_masks(ds, idx.tolist(), models[0].cfg.grid, pcfg, mask_rule))
        yield list(images), labels, idx, masks


def model_batches(model, ds, batch_size: int):
    """``(images, labels)`` batches of ``ds`` (a dataset: decoded with the model's preprocessing; or in-memory
    batches as they are)."""
    from vitscope.features.access import image_batches

    return ((images[0], labels) for images, labels, _ in image_batches([model], ds, batch_size, min_size=1))
