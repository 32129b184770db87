"""Comparisons built on CKA / RSA: layer x layer (one model or two), last layer across many models, residual CKA.

Inputs are either arrays (one (n, d) or (n, T, D) array per layer, e.g. read from a feature store) or a
:class:`~vitscope.models.vit.HookedViT` plus images (a :class:`~vitscope.data.ImageDataset`, an (N, 3, H, W)
tensor or an iterable of batches) streamed through :class:`MinibatchCKA`, so memory does not grow with the
number of images.

Token modes (where the tokens sit comes from ``model.token_layout``, never from a hard-coded ``1:``):

* ``"cls"``      the CLS token (walmer2023 "cls")
* ``"mean"``     the mean of the patch tokens
* ``"all"``      every token, flattened per image (walmer2023 "all", its default)
* ``"patches"``  the patch tokens, flattened per image (walmer2023 "spat")

Presets (:data:`PRESETS`): ``"default"`` is full-data unbiased linear CKA on raw features; ``"ciernik2025"`` the
same on L2-normalised features; ``"walmer2023"`` minibatch unbiased CKA with the min-max kernel quirk, all tokens, on
the ``ln1`` / ``ln2`` outputs of every block. Old spellings are still accepted
(:data:`PRESET_ALIASES`).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vitscope.analysis.api import Result, data_label  # noqa: F401  (data_label: kept for callers)
from vitscope.analysis.similarity.cka_core import BANDWIDTH_ALIASES, cka_matrix
from vitscope.analysis.similarity.minibatch import MinibatchCKA
from vitscope.analysis.similarity.rsa_core import rsa_matrix
from vitscope.features.access import (TOKEN_MODES, LazyRows, common_valid, image_batches, layout_for,  # noqa: F401
                                      model_features, open_store_any,
                                      reduce_tokens, store_features, store_name)
from vitscope.features.access import preprocess_config  # noqa: F401  (old import path, kept for callers)

DEFAULT_SITE = "hook_resid_post"
WALMER2023_SITES = ("ln1.hook_normalized", "ln2.hook_normalized")
RESIDUAL_HOOKS = {"attn": ("hook_resid_pre", "hook_attn_out"), "mlp": ("hook_resid_mid", "hook_mlp_out")}
MLP_SKIPS = ("resid_mid", "resid_pre")


def residual_hooks(mlp_skip: str = "resid_mid") -> dict[str, tuple[str, str]]:
    """(skip, branch) hook suffixes per branch. The MLP's skip input is ``hook_resid_mid`` (walmer2023, default:
    the stream the MLP is added to); ``mlp_skip="resid_pre"`` uses the block input for both branches."""
    if mlp_skip not in MLP_SKIPS:
        raise ValueError(f"mlp_skip must be one of {MLP_SKIPS}, got {mlp_skip!r}")
    return {"attn": RESIDUAL_HOOKS["attn"], "mlp": (f"hook_{mlp_skip}", "hook_mlp_out")}

PRESETS: dict[str, dict[str, Any]] = {
    # the default: exact full-data CKA (linear kernel, unbiased HSIC), features as they come
    "default": dict(kernel="linear", unbiased=True, minmax=False, normalize=False, minibatch=False,
                    token_mode="cls", sites=(DEFAULT_SITE,)),
    # ciernik2025: full-data CKA on L2-normalised features (linear or RBF), unbiased by default
    "ciernik2025": dict(kernel="linear", unbiased=True, minmax=False, normalize=True, minibatch=False,
                        token_mode="cls", sites=(DEFAULT_SITE,)),
    # walmer2023: minibatch unbiased HSIC with min-max scaled linear kernels, all tokens, ln1/ln2 outputs
    "walmer2023": dict(kernel="linear", unbiased=True, minmax=True, normalize=False, minibatch=True,
                       token_mode="all", sites=WALMER2023_SITES),
}
PRESET_ALIASES = {"seed000": "ciernik2025", "seed002": "walmer2023"}      # old spellings, still accepted


# ----------------------------------------------------------------------------- results
@dataclass
class SimilarityResult:
    """A similarity matrix with the names of its rows and columns and how it was computed."""

    matrix: np.ndarray
    rows: list[str]
    cols: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """Tidy rows ``{"row", "col", "value"}``."""
        return [{"row": r, "col": c, "value": float(self.matrix[i, j])}
                for i, r in enumerate(self.rows) for j, c in enumerate(self.cols)]

    def __repr__(self) -> str:
        return f"SimilarityResult({self.matrix.shape[0]}x{self.matrix.shape[1]}, {self.meta.get('metric', '')})"


@dataclass
class ResidualResult:
    """Residual CKA of one model: skip input x branch output matrices and the norm ratios ||skip|| / ||branch||.

    ``norm_ratios[branch][tokens]`` is a (depth,) array (mean over images) for branch "attn" / "mlp" and tokens
    "all" / "cls" / "patches" ("cls" absent when the model has no CLS token).
    """

    attn: SimilarityResult
    mlp: SimilarityResult
    norm_ratios: dict[str, dict[str, np.ndarray]]
    meta: dict[str, Any] = field(default_factory=dict)

    def diagonal(self, branch: str) -> np.ndarray:
        """CKA between the skip input and the branch output of the same block, per block."""
        return np.diag(getattr(self, branch).matrix).copy()


@dataclass
class PanelResult(Result):
    """A :class:`~vitscope.analysis.api.Result` whose figures are similarity panels (heat maps, grids, residual
    CKA, clustering curves): ``panels(result) -> {file stem: (kind, data, keywords)}`` (kinds of
    :func:`vitscope.viz.similarity.draw_panels`). :meth:`save` writes each with the numbers behind it (``.npy``
    arrays, ``.json`` settings, ``.csv`` rows), as every similarity figure is written."""

    panels: Callable[[Result], dict] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.draw is None and self.panels is not None:
            self.draw = _draw_panels

    def save(self, out, formats: Sequence[str] = ("png",), stem: str | None = None, figures: bool = True,
             table: bool = True) -> list:
        from pathlib import Path

        from vitscope.viz.similarity import save_panels

        written = super().save(out, formats, stem, figures=False, table=table)
        if figures and self.panels is not None:
            written += save_panels(self.panels(self), Path(out), formats)
        return written


def _draw_panels(result: PanelResult) -> dict:
    from vitscope.viz.similarity import draw_panels

    return draw_panels(result.panels(result))


def similarity_inputs(models_or_stores, what: str = "models or feature stores") -> tuple[str, dict]:
    """``("models", {label: model})``, ``("stores", {label: store})`` or ``("features", {label: {layer: (n, d)}})``
    from a mapping, a list or one item; store labels are their model names (primed when repeated)."""
    items = models_or_stores
    if isinstance(items, Mapping) and items and all(not isinstance(v, Mapping) for v in items.values()) and \
            not all(_is_model(v) or _is_store(v) for v in items.values()):
        items = {"model": items}                                    # one model's {layer: features}
    if not isinstance(items, Mapping):
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        named = {}
        for x in items:
            name = store_name(open_store_any(x)) if _is_store(x) else _model_name(x)
            while name in named:
                name += "'"
            named[name] = x
        items = named
    kinds = {"models" if _is_model(v) else "stores" if _is_store(v) else "features" if isinstance(v, Mapping)
             else "?" for v in items.values()}
    if len(kinds) != 1 or "?" in kinds:
        raise ValueError(f"give one kind of input: {what}")
    kind = kinds.pop()
    if kind == "stores":
        items = {k: open_store_any(v) for k, v in items.items()}
    return kind, dict(items)


def _is_model(x) -> bool:
    return hasattr(x, "token_layout") and hasattr(x, "run_with_cache")


def _is_store(x) -> bool:
    return isinstance(x, (str, bytes)) or hasattr(x, "__fspath__") or (hasattr(x, "reductions") and hasattr(x, "valid"))


def _model_name(m) -> str:
    return str((getattr(m, "meta", None) or {}).get("name") or "model")


def n_images(ds, limit: int | None) -> int | None:
    n = len(ds) if hasattr(ds, "__len__") else None
    return n if n is None or limit is None else min(n, limit)


# ----------------------------------------------------------------------------- names and tokens
def token_blocks(model, token_mode: str) -> list[int]:
    """The blocks whose activations have what ``token_mode`` reads: every block, except for ``"cls"`` on a model
    whose CLS enters late (cls-register), where it is the blocks from ``cfg.cls_block`` on. A model without CLS is a
    clear error naming ``--tokens mean``."""
    cfg = model.cfg
    if token_mode != "cls":
        return list(range(cfg.depth))
    if not cfg.class_token:
        raise ValueError("this model has no CLS token: use --tokens mean (mean of the patch tokens)")
    return list(range(int(getattr(cfg, "cls_block", 0) or 0), cfg.depth))


def block_hooks(depth: int, sites: str | Sequence[str] = DEFAULT_SITE, blocks: Iterable[int] | None = None
                ) -> list[str]:
    """``blocks.{i}.{site}`` for every block (and every site, interleaved per block, as walmer2023 lists them)."""
    sites = [sites] if isinstance(sites, str) else list(sites)
    idx = range(depth) if blocks is None else list(blocks)
    out = []
    for i in idx:
        if not 0 <= i < depth:
            raise ValueError(f"block {i} does not exist in a model of depth {depth}")
        out += [f"blocks.{i}.{s}" for s in sites]
    return out


SITE_HOOKS = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "ln1": "ln1.hook_normalized", "ln2": "ln2.hook_normalized", "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}


def check_sites_option(options, name: str = "sites") -> None:
    """An options dataclass's ``sites`` field as a tuple of known sites (a comma-separated string is split);
    an unknown site is an OptionError naming the field."""
    from vitscope.analysis.api import OptionError

    v = getattr(options, name)
    setattr(options, name, tuple(v.split(",")) if isinstance(v, str) else tuple(v))
    try:
        site_hooks(getattr(options, name))
    except ValueError as e:
        raise OptionError(name, str(e)) from None


def site_hooks(sites: str | Sequence[str]) -> list[str]:
    """Block sites by their short names (``"resid_post,ln1"`` or a list; hook suffixes are accepted too) -> hook
    suffixes (``hook_resid_post``, ``ln1.hook_normalized``)."""
    names = {v: k for k, v in SITE_HOOKS.items()}
    items = sites.split(",") if isinstance(sites, str) else list(sites)
    out = []
    for s in (str(x).strip() for x in items if str(x).strip()):
        if s not in SITE_HOOKS and s not in names:
            raise ValueError(f"unknown site {s!r}; choose among {', '.join(SITE_HOOKS)}")
        out.append(SITE_HOOKS.get(s, s))
    if not out:
        raise ValueError("no block site given; choose among " + ", ".join(SITE_HOOKS))
    return out


def token_hooks(model, token_mode: str, sites: str | Sequence[str] = ("resid_post",)) -> tuple[list[str], str | None]:
    """(hooks, note): the block hooks of ``sites`` at the blocks that have what ``token_mode`` reads
    (:func:`token_blocks`), and a note when a late CLS leaves out the first blocks."""
    blocks = token_blocks(model, token_mode)
    note = None
    if blocks and blocks[0] > 0:
        note = (f"CLS enters at block {blocks[0]}; using blocks {blocks[0]}-{blocks[-1]} (--tokens mean uses every "
                f"block)")
    return block_hooks(model.cfg.depth, site_hooks(sites), blocks), note


def hook_block(name: str) -> tuple[int | None, str | None]:
    """A layer's name as the results table keeps it: ``"3"`` -> (3, None), ``"3.ln1"`` -> (3, "ln1"),
    ``"blocks.3.hook_resid_post"`` -> (3, None)."""
    short = short_name(name) if str(name).startswith("blocks.") else str(name)
    head, _, site = short.partition(".")
    try:
        return int(head), (site or None)
    except ValueError:
        return None, short


def short_name(hook: str) -> str:
    """``blocks.3.ln1.hook_normalized`` -> ``3.ln1``; ``blocks.3.hook_resid_post`` -> ``3``."""
    m = re.match(r"blocks\.(\d+)\.(.*)$", hook)
    if not m:
        return hook.replace("hook_", "")
    rest = m.group(2)
    if rest in (DEFAULT_SITE,):
        return m.group(1)
    rest = rest.replace(".hook_normalized", "").replace("hook_", "")
    return f"{m.group(1)}.{rest}"


# ----------------------------------------------------------------------------- from arrays (e.g. a store)
def preset_options(preset: str | None, **overrides) -> dict[str, Any]:
    """The options of a preset (:data:`PRESETS`, or an old spelling of :data:`PRESET_ALIASES`), with explicit
    (non-None) overrides applied."""
    if preset is None:
        return {k: v for k, v in overrides.items() if v is not None}
    preset = PRESET_ALIASES.get(preset, preset)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    out = dict(PRESETS[preset])
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def _rbf_meta(kernel: str, sigma, threshold: float, bandwidth: str) -> dict:
    """The RBF bandwidth options as recorded beside a result (nothing for the linear kernel)."""
    if kernel != "rbf":
        return {}
    return {"rbf_bandwidth": "fixed" if sigma is not None else BANDWIDTH_ALIASES.get(bandwidth, bandwidth),
            "rbf_threshold": threshold}


def layer_cka(feats: Sequence[Any] | Mapping[str, Any], feats2: Sequence[Any] | Mapping[str, Any] | None = None,
              kernel: str = "linear", unbiased: bool = True, sigma: float | None = None, minmax: bool = False,
              normalize: bool = False, method: str = "auto", progress: bool = False, threshold: float = 1.0,
              bandwidth: str = "kornblith") -> SimilarityResult:
    """Full-data CKA, layer x layer within one model (``feats2=None``) or between two models.

    ``feats``: a dict ``{layer name: (n, d) array}`` or a list of arrays; lazy arrays are read one at a time.
    """
    rows = list(feats) if isinstance(feats, Mapping) else [f"layer{i}" for i in range(len(feats))]
    cols = rows if feats2 is None else (list(feats2) if isinstance(feats2, Mapping)
                                        else [f"layer{i}" for i in range(len(feats2))])
    m = cka_matrix(feats, feats2, kernel=kernel, unbiased=unbiased, sigma=sigma, minmax=minmax,
                   normalize=normalize, method=method, progress=progress, threshold=threshold, bandwidth=bandwidth)
    return SimilarityResult(m, rows, cols, dict(metric="cka", kernel=kernel, unbiased=unbiased, sigma=sigma,
                                                minmax=minmax, normalize=normalize, minibatch=False,
                                                **_rbf_meta(kernel, sigma, threshold, bandwidth)))


def cross_model_cka(feats: Mapping[str, Any], **kw) -> SimilarityResult:
    """CKA between one layer (e.g. the last) of many models: ``{model name: (n, d)}`` -> (M, M)."""
    res = layer_cka(feats, **kw)
    res.meta["comparison"] = "models"
    return res


def layer_rsa(feats: Sequence[Any] | Mapping[str, Any], feats2: Sequence[Any] | Mapping[str, Any] | None = None,
              rdm_method: str = "correlation", compare: str = "spearman") -> SimilarityResult:
    rows = list(feats) if isinstance(feats, Mapping) else [f"layer{i}" for i in range(len(feats))]
    cols = rows if feats2 is None else (list(feats2) if isinstance(feats2, Mapping)
                                        else [f"layer{i}" for i in range(len(feats2))])
    m = rsa_matrix(feats, feats2, rdm_method=rdm_method, compare=compare)
    return SimilarityResult(m, rows, cols, dict(metric="rsa", rdm=rdm_method, compare=compare))


def norm_ratios(skip: torch.Tensor, branch: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    """Per image ||skip|| / ||branch|| (Frobenius over tokens x width) for all tokens, CLS and patches -> (B,) each."""
    def ratio(a, b, what):
        nb = b.norm(dim=tuple(range(1, b.ndim)))
        if bool((nb == 0).any()):
            raise ValueError(f"a branch output is exactly zero ({what} tokens) for some image: ||skip|| / ||branch|| "
                             f"is undefined")
        return a.norm(dim=tuple(range(1, a.ndim))) / nb

    s, b = skip.to(torch.float64), branch.to(torch.float64)
    out = {"all": ratio(s, b, "all"), "patches": ratio(s[:, layout.patches], b[:, layout.patches], "patch")}
    if layout.cls is not None:
        out["cls"] = ratio(s[:, layout.cls], b[:, layout.cls], "CLS")
    return out


def _ratio_arrays(per_block: Sequence[Mapping[str, tuple[float, int]]]) -> dict[str, np.ndarray]:
    """``[{tokens: (sum over images, image count)}]`` per block -> ``{tokens: (depth,) mean}``; NaN for the blocks
    where those tokens do not exist (CLS before it enters)."""
    keys = list(dict.fromkeys(k for p in per_block for k in p))
    return {k: np.array([p[k][0] / p[k][1] if k in p and p[k][1] else np.nan for p in per_block]) for k in keys}


def residual_cka(acts: Mapping[str, Sequence[Any]], layouts: Sequence[Any], token_mode: str = "all",
                 kernel: str = "linear", unbiased: bool = True, sigma: float | None = None,
                 minmax: bool = False, mlp_skip: str = "resid_mid", threshold: float = 1.0,
                 bandwidth: str = "kornblith") -> ResidualResult:
    """Residual CKA from arrays: ``acts[hook]`` is a list over blocks of (n, T, D) arrays for the hooks
    ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid`` and ``hook_mlp_out``; ``layouts[i]`` block i's layout."""
    pairs = residual_hooks(mlp_skip)
    need = list(dict.fromkeys(h for pair in pairs.values() for h in pair))
    missing = [h for h in need if h not in acts]
    if missing:
        raise ValueError(f"residual CKA needs activations for {need}; missing {missing}")
    depth = len(acts["hook_resid_pre"])
    mats, ratios = {}, {}
    for branch, (skip_h, out_h) in pairs.items():
        skips = [torch.as_tensor(np.asarray(a)) for a in acts[skip_h]]
        outs = [torch.as_tensor(np.asarray(a)) for a in acts[out_h]]
        xs = {f"{i}": reduce_tokens(s, layouts[i], token_mode) for i, s in enumerate(skips)}
        ys = {f"{i}": reduce_tokens(o, layouts[i], token_mode) for i, o in enumerate(outs)}
        m = cka_matrix(xs, ys, kernel=kernel, unbiased=unbiased, sigma=sigma, minmax=minmax, threshold=threshold,
                       bandwidth=bandwidth)
        mats[branch] = SimilarityResult(m, [f"skip {i}" for i in range(depth)], [f"{branch} {i}" for i in range(depth)],
                                        dict(metric="cka", branch=branch, token_mode=token_mode))
        per = [norm_ratios(s, o, layouts[i]) for i, (s, o) in enumerate(zip(skips, outs))]
        ratios[branch] = _ratio_arrays([{k: (float(v.sum()), v.numel()) for k, v in p.items()} for p in per])
    return ResidualResult(mats["attn"], mats["mlp"], ratios, dict(token_mode=token_mode, minibatch=False,
                                                                  mlp_skip=mlp_skip))


