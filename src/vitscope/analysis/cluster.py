"""k-means clustering of token features scored against labels (walmer2023).

* Image-level: k-means (k = 50, ``random_state=0``) on the CLS token or the mean of the patch tokens of each
  block, scored against class labels by NMI, ARI (scikit-learn) and purity.
* Dense object / part level: for every ground-truth object (or part) mask, a mask-weighted average of the patch
  tokens (the mask resized to the token grid and normalised to sum 1; walmer2023 resizes with PIL's bicubic
  filter, ``resample="area"`` uses exact fractional coverage instead), then k-means with k = 80.

walmer2023 ran scikit-learn's KMeans with its defaults of the time (k-means++, ``n_init=10``); vitscope fixes
``n_init=10`` so newer scikit-learn versions (``n_init="auto"``) give the same clustering.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitscope.analysis.api import OptionError, Options, Result, tidy_table
from vitscope.analysis.similarity.cka import as_features

DEFAULT_K = 50            # walmer2023, image-level clustering (ImageNet-50)
DEFAULT_DENSE_K = 80      # walmer2023, object / part clustering
DEFAULT_SEED = 0          # walmer2023: KMeans(random_state=0)
DEFAULT_N_INIT = 10       # scikit-learn's default when walmer2023 was written
METRICS = ("nmi", "ari", "purity")


# ----------------------------------------------------------------------------- scores
def purity_score(labels_true: Any, labels_pred: Any) -> float:
    """Fraction of samples whose cluster's majority class is their class."""
    t, p = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise ValueError(f"labels_true has {t.size} entries but labels_pred has {p.size}")
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    table = np.zeros((pi.max() + 1, ti.max() + 1), dtype=np.int64)                     # clusters x classes
    np.add.at(table, (pi, ti), 1)
    return float(table.max(axis=1).sum() / t.size)


def _labels(y: Any, name: str) -> np.ndarray:
    y = np.asarray(y.cpu() if hasattr(y, "cpu") else y).reshape(-1)
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    return y


