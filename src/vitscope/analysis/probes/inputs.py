"""Probe inputs from a feature store: sites x layers x reductions, ciernik2025's named layer sets, L2 normalisation.

An input is one (site, layer, reduction) of the store; CLS and AP of one layer are two inputs. Reductions:

=========  ====================================================================================================
``cls``    the CLS token (store reduction ``cls``, or row 0 of ``cls+mean``)
``ap``     the mean of the patch tokens (store ``mean``, or row 1 of ``cls+mean``); equals ciernik2025's AP for
           models without registers
``ap_all`` the mean of every token after the first (ciernik2025's ``avg_pool``: registers included), from ``all``
``all``    every token, (T, D)
=========  ====================================================================================================

Any other reduction the store holds (``dist``, ``patches``, ``registers``) is passed through.

Named layer sets for a model of ``depth`` blocks (0-based blocks, site ``ln2`` = ciernik2025's ``blocks.{i}.norm2``,
``final`` = the final norm, or CLIP's projection when the store has ``clip_proj``); CLS and AP of each layer:

- ``last``: final (2 inputs);
- ``middle``: block depth // 2 and final (4 inputs; block 6 of 12);
- ``quarterly``: blocks depth/4, depth/2, 3 depth/4 and final (8 inputs; blocks 3, 6, 9 of 12);
- ``all``: blocks 1 .. depth-1 and final (2 depth inputs: 24 for 12 blocks, 48 for 24);
- ``tokens``: every token of the final layer, one (T, D) input.

ciernik2025's large-model file used blocks 6 and 3/6/9 for 24-block models too; give those as an explicit list.
For a model whose CLS token enters late (before block ``cls_from`` > 0, from the store's model config,
:func:`store_cls_from`), the blocks before it have no CLS: a named set keeps their AP only. A store cannot hold CLS
for some blocks and AP for all, so such a model's inputs come from two stores of the same samples read as one
(:class:`StoreGroup`; ``vitscope probe --store A --store B``).

Normalisation at load (ciernik2025's default): each sample's vector is divided by its L2 norm, per input. All-token
inputs are normalised per token over the feature axis by default (``token_norm="token"``, the end-to-end recipe);
``token_norm="over_tokens"`` is ciernik2025's stored-feature variant (each channel over the tokens of an image).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

LAYER_SETS = ("last", "middle", "quarterly", "all", "tokens")
CLS_REDUCTIONS = ("cls", "cls+mean", "dist")
REDUCTION_ALIASES = {"ap": "mean", "avg_pool": "ap_all", "cls_token": "cls", "all_tokens": "all", "at": "all"}


@dataclass(frozen=True)
class ProbeInput:
    """One probe input: store site, block (None for global sites such as ln_final) and reduction."""

    site: str
    layer: int | None
    reduction: str

    @property
    def name(self) -> str:
        return f"{self.site}.{self.layer}.{self.reduction}" if self.layer is not None else f"{self.site}.{self.reduction}"

    @property
    def seed_key(self) -> str:
        """ciernik2025's model key, e.g. ``cls@blocks.3.norm2`` / ``ap@norm``: its input order sorts these strings."""
        red = {"mean": "ap", "ap": "ap", "ap_all": "ap", "all": "at"}.get(self.reduction, self.reduction)
        where = "norm" if self.layer is None else f"blocks.{self.layer}.{self.site}"
        return f"{red}@{where}"

    @property
    def label(self) -> str:
        """Short label for figures: ``3 cls``, ``final ap``."""
        red = "ap" if self.reduction == "mean" else self.reduction
        return f"{'final' if self.layer is None else self.layer} {red}"


def seed_order(inputs: list[ProbeInput]) -> list[ProbeInput]:
    """ciernik2025's input order: model keys sorted as strings (AP first, then CLS; blocks 1, 10, 11, 2, ...)."""
    return sorted(inputs, key=lambda i: i.seed_key)


def _final_site(sites: list[str]) -> str:
    if "clip_proj" in sites:
        return "clip_proj"
    if "ln_final" in sites:
        return "ln_final"
    raise ValueError("the store has no final-layer site; extract it with --sites ln2,ln_final "
                     "(or clip_proj for CLIP models)")