# ----------------------------------------------------------------------------- from feature stores
def store_layer_cka(store, store2=None, site: str = "resid_post", reduction: str = "cls",
                    layers: Sequence[int] | None = None, site2: str | None = None,
                    layers2: Sequence[int] | None = None, **kw) -> SimilarityResult:
    """Full-data CKA layer x layer from one feature store, or between two stores of the same images."""
    s1 = open_store_any(store)
    s2 = None if store2 is None else open_store_any(store2)
    valid = common_valid([s1] if s2 is None else [s1, s2])
    f1 = store_features(s1, site, reduction, layers, valid)
    f2 = None if s2 is None else store_features(s2, site2 or site, reduction, layers2, valid)
    res = layer_cka(f1, f2, **kw)
    res.meta.update(site=site, site2=site2 or site, token_mode=reduction, n_images=int(valid.sum()),
                    models=[store_name(s1)] + ([] if s2 is None else [store_name(s2)]))
    return res


def store_cross_model_cka(stores: Sequence[Any], site: str = "resid_post", reduction: str = "cls",
                          layer: int = -1, **kw) -> SimilarityResult:
    """CKA between one layer (default the last) of several stores over the same images -> (M, M)."""
    ss = [open_store_any(s) for s in stores]
    if len(ss) < 2:
        raise ValueError("comparing models needs at least two feature stores")
    valid = common_valid(ss)
    feats = {}
    for s in ss:
        lay = s.layers[layer] if layer < 0 else layer
        name = store_name(s)
        while name in feats:
            name += "'"
        feats[name] = LazyRows(s[site, lay, reduction], None if valid.all() else valid)
    res = cross_model_cka(feats, **kw)
    res.meta.update(site=site, token_mode=reduction, layer=layer, n_images=int(valid.sum()))
    return res


