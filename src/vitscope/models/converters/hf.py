"""Hugging Face ``transformers`` checkpoints -> HookedViT.

Families: ``vit`` (ViTModel, ViTForImageClassification), ``deit`` (DeiTModel, DeiTForImageClassification,
DeiTForImageClassificationWithTeacher), ``dinov2`` / ``dinov2_with_registers`` (Dinov2Model,
Dinov2WithRegistersModel, their Backbone classes), ``clip_vision_model`` / ``clip`` (CLIPVisionModel,
CLIPVisionModelWithProjection, the vision tower of CLIPModel), ``vit_mae`` (ViTMAEModel,
ViTMAEForPreTraining's encoder), ``dinov3_vit`` (DINOv3ViTModel: RoPE, registers, LayerScale, gated MLP),
``siglip_vision_model`` / ``siglip`` (SiglipVisionModel, SiglipModel's vision tower: attention-pool head),
``siglip2_vision_model`` / ``siglip2`` (Siglip2VisionModel at a fixed resolution: its linear patch embedding
becomes the equivalent convolution; its position table is resampled bilinearly with antialiasing, as Siglip2
does) and ``aimv2_vision_model`` / ``aimv2`` (Aimv2VisionModel, Aimv2Model's vision tower and projection).

Three steps, each usable alone:

* :func:`config_from_hf` reads ``config.json`` (a dict) and returns the :class:`ViTConfig`;
* :func:`convert_hf_state_dict` renames and reshapes the weights to vitscope's names;
* :func:`load_hf_folder` does both for a folder written by ``save_pretrained`` and loads strictly
  (:func:`~vitscope.models.converters.common.load_strict`: every missing, unexpected or mis-shaped key is
  a :class:`CheckpointError` that lists them).

Both the checkpoint names that ``save_pretrained`` writes (``encoder.layer.0.attention.attention.query``)
and the in-memory names of transformers >= 5 (``layers.0.attention.q_proj``) are understood.

What corresponds to what (see docs/models-hf.md for the full table):

* HF ``output_hidden_states[0]`` is ``blocks.0.hook_resid_pre`` (for CLIP: after ``pre_layrnorm`` = ``ln_pre``)
  and ``hidden_states[i + 1]`` is ``blocks.{i}.hook_resid_post``; ``output_attentions[i]`` is
  ``blocks.{i}.attn.hook_pattern``.
* ``last_hidden_state`` is ``ln_final.hook_normalized`` for ViT, DeiT, DINOv2 and MAE; for CLIP it is
  ``blocks.{L-1}.hook_resid_post``: HF CLIP applies ``post_layernorm`` to the pooled CLS only, vitscope
  applies ``ln_final`` to every token and then pools the CLS, which gives the same pooled output.
* Dropped on purpose (no meaning at inference, or outside the vision tower): :data:`DROPPED_KEYS`.
  Note: the ViT/DeiT ``pooler`` (dense + tanh on the CLS, used by no classifier) is dropped, so the
  ``pooler_output`` of ``ViTModel`` / ``DeiTModel`` has no vitscope counterpart; ``hook_pooled`` is the
  normalised CLS (``last_hidden_state[:, 0]``).
"""
from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from vitscope.models.config import ViTConfig
from vitscope.models.converters.common import CheckpointError, folder_config, fuse_qkv, load_strict
from vitscope.models.preprocess import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN,
                                        INCEPTION_STD, PreprocessConfig)

# ----------------------------------------------------------------------------- constants
SUPPORTED_MODEL_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers", "clip_vision_model", "clip", "vit_mae",
                         "dinov3_vit", "siglip_vision_model", "siglip", "siglip2_vision_model", "siglip2",
                         "aimv2_vision_model", "aimv2")
# full (image + text) models: model_type -> the model_type of their vision_config
_TOWERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "siglip2": "siglip2_vision_model",
           "aimv2": "aimv2_vision_model"}

