"""timm's ``Eva`` class -> ViTConfig: DINOv3, EVA-02, RoPE-ViT, Perception Encoder and the RoPE + register ViTs.

timm builds these families with one class (``timm.models.eva.Eva``) whose arguments the architecture name fixes
(``rope_type``, ``rope_temperature``, ``ref_feat_shape``, the norms' eps ...); a hub ``config.json`` holds only
the arguments given to ``create_model``. So, as for timm's ``VisionTransformer`` (:mod:`.timm`), three sources
in increasing authority: the name (:func:`eva_args_from_name`, the facts of timm's architecture definitions),
``config.json`` (``model_args``, ``global_pool``, ``num_classes``, ``pretrained_cfg``) and the tensors (width,
depth, MLP kind and width, q/k/v layout and biases, tokens, norms, LayerScale, attention pool, head).

What timm's ``Eva`` arguments become (see ``ViTConfig``):

* ``use_rot_pos_emb`` + ``rope_type``: "cat" -> ``rope="axial"`` (``rope_temperature`` -> ``rope_theta``,
  ``ref_feat_shape`` -> ``rope_ref_grid``, ``rope_grid_offset`` / ``rope_grid_indexing``), "mixed" -> "mixed",
  "dinov3" -> "dinov3"; ``rope_rotate_half`` -> ``rope_layout="half"``; prefix tokens are never rotated;
* ``attn_type="eva"`` (``EvaAttention``): q and v biases only -> ``qv_bias``; ``attn_type="rope"``
  (``AttentionRope``): one ``qkv`` bias; ``qkv_fused=False`` keeps ``q_proj / k_proj / v_proj`` (joined on load);
* ``swiglu_mlp`` -> ``gated_mlp`` with SiLU (packed ``GluMlp`` or split ``SwiGLU``, ``swiglu_align_to`` rounds the
  width up), ``scale_mlp`` -> ``mlp_norm``, ``scale_attn_inner`` -> ``attn_out_norm``, ``qk_norm``;
* ``init_values`` -> LayerScale; ``num_reg_tokens`` -> registers after CLS; ``use_abs_pos_emb`` /
  ``no_embed_class`` -> the learned table; ``use_pre_transformer_norm`` -> ``pre_norm`` (no patch bias);
* ``global_pool`` ("avg" by default in timm, also for DINOv3; the DINOv3 names alone give upstream's CLS
  pooling, ``global_pool`` of a timm ``config.json`` wins);
  ``use_fc_norm`` / ``use_post_transformer_norm`` as timm resolves them; "map" -> the attention pool over all
  tokens (``map_tokens="all"``: Eva pools CLS too) with ``attn_pool_num_heads`` / ``attn_pool_mlp_ratio``;
* ``use_post_norm`` (EVA-02 enormous) -> ``res_post_norm``.

Not implemented, refused in one line: grouped-query attention (``num_kv_heads``), attention-only LayerScale,
multimodal RoPE (``rope_type="mrope"``), gated attention, and the architectures built on them (LingBot, Sapiens2,
PE-lang / PE-spatial heads are not covered either).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from vitscope.models.config import ViTConfig
from vitscope.models.converters.common import CheckpointError

# ----------------------------------------------------------------------------- architecture names
# (pattern, what it is); the first pattern that matches decides
_EVA_ARCHS = (
    (re.compile(r"^vit_(tiny|small|small_plus|base|large|huge_plus|7b)_patch16_dinov3(_qkvb)?$"), "dinov3"),
    (re.compile(r"^eva02_(tiny|small|base|large)_patch14_(224|336|448)$"), "eva02"),
    (re.compile(r"^eva02_(base_patch16|large_patch14)_clip_(224|336)$"), "eva02_clip"),
    (re.compile(r"^eva02_enormous_patch14_clip_224$"), "eva02_enormous"),
    (re.compile(r"^vit_(small|base|large)_patch16_rope(_mixed)?(_ape)?_224$"), "rope_vit"),
    (re.compile(r"^vit_(medium|mediumd|betwixt|base)_patch16_rope_reg(\d+)_gap_256$"), "rope_reg_gap"),
    (re.compile(r"^vit_pe_core_(tiny|small|base|large|gigantic)_patch(\d+)_(\d+)$"), "pe_core"),
)
# Eva-class names vitscope knows but does not implement, with what is missing
_EVA_UNSUPPORTED = (
    (re.compile(r"^vit_pe_(lang|spatial)_"), "Perception Encoder lang / spatial towers (timm's layer-scaled, "
                                              "headless variants are not checked against timm yet)"),
    (re.compile(r"_lingbot$"), "LingBot-Vision (grouped-query attention)"),
    (re.compile(r"_sapiens2$"), "Sapiens2 (grouped-query attention, attention-only LayerScale)"),
    (re.compile(r"^eva_giant_"), "EVA-01 giant (not checked against timm yet)"),
)

_DINOV3 = {  # size: embed_dim, depth, heads, swiglu_align_to (0: plain GELU MLP), mlp_ratio
    "tiny": (192, 12, 3, 0, 4.0), "small": (384, 12, 6, 0, 4.0), "small_plus": (384, 12, 6, 8, 4.0),
    "base": (768, 12, 12, 0, 4.0), "large": (1024, 24, 16, 0, 4.0), "huge_plus": (1280, 32, 20, 8, 4.0),
    "7b": (4096, 40, 32, 64, 2.0),
}
_EVA02 = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
_ROPE_VIT = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
_ROPE_REG_GAP = {"medium": (512, 12, 8, True), "mediumd": (512, 20, 8, False), "betwixt": (640, 12, 10, True),
                 "base": (768, 12, 12, True)}
_PE_CORE = {  # size: embed_dim, depth, heads, mlp_ratio, ref grid, class token
    "tiny": (192, 12, 3, 4.0, 24, True), "small": (384, 12, 6, 4.0, 24, True), "base": (768, 12, 12, 4.0, 14, True),
    "large": (1024, 24, 16, 4.0, 24, True), "gigantic": (1536, 50, 16, 8960 / 1536, 32, False),
}


def _match(arch: str) -> tuple[str, re.Match] | None:
    for pat, kind in _EVA_ARCHS:
        m = pat.match(arch)
        if m:
            return kind, m
    return None


def is_eva_arch(arch: str) -> bool:
    """True for names of timm's ``Eva`` class that vitscope knows (covered or refused with a reason)."""
    a = arch.split("/")[-1].split(".")[0].lower()
    return _match(a) is not None or any(p.search(a) for p, _ in _EVA_UNSUPPORTED)