def store_layer_rsa(store, site: str = "resid_post", reduction: str = "cls", layers: Sequence[int] | None = None,
                    rdm_method: str = "correlation", compare: str = "spearman") -> SimilarityResult:
    s = open_store_any(store)
    res = layer_rsa(store_features(s, site, reduction, layers), rdm_method=rdm_method, compare=compare)
    res.meta.update(site=site, token_mode=reduction, models=[store_name(s)])
    return res


def store_residual_cka(store, token_mode: str = "all", layers: Sequence[int] | None = None, **kw) -> ResidualResult:
    """Residual CKA from a store holding the ``"all"`` reduction of resid_pre, attn_out, resid_mid and mlp_out."""
    from vitscope.models.config import ViTConfig
    from vitscope.models.layout import token_layout

    s = open_store_any(store)
    need = ("resid_pre", "attn_out", "resid_mid", "mlp_out")
    if not set(need) <= set(s.sites) or "all" not in s.reductions:
        raise ValueError(f"residual CKA from a store needs sites {list(need)} with the 'all' reduction; this store "
                         f"has sites {s.sites} and reductions {s.reductions}")
    layers = list(s.layers if layers is None else layers)
    cfg = ViTConfig.from_dict(s.model["config"])
    valid = np.asarray(s.valid)
    acts = {f"hook_{site}": [np.asarray(s[site, layer, "all"])[valid] for layer in layers] for site in need}
    res = residual_cka(acts, [token_layout(cfg, layer) for layer in layers], token_mode=token_mode, **kw)
    res.meta.update(layers=layers, models=[store_name(s)])
    return res