#: Checkpoint keys dropped on purpose, as regular expressions on the key without its base-model prefix
#: (``vit.``, ``vision_model.`` ...). Everything else must map onto the model.
DROPPED_KEYS: dict[str, str] = {
    r"^embeddings\.mask_token$": "masked-image-modelling token (DINOv2, SimMIM); not used at inference",
    r"^pooler\.": "ViT/DeiT pooler (dense + tanh on CLS); no classifier reads it",
    r"^embeddings\.position_ids$": "CLIP's arange buffer, saved by older transformers",
    r"^decoder\.": "pixel decoders (ViTMAEForPreTraining, ViTForMaskedImageModeling)",
    r"^text_model\.": "CLIPModel text tower",
    r"^text_projection\.": "CLIPModel text projection",
    r"^logit_scale$": "CLIPModel contrastive temperature",
    r"^logit_bias$": "SiglipModel sigmoid-loss bias",
}

#: Base-model prefixes stripped before mapping, longest first.
BASE_PREFIXES = ("dinov2_with_registers.", "vision_model.", "dinov2.", "deit.", "vit.")

# transformers hidden_act -> ViTConfig.act
_ACTS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "quick_gelu": "quick_gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
}

# Defaults of the transformers config classes, for config.json files that omit a field.
_VIT_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     hidden_act="gelu", layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3,
                     qkv_bias=True)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": _VIT_DEFAULTS,
    "deit": _VIT_DEFAULTS,
    "vit_mae": _VIT_DEFAULTS,
    "dinov2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, hidden_act="gelu",
                   layer_norm_eps=1e-6, image_size=224, patch_size=14, num_channels=3, qkv_bias=True,
                   layerscale_value=1.0, use_swiglu_ffn=False, num_register_tokens=0),
    "dinov2_with_registers": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                                  hidden_act="gelu", layer_norm_eps=1e-6, image_size=224, patch_size=16,
                                  num_channels=3, qkv_bias=True, layerscale_value=1.0, use_swiglu_ffn=False,
                                  num_register_tokens=4),
    "clip_vision_model": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5, image_size=224, patch_size=32,
                              num_channels=3, projection_dim=512),
    "dinov3_vit": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                       hidden_act="gelu", layer_norm_eps=1e-5, rope_theta=100.0, image_size=224, patch_size=16,
                       num_channels=3, query_bias=True, key_bias=False, value_bias=True, proj_bias=True, mlp_bias=True,
                       layerscale_value=1.0, use_gated_mlp=False, num_register_tokens=0),
    "siglip_vision_model": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, image_size=224, patch_size=16,
                                num_channels=3, vision_use_head=True),
    "siglip2_vision_model": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                                 num_patches=256, patch_size=16, num_channels=3, vision_use_head=True),
    "aimv2_vision_model": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=8, intermediate_size=2816,
                               hidden_act="silu", rms_norm_eps=1e-5, image_size=224, patch_size=14, num_channels=3,
                               qkv_bias=False, mlp_bias=False, use_head=True, is_native=False, projection_dim=512),
}

# Architectures (config.json "architectures") that carry a head, used when no state-dict keys are given.
_HEAD_BY_ARCH = {
    "ViTForImageClassification": "linear",
    "DeiTForImageClassification": "linear",
    "DeiTForImageClassificationWithTeacher": "distilled",
    "CLIPVisionModelWithProjection": "clip_proj",
    "CLIPModel": "clip_proj",
    "Dinov2ForImageClassification": "dinov2_cls",
    "Dinov2WithRegistersForImageClassification": "dinov2_cls",
}