def eva_args_from_name(arch: str) -> dict[str, Any]:
    """timm's ``Eva`` arguments of an architecture name, as its timm definition gives them (plus ``img_size``
    and ``norm_eps``); a ValueError naming what is missing for families vitscope does not implement.
    """
    a = arch.split("/")[-1].split(".")[0].lower()
    for pat, what in _EVA_UNSUPPORTED:
        if pat.search(a):
            raise ValueError(f"{a!r}: {what} is not supported by HookedViT")
    hit = _match(a)
    if hit is None:
        raise ValueError(f"{a!r} is not one of timm's Eva architectures that vitscope reads (DINOv3 "
                         f"vit_*_patch16_dinov3*, eva02_*, vit_*_patch16_rope*_224, vit_*_patch16_rope_reg*_gap_256, "
                         f"vit_pe_core_*)")
    kind, m = hit
    kw: dict[str, Any] = dict(img_size=224, patch_size=16, mlp_ratio=4.0, qkv_bias=True, qkv_fused=True,
                              class_token=True, global_pool="avg", use_abs_pos_emb=True, norm_eps=1e-6)
    if kind == "dinov3":
        D, depth, H, align, ratio = _DINOV3[m.group(1)]
        kw.update(embed_dim=D, depth=depth, num_heads=H, mlp_ratio=ratio, qkv_bias=bool(m.group(2)),
                  init_values=1e-5, rope_type="dinov3", rope_temperature=100.0, rope_rotate_half=True,
                  use_rot_pos_emb=True, use_abs_pos_emb=False, num_reg_tokens=4, use_fc_norm=False, norm_eps=1e-5,
                  img_size=256, global_pool="token")           # upstream's CLS; a config.json's global_pool wins
        if align:
            kw.update(swiglu_mlp=True, swiglu_align_to=align)
    elif kind in ("eva02", "eva02_clip"):
        size = m.group(1).split("_")[0]
        D, depth, H = _EVA02[size]
        big = size in ("base", "large")
        kw.update(embed_dim=D, depth=depth, num_heads=H, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True,
                  ref_feat_shape=(16, 16), img_size=int(m.group(2)), patch_size=14, qkv_fused=not big,
                  scale_mlp=big)
        if kind == "eva02_clip":
            kw.update(scale_attn_inner=True, global_pool="token", patch_size=int(m.group(1)[-2:]))
    elif kind == "eva02_enormous":
        kw.update(embed_dim=1792, depth=64, num_heads=16, mlp_ratio=15360 / 1792, patch_size=14, use_post_norm=True,
                  global_pool="token")
    elif kind == "rope_vit":
        D, depth, H = _ROPE_VIT[m.group(1)]
        mixed, ape = bool(m.group(2)), bool(m.group(3))
        kw.update(embed_dim=D, depth=depth, num_heads=H, attn_type="rope", init_values=1e-5, global_pool="token",
                  use_abs_pos_emb=ape, no_embed_class=ape, use_rot_pos_emb=True, rope_grid_indexing="xy",
                  rope_temperature=10.0 if mixed else 100.0, rope_type="mixed" if mixed else "cat")
    elif kind == "rope_reg_gap":
        D, depth, H, qkv_bias = _ROPE_REG_GAP[m.group(1)]
        kw.update(embed_dim=D, depth=depth, num_heads=H, qkv_bias=qkv_bias, init_values=1e-5, class_token=False,
                  num_reg_tokens=int(m.group(2)), use_rot_pos_emb=True, use_abs_pos_emb=False,
                  ref_feat_shape=(16, 16), img_size=256)
    else:  # pe_core
        D, depth, H, ratio, ref, cls = _PE_CORE[m.group(1)]
        kw.update(embed_dim=D, depth=depth, num_heads=H, mlp_ratio=ratio, patch_size=int(m.group(2)),
                  img_size=int(m.group(3)), global_pool="map", attn_type="rope", use_pre_transformer_norm=True,
                  use_rot_pos_emb=True, ref_feat_shape=(ref, ref), rope_grid_offset=1.0 if cls else 0.0,
                  rope_grid_indexing="xy", attn_pool_num_heads=8, attn_pool_mlp_ratio=4.0, norm_eps=1e-5,
                  class_token=cls)
    return kw