def layer_set(name: str, depth: int, site: str = "ln2", final: str = "ln_final",
              reductions: tuple[str, ...] = ("cls", "ap"), cls_from: int = 0) -> list[ProbeInput]:
    """The inputs of a named layer set (see the module docstring); blocks before ``cls_from`` get no CLS input."""
    reds = tuple(REDUCTION_ALIASES.get(r, r) for r in reductions)
    if name == "last":
        blocks: list[int] = []
    elif name == "middle":
        blocks = [depth // 2]
    elif name == "quarterly":
        blocks = [depth // 4, depth // 2, (3 * depth) // 4]
    elif name == "all":
        blocks = list(range(1, depth))
    elif name == "tokens":
        return [ProbeInput(final, None, "all")]
    else:
        raise ValueError(f"unknown layer set {name!r}; choose among {', '.join(LAYER_SETS)} or give an explicit "
                         "list such as 'ln2.3.cls,ln2.3.ap,ln_final.cls'")
    return [ProbeInput(site, b, r) for b in blocks for r in reds if not (r in CLS_REDUCTIONS and b < cls_from)] + \
        [ProbeInput(final, None, r) for r in reds]


_ITEM = re.compile(r"^(?P<site>[A-Za-z_][\w.]*?)(?:\.(?P<layer>-?\d+))?\.(?P<red>[\w+]+)$")


def parse_inputs(spec: str, depth: int, sites: list[str] | None = None, site: str = "ln2",
                 cls_from: int = 0) -> list[ProbeInput]:
    """A layer-set name or a comma list ``site.layer.reduction`` / ``site.reduction`` (``ln2.3.cls,ln_final.ap``)."""
    spec = spec.strip()
    if spec in LAYER_SETS:
        return layer_set(spec, depth, site=site, final=_final_site(sites) if sites else "ln_final",
                         cls_from=cls_from)
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"unknown layer set or input {item!r}; use one of {', '.join(LAYER_SETS)} or "
                             "'site.layer.reduction' items such as ln2.3.cls or ln_final.ap")
        layer = m.group("layer")
        lay = None if layer is None else int(layer) % depth if int(layer) < 0 else int(layer)
        out.append(ProbeInput(m.group("site"), lay, REDUCTION_ALIASES.get(m.group("red"), m.group("red"))))
    if not out:
        raise ValueError("no probe inputs given")
    return out


def store_cls_from(store) -> int:
    """The block before which the stored model's CLS token enters (0: with the patch tokens, or no CLS at all)."""
    cfg = (store.manifest.get("model") or {}).get("config") or {}
    return int(cfg.get("cls_block") or 0) if cfg.get("class_token", True) else 0


class StoreGroup:
    """Several feature stores of the same samples (same model, data and order) read as one: each probe input
    comes from the first store that holds it. For a late-CLS model: one store with CLS from its entry block on,
    one with AP at every block."""

    def __init__(self, stores) -> None:
        stores = list(stores)
        if not stores:
            raise ValueError("no feature store given")
        first = stores[0]
        for s in stores[1:]:
            if _samples(s) != _samples(first) or not np.array_equal(np.asarray(s.labels), np.asarray(first.labels)):
                raise ValueError(f"the stores {first.path} and {s.path} hold different samples; stores read "
                                 "together must be extracted from the same data (same spec, limit and order)")
            if s.manifest.get("preprocessing") != first.manifest.get("preprocessing"):
                raise ValueError(f"the stores {first.path} and {s.path} were extracted with different "
                                 "preprocessing; extract both with the same model and settings")
            wa = (first.manifest.get("model") or {}).get("weights_sha256")
            wb = (s.manifest.get("model") or {}).get("weights_sha256")
            if wa and wb and wa != wb:
                raise ValueError(f"the stores {first.path} and {s.path} come from different model weights; "
                                 "extract both with the same model")
        self.stores = stores
        self.path = first.path
        self.manifest = first.manifest

    def __getattr__(self, name):                     # n, classes, ids, model, ... as the first store's
        if name == "stores":
            raise AttributeError(name)
        return getattr(self.stores[0], name)

    @property
    def sites(self) -> list[str]:
        return list(dict.fromkeys(x for s in self.stores for x in s.sites))

    @property
    def layers(self) -> list[int]:
        return sorted({x for s in self.stores for x in s.layers})

    @property
    def reductions(self) -> list[str]:
        return list(dict.fromkeys(x for s in self.stores for x in s.reductions))

    @property
    def valid(self) -> np.ndarray:
        return np.logical_and.reduce([np.asarray(s.valid) for s in self.stores])

    def member(self, inp: "ProbeInput"):
        """The first store that holds ``inp`` (else the first store, whose error then names what is missing)."""
        for s in self.stores:
            if inp.site in s.sites and (inp.layer is None or inp.layer in s.layers) and _stored_as(s, inp.reduction):
                return s
        return self.stores[0]


def _samples(store) -> tuple:
    d = store.manifest.get("dataset") or {}
    return (store.n, d.get("description"), d.get("ids_sha256"), d.get("labels_sha256"),
            None if store.ids is None else list(store.ids))


def as_store(stores):
    """One store, or a :class:`StoreGroup` for a list / tuple of stores of the same samples."""
    if isinstance(stores, (list, tuple)):
        return stores[0] if len(stores) == 1 else StoreGroup(stores)
    return stores


def _stored_as(store, reduction: str) -> str | None:
    """The store reduction an input reduction is read from (``cls`` / ``mean`` from ``cls+mean``, ``ap_all`` from
    ``all``), or None when the store cannot give it."""
    have = set(store.reductions)
    if reduction in have:
        return reduction
    if reduction in ("cls", "mean") and "cls+mean" in have:
        return "cls+mean"
    if reduction == "ap_all" and "all" in have:
        return "all"
    return None


def store_depth(store) -> int:
    cfg = (store.manifest.get("model") or {}).get("config") or {}
    if "depth" in cfg:
        return int(cfg["depth"])
    return max(store.layers) + 1 if store.layers else 0


def _read(store, site: str, layer: int | None, reduction: str, rows) -> np.ndarray:
    src = _stored_as(store, reduction)
    if src == reduction:
        return np.asarray(store.get(site, layer, reduction)[rows], dtype=np.float32)
    if src == "cls+mean":
        return np.asarray(store.get(site, layer, src)[rows, 0 if reduction == "cls" else 1], dtype=np.float32)
    if src == "all":
        return np.asarray(store.get(site, layer, src)[rows, 1:], dtype=np.float32).mean(axis=1)
    raise _no_reduction(store, reduction)


def _no_reduction(store, reduction: str) -> ValueError:
    need = {"ap_all": "all", "mean": "mean (or cls+mean)", "cls": "cls (or cls+mean)"}.get(reduction, reduction)
    return ValueError(f"the store {store.path} has no reduction {reduction!r} (it holds {sorted(store.reductions)}); "
                      f"extract with --tokens {need.split(' ')[0]}")


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``F.normalize(x, p=2, dim=axis)``: divide by max(||x||, 1e-12) along ``axis``."""
    n = np.sqrt((x.astype(np.float64) ** 2).sum(axis=axis, keepdims=True))
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def check_input(store, inp: ProbeInput):
    """The store (of a group: the member) that holds ``inp``; one clear line when its site, layer or reduction is
    missing. What :func:`load_input` checks, without reading: every input of a run is checked before training."""
    if isinstance(store, StoreGroup):
        store = store.member(inp)
    if inp.site not in store.sites:
        raise ValueError(f"the store {store.path} has no site {inp.site!r} (it holds {store.sites}); extract it with "
                         f"--sites {inp.site}")
    if inp.layer is not None and inp.layer not in store.layers:
        late = store_cls_from(store)
        hint = (f"; its model's CLS enters at block {late}, so give a second store with the patch mean of every block "
                f"(--store CLS_STORE --store AP_STORE)" if late and inp.reduction not in CLS_REDUCTIONS else "")
        raise ValueError(f"the store {store.path} has no layer {inp.layer} (it holds {store.layers}); extract it with "
                         f"--blocks {inp.layer} or choose another layer set{hint}")
    if _stored_as(store, inp.reduction) is None:
        raise _no_reduction(store, inp.reduction)
    return store


def input_width(store, inp: ProbeInput) -> int:
    """The feature width of ``inp`` (the last axis of what the store holds), read from the array's shape only."""
    store = check_input(store, inp)
    return int(store.get(inp.site, inp.layer, _stored_as(store, inp.reduction)).shape[-1])


def load_input(store, inp: ProbeInput, rows=None, normalize: bool = True, token_norm: str = "token") -> np.ndarray:
    """One input as float32 (N, D) or (N, T, D), L2-normalised as the module docstring says."""
    store = check_input(store, inp)
    rows = np.flatnonzero(store.valid) if rows is None else rows
    x = _read(store, inp.site, inp.layer, inp.reduction, rows)
    if not np.isfinite(x).all():
        raise ValueError(f"input {inp.name} of {store.path} contains NaN or Inf; re-extract with --dtype float32 or "
                         "drop the model")
    if normalize:
        if x.ndim == 2:
            x = l2_normalize(x, axis=1)
        elif token_norm == "token":
            x = l2_normalize(x, axis=-1)
        elif token_norm == "over_tokens":
            x = l2_normalize(x, axis=1)
        else:
            raise ValueError(f"token_norm must be 'token' or 'over_tokens', got {token_norm!r}")
    return x


def load_inputs(store, inputs: list[ProbeInput], normalize: bool = True, token_norm: str = "token",
                rows=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Every input (valid, labelled rows) and the labels."""
    labels = np.asarray(store.labels)
    if len(labels) != store.n:
        raise ValueError(f"the store {store.path} is inconsistent: {len(labels)} labels for {store.n} samples")
    if rows is None:
        rows = np.flatnonzero(np.asarray(store.valid) & (labels >= 0))
    if len(rows) == 0:
        raise ValueError(f"the store {store.path} has no labelled samples; probes need class labels")
    feats = [load_input(store, i, rows, normalize, token_norm) for i in inputs]
    for i, f in zip(inputs, feats):
        if len(f) != len(rows):
            raise ValueError(f"input {i.name} of {store.path} has {len(f)} rows, expected {len(rows)}")
    return feats, labels[rows].astype(np.int64)


def concat_inputs(feats: list[np.ndarray]) -> np.ndarray:
    """Linear probe: the per-input vectors concatenated along the feature axis (token maps flattened)."""
    return np.concatenate([f.reshape(len(f), -1) for f in feats], axis=1)


def check_pair(train_feats: list[np.ndarray], test_feats: list[np.ndarray], inputs: list[ProbeInput]) -> None:
    """Train and test inputs must have the same per-sample shapes."""
    for i, a, b in zip(inputs, train_feats, test_feats):
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"input {i.name}: training features have shape {a.shape[1:]} but test features "
                             f"{b.shape[1:]}; extract both stores with the same model and settings")