def cluster_scores(labels_true: Any, labels_pred: Any) -> dict[str, float]:
    """NMI, ARI (scikit-learn) and purity of a clustering against ground-truth labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t, p = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise ValueError(f"labels_true has {t.size} entries but labels_pred has {p.size}")
    return {"nmi": float(normalized_mutual_info_score(t, p)), "ari": float(adjusted_rand_score(t, p)),
            "purity": purity_score(t, p)}


def kmeans(features: Any, k: int = DEFAULT_K, seed: int = DEFAULT_SEED, n_init: int = DEFAULT_N_INIT) -> np.ndarray:
    """Cluster ids from scikit-learn KMeans (k-means++, fixed seed) on (n, d) features."""
    from sklearn.cluster import KMeans

    x = as_features(features, "features").cpu().numpy()
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k={k} clusters need at least k samples, got {x.shape[0]}; lower k (--clusters)")
    return KMeans(n_clusters=k, random_state=seed, n_init=n_init).fit(x).labels_


def cluster_and_score(features: Any, labels: Any, k: int = DEFAULT_K, seed: int = DEFAULT_SEED,
                      n_init: int = DEFAULT_N_INIT) -> dict[str, float]:
    """k-means on ``features`` then :func:`cluster_scores` against ``labels``."""
    lab = _labels(labels, "labels")
    n = (features.shape[0] if hasattr(features, "shape") else len(features))
    if n != lab.size:
        raise ValueError(f"features hold {n} samples but labels hold {lab.size}")
    return cluster_scores(lab, kmeans(features, k, seed, n_init))


def blockwise_cluster_scores(features: Sequence[Any] | Mapping[str, Any], labels: Any, k: int = DEFAULT_K,
                             seed: int = DEFAULT_SEED, n_init: int = DEFAULT_N_INIT,
                             progress: bool = False) -> dict[str, np.ndarray]:
    """Scores for every block: ``features`` one (n, d) array per block -> {"nmi": (L,), "ari": (L,), "purity": (L,)}."""
    feats = list(features.values()) if isinstance(features, Mapping) else list(features)
    if not feats:
        raise ValueError("no blocks to cluster")
    it: Iterable = feats
    if progress:
        from tqdm import tqdm
        it = tqdm(feats, desc="k-means", unit="block")
    rows = [cluster_and_score(f, labels, k, seed, n_init) for f in it]
    return {m: np.array([r[m] for r in rows]) for m in METRICS}


# ----------------------------------------------------------------------------- token reductions
def reduce_tokens(tokens: Any, layout=None, mode: str = "cls") -> np.ndarray:
    """(n, T, D) tokens -> (n, D): ``"cls"`` the CLS token, ``"mean"`` the mean of the patch tokens.

    Positions come from ``layout`` (a :class:`~vitscope.models.layout.TokenLayout`); without one, token 0 is
    CLS and the rest are patches.
    """
    t = np.asarray(tokens.detach().cpu() if hasattr(tokens, "detach") else tokens)
    if t.ndim != 3:
        raise ValueError(f"tokens must be (n, T, D), got shape {t.shape}")
    if mode == "cls":
        idx = 0 if layout is None else layout.index_of("cls")
        return t[:, idx]
    if mode == "mean":
        sl = slice(1, None) if layout is None else layout.patches
        return t[:, sl].mean(axis=1)
    raise ValueError(f"token mode for clustering must be 'cls' or 'mean', got {mode!r}")


# ----------------------------------------------------------------------------- dense object / part features
def token_mask_weights(mask: Any, grid: tuple[int, int], resample: str = "bicubic",
                       center_crop: bool = False) -> np.ndarray | None:
    """One binary mask (H, W) -> weights on the token grid (rows, cols) summing to 1, or None if it vanishes.

    ``resample="bicubic"`` (walmer2023): PIL bicubic resize of the 0/255 mask, clipped to [0, 255];
    ``"area"``: the exact fraction of each patch covered by the mask (box average; needs H, W divisible by
    the grid or uses PIL's box filter otherwise). ``center_crop`` crops the mask to a centred square first,
    as walmer2023 does when the model input was centre-cropped.
    """
    from PIL import Image

    m = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {m.shape}")
    m = (m > 0).astype(np.uint8)
    if center_crop:
        h, w = m.shape
        if h < w:
            s = (w - h) // 2
            m = m[:, s:s + h]
        else:
            s = (h - w) // 2
            m = m[s:s + w, :]
    rows, cols = grid
    if resample == "bicubic":
        wgt = np.asarray(Image.fromarray(m * 255).resize((cols, rows), Image.Resampling.BICUBIC), dtype=np.float64)
    elif resample == "area":
        h, w = m.shape
        if h % rows == 0 and w % cols == 0:
            wgt = m.reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3)).astype(np.float64)
        else:
            img = Image.fromarray(m.astype(np.float32))
            wgt = np.asarray(img.resize((cols, rows), Image.Resampling.BOX), dtype=np.float64)
    else:
        raise ValueError(f"resample must be 'bicubic' (walmer2023) or 'area', got {resample!r}")
    total = wgt.sum()
    if total <= 0:
        return None
    return wgt / total


def object_features(patch_tokens: Any, masks: Any, labels: Sequence[int], grid: tuple[int, int] | None = None,
                    resample: str = "bicubic", center_crop: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mask-weighted averages of one image's patch tokens, one per ground-truth object or part.

    Args:
        patch_tokens: (N, D) patch tokens in row-major grid order, or (L, N, D) / (L, rows, cols, D) for L
            blocks at once (then the result is (L, K', D)).
        masks: (K, H, W) binary masks (or a list of (H, W) masks), one per object / part, in image pixels.
        labels: K class labels.
    Returns ``(features, labels)`` for the masks that still cover at least one token after resizing.
    """
    t = np.asarray(patch_tokens.detach().cpu() if hasattr(patch_tokens, "detach") else patch_tokens, np.float64)
    squeeze = t.ndim == 2
    if t.ndim == 2:
        t = t[None]                                                                    # 1, N, D
    elif t.ndim == 4:
        grid = (t.shape[1], t.shape[2])
        t = t.reshape(t.shape[0], -1, t.shape[-1])                                     # L, N, D
    elif t.ndim != 3:
        raise ValueError(f"patch tokens must be (N, D), (L, N, D) or (L, rows, cols, D), got shape {t.shape}")
    n_tok = t.shape[1]
    if grid is None:
        side = int(round(np.sqrt(n_tok)))
        if side * side != n_tok:
            raise ValueError(f"{n_tok} patch tokens do not form a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    if grid[0] * grid[1] != n_tok:
        raise ValueError(f"grid {grid} has {grid[0] * grid[1]} cells but there are {n_tok} patch tokens")
    ms = list(masks) if not hasattr(masks, "ndim") or masks.ndim == 3 else [masks]
    labels = list(np.asarray(labels).reshape(-1))
    if len(ms) != len(labels):
        raise ValueError(f"got {len(ms)} masks but {len(labels)} labels")
    feats, labs = [], []
    for m, lab in zip(ms, labels):
        w = token_mask_weights(m, grid, resample, center_crop)
        if w is None:
            continue
        feats.append(np.einsum("n,lnd->ld", w.reshape(-1), t))                        # L, D
        labs.append(lab)
    d = t.shape[-1]
    if not feats:
        out = np.zeros((t.shape[0], 0, d))
    else:
        out = np.stack(feats, axis=1)                                                  # L, K', D
    return (out[0] if squeeze else out), np.asarray(labs)


def dense_cluster_scores(object_feats: Sequence[Any] | Mapping[str, Any], labels: Any, k: int = DEFAULT_DENSE_K,
                         seed: int = DEFAULT_SEED, n_init: int = DEFAULT_N_INIT,
                         progress: bool = False) -> dict[str, np.ndarray]:
    """Per-block k-means (default k = 80) on object / part features, scored against their labels."""
    return blockwise_cluster_scores(object_feats, labels, k, seed, n_init, progress)


# ----------------------------------------------------------------------------- from models, datasets and stores
def model_cluster_scores(model, data, token_mode: str = "cls", hooks: Sequence[str] | None = None,
                         k: int = DEFAULT_K, seed: int = DEFAULT_SEED, n_init: int = DEFAULT_N_INIT,
                         batch_size: int = 64, limit: int | None = None, progress: bool = False
                         ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-block k-means scores of a model over a labelled dataset (CLS or mean-pooled patch tokens).

    Returns ``({"nmi": (L,), "ari": (L,), "purity": (L,)}, hook names)``. Unlabelled images (-1) are an error.
    """
    from vitscope.analysis.similarity.compare import block_hooks, collect_features

    if token_mode not in ("cls", "mean"):
        raise ValueError(f"clustering uses the CLS token or the mean of the patch tokens ('cls' or 'mean'), "
                         f"got {token_mode!r}")
    hooks = list(hooks or block_hooks(model.cfg.depth))
    feats, labels = collect_features(model, data, hooks, token_mode, batch_size, limit, progress)
    _check_labels(labels)
    return blockwise_cluster_scores([feats[h] for h in hooks], labels, k, seed, n_init, progress), hooks


def _check_labels(labels: np.ndarray) -> None:
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} of {labels.size} samples have no label (-1); clustering scores "
                         f"need a labelled dataset (class folders, a list with labels, or synthetic)")


def store_cluster_scores(store, site: str = "resid_post", reduction: str = "cls",
                         layers: Sequence[int] | None = None, k: int = DEFAULT_K, seed: int = DEFAULT_SEED,
                         n_init: int = DEFAULT_N_INIT, progress: bool = False
                         ) -> tuple[dict[str, np.ndarray], list[int]]:
    """Per-layer k-means scores from a feature store and its labels (skipped samples left out)."""
    from vitscope.features.access import open_store_any, store_features

    s = open_store_any(store)
    valid = np.asarray(s.valid)
    labels = np.asarray(s.labels)[valid]
    _check_labels(labels)
    layers = list(s.layers if layers is None else layers)
    feats = store_features(s, site, reduction, layers, valid)
    return blockwise_cluster_scores([feats[str(layer)] for layer in layers], labels, k, seed, n_init, progress), layers


def dataset_masks(source, i: int, level: str = "object") -> tuple[list[np.ndarray], list[int]]:
    """Ground-truth masks of image ``i`` of a dataset source at ``level`` "object" or "part" -> (masks, labels).

    A source may define ``masks(i, level)`` (COCO: instances by category; PartImageNet: the object by
    super-category, or its parts); the synthetic benchmark's parts are labelled
    ``class * n_parts + part`` so that a part of one class never shares a label with another class's part.
    """
    if level not in ("object", "part"):
        raise ValueError(f"level must be 'object' or 'part', got {level!r}")
    while hasattr(source, "base") and hasattr(source, "indices"):                      # a subset
        i, source = source.indices[i], source.base
    source = getattr(source, "task", None) or source          # the files of a COCO / PartImageNet structure
    if hasattr(source, "masks"):
        masks, labels = source.masks(i, level)
        return list(masks), [int(v) for v in labels]
    if hasattr(source, "sample"):
        from vitscope.data.synthetic.shapes import N_PARTS

        s = source.sample(i)
        if level == "object":
            return [np.asarray(s.mask)], [int(s.label)]
        parts = np.asarray(s.parts)
        out = [(parts == p, int(s.label) * N_PARTS + p) for p in range(N_PARTS) if (parts == p).any()]
        return [m for m, _ in out], [lab for _, lab in out]
    raise ValueError(f"the dataset ({getattr(source, 'description', type(source).__name__)}) has no object / part "
                     f"masks; use the synthetic benchmark, COCO or PartImageNet (`vitscope cluster --dense ... --coco/--partimagenet`)")


def _align_mask(mask: np.ndarray, cfg) -> np.ndarray:
    """Put a mask through the same resize + centre crop as the image (nearest neighbour)."""
    from dataclasses import replace

    from PIL import Image

    from vitscope.models.preprocess import resize_crop

    img = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    return np.asarray(resize_crop(img, replace(cfg, interpolation="nearest"))) > 127


def model_object_features(model, data, level: str = "object", hooks: Sequence[str] | None = None,
                          resample: str = "bicubic", batch_size: int = 64, limit: int | None = None,
                          progress: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Mask-weighted patch-token averages per ground-truth object / part, at every hook -> ({hook: (K, D)}, (K,))."""
    import torch

    from vitscope.analysis.similarity.compare import block_hooks
    from vitscope.features.access import image_batches, layout_for, preprocess_config

    hooks = list(hooks or block_hooks(model.cfg.depth))
    cfg = preprocess_config(model)
    source = data.source if hasattr(data, "source") else data
    feats: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    it = image_batches([model], data, batch_size, limit, min_size=1)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"{level} features", unit="batch")
    for images, _, idx in it:
        x = images[0].to(model.device, model.dtype)
        grid = (x.shape[-2] // model.cfg.patch_size, x.shape[-1] // model.cfg.patch_size)
        with torch.no_grad():
            _, cache = model.run_with_cache(x, names_filter=hooks)
        toks = torch.stack([cache[h][:, layout_for(model, h, grid).patches] for h in hooks], dim=1)  # B, L, Np, D
        toks = toks.float().cpu().numpy()
        for b, i in enumerate(idx.tolist()):
            masks, labels = dataset_masks(source, i, level)
            masks = [_align_mask(m, cfg) for m in masks]
            f, lab = object_features(toks[b], masks, labels, grid, resample)
            if lab.size:
                feats.append(f)                                                        # L, K, D
                labs.append(lab)
    if not labs:
        raise ValueError(f"no {level} mask covered any token; check the dataset's masks")
    allf = np.concatenate(feats, axis=1)
    return {h: allf[j] for j, h in enumerate(hooks)}, np.concatenate(labs)


def model_dense_cluster_scores(model, data, level: str = "object", hooks: Sequence[str] | None = None,
                               k: int = DEFAULT_DENSE_K, seed: int = DEFAULT_SEED, n_init: int = DEFAULT_N_INIT,
                               resample: str = "bicubic", batch_size: int = 64, limit: int | None = None,
                               progress: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """Dense object / part clustering (walmer2023): per-block k-means (default k = 80) on mask-pooled features."""
    from vitscope.analysis.similarity.compare import block_hooks

    hooks = list(hooks or block_hooks(model.cfg.depth))
    feats, labels = model_object_features(model, data, level, hooks, resample, batch_size, limit, progress)
    return dense_cluster_scores([feats[h] for h in hooks], labels, k, seed, n_init, progress), hooks


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class ClusterOptions(Options):
    """Options of :func:`evaluate` (``vitscope cluster``, the study analysis ``cluster``)."""

    tokens: str = "cls"                      # cls or mean (of the patch tokens)
    k: int | None = None                     # clusters; default walmer2023's: 50 (images), 80 (objects / parts)
    seed: int = DEFAULT_SEED                 # k-means random_state (walmer2023: 0)
    n_init: int = DEFAULT_N_INIT             # k-means restarts
    dense: str | None = None                 # object or part: cluster mask-pooled object / part features
    resample: str = "bicubic"                # dense: mask to token grid, bicubic (walmer2023) or area
    sites: tuple[str, ...] = ("resid_post",)  # block sites read from models
    site: str = "resid_post"                 # feature-store site read (stores)
    batch_size: int = 64
    limit: int | None = None                 # at most this many images
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        from vitscope.analysis.similarity.compare import site_hooks

        self.check_choice("tokens", ("cls", "mean"))
        self.check_int("k", optional=True)
        self.check_int("seed", minimum=0)
        self.check_int("n_init")
        if self.dense is not None:
            self.check_choice("dense", ("object", "part"))
        self.check_choice("resample", ("bicubic", "area"))
        self.sites = tuple(self.sites.split(",")) if isinstance(self.sites, str) else tuple(self.sites)
        try:
            site_hooks(self.sites)
        except ValueError as e:
            raise OptionError("sites", str(e)) from None
        self.check_int("batch_size")
        self.check_int("limit", optional=True)

    @property
    def clusters(self) -> int:
        return self.k or (DEFAULT_DENSE_K if self.dense else DEFAULT_K)


def evaluate(models_or_stores, data=None, options: ClusterOptions | None = None, **overrides) -> Result:
    """k-means per block scored against the labels by NMI, ARI and purity (walmer2023), per model.

    Args:
        models_or_stores: ``{label: HookedViT}`` (or one model / a list), feature stores with labels (paths or
            opened stores; a list or ``{label: store}``), or features in memory ``{label: {block: (n, d)}}``.
        data: with models, a labelled dataset (spec string or ``ImageDataset``; with ``dense``, one whose images
            carry object / part masks: the synthetic benchmark, COCO, PartImageNet); with features, their labels.
        options: :class:`ClusterOptions` (keyword overrides are applied on top).

    The table has one row per model x block x metric (``nmi``, ``ari``, ``purity``).
    """
    from vitscope.analysis.similarity.compare import (PanelResult, block_hooks, data_label, hook_block, n_images,
                                                      similarity_inputs, site_hooks, token_hooks)
    from vitscope.features.access import open_dataset_any

    opts = (options or ClusterOptions()).replace(**overrides) if overrides else (options or ClusterOptions())
    k = opts.clusters
    kind, items = similarity_inputs(models_or_stores)
    scores, where, notes = {}, {}, []
    n, label_of_data = None, data_label(data)
    if kind == "stores":
        if opts.dense:
            raise OptionError("dense", "`dense` needs the images and their masks: run it on models with data")
        for name, st in items.items():
            scores[name], layers = store_cluster_scores(st, opts.site, opts.tokens, None, k, opts.seed, opts.n_init,
                                                        opts.progress)
            where[name] = [(int(layer), None) for layer in layers]
        first = next(iter(items.values()))
        n, label_of_data = int(np.asarray(first.valid).sum()), data_label(first)
    elif kind == "features":
        labels = _labels(data, "labels (the data of in-memory features)")
        for name, f in items.items():
            scores[name] = blockwise_cluster_scores(list(f.values()), labels, k, opts.seed, opts.n_init)
            where[name] = [hook_block(b) for b in f]
        n = labels.size
    else:
        if data is None:
            raise ValueError("clustering models needs labelled images: data (a dataset spec or ImageDataset)")
        ds = open_dataset_any(data)
        for name, m in items.items():
            if opts.dense:
                hooks = block_hooks(m.cfg.depth, site_hooks(opts.sites))
                scores[name], _ = model_dense_cluster_scores(m, ds, opts.dense, hooks, k, opts.seed, opts.n_init,
                                                             opts.resample, opts.batch_size, opts.limit,
                                                             opts.progress)
            else:
                hooks, note = token_hooks(m, opts.tokens, opts.sites)
                notes += [note] if note and note not in notes else []
                scores[name], _ = model_cluster_scores(m, ds, opts.tokens, hooks, k, opts.seed, opts.n_init,
                                                       opts.batch_size, opts.limit, opts.progress)
            where[name] = [hook_block(h) for h in hooks]
        n, label_of_data = n_images(ds, opts.limit), label_of_data or data_label(ds)
    rows = [{"model": name, "block": b, "site": site, "metric": met, "value": float(sc[met][i])}
            for name, sc in scores.items() for i, (b, site) in enumerate(where[name]) for met in METRICS]
    for r in rows:
        if r["site"] is None:
            del r["site"]
    table = tidy_table(rows, "cluster", opts, dataset=label_of_data)
    best = {name: (where[name][int(sc["nmi"].argmax())][0], float(sc["nmi"].max())) for name, sc in scores.items()}
    top = max(best, key=lambda name: best[name][1])
    what = f"{opts.dense} features" if opts.dense else f"{opts.tokens} tokens"
    summary = (f"k-means (k={k}) on the {what} of {len(scores)} model(s){f', {n} images' if n else ''}: best NMI "
               f"{best[top][1]:.3f} ({top}, block {best[top][0]})")
    return PanelResult("cluster", table, summary, opts, panels=_panels,
                       arrays={"scores": scores, "blocks": {m: [b for b, _ in w] for m, w in where.items()}},
                       meta={"k": k, "best": best, "notes": notes, "n_images": n, "data": label_of_data})


def _panels(result) -> dict:
    """One figure: NMI, ARI and purity per block, one line per model (the model's own block numbers)."""
    o, m = result.options, result.meta
    blocks = {name: b for name, b in result.arrays["blocks"].items() if len(set(b)) == len(b)}
    what = f"{o.dense} clustering" if o.dense else f"{o.tokens} clustering"
    kw = dict(title=f"{what} (k={m['k']})", blocks=blocks or None, data=m["data"], n_images=m["n_images"],
              tokens=None if o.dense else o.tokens,
              meta=dict(k=m["k"], seed=o.seed, n_init=o.n_init, tokens=o.tokens, dense=o.dense))
    return {f"cluster_{o.dense or o.tokens}": ("curves", result.arrays["scores"], kw)}