# ----------------------------------------------------------------------------- config
_IGNORED = {"dynamic_img_size", "drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate",
            "attn_drop_rate", "drop_path_rate", "head_init_scale", "rope_shift_coords", "rope_jitter_coords",
            "rope_rescale_coords", "in_chans"}
_REFUSED = {"num_kv_heads": "grouped-query attention", "attn_only_layer_scale": "attention-only LayerScale",
            "rope_mrope_section": "multimodal RoPE", "dynamic_img_pad": "padding to the patch size",
            "attn_head_dim": "a head width other than embed_dim / num_heads"}


def _from_tensors(sd: Mapping[str, torch.Tensor], kw: dict[str, Any]) -> dict[str, Any]:
    """Eva arguments the tensors show; they override the name and config.json."""
    from vitscope.models.converters.timm_keys import block_ids as _block_ids
    from vitscope.models.converters.timm_keys import block_kinds_from_tensors as _block_kinds_from_tensors

    w = sd.get("patch_embed.proj.weight")
    if w is None or not _block_ids(sd):
        raise CheckpointError("checkpoint has no patch_embed.proj.weight or blocks.<i>. keys: "
                              "not a timm Eva state dict")
    out: dict[str, Any] = {"embed_dim": int(w.shape[0]), "patch_size": int(w.shape[-1]), "in_chans": int(w.shape[1]),
                           "depth": _block_ids(sd)[-1] + 1, "patch_bias": "patch_embed.proj.bias" in sd,
                           "class_token": "cls_token" in sd,
                           "num_reg_tokens": int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0,
                           "use_abs_pos_emb": "pos_embed" in sd, "use_pre_transformer_norm": "norm_pre.weight" in sd,
                           "final_norm": "norm.weight" in sd, "use_fc_norm": "fc_norm.weight" in sd,
                           "num_classes": int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0,
                           "head_bias": "head.bias" in sd}
    kinds = _block_kinds_from_tensors(sd)
    packed = sd.get("blocks.0.mlp.fc1.weight")
    fc2 = sd.get("blocks.0.mlp.fc2.weight")
    if packed is not None and fc2 is not None and packed.shape[0] == 2 * fc2.shape[1]:
        kinds.update(gated_mlp=True, mlp_dim=int(fc2.shape[1]))                        # GluMlp: gate + linear
    elif packed is not None:
        kinds.update(gated_mlp=False, mlp_dim=int(packed.shape[0]))
    out.update(kinds)
    unfused = "blocks.0.attn.q_proj.weight" in sd
    has_k = "blocks.0.attn.k_proj.bias" in sd if unfused else "blocks.0.attn.qkv.bias" in sd
    has_q = ("blocks.0.attn.q_proj.bias" in sd) if unfused else ("blocks.0.attn.q_bias" in sd or has_k)
    out["qv_bias"], out["qkv_bias"] = has_q and not has_k, has_k
    out["layer_scale"] = "blocks.0.gamma_1" in sd
    if "blocks.0.gamma_1" in sd and "blocks.0.gamma_2" not in sd:
        raise CheckpointError("LayerScale on the attention branch only (attn_only_layer_scale) is not supported")
    if "pos_embed" in sd:
        out["_pos_len"] = int(sd["pos_embed"].shape[1])
    out["rope_mixed_freqs"] = "rope.freqs" in sd
    return out