# ----------------------------------------------------------------------------- config
def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"HF config field {name}={v!r}: expected an int or [height, width]")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _vision_fields(hf_config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(model_type, the vision fields with the family defaults filled in)."""
    mt = hf_config.get("model_type")
    if mt is None:
        raise ValueError("HF config has no 'model_type'; is this a transformers config.json? "
                         f"supported model types: {SUPPORTED_MODEL_TYPES}")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"HF model_type={mt!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
    if mt in _TOWERS:
        vision = dict(hf_config.get("vision_config") or {})
        # the top-level projection_dim is the real one; vision_config may carry the vision config's default
        vision["projection_dim"] = hf_config.get("projection_dim", vision.get("projection_dim", 512))
        c = {**_DEFAULTS[_TOWERS[mt]], **vision}
    else:
        c = {**_DEFAULTS[mt], **dict(hf_config)}
    if "num_patches" in c and "image_size" not in c:                # Siglip2: a square table of num_patches
        c["image_size"] = round(int(c["num_patches"]) ** 0.5) * int(c["patch_size"])
    if "rms_norm_eps" in c:                                          # AIMv2
        c["layer_norm_eps"] = c["rms_norm_eps"]
    return mt, c


def _decide_head(hf_config: Mapping[str, Any], keys: Iterable[str] | None) -> str:
    """'linear', 'distilled', 'clip_proj', 'dinov2_cls' or 'none', from the keys when given, else architectures."""
    if keys is not None:
        names = {_strip_base(k) for k in keys}
        if "cls_classifier.weight" in names or "distillation_classifier.weight" in names:
            return "distilled"
        if "visual_projection.weight" in names:
            return "clip_proj"
        if "classifier.weight" in names:
            mt = hf_config.get("model_type")
            return "dinov2_cls" if mt in ("dinov2", "dinov2_with_registers") else "linear"
        return "none"
    archs = hf_config.get("architectures") or []
    for a in archs:
        if a in _HEAD_BY_ARCH:
            return _HEAD_BY_ARCH[a]
    return "none"


def _num_labels(hf_config: Mapping[str, Any]) -> int:
    if hf_config.get("id2label"):
        return len(hf_config["id2label"])
    return int(hf_config.get("num_labels") or 2)


def config_from_hf(hf_config: Mapping[str, Any], keys: Iterable[str] | None = None) -> ViTConfig:
    """A transformers ``config.json`` (as a dict) -> :class:`ViTConfig`.

    ``keys`` (the checkpoint's state-dict keys, optional) decides whether a classifier / projection head
    is present (``classifier.*`` -> "linear", ``cls_classifier`` + ``distillation_classifier`` ->
    "distilled", ``visual_projection`` -> "clip_proj"); without them the ``architectures`` field decides.
    Unsupported features raise ValueError naming the field.
    """
    mt, c = _vision_fields(hf_config)
    act = c.get("hidden_act")
    if act not in _ACTS:
        raise ValueError(f"HF config field hidden_act={act!r} is not supported; supported: {sorted(_ACTS)}")
    img = _pair(c["image_size"], "image_size")
    ph, pw = _pair(c["patch_size"], "patch_size")
    if ph != pw:
        raise ValueError(f"HF config field patch_size={c['patch_size']!r}: only square patches are supported")
    head = _decide_head(hf_config, keys)
    if head == "dinov2_cls":
        raise ValueError("Dinov2ForImageClassification's classifier reads [CLS, mean of patch tokens] "
                         "(2 * hidden_size inputs), which vitscope's heads do not express; save the Dinov2Model "
                         "backbone (model.dinov2.save_pretrained) and load that")
    kw: dict[str, Any] = dict(
        img_size=img, patch_size=ph, in_chans=int(c["num_channels"]), embed_dim=int(c["hidden_size"]),
        depth=int(c["num_hidden_layers"]), num_heads=int(c["num_attention_heads"]), act=_ACTS[act],
        norm_eps=float(c["layer_norm_eps"]), pos_embed_grid=(img[0] // ph, img[1] // ph),
        meta={"family": "hf", "model_type": mt, "architectures": list(hf_config.get("architectures") or [])},
        # HF ViT / DeiT / CLIP / plain Dinov2 resample position embeddings bicubically without antialias;
        # Dinov2WithRegisters antialiases like timm
        pos_interp_antialias=(mt == "dinov2_with_registers"),
    )
    if mt in ("vit", "deit", "vit_mae"):
        kw.update(mlp_dim=int(c["intermediate_size"]), qkv_bias=bool(c.get("qkv_bias", True)))
        if mt == "deit":
            kw.update(distill_token=True)
        if mt == "vit_mae":
            kw.update(pos_embed="sincos")       # fixed 2-D sin-cos; the stored table is loaded as the buffer
    elif mt in ("dinov2", "dinov2_with_registers"):
        if c.get("use_swiglu_ffn"):
            raise ValueError("HF config field use_swiglu_ffn=True (DINOv2 giant's SwiGLU MLP) is not supported: "
                             "vitscope's MLP is fc1 -> act -> fc2")
        n_reg = int(c.get("num_register_tokens") or 0)
        kw.update(mlp_dim=int(int(c["hidden_size"]) * float(c["mlp_ratio"])), qkv_bias=bool(c.get("qkv_bias", True)),
                  layer_scale_init=float(c["layerscale_value"]))
        if n_reg:
            # HF adds position embeddings to [CLS] + patches, then inserts registers after CLS: timm's
            # no_embed_class layout with the CLS position folded into cls_token.
            kw.update(num_registers=n_reg, register_location="prefix", pos_embed_prefix=False)
    elif mt in ("clip", "clip_vision_model"):
        kw.update(mlp_dim=int(c["intermediate_size"]), qkv_bias=True, patch_bias=False, pre_norm=True)
    else:
        kw.update(_modern_kwargs(mt, c))
        if head == "linear":
            raise ValueError(f"a classifier on a {mt!r} model is not supported (transformers' *ForImageClassification "
                             f"of these families pools differently); load the backbone")
    if head == "none":
        kw.update(head="none", num_classes=0)
    elif head == "clip_proj":
        kw.update(head="clip_proj", num_classes=int(c.get("projection_dim") or 512))
    elif head == "distilled":
        if mt != "deit":
            raise ValueError(f"a distilled head (cls_classifier + distillation_classifier) needs model_type 'deit', "
                             f"got {mt!r}")
        kw.update(head="distilled", num_classes=_num_labels(hf_config))
    else:
        kw.update(head="linear", num_classes=_num_labels(hf_config))
    return ViTConfig(**kw)


def _modern_kwargs(mt: str, c: Mapping[str, Any]) -> dict[str, Any]:
    """ViTConfig fields of the DINOv3, SigLIP / SigLIP 2 and AIMv2 vision towers."""
    kw: dict[str, Any] = {"mlp_dim": int(c["intermediate_size"])}
    if mt == "dinov3_vit":
        q, k, v = bool(c["query_bias"]), bool(c["key_bias"]), bool(c["value_bias"])
        kw.update(qkv_bias=k, qv_bias=(q or v) and not k, proj_bias=bool(c["proj_bias"]), mlp_bias=bool(c["mlp_bias"]),
                  layer_scale_init=float(c["layerscale_value"]), num_registers=int(c["num_register_tokens"] or 0),
                  pos_embed="none", pos_embed_grid=None, rope="dinov3", rope_theta=float(c["rope_theta"]),
                  rope_layout="half", gated_mlp=bool(c["use_gated_mlp"]), global_pool="token")
    elif mt in ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model"):
        kw.update(class_token=False, pos_embed_prefix=False, map_mlp_dim=int(c["intermediate_size"]),
                  global_pool="map" if c.get("vision_use_head", True) else "none")
        if mt.startswith("siglip2"):
            kw.update(pos_interp_mode="bilinear", pos_interp_antialias=True)
    else:  # aimv2
        if c.get("is_native"):
            raise ValueError("HF config field is_native=True (AIMv2's native-resolution sin-cos positions) is not "
                             "supported; the fixed-resolution AIMv2 checkpoints load")
        bias = bool(c["qkv_bias"])
        kw.update(class_token=False, pos_embed_prefix=False, norm="rmsnorm", patch_norm=True, gated_mlp=True,
                  qkv_bias=bias, proj_bias=bias, mlp_bias=bool(c["mlp_bias"]),
                  global_pool="map" if c.get("use_head", True) else "none",
                  map_q_proj=False, map_mlp=False, map_qkv_bias=bias)
    return kw


# ----------------------------------------------------------------------------- state dict
def _strip_base(key: str) -> str:
    for p in BASE_PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def _is_dropped(key: str) -> bool:
    return any(re.search(p, key) for p in DROPPED_KEYS)


# block-relative HF names (both checkpoint and transformers-5 in-memory spellings) -> vitscope names
_BLOCK_MAP = {
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj", "self_attn.out_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2", "mlp.fc2": "mlp.fc2",
    "layernorm_before": "ln1", "norm1": "ln1", "layer_norm1": "ln1",
    "layernorm_after": "ln2", "norm2": "ln2", "layer_norm2": "ln2",
    "rms_norm1": "ln1", "rms_norm2": "ln2", "attention.out_proj": "attn.proj",
    "mlp.gate_proj": "mlp.fc1_g", "mlp.down_proj": "mlp.fc2",
    "ffn.gate_proj": "mlp.fc1_g", "ffn.up_proj": "mlp.fc1_x", "ffn.down_proj": "mlp.fc2",
}
_QKV = {
    "attention.attention.query": "q", "attention.q_proj": "q", "self_attn.q_proj": "q",
    "attention.attention.key": "k", "attention.k_proj": "k", "self_attn.k_proj": "k",
    "attention.attention.value": "v", "attention.v_proj": "v", "self_attn.v_proj": "v",
}
_BLOCK_RE = re.compile(r"^(?:encoder\.layers?|layers|layer|model\.layer)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_TOP_MAP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",          # CLIP
    "pre_layrnorm.weight": "ln_pre.weight", "pre_layrnorm.bias": "ln_pre.bias",
    "layernorm.weight": "ln_final.weight", "layernorm.bias": "ln_final.bias",
    "post_layernorm.weight": "ln_final.weight", "post_layernorm.bias": "ln_final.bias",
    "classifier.weight": "head.weight", "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight", "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight", "distillation_classifier.bias": "head_dist.bias",
    "visual_projection.weight": "head.weight",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",          # DINOv3
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",              # SigLIP
    "embeddings.patch_embed.weight": "patch_embed.proj.weight",              # AIMv2
    "embeddings.patch_embed.bias": "patch_embed.proj.bias",
    "embeddings.rms_norm.weight": "patch_embed.norm.weight",
    "norm.weight": "ln_final.weight", "norm.bias": "ln_final.bias",
    "rms_norm.weight": "ln_final.weight",
    "head.probe": "attn_pool.latent", "head.cls_token": "attn_pool.latent",
    "head.attention.out_proj.weight": "attn_pool.proj.weight", "head.attention.out_proj.bias": "attn_pool.proj.bias",
    "head.output_proj.weight": "attn_pool.proj.weight", "head.output_proj.bias": "attn_pool.proj.bias",
    "head.layernorm.weight": "attn_pool.norm.weight", "head.layernorm.bias": "attn_pool.norm.bias",
    "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight", "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias",
    "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight", "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias",
}


def _convert(sd: Mapping[str, torch.Tensor], cfg: ViTConfig, model_type: str
             ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(vitscope state dict, {vitscope key: original HF key(s)}). Unmapped keys pass through unchanged."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    qkv: dict[tuple[int, str], dict[str, tuple[str, torch.Tensor]]] = {}
    kv: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    pos: tuple[str, torch.Tensor] | None = None
    cls: tuple[str, torch.Tensor] | None = None

    def put(name: str, value: torch.Tensor, src: str) -> None:
        if name in out:
            raise CheckpointError(f"checkpoint keys {origin[name]!r} and {src!r} both map to {name!r}")
        out[name], origin[name] = value, src

    for key, value in sd.items():
        k = _strip_base(key)
        if _is_dropped(k):
            continue
        m = _BLOCK_RE.match(k)
        if m:
            i, mod, param = int(m.group(1)), m.group(2), m.group(3)
            if param == "lambda1" and mod in ("layer_scale1", "layer_scale2"):
                put(f"blocks.{i}.ls{mod[-1]}.gamma", value, key)
            elif mod in _QKV and param in ("weight", "bias"):
                qkv.setdefault((i, param), {})[_QKV[mod]] = (key, value)
            elif mod == "mlp.up_proj" and param in ("weight", "bias"):                  # DINOv3
                put(f"blocks.{i}.mlp.{'fc1_x' if cfg.gated_mlp else 'fc1'}.{param}", value, key)
            elif mod in _BLOCK_MAP and param in ("weight", "bias"):
                put(f"blocks.{i}.{_BLOCK_MAP[mod]}.{param}", value, key)
            else:
                put(key, value, key)                         # unexpected: reported by load_strict
            continue
        if k in ("embeddings.position_embeddings", "embeddings.position_embedding.weight"):
            pos = (key, value if value.ndim == 3 else value[None])        # CLIP: (T, D) -> (1, T, D)
        elif k == "embeddings.cls_token":
            cls = (key, value)
        elif k == "embeddings.class_embedding":
            cls = (key, value.reshape(1, 1, -1))                          # CLIP: (D,) -> (1, 1, D)
        elif k == "embeddings.patch_embedding.weight" and value.ndim == 2:
            # Siglip2's linear patch embedding reads patches flattened as (row, column, channel)
            p, C = cfg.patch_size, cfg.in_chans
            put("patch_embed.proj.weight", value.reshape(-1, p, p, C).permute(0, 3, 1, 2).contiguous(), key)
        elif k.startswith("head.attention.in_proj_"):                    # SigLIP: nn.MultiheadAttention
            param = "weight" if k.endswith("weight") else "bias"
            D = value.shape[0] // 3
            put(f"attn_pool.q.{param}", value[:D], f"{key}[:{D}]")
            put(f"attn_pool.kv.{param}", value[D:], f"{key}[{D}:]")
        elif re.match(r"^head\.[kv]_proj\.(weight|bias)$", k):           # AIMv2: keys and values, no query
            kv.setdefault(k.rsplit(".", 1)[1], {})[k[5]] = (key, value)
        elif k in _TOP_MAP:
            put(_TOP_MAP[k], value, key)
        else:
            put(key, value, key)

    for (i, param), parts in sorted(qkv.items()):
        if param == "bias" and set(parts) != {"q", "k", "v"} and "q" in parts and (cfg.qv_bias or cfg.qkv_bias):
            # DINOv3: biases on q and v only (or a missing one): q_bias / v_bias, or zeros in the fused bias
            zeros = parts["q"][1].new_zeros(parts["q"][1].shape)
            if cfg.qv_bias and "k" not in parts:
                put(f"blocks.{i}.attn.q_bias", parts["q"][1], parts["q"][0])
                put(f"blocks.{i}.attn.v_bias", parts["v"][1] if "v" in parts else zeros,
                    parts["v"][0] if "v" in parts else "zeros")
                continue
            parts = {n: parts.get(n, ("zeros", zeros)) for n in "qkv"}
        if set(parts) != {"q", "k", "v"}:
            for src, v in parts.values():                    # incomplete: report what is there as unexpected
                put(src, v, src)
            continue
        shapes = {n: tuple(t.shape) for n, (_, t) in parts.items()}
        if len(set(shapes.values())) != 1:
            raise CheckpointError("q/k/v projections of block {} have different shapes: {}".format(
                i, {parts[n][0]: s for n, s in shapes.items()}))
        put(f"blocks.{i}.attn.qkv.{param}", fuse_qkv(parts["q"][1], parts["k"][1], parts["v"][1]),
            " + ".join(parts[n][0] for n in "qkv"))

    for param, parts in kv.items():
        if set(parts) != {"k", "v"}:
            for src, v in parts.values():
                put(src, v, src)
            continue
        put(f"attn_pool.kv.{param}", torch.cat([parts["k"][1], parts["v"][1]], dim=0),
            f"{parts['k'][0]} + {parts['v'][0]}")

    if cls is not None and pos is not None and not cfg.pos_embed_prefix and cfg.num_cls_tokens:
        # DINOv2 with registers: fold the CLS position into cls_token (timm's no_embed_class layout)
        n = cfg.num_cls_tokens
        if pos[1].shape[-1] != cls[1].shape[-1]:
            raise CheckpointError(f"{cls[0]} {tuple(cls[1].shape)} and {pos[0]} {tuple(pos[1].shape)} "
                                  "have different widths")
        put("cls_token", cls[1] + pos[1][:, :n], f"{cls[0]} + {pos[0]}[:, :{n}]")
        put("pos_embed", pos[1][:, n:], f"{pos[0]}[:, {n}:]")
    else:
        if cls is not None:
            put("cls_token", cls[1], cls[0])
        if pos is not None:
            put("pos_embed", pos[1], pos[0])
    return out, origin


def convert_hf_state_dict(sd: Mapping[str, torch.Tensor], cfg: ViTConfig, model_type: str) -> dict[str, torch.Tensor]:
    """HF state dict (with or without the base-model prefix) -> vitscope names for ``HookedViT(cfg)``.

    Keys in :data:`DROPPED_KEYS` are dropped; keys that map to nothing are kept under their HF name so that
    :func:`load_strict` reports them as unexpected.
    """
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"HF model_type={model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
    return _convert(sd, cfg, model_type)[0]


def load_hf_state_dict(model, sd: Mapping[str, torch.Tensor], model_type: str, source: str = "HF checkpoint") -> None:
    """Convert ``sd`` and load it strictly into ``model``; errors name both the vitscope and the HF keys."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"HF model_type={model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
    converted, origin = _convert(sd, model.cfg, model_type)
    try:
        load_strict(model, converted, source=source)
    except CheckpointError as e:
        msg = str(e)
        named = [f"{k} <- {v}" for k, v in sorted(origin.items())
                 if k != v and re.search(rf"(?<![\w.]){re.escape(k)}(?![\w.])", msg)]
        if named:
            msg += "; HF names: " + ", ".join(named[:20])
        raise CheckpointError(msg) from None


# ----------------------------------------------------------------------------- folders
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def is_hf_folder(path: str | Path) -> bool:
    """True for a folder whose config.json was written by transformers (has model_type or architectures)."""
    d = folder_config(path)
    return d is not None and ("model_type" in d or isinstance(d.get("architectures"), list))


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)


def read_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a save_pretrained folder: model.safetensors, pytorch_model.bin, or their sharded index."""
    p = Path(path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).is_file():
            return _load_file(p / name)
        index = p / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise CheckpointError(f"{index} has an empty weight_map")
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (p / shard).is_file():
                    raise FileNotFoundError(f"{index} names the shard {shard}, which is not in {p}")
                sd.update(_load_file(p / shard))
            return sd
    raise FileNotFoundError(f"no weights in {p}: expected model.safetensors, pytorch_model.bin or a sharded "
                            "*.index.json, as written by transformers' save_pretrained")


def load_hf_folder(path: str | Path):
    """A local folder written by transformers' ``save_pretrained`` -> HookedViT (eval mode) with its preprocessing.

    When preprocessor_config.json crops to a size other than config.json's ``image_size`` (DINOv2: trained
    at 518, used at 224), ``img_size`` is the crop size and ``pos_embed_grid`` stays the stored grid.
    """
    from vitscope.models.vit import HookedViT

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} has no config.json; expected a folder written by save_pretrained")
    hf_config = _read_json(p / "config.json")
    sd = read_hf_weights(p)
    cfg = config_from_hf(hf_config, keys=sd.keys())
    pre = hf_preprocess(p)
    if tuple(pre.input_size) != tuple(cfg.img_size) and all(s % cfg.patch_size == 0 for s in pre.input_size):
        cfg = cfg.replace(img_size=pre.input_size)
    cfg.meta["source"] = str(p)
    model = HookedViT(cfg, preprocess_cfg=pre)
    load_hf_state_dict(model, sd, hf_config["model_type"], source=f"HF checkpoint {p}")
    return model.eval()


# ----------------------------------------------------------------------------- preprocessing
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box"}

# per family, what the published checkpoints' processors use: (mean, std, interpolation, crop_pct)
_FAMILY_PRE = {
    "vit": (INCEPTION_MEAN, INCEPTION_STD, "bilinear", 1.0),
    "deit": (IMAGENET_MEAN, IMAGENET_STD, "bicubic", 0.875),
    "vit_mae": (IMAGENET_MEAN, IMAGENET_STD, "bicubic", 1.0),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD, "bicubic", 0.875),
    "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD, "bicubic", 0.875),
    "clip_vision_model": (CLIP_MEAN, CLIP_STD, "bicubic", 1.0),
    "clip": (CLIP_MEAN, CLIP_STD, "bicubic", 1.0),
    "dinov3_vit": (IMAGENET_MEAN, IMAGENET_STD, "bilinear", 1.0),
    "siglip_vision_model": (INCEPTION_MEAN, INCEPTION_STD, "bicubic", 1.0),
    "siglip": (INCEPTION_MEAN, INCEPTION_STD, "bicubic", 1.0),
    "siglip2_vision_model": (INCEPTION_MEAN, INCEPTION_STD, "bilinear", 1.0),
    "siglip2": (INCEPTION_MEAN, INCEPTION_STD, "bilinear", 1.0),
    "aimv2_vision_model": (CLIP_MEAN, CLIP_STD, "bicubic", 1.0),
    "aimv2": (CLIP_MEAN, CLIP_STD, "bicubic", 1.0),
}


def _size_hw(v) -> tuple[int, int] | None:
    """HF size / crop_size (int, {"height", "width"} or {"shortest_edge"}) -> (h, w), or None when a short edge."""
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return int(v), int(v)
    if isinstance(v, Mapping):
        if "height" in v and "width" in v:
            return int(v["height"]), int(v["width"])
        return None
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return int(v[0]), int(v[1])
    return None


def _short_edge(v) -> int | None:
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, Mapping):
        if "shortest_edge" in v:
            return int(v["shortest_edge"])
        if "height" in v and "width" in v:
            return min(int(v["height"]), int(v["width"]))
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return min(int(v[0]), int(v[1]))
    return None


def hf_preprocess(path_or_config: str | Path | Mapping[str, Any]) -> PreprocessConfig:
    """The eval preprocessing of an HF model: preprocessor_config.json when the folder has one, else family defaults.

    ``path_or_config``: a save_pretrained folder, or a config.json dict (family defaults only).
    vitscope resizes the short side to ``input / crop_pct`` and centre-crops; HF processors that resize to a
    fixed (height, width) without keeping the aspect ratio (ViT) agree with it on square images only.
    """
    if isinstance(path_or_config, Mapping):
        hf_config, pp = dict(path_or_config), None
    else:
        p = Path(path_or_config)
        hf_config = _read_json(p / "config.json") if (p / "config.json").is_file() else {}
        pp = _read_json(p / "preprocessor_config.json") if (p / "preprocessor_config.json").is_file() else None
    mt = hf_config.get("model_type", "vit")
    mean, std, interp, crop_pct = _FAMILY_PRE.get(mt, _FAMILY_PRE["vit"])
    try:                                    # without a processor file: the config's image_size
        size = _pair(_vision_fields(hf_config)[1]["image_size"], "image_size") if hf_config else (224, 224)
    except ValueError:
        size = (224, 224)
    if pp is None:
        return PreprocessConfig(input_size=size, crop_pct=crop_pct, interpolation=interp, mean=mean, std=std)

    mean = tuple(pp.get("image_mean") or mean)
    std = tuple(pp.get("image_std") or std)
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    if "resample" in pp:
        r = pp["resample"]
        if isinstance(r, str):
            r = r.lower()
            interp = r if r in _PIL_RESAMPLE.values() else None
        else:
            interp = _PIL_RESAMPLE.get(int(r))
        if interp is None:
            warnings.warn(f"preprocessor_config.json resample={pp['resample']!r} has no vitscope equivalent; "
                          "using bicubic", stacklevel=2)
            interp = "bicubic"
    do_resize = pp.get("do_resize", True)
    do_crop = pp.get("do_center_crop", False)
    resize = pp.get("size")
    crop = _size_hw(pp.get("crop_size")) if do_crop else None
    if crop is not None:
        size = crop
        short = _short_edge(resize) if do_resize else None
        crop_pct = min(1.0, max(size) / short) if short else 1.0
    else:
        hw = _size_hw(resize) if do_resize else None
        if hw is not None:
            size = hw
        elif do_resize and _short_edge(resize):
            s = _short_edge(resize)
            size = (s, s)
        crop_pct = 1.0
    return PreprocessConfig(input_size=size, crop_pct=crop_pct, interpolation=interp, mean=mean, std=std)
