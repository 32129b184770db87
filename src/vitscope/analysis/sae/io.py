"""SAEs on disk: vitscope's format (safetensors + JSON), and loaders for saev's and SAELens' checkpoints.

vitscope's format, one folder per SAE::

    DIR/config.json        {"format": "vitscope.sae", "format_version": 1, "config": SAEConfig fields}
    DIR/sae.safetensors    W_enc (d, w), b_enc (w), W_dec (w, d), b_dec (d), scale (), threshold (),
                           log_threshold (w) for JumpReLU

Other formats (read only; never unpickled: safetensors, or ``torch.load(weights_only=True)``):

* **SAELens** (a folder with ``cfg.json`` and ``sae_weights.safetensors``): ``architecture`` ``standard`` (ReLU),
  ``topk`` (``k``, or ``activation_fn_kwargs.k`` before SAELens 6) and ``jumprelu`` (``threshold`` per latent)
  map; ``apply_b_dec_to_input`` false is folded into ``b_enc``. Every ``cfg.json`` layout is read
  (:func:`saelens_config`: SAELens 6's ``meta``, the earlier ``hook_point`` keys that ViT-Prisma writes too).
  SAELens folds its activation normalisation into the weights when it saves, so the scale is 1; an
  ``expected_average_only_in`` SAE saved without folding needs its factor (``load_saelens(path, scale=...)``).
  ``gated`` and other architectures, one head's SAEs and run-time normalisations are refused.
* **saev** (a ``.pt`` file: one JSON header line, then ``torch.save(state_dict)``; schema 1 and 2 and the older
  header of bare config fields): ReLU, TopK and BatchTopK map (saev encodes ``x W_enc + b_enc`` without subtracting
  ``b_dec``: folded into ``b_enc``; its BatchTopK SAEs are run per token with their ``top_k`` at inference, as saev
  runs them). saev normalises activations in its data loader, outside the checkpoint: pass ``scale`` if you trained
  with it. saev's TopK keeps the k largest pre-activations even when negative; vitscope applies ReLU first, the same
  whenever k latents are positive.
"""
from __future__ import annotations

import io as _io
import json
import math
from pathlib import Path

import torch

from vitscope.analysis.sae.models import SAE, SAEConfig

FORMAT = "vitscope.sae"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "sae.safetensors"


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write a one-member SAE to folder ``path`` (atomically: a finished folder is never half-written)."""
    from safetensors.torch import save_file

    if sae.n != 1:
        raise ValueError(f"save one SAE at a time (this stack holds {sae.n}); use sae.member(i)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    t = {"W_enc": sae.W_enc[0], "b_enc": sae.b_enc[0], "W_dec": sae.W_dec[0], "b_dec": sae.b_dec[0],
         "scale": sae.scale[0], "threshold": sae.threshold[0]}
    if sae.arch == "jumprelu":
        t["log_threshold"] = sae.log_threshold[0]
    t = {k: v.detach().float().contiguous().clone() for k, v in t.items()}
    save_file(t, str(path / (WEIGHTS + ".tmp")))
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": _jsonable(sae.cfg.to_dict())}
    (path / (CONFIG + ".tmp")).write_text(json.dumps(cfg, indent=1, sort_keys=True))
    (path / (WEIGHTS + ".tmp")).replace(path / WEIGHTS)
    (path / (CONFIG + ".tmp")).replace(path / CONFIG)
    return path


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def _from_tensors(cfg: SAEConfig, W_enc, b_enc, W_dec, b_dec, scale=1.0, threshold=0.0,
                  log_threshold=None) -> SAE:
    sae = SAE(cfg)
    d, w = cfg.d_in, cfg.width
    shapes = {"W_enc": (tuple(W_enc.shape), (d, w)), "W_dec": (tuple(W_dec.shape), (w, d)),
              "b_enc": (tuple(b_enc.shape), (w,)), "b_dec": (tuple(b_dec.shape), (d,))}
    for k, (got, want) in shapes.items():
        if got != want:
            raise ValueError(f"{k} has shape {got}, the config says {want}")
    with torch.no_grad():
        sae.W_enc[0] = W_enc.float()
        sae.b_enc[0] = b_enc.float()
        sae.W_dec[0] = W_dec.float()
        sae.b_dec[0] = b_dec.float()
        sae.scale[0] = float(scale)
        sae.threshold[0] = float(threshold)
        if log_threshold is not None:
            sae.log_threshold[0] = log_threshold.float()
    return sae


def load_sae(path: str | Path) -> SAE:
    """Load an SAE: a vitscope folder, a SAELens folder, or a saev ``.pt`` file (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE at {path}; give a folder written by `vitscope sae train`, a SAELens folder "
                                f"(cfg.json + sae_weights.safetensors) or a saev .pt file")
    if path.is_file():
        if path.name == CONFIG or path.name == WEIGHTS:
            return load_sae(path.parent)
        return load_saev(path)
    if (path / CONFIG).exists() and (path / WEIGHTS).exists():
        return _load_vitscope(path)
    if (path / "cfg.json").exists() and (path / "sae_weights.safetensors").exists():
        return load_saelens(path)
    pts = sorted(path.glob("*.pt"))
    if len(pts) == 1:
        return load_saev(pts[0])
    raise ValueError(f"{path} holds no SAE: expected {CONFIG} + {WEIGHTS} (vitscope), cfg.json + "
                     f"sae_weights.safetensors (SAELens) or one saev .pt file")