# ----------------------------------------------------------------------------- streamed from models
def _progress(it, on: bool, desc: str):
    if not on:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, unit="batch")


def stream_layer_cka(model, data, model2=None, hooks: Sequence[str] | None = None,
                     hooks2: Sequence[str] | None = None, token_mode: str = "cls", batch_size: int = 256,
                     kernel: str = "linear", sigma: float | None = None, minmax: bool = False,
                     normalize: bool = False, limit: int | None = None, progress: bool = False,
                     names: tuple[str, str] = ("model", "model2"), threshold: float = 1.0,
                     bandwidth: str = "kornblith") -> SimilarityResult:
    """Minibatch CKA, layer x layer, within ``model`` or between ``model`` and ``model2``, over ``data``.

    ``hooks`` default to every block's ``hook_resid_post``. Memory is independent of the number of images.
    """
    hooks = list(hooks or block_hooks(model.cfg.depth))
    models = [model] if model2 is None else [model, model2]
    if model2 is not None:
        hooks2 = list(hooks2 or block_hooks(model2.cfg.depth))
    mb = MinibatchCKA(kernel=kernel, sigma=sigma, minmax=minmax, normalize=normalize, threshold=threshold,
                      bandwidth=bandwidth)
    for images, _, _ in _progress(image_batches(models, data, batch_size, limit), progress, "CKA"):
        fx = model_features(model, images[0], hooks, token_mode)
        fy = None if model2 is None else model_features(model2, images[1], hooks2, token_mode)
        mb.update(fx, fy)
    rows = [short_name(h) for h in hooks]
    cols = rows if model2 is None else [short_name(h) for h in hooks2]
    return SimilarityResult(mb.compute(), rows, cols,
                            dict(metric="cka", kernel=kernel, sigma=sigma, minmax=minmax, normalize=normalize,
                                 unbiased=True, minibatch=True, batch_size=batch_size, token_mode=token_mode,
                                 n_images=mb.n_samples, hooks=hooks, hooks2=hooks2 if model2 is not None else hooks,
                                 models=list(names[:len(models)]), **_rbf_meta(kernel, sigma, threshold, bandwidth)))