def config_from_timm_eva(arch: str, tag: str | None, cj: Mapping[str, Any],
                         sd: Mapping[str, torch.Tensor] | None) -> ViTConfig:
    """The ViTConfig of a timm ``Eva`` model from its name, hub ``config.json`` and (best) its tensors."""
    from vitscope.models.converters.timm_keys import check_supported_keys as _check_supported_keys

    kw = eva_args_from_name(arch)
    pcfg = dict(cj.get("pretrained_cfg") or {})
    if "num_classes" in cj:
        kw["num_classes"] = cj["num_classes"]
    elif "num_classes" in pcfg:
        kw["num_classes"] = pcfg["num_classes"]
    if cj.get("global_pool") is not None:
        kw["global_pool"] = cj["global_pool"]
    if pcfg.get("input_size") is not None and pcfg.get("fixed_input_size", True):
        kw["img_size"] = tuple(pcfg["input_size"][-2:])
    margs = dict(cj.get("model_args") or {})
    refused = sorted(k for k in margs if k in _REFUSED and margs[k] not in (None, False))
    if refused:
        raise ValueError(f"{arch}: model_args {refused} select {_REFUSED[refused[0]]}, which HookedViT does not "
                         f"implement")
    if margs.get("rope_type") == "mrope":
        raise ValueError(f"{arch}: rope_type='mrope' (multimodal RoPE) is not supported by HookedViT")
    kw.update({k: v for k, v in margs.items() if k not in _IGNORED})
    meta: dict[str, Any] = {"family": "eva", "source": "timm", "architecture": arch}
    if tag:
        meta["tag"] = tag
    if sd is not None:
        _check_supported_keys(sd, arch)
        kw.update(_from_tensors(sd, kw))
    return _config(kw, meta)