def _is_sae(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".pt"
    return (((path / CONFIG).exists() and (path / WEIGHTS).exists())
            or ((path / "cfg.json").exists() and (path / "sae_weights.safetensors").exists())
            or len(list(path.glob("*.pt"))) == 1)


def sae_paths(path: str | Path) -> list[Path]:
    """``path`` itself when it is an SAE (what :func:`load_sae` reads), else the SAEs directly inside it (the
    output folder of ``vitscope sae train``), sorted by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE at {path}; give a folder written by `vitscope sae train` (one SAE or the "
                                f"folder of a grid), a SAELens folder or a saev .pt file")
    if _is_sae(path):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and _is_sae(p)) if path.is_dir() else []
    if not found:
        raise ValueError(f"{path} holds no SAE, neither itself nor in a subfolder: expected {CONFIG} + {WEIGHTS} "
                         f"(vitscope), cfg.json + sae_weights.safetensors (SAELens) or one saev .pt file")
    return found


def _load_vitscope(path: Path) -> SAE:
    from safetensors.torch import load_file

    meta = json.loads((path / CONFIG).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG} is not a vitscope SAE config (format={meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer vitscope (SAE format {meta['format_version']}); upgrade")
    cfg = SAEConfig(**meta["config"])
    t = load_file(str(path / WEIGHTS))
    return _from_tensors(cfg, t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], t["scale"], t["threshold"],
                         t.get("log_threshold"))


SAELENS_KEYS = {"hook_point": "hook_name", "hook_point_layer": "hook_layer",        # before SAELens 6 (and ViT-
                "hook_point_head_index": "hook_head_index"}                        # Prisma) -> SAELens 6 names


def saelens_config(c: dict) -> dict:
    """A SAELens ``cfg.json`` in one layout, whatever its version: the pre-6 key names (``hook_point``,
    ``hook_point_layer``, ``hook_point_head_index``, as ViT-Prisma writes them too) renamed to SAELens 6's, and SAELens
    6's ``meta`` (``model_name``, ``hook_name``, ``hook_layer``, ``hook_head_index``) brought to the top level."""
    out = {SAELENS_KEYS.get(k, k): v for k, v in c.items() if k not in ("meta", "metadata")}
    for key in ("meta", "metadata"):
        for k, v in (c.get(key) or {}).items():
            if v is not None:
                out.setdefault(SAELENS_KEYS.get(k, k), v)
    return out


def load_saelens(path: str | Path, scale: float | None = None) -> SAE:
    """A SAELens SAE folder (``cfg.json`` + ``sae_weights.safetensors``), of SAELens 6 or earlier (and ViT-Prisma's,
    which writes the earlier layout). ``scale``: the activation-norm factor of an SAE saved with
    ``normalize_activations: expected_average_only_in`` (SAELens keeps it outside the folder); inputs are multiplied
    by it before encoding and the reconstruction divided by it."""
    from safetensors.torch import load_file

    path = Path(path)
    c = saelens_config(json.loads((path / "cfg.json").read_text()))
    t = load_file(str(path / "sae_weights.safetensors"))
    if c.get("hook_head_index") is not None:
        raise ValueError(f"the SAELens SAE at {path} reads one attention head (hook_head_index "
                         f"{c['hook_head_index']}); vitscope's SAEs read a whole site")
    norm = c.get("normalize_activations") or "none"
    if norm in ("constant_norm_rescale", "layer_norm"):
        raise ValueError(f"the SAELens SAE at {path} normalises each input at run time ({norm}), which vitscope's "
                         f"SAEs do not; supported: none, expected_average_only_in (with its scale)")
    if norm == "expected_average_only_in" and scale is None:
        raise ValueError(f"the SAELens SAE at {path} was trained on inputs scaled by a factor kept outside the folder "
                         f"(normalize_activations: expected_average_only_in); give it: load_saelens(path, scale=...), "
                         f"then save_sae(sae, DIR) to use DIR on the command line")
    if norm == "none" and scale is not None:
        raise ValueError(f"the SAELens SAE at {path} has no activation normalisation (normalize_activations: none); "
                         f"load it without scale")
    unfolded = t.get("scaling_factor")
    if unfolded is not None and not torch.allclose(unfolded, torch.ones_like(unfolded)):
        raise ValueError(f"the SAELens SAE at {path} has an unfolded fine-tuning scaling factor, which vitscope's "
                         f"SAEs do not have; fold it into W_dec first")
    arch = c.get("architecture", "standard")
    act = c.get("activation_fn_str") or c.get("activation_fn") or "relu"
    kwargs = c.get("activation_fn_kwargs") or {}
    if arch == "standard" and act == "topk":
        arch = "topk"
    mapping = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
    if arch not in mapping:
        raise ValueError(f"SAELens architecture {arch!r} has no vitscope counterpart (supported: "
                         f"{', '.join(mapping)})")
    W_enc, b_enc, W_dec, b_dec = t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]
    d_in, width = int(c.get("d_in", W_enc.shape[0])), int(c.get("d_sae", W_enc.shape[1]))
    if not c.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc            # x W + b = (x - b_dec) W + (b + b_dec W)
    k = int(kwargs.get("k", c.get("k", 1))) if mapping[arch] == "topk" else 1
    layer, site = _saelens_hook(c)
    cfg = SAEConfig(d_in=d_in, width=width, arch=mapping[arch], k=(k,), block=(int(layer),), site=site,
                    meta={"source": "saelens", "hook_name": c.get("hook_name"), "model_name": c.get("model_name")})
    logt = None
    if mapping[arch] == "jumprelu":
        logt = t["threshold"].float().clamp_min(1e-12).log()
    return _from_tensors(cfg, W_enc, b_enc, W_dec, b_dec, 1.0 if scale is None else float(scale),
                         log_threshold=logt)