def stream_cross_model_cka(models: Mapping[str, Any], data, hooks: Mapping[str, str] | None = None,
                           token_mode: str = "cls", batch_size: int = 256, kernel: str = "linear",
                           sigma: float | None = None, minmax: bool = False, normalize: bool = False,
                           limit: int | None = None, progress: bool = False, threshold: float = 1.0,
                           bandwidth: str = "kornblith") -> SimilarityResult:
    """Minibatch CKA between one layer of each of many models (default: each model's last block output)."""
    names = list(models)
    if len(names) < 2:
        raise ValueError("comparing models needs at least two of them")
    mods = [models[n] for n in names]
    hk = {n: (hooks or {}).get(n) or f"blocks.{models[n].cfg.depth - 1}.{DEFAULT_SITE}" for n in names}
    mb = MinibatchCKA(kernel=kernel, sigma=sigma, minmax=minmax, normalize=normalize, threshold=threshold,
                      bandwidth=bandwidth)
    for images, _, _ in _progress(image_batches(mods, data, batch_size, limit), progress, "CKA"):
        feats = {}
        for n, m, x in zip(names, mods, images):
            feats[n] = model_features(m, x, [hk[n]], token_mode)[hk[n]]
        mb.update(feats)
    return SimilarityResult(mb.compute(), names, names,
                            dict(metric="cka", comparison="models", kernel=kernel, minmax=minmax, unbiased=True,
                                 minibatch=True, batch_size=batch_size, token_mode=token_mode, hooks=hk,
                                 n_images=mb.n_samples, **_rbf_meta(kernel, sigma, threshold, bandwidth)))


