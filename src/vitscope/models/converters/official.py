"""Official self-supervised checkpoints -> HookedViT: DINO, DINOv2, DINOv3, MAE, MoCo-v3.

All four trained timm-style ViTs, so their backbone keys are timm's; what differs is the wrapping and what
else the file holds:

* DINO (``dino_deitsmall16_pretrain.pth`` ...): a flat backbone state dict, no head. The full training
  checkpoints hold ``{"teacher": {"backbone.*", "head.*"}, "student": {"module.backbone.*", ...}, ...}``;
  the teacher backbone is used (as DINO's own evaluations do) and the DINO projection head is dropped.
* DINOv2 (``dinov2_vits14_pretrain.pth``, ``dinov2_vits14_reg4_pretrain.pth`` ..., what ``torch.hub.load(
  "facebookresearch/dinov2", ...)`` downloads): a flat backbone with ``mask_token`` (dropped) and, for the
  register models, ``register_tokens``. Their position embedding covers [CLS] + patches and the registers
  are inserted after it, so CLS's entry is folded into ``cls_token`` (timm's ``no_embed_class`` layout, exact).
  FSDP-chunked training checkpoints (``blocks.<chunk>.<block>.``) and ``{"teacher": {"backbone.*"}}`` read too.
  At other input sizes the official code resamples the position embedding with a scale factor of
  (new + 0.1) / 37 and no antialiasing (plain models) or to the size with antialiasing (register models);
  the configs made here do the same (``pos_interp_offset``, ``pos_interp_antialias``). So does official DINO.
  Giant (SwiGLU MLP) is refused.
* DINOv3 (``dinov3_vits16_pretrain_lvd1689m-*.pth`` ..., what ``torch.hub.load("facebookresearch/dinov3", ...)``
  reads): a flat backbone; ``storage_tokens`` are the 4 registers after CLS, ``ls1.gamma`` / ``ls2.gamma`` the
  LayerScale, ``qkv.bias`` comes with ``qkv.bias_mask`` (the key's third masked to zero: the mask is applied and the
  biases kept as ``q_bias`` / ``v_bias``), the SwiGLU MLP of S+ / H+ / 7B is ``mlp.w1`` (gate), ``mlp.w2``,
  ``mlp.w3``; ``mask_token``, ``rope_embed.periods`` (recomputed in float32 from the base, as timm and transformers
  do) and the training-only ``local_cls_norm`` / ``projectors.*`` are dropped. Checkpoints with a separate CLS norm
  (``cls_norm``) or RoPE periods that no base explains (min / max periods) are refused.
* MAE (``mae_pretrain_vit_base.pth`` ...): ``{"model": {...}}``; the decoder (``decoder_*``) and
  ``mask_token`` are dropped; ``pos_embed`` is MAE's fixed 2-D sin-cos table with a zero CLS entry, identical
  to vitscope's ``sincos_2d``, so the config uses ``pos_embed="sincos"``. Fine-tuned MAE checkpoints
  (``fc_norm`` + ``head``, average pooling) load too.
* MoCo-v3 (``vit-s-300ep.pth.tar`` ...): ``{"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*",
  "module.predictor.*"}, ...}``; the base encoder is kept, its projection MLP (``head.*``) dropped. Its fixed
  sin-cos table puts the *row* in the first half of the channels (MoCo builds it with ``meshgrid(w, h)`` in
  "ij" order), the transpose of MAE's layout, so the stored table is kept as is and the config uses
  ``pos_embed="learned"`` (bicubic resampling at other input sizes, close to MoCo's own rebuild).
  MoCo-v3's ViT-S has 12 heads (not timm's 6).

Every ``convert_<fmt>(raw_checkpoint, cfg)`` returns a vitscope state dict for ``load_strict``, which rejects
missing, unexpected or mis-shaped keys with a list of them.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vitscope.models.config import ViTConfig
from vitscope.models.converters.common import CheckpointError, load_strict
from vitscope.models.converters.timm import (_args_from_tensors, _check_supported_keys, _vitcfg_from_args,
                                             convert_timm_state_dict, unwrap_state_dict)
from vitscope.models.preprocess import PreprocessConfig

# width -> heads of the architectures each project released
_HEADS = {
    "dino": {192: 3, 384: 6, 768: 12},
    "dinov3": {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 20, 4096: 32},
    "dinov2": {384: 6, 768: 12, 1024: 16, 1536: 24},
    "mae": {768: 12, 1024: 16, 1280: 16},
    "mocov3": {384: 12, 768: 12, 1024: 16, 1280: 16},
}
# evaluation transforms of each project: resize 256 -> centre crop 224
_INTERP = {"dino": "bicubic", "dinov2": "bicubic", "dinov3": "bicubic", "mae": "bicubic", "mocov3": "bilinear"}


def _tensors(d: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def _strip(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keep the keys under the first prefix that any key has, without it; all keys when none has one."""
    for pre in prefixes:
        if any(k.startswith(pre) for k in sd):
            return {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    return dict(sd)


# ----------------------------------------------------------------------------- backbone extraction
def dino_backbone(raw: Mapping[str, Any], key: str = "teacher") -> dict[str, torch.Tensor]:
    """The ViT backbone of an official DINO checkpoint (flat, or a full training checkpoint), timm keys."""
    if isinstance(raw.get(key), Mapping):
        raw = raw[key]
    elif isinstance(raw.get("teacher"), Mapping):
        raw = raw["teacher"]
    sd = _tensors(unwrap_state_dict(raw))
    sd = _strip(sd, ("module.backbone.", "backbone.", "module."))
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def dinov2_backbone(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone of an official DINOv2 checkpoint, timm keys; CLS's position folded into ``cls_token`` when
    the model has registers (see the module docstring)."""
    if isinstance(raw.get("teacher"), Mapping):
        raw = raw["teacher"]
    sd = _strip(_tensors(unwrap_state_dict(raw)), ("module.backbone.", "backbone.", "module."))
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "mask_token" or k.startswith(("head.", "dino_head.", "ibot_head.")):
            continue
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)             # FSDP chunks: blocks.<chunk>.<block>.
        out["reg_token" if k == "register_tokens" else k] = v
    if "reg_token" in out and "cls_token" in out and "pos_embed" in out:
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


def dinov3_backbone(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone of an official DINOv3 checkpoint with timm's key names (see the module docstring)."""
    if isinstance(raw.get("teacher"), Mapping):
        raw = raw["teacher"]
    sd = _strip(_tensors(unwrap_state_dict(raw)), ("module.backbone.", "backbone.", "module."))
    if "cls_norm.weight" in sd:
        raise CheckpointError("this DINOv3 checkpoint normalises CLS and registers with a separate norm "
                              "(untie_cls_and_patch_norms), which HookedViT does not implement")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in ("mask_token", "rope_embed.periods") or k.endswith(".bias_mask") or \
                k.startswith(("local_cls_norm.", "projectors.", "head.", "dino_head.", "ibot_head.")):
            continue
        if k.endswith("attn.qkv.bias"):
            mask = sd.get(k + "_mask")
            q, kb, vb = (v * mask.to(v.dtype) if mask is not None else v).chunk(3)
            if kb.any():
                out[k] = v if mask is None else v * mask.to(v.dtype)            # a real key bias: one qkv bias
            else:
                out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = q, vb
            continue
        k = k.replace("storage_tokens", "reg_token")
        k = re.sub(r"\.mlp\.w1\.", ".mlp.fc1_g.", k)
        k = re.sub(r"\.mlp\.w2\.", ".mlp.fc1_x.", k)
        k = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)
        out[k] = v
    return out


def check_dinov3_periods(raw: Mapping[str, Any], cfg: ViTConfig) -> None:
    """Refuse an official DINOv3 file whose stored RoPE periods are not ``cfg.rope_theta ** (f / F)`` (to the
    bfloat16 the release stores them in)."""
    from vitscope.models.rope import dinov3_periods

    inner = raw["teacher"] if isinstance(raw.get("teacher"), Mapping) else raw
    sd = _strip(_tensors(unwrap_state_dict(inner)), ("module.backbone.", "backbone.", "module."))
    stored = sd.get("rope_embed.periods")
    if stored is None:
        return
    want = dinov3_periods(cfg.head_dim, cfg.rope_theta)
    if stored.shape != want.shape or not torch.allclose(stored.float(), want, rtol=1e-2, atol=0):
        raise CheckpointError(f"rope_embed.periods {stored.float()[:4].tolist()}... are not base {cfg.rope_theta} "
                              f"periods ({want[:4].tolist()}...); min/max-period RoPE is not supported")


def mae_encoder(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder of an official MAE checkpoint, timm keys (decoder and mask token dropped)."""
    sd = _strip(_tensors(unwrap_state_dict(raw)), ("module.",))
    return {k: v for k, v in sd.items() if not k.startswith("decoder_") and k != "mask_token"}


def mocov3_encoder(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The base encoder of an official MoCo-v3 checkpoint, timm keys (projection head, momentum encoder and
    predictor dropped). Also reads the output of MoCo-v3's ``convert_to_deit.py`` (``{"model": ...}``)."""
    inner = raw.get("state_dict") if isinstance(raw.get("state_dict"), Mapping) else unwrap_state_dict(raw)
    sd = _tensors(inner)
    if any(k.startswith(("module.base_encoder.", "base_encoder.")) for k in sd):
        sd = _strip(sd, ("module.base_encoder.", "base_encoder."))
    elif any(k.startswith(("module.momentum_encoder.", "module.predictor.")) for k in sd):
        raise CheckpointError("MoCo-v3 checkpoint has no module.base_encoder.* keys")
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


_EXTRACT = {"dino": dino_backbone, "dinov2": dinov2_backbone, "dinov3": dinov3_backbone, "mae": mae_encoder,
            "mocov3": mocov3_encoder}


# ----------------------------------------------------------------------------- converters
def convert_dino(raw: Mapping[str, Any], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Official DINO checkpoint -> vitscope state dict for ``cfg``."""
    return convert_timm_state_dict(dino_backbone(raw), cfg)


def convert_dinov2(raw: Mapping[str, Any], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Official DINOv2 checkpoint (hub ``*_pretrain.pth``) -> vitscope state dict for ``cfg``."""
    return convert_timm_state_dict(dinov2_backbone(raw), cfg)


def convert_dinov3(raw: Mapping[str, Any], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Official DINOv3 checkpoint -> vitscope state dict for ``cfg``."""
    if cfg.rope == "dinov3":
        check_dinov3_periods(raw, cfg)
    return convert_timm_state_dict(dinov3_backbone(raw), cfg)


def convert_mae(raw: Mapping[str, Any], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Official MAE checkpoint (``{"model": ...}``) -> vitscope state dict for ``cfg``."""
    return convert_timm_state_dict(mae_encoder(raw), cfg)


def convert_mocov3(raw: Mapping[str, Any], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Official MoCo-v3 checkpoint (``{"state_dict": {"module.base_encoder.*": ...}}``) -> vitscope state dict."""
    return convert_timm_state_dict(mocov3_encoder(raw), cfg)


# ----------------------------------------------------------------------------- config and loading
def config_from_official(fmt: str, raw: Mapping[str, Any], *, img_size: int | None = None,
                         num_heads: int | None = None) -> ViTConfig:
    """The ViTConfig of an official ``fmt`` ("dino", "dinov2", "dinov3", "mae", "mocov3") checkpoint, from its
    tensor shapes.

    Heads are not visible in the tensors: they come from each project's released architectures (by width),
    or ``num_heads``. ``img_size`` defaults to the stored position grid times the patch size.
    """
    if fmt not in _EXTRACT:
        raise ValueError(f"unknown official format {fmt!r}; expected one of {sorted(_EXTRACT)}")
    sd = _EXTRACT[fmt](raw)
    _check_supported_keys(sd, fmt)
    a: dict[str, Any] = {}
    a.update(_args_from_tensors(sd, a, "vit"))
    D, p = a["embed_dim"], a["patch_size"]
    n_pre = int(a["class_token"]) + int(a["distilled"])
    if img_size is None and "_pos_len" in a:
        for pre in (n_pre, 0):
            side = int(round((a["_pos_len"] - pre) ** 0.5))
            if side * side == a["_pos_len"] - pre:
                img_size = side * p
                break
    a["img_size"] = img_size or 224
    heads = num_heads or _HEADS[fmt].get(D)
    meta: dict[str, Any] = {"family": fmt, "source": f"official {fmt}"}
    if heads is None:
        heads = max(1, D // 64)
        meta["num_heads_guessed"] = True
    a["num_heads"] = heads
    if a.get("fc_norm_key"):
        a["global_pool"] = "avg"
    if fmt == "dinov2" and a.get("reg_tokens"):
        a["no_embed_class"] = True                # CLS's position was folded into cls_token
    if fmt == "dinov3":
        a.update(norm_eps=1e-5, global_pool="token", num_classes=0)
        if a.get("gated_mlp"):
            a["act_layer"] = "silu"
    cfg = _vitcfg_from_args(a, "vit", meta)
    if fmt == "dinov3":
        cfg = cfg.replace(rope="dinov3", rope_theta=100.0, rope_layout="half")
        check_dinov3_periods(raw, cfg)
    cfg = cfg.replace(**official_pos_interp(fmt, cfg.num_registers))
    if fmt == "mae" and cfg.pos_embed == "learned":
        cfg = cfg.replace(pos_embed="sincos")
    if fmt == "mocov3":
        cfg.meta["pos_embed_note"] = ("fixed sin-cos table of MoCo-v3 (row in the first half of the channels) "
                                      "kept as stored; resampled bicubically at other input sizes")
    return cfg


def official_pos_interp(fmt: str, num_registers: int = 0) -> dict[str, Any]:
    """How the official code resamples position embeddings at other input sizes, as ViTConfig fields.

    DINO and the plain DINOv2 models: scale factor (new + 0.1) / old, bicubic, no antialiasing; DINOv2 with
    registers: to the new size, antialiased. MAE and MoCo-v3 run at their training size (nothing to change).
    """
    if fmt == "dino" or (fmt == "dinov2" and not num_registers):
        return {"pos_interp_antialias": False, "pos_interp_offset": 0.1}
    if fmt == "dinov2":
        return {"pos_interp_antialias": True, "pos_interp_offset": 0.0}
    return {}


def preprocess_for_official(fmt: str, cfg: ViTConfig) -> PreprocessConfig:
    """The evaluation transform each project uses: resize to 256/224 of the input, centre crop, ImageNet stats."""
    return PreprocessConfig(input_size=cfg.img_size, crop_pct=0.875, interpolation=_INTERP.get(fmt, "bicubic"))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``, also allowing the ``argparse.Namespace`` of DINO/MAE training args."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is not None:
        with safe([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_official(src: str | Path | Mapping[str, Any], fmt: str | None = None, cfg: ViTConfig | None = None,
                  **cfg_kw):
    """Official DINO / DINOv2 / MAE / MoCo-v3 checkpoint (a path or the loaded dict) -> eval-mode HookedViT."""
    from vitscope.models.converters.detect import detect_format
    from vitscope.models.vit import HookedViT

    source = str(src) if not isinstance(src, Mapping) else f"{fmt or 'official'} checkpoint"
    raw = read_checkpoint(src) if not isinstance(src, Mapping) else src
    fmt = fmt or detect_format(raw)
    if fmt not in _EXTRACT:
        raise ValueError(f"{source} reads as a {fmt!r} checkpoint, not an official DINO / DINOv2 / DINOv3 / MAE / "
                         f"MoCo-v3 one")
    cfg = cfg or config_from_official(fmt, raw, **cfg_kw)
    model = HookedViT(cfg, preprocess_cfg=preprocess_for_official(fmt, cfg))
    load_strict(model, globals()[f"convert_{fmt}"](raw, cfg), source=source)
    return model.eval()