def _config(kw: dict[str, Any], meta: dict[str, Any]) -> ViTConfig:
    D, p = int(kw["embed_dim"]), int(kw["patch_size"])
    img = kw["img_size"]
    img = (int(img), int(img)) if isinstance(img, (int, float)) else (int(img[0]), int(img[1]))
    from vitscope.models.converters.timm_keys import patch_multiple

    img = patch_multiple(img, p, meta)
    gp = {"": "none", None: "none"}.get(kw.get("global_pool"), kw.get("global_pool"))
    if gp not in ("avg", "token", "map", "none"):
        raise ValueError(f"timm global_pool={gp!r} is not supported (token, avg, map or none)")
    # timm Eva: fc_norm on for average pooling unless given; the final norm on when fc_norm is off
    fc_norm = kw["use_fc_norm"] if kw.get("use_fc_norm") is not None else gp == "avg"
    final = kw["final_norm"] if "final_norm" in kw else (
        kw["use_post_transformer_norm"] if kw.get("use_post_transformer_norm") is not None else not fc_norm)
    if gp == "none":
        fc_norm = False
    n_cls = int(kw.get("num_classes", 1000))
    cls = bool(kw.get("class_token", True))
    reg = int(kw.get("num_reg_tokens", 0))
    # rotary
    rope: dict[str, Any] = {}
    if kw.get("use_rot_pos_emb") or kw.get("rope_mixed_freqs"):
        rtype = "mixed" if kw.get("rope_mixed_freqs") else kw.get("rope_type", "cat")
        kinds = {"cat": "axial", "mixed": "mixed", "dinov3": "dinov3"}
        if rtype not in kinds:
            raise ValueError(f"rope_type={rtype!r} is not supported (cat, mixed, dinov3)")
        ref = kw.get("ref_feat_shape")
        rope = dict(rope=kinds[rtype], rope_theta=float(kw.get("rope_temperature", 10000.0)),
                    rope_layout="half" if kw.get("rope_rotate_half") else "interleaved",
                    rope_indexing=kw.get("rope_grid_indexing", "ij"),
                    rope_offset=float(kw.get("rope_grid_offset", 0.0)),
                    rope_ref_grid=tuple(ref) if ref is not None and rtype == "cat" else None)
    # MLP width as timm computes it (the tensors give it when present)
    hidden = kw.get("mlp_dim")
    if hidden is None:
        hidden = int(D * float(kw.get("mlp_ratio", 4.0)))
        align = int(kw.get("swiglu_align_to") or 0)
        if kw.get("swiglu_mlp") and align:
            hidden += -hidden % align
    gated = bool(kw.get("gated_mlp", kw.get("swiglu_mlp", False)))
    # attention biases: EvaAttention keeps q and v biases only, AttentionRope one qkv bias
    if "qv_bias" in kw:
        qv_bias, qkv_bias = bool(kw["qv_bias"]), bool(kw["qkv_bias"])
    elif kw.get("attn_type", "eva") == "rope":
        qv_bias, qkv_bias = False, bool(kw.get("qkv_bias", True))
    else:
        qv_bias, qkv_bias = bool(kw.get("qkv_bias", True)), False
    post = bool(kw.get("use_post_norm", False))
    has_ls = kw["layer_scale"] if "layer_scale" in kw else kw.get("init_values") is not None
    ls = float(kw.get("init_values") or 1e-5) if has_ls and not post else None
    # absolute position embedding: entries for CLS / registers unless no_embed_class
    pos_kind = "learned" if kw.get("use_abs_pos_emb", True) else "none"
    pos_prefix = not kw.get("no_embed_class", False) and (cls or reg > 0)
    pos_grid = None
    if pos_kind == "learned" and "_pos_len" in kw:
        n_img = (img[0] // p) * (img[1] // p)
        n_pre = (int(cls) + reg) if pos_prefix else 0
        if kw["_pos_len"] - n_pre != n_img:
            side = round((kw["_pos_len"] - n_pre) ** 0.5)
            if side * side != kw["_pos_len"] - n_pre:
                raise CheckpointError(f"pos_embed of length {kw['_pos_len']} does not fit a square grid "
                                      f"after {n_pre} prefix entries")
            pos_grid = (side, side)
    if pos_kind == "learned" and pos_prefix and not cls:
        raise ValueError("register tokens with their own position embeddings and no CLS are not supported")
    map_fields: dict[str, Any] = {}
    if gp == "map":
        map_fields = dict(map_heads=kw.get("attn_pool_num_heads") or int(kw["num_heads"]),
                          map_mlp_dim=kw.get("map_mlp_dim") or int(D * float(kw.get("attn_pool_mlp_ratio")
                                                                              or kw.get("mlp_ratio", 4.0))),
                          map_tokens="all", **{k: kw[k] for k in ("map_q_proj", "map_qkv_bias", "map_mlp")
                                               if k in kw})
    return ViTConfig(
        img_size=img, patch_size=p, in_chans=int(kw.get("in_chans", 3)), embed_dim=D, depth=int(kw["depth"]),
        num_heads=int(kw["num_heads"]), mlp_dim=int(hidden), qkv_bias=qkv_bias, qv_bias=qv_bias,
        patch_bias=bool(kw.get("patch_bias", not kw.get("use_pre_transformer_norm", False))),
        class_token=cls, num_registers=reg, register_location="prefix", pos_embed=pos_kind,
        pos_embed_prefix=pos_prefix and cls, pos_embed_grid=pos_grid,
        pre_norm=bool(kw.get("use_pre_transformer_norm", False)), res_post_norm=post,
        layer_scale_init=ls, act="silu" if gated else "gelu", norm=kw.get("norm", "layernorm"),
        patch_norm=bool(kw.get("patch_norm", False)), norm_eps=float(kw.get("norm_eps", 1e-6)), gated_mlp=gated,
        mlp_norm=bool(kw.get("mlp_norm", kw.get("scale_mlp"))),
        attn_out_norm=bool(kw.get("attn_out_norm", kw.get("scale_attn_inner"))), qk_norm=bool(kw.get("qk_norm")),
        proj_bias=bool(kw.get("proj_bias", True)), mlp_bias=bool(kw.get("mlp_bias", True)),
        final_norm=bool(final), global_pool=gp, fc_norm=bool(fc_norm),
        head="linear" if n_cls > 0 else "none", num_classes=max(n_cls, 0), head_bias=bool(kw.get("head_bias", True)),
        meta=meta, **rope, **map_fields,
    )