def stream_residual_cka(model, data, token_mode: str = "all", batch_size: int = 256, kernel: str = "linear",
                        sigma: float | None = None, minmax: bool = False, limit: int | None = None,
                        progress: bool = False, mlp_skip: str = "resid_mid", threshold: float = 1.0,
                        bandwidth: str = "kornblith") -> ResidualResult:
    """Residual CKA (walmer2023) streamed: skip input vs branch output of every block, for both branches.

    Attention branch: ``hook_resid_pre`` (skip) vs ``hook_attn_out``; MLP branch: ``hook_resid_mid`` (the
    MLP's skip input, after the attention update) vs ``hook_mlp_out``. Matrices are skip(block i) x
    branch(block j); norm ratios ||skip|| / ||branch|| are averaged over images. ``mlp_skip="resid_pre"``
    compares the MLP output with the block input instead.
    """
    depth = model.cfg.depth
    pairs = residual_hooks(mlp_skip)
    mbs = {b: MinibatchCKA(kernel=kernel, sigma=sigma, minmax=minmax, threshold=threshold, bandwidth=bandwidth)
           for b in pairs}
    sums: dict[str, list[dict[str, tuple[float, int]]]] = {b: [{} for _ in range(depth)] for b in pairs}
    n_img = 0
    for images, _, _ in _progress(image_batches([model], data, batch_size, limit), progress, "residual CKA"):
        x = images[0].to(model.device, model.dtype)
        grid = (x.shape[-2] // model.cfg.patch_size, x.shape[-1] // model.cfg.patch_size)
        hooks = list(dict.fromkeys(f"blocks.{i}.{h}" for i in range(depth) for pair in pairs.values() for h in pair))
        with torch.no_grad():
            _, cache = model.run_with_cache(x, names_filter=hooks)
        for branch, (skip_h, out_h) in pairs.items():
            xs, ys = {}, {}
            for i in range(depth):
                lay = model.token_layout(i, grid)
                s, o = cache[f"blocks.{i}.{skip_h}"], cache[f"blocks.{i}.{out_h}"]
                xs[f"skip {i}"] = reduce_tokens(s, lay, token_mode)
                ys[f"{branch} {i}"] = reduce_tokens(o, lay, token_mode)
                for k, v in norm_ratios(s, o, lay).items():
                    total, count = sums[branch][i].get(k, (0.0, 0))
                    sums[branch][i][k] = (total + float(v.sum()), count + v.numel())
            mbs[branch].update(xs, ys)
        n_img += x.shape[0]
    if n_img == 0:
        raise ValueError("no images were read; check the dataset")
    mats = {}
    for branch, mb in mbs.items():
        mats[branch] = SimilarityResult(mb.compute(), list(mb.names_x), list(mb.names_y),
                                        dict(metric="cka", branch=branch, token_mode=token_mode, minibatch=True,
                                             minmax=minmax, kernel=kernel, n_images=n_img))
    ratios = {b: _ratio_arrays(per) for b, per in sums.items()}
    return ResidualResult(mats["attn"], mats["mlp"], ratios,
                          dict(token_mode=token_mode, minibatch=True, batch_size=batch_size, n_images=n_img,
                               mlp_skip=mlp_skip, skip_hooks={b: p[0] for b, p in pairs.items()},
                               branch_hooks={b: p[1] for b, p in pairs.items()}))


def collect_features(model, data, hooks: Sequence[str] | None = None, token_mode: str = "cls",
                     batch_size: int = 256, limit: int | None = None, progress: bool = False
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Reduced features of every image at every hook, kept in memory: ``({hook: (N, d) float32}, labels (N,))``."""
    hooks = list(hooks or block_hooks(model.cfg.depth))
    parts: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    labels = []
    for images, lab, _ in _progress(image_batches([model], data, batch_size, limit, min_size=1), progress,
                                    "features"):
        for h, f in model_features(model, images[0], hooks, token_mode).items():
            parts[h].append(f.float().cpu().numpy())
        labels.append(np.asarray(lab))
    if not labels:
        raise ValueError("no images were read; check the dataset")
    return {h: np.concatenate(v) for h, v in parts.items()}, np.concatenate(labels)


def stream_layer_rsa(model, data, hooks: Sequence[str] | None = None, token_mode: str = "cls",
                     rdm_method: str = "correlation", compare: str = "spearman", batch_size: int = 256,
                     limit: int | None = None, progress: bool = False) -> SimilarityResult:
    """RSA layer x layer of one model (RDMs need every image at once: features are collected first)."""
    feats, _ = collect_features(model, data, hooks, token_mode, batch_size, limit, progress)
    res = layer_rsa({short_name(h): v for h, v in feats.items()}, rdm_method=rdm_method, compare=compare)
    res.meta.update(token_mode=token_mode, n_images=int(next(iter(feats.values())).shape[0]))
    return res


__all__ = [
    "LazyRows", "MLP_SKIPS", "PRESETS", "PRESET_ALIASES", "PanelResult", "RESIDUAL_HOOKS", "ResidualResult",
    "SITE_HOOKS", "SimilarityResult", "TOKEN_MODES", "WALMER2023_SITES", "block_hooks",
    "collect_features", "cross_model_cka", "data_label", "hook_block", "image_batches", "layer_cka",
    "layer_rsa", "layout_for", "model_features", "norm_ratios", "preset_options", "reduce_tokens",
    "residual_cka", "residual_hooks", "short_name", "similarity_inputs", "site_hooks", "store_cross_model_cka",
    "store_features", "store_layer_cka", "store_layer_rsa", "store_residual_cka", "stream_cross_model_cka",
    "stream_layer_cka", "stream_layer_rsa", "stream_residual_cka", "token_hooks",
]
