"""What a store was computed from: model id and weights hash, preprocessing, dataset.

A store is only resumed by a run whose identity matches field by field; anything else is refused with a
message naming the field, so features of two models or two preprocessings are never mixed in one array.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

_WEIGHT_KEYS = ("weights_sha256", "weights_hash", "sha256", "checkpoint_sha256")


def _meta(model) -> dict:
    meta = dict(getattr(getattr(model, "cfg", None), "meta", None) or {})
    own = getattr(model, "meta", None)
    if isinstance(own, dict):
        meta.update(own)
    return meta


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over the sorted state dict (names, dtypes, shapes and raw bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1).contiguous().cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(model) -> dict[str, Any]:
    """{"name", "weights_sha256", "weights_hash_source", "config", "source"} for the manifest."""
    meta = _meta(model)
    name = meta.get("name") or meta.get("model") or meta.get("source") or type(model).__name__
    weights = next((str(meta[k]) for k in _WEIGHT_KEYS if meta.get(k)), None)
    source = "meta"
    if weights is None:
        weights, source = state_dict_sha256(model), "state_dict"
    cfg = model.cfg.to_dict() if hasattr(model, "cfg") and hasattr(model.cfg, "to_dict") else {}
    cfg.pop("meta", None)
    out = {"name": str(name), "weights_sha256": weights, "weights_hash_source": source, "config": cfg}
    if meta.get("source"):
        out["source"] = str(meta["source"])          # where the weights came from ("random-init", a path, ...)
    return out


def preprocessing_identity(dataset, model=None) -> dict[str, Any] | None:
    """The transform's PreprocessConfig as a dict when there is one; else its repr; None without a transform."""
    tf = getattr(dataset, "transform", None)
    if tf is None:
        return None
    cfg = getattr(tf, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        return {"type": type(tf).__name__, **cfg.to_dict()}
    r = repr(tf)
    if " at 0x" in r:             # an object without a stable repr: its type is all we can record
        r = f"{type(tf).__module__}.{type(tf).__qualname__}"
    return {"type": type(tf).__name__, "repr": r}


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def dataset_identity(dataset) -> dict[str, Any]:
    """Description, size and hashes of the sample ids and labels (when the dataset exposes them)."""
    n = len(dataset)
    ids = _get_list(dataset, "ids") or _get_list(dataset, "paths")
    labels = getattr(dataset, "labels", None)
    out = {
        "description": str(getattr(dataset, "description", type(dataset).__name__)),
        "n": n,
        "ids_sha256": _sha([str(i) for i in ids]) if ids is not None else None,
        "labels_sha256": _sha([int(x) for x in labels]) if labels is not None else None,
    }
    return out


def _get_list(dataset, attr: str) -> list | None:
    try:
        v = getattr(dataset, attr, None)
    except Exception:          # a property that cannot answer for this source
        return None
    if v is None:
        return None
    return [str(x) for x in v]


def sample_ids(dataset) -> tuple[list[str] | None, list[str] | None]:
    return _get_list(dataset, "ids"), _get_list(dataset, "paths")


IDENTITY_FIELDS = (
    ("model", "name", "model"),
    ("model", "weights_sha256", "weights"),
    ("model", "config", "model architecture"),
    ("preprocessing", None, "preprocessing"),
    ("dataset", None, "dataset (size, sample ids or labels)"),
    ("sites", None, "sites"),
    ("layers", None, "layers"),
    ("reductions", None, "token reductions"),
    ("dtype", None, "dtype"),
    ("input_shape", None, "image size"),
)


def differences(old: dict, new: dict) -> list[str]:
    """Readable list of identity fields that differ between two manifests."""
    out = []
    for top, sub, label in IDENTITY_FIELDS:
        a, b = old.get(top), new.get(top)
        if sub is not None:
            a = (a or {}).get(sub)
            b = (b or {}).get(sub)
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
                out.append(label)
            else:
                out.append(f"{label} ({a} in the store, {b} now)")
    return out


def fingerprint(manifest: dict) -> str:
    """sha256 of every identity field of a manifest."""
    return _sha([manifest.get(top) if sub is None else (manifest.get(top) or {}).get(sub)
                 for top, sub, _ in IDENTITY_FIELDS])