def _saelens_hook(c: dict) -> tuple[int, str]:
    """(block, vitscope site) of a SAELens config's ``hook_name``, whose TransformerLens / ViT-Prisma names are
    vitscope's (``blocks.8.hook_mlp_out`` -> (8, ``mlp_out``)); (``hook_layer`` or 0, ``resid_post``) without one."""
    import re

    from vitscope.analysis.sae.hooks import block_site

    name = str(c.get("hook_name") or "")
    layer = c.get("hook_layer")
    if "{layer}" in name and layer is not None:              # ViT-Prisma's template, e.g. blocks.{layer}.hook_mlp_out
        name = name.replace("{layer}", str(int(layer)))
    m = re.match(r"^blocks\.(\d+)\.", name)
    layer = int(layer) if layer is not None else int(m.group(1)) if m else 0
    if not name:
        return layer, "resid_post"
    try:
        if not m:
            raise ValueError
        return layer, block_site(name)[0]
    except ValueError:
        raise ValueError(f"the SAELens SAE reads {name!r}, which is not a block hook vitscope has (e.g. "
                         f"blocks.8.hook_resid_post, blocks.8.hook_mlp_out)") from None


def load_saev(path: str | Path, scale: float = 1.0) -> SAE:
    """A saev checkpoint (``.pt``: a JSON header line, then a state dict, loaded with ``weights_only=True``)."""
    path = Path(path)
    with open(path, "rb") as fd:
        first = fd.readline()
        rest = fd.read()
    try:
        header = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a saev checkpoint (its first line is not a JSON header)") from None
    if header.get("schema", 1) not in (1, 2):
        raise ValueError(f"{path} is a saev checkpoint of schema {header['schema']}; vitscope reads schemas 1 and 2 "
                         f"and the earlier header")
    cfg_d = header.get("cfg", header) if "schema" in header else header
    act = cfg_d.get("activation") or {}
    cls = act.get("cls") if isinstance(act, dict) else None
    if header.get("schema") == 1 and header.get("cls") in ("Relu", "TopK", "BatchTopK"):
        cls = header["cls"]
        act = {"params": {"top_k": cfg_d.get("top_k", 32)}}
    cls = cls or "Relu"
    arch = {"Relu": "relu", "TopK": "topk", "BatchTopK": "topk"}.get(cls)
    if arch is None:
        raise ValueError(f"saev activation {cls!r} has no vitscope counterpart (supported: Relu, TopK, BatchTopK)")
    sd = torch.load(_io.BytesIO(rest), weights_only=True, map_location="cpu")
    W_enc, b_enc, W_dec, b_dec = sd["W_enc"], sd["b_enc"], sd["W_dec"], sd["b_dec"]
    b_enc = b_enc + b_dec @ W_enc                # saev does not subtract b_dec before the encoder
    k = int((act.get("params") or {}).get("top_k", 32)) if arch == "topk" else 1
    cfg = SAEConfig(d_in=int(W_enc.shape[0]), width=int(W_enc.shape[1]), arch=arch, k=(k,),
                    meta={"source": "saev", "saev_activation": cls, "saev_schema": header.get("schema")})
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale}")
    return _from_tensors(cfg, W_enc, b_enc, W_dec, b_dec, scale=scale)
