"""timm checkpoints -> HookedViT: architecture from timm's name / config.json / tensor shapes, key renames.

Covers timm's ``VisionTransformer`` families (ViT / AugReg, DeiT and DeiT-distilled, DINO, MAE, DINOv2 with
and without registers, DeiT-3, CLIP image towers, global-average-pooled ViTs, the residual post-norm
``*_rpn_*`` ViT, SigLIP / SigLIP 2 with their attention-pool head, AIMv2, qk-norm ViTs) and timm's ``Beit``;
timm's ``Eva`` class (DINOv3, EVA-02, RoPE-ViT, Perception Encoder, the ``*_rope_reg*_gap_*`` ViTs) is read by
:mod:`vitscope.models.converters.timm_eva` through the same entry points. Post-norm blocks have the keys of
pre-norm ones: only the name (``rpn``) or ``model_args`` (``res_post_norm``) tell them apart.

Three sources describe a timm model, in increasing authority:

1. the architecture name (``vit_small_patch16_224`` -> width 384, depth 12, 6 heads, patch 16, 224 px),
2. ``config.json`` of a timm hub folder (``architecture``, ``num_classes``, ``global_pool``, ``pretrained_cfg``
   with the preprocessing, ``model_args`` with the keyword arguments given to ``timm.create_model``),
3. the tensors themselves (width, depth, MLP width, position grid, tokens, heads of BEiT, norms, head size):
   a checkpoint wins over a name.

Key renames (timm -> vitscope): ``norm1 -> ln1``, ``norm2 -> ln2``, ``norm -> ln_final``, ``norm_pre -> ln_pre``,
BEiT / EVA ``gamma_1/gamma_2 -> ls1.gamma/ls2.gamma``; EVA's separate ``q_proj / k_proj / v_proj`` are joined into
``qkv`` (with ``q_bias`` / ``v_bias``) and the packed gated MLP's ``fc1`` is split into ``fc1_g`` (gate, first
half) and ``fc1_x``; everything else keeps its timm name (``attn_pool.*``, ``rope.freqs``, ``mlp.norm``,
``attn.norm``, ``attn.q_norm`` ...).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vitscope.models.config import ViTConfig
from vitscope.models.converters.common import CheckpointError, folder_config, fuse_qkv, load_strict
from vitscope.models.converters.timm_keys import block_ids as _block_ids
from vitscope.models.converters.timm_keys import block_kinds_from_tensors as _block_kinds_from_tensors
from vitscope.models.converters.timm_keys import check_supported_keys as _check_supported_keys
from vitscope.models.converters.timm_keys import patch_multiple  # noqa: F401  (used by timm_eva through here)
from vitscope.models.preprocess import PreprocessConfig

# ----------------------------------------------------------------------------- architecture names
# width, depth, heads, mlp_ratio of timm's size words (the registry reads this table too)
TIMM_SIZES: dict[str, tuple[int, int, int, float]] = {
    "tiny": (192, 12, 3, 4.0),
    "small": (384, 12, 6, 4.0),
    "medium": (512, 12, 8, 4.0),
    "betwixt": (640, 12, 10, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 16, 48 / 11),
    "gigantic": (1664, 48, 16, 64 / 13),
}
# width, depth, heads, mlp_ratio of size words the converter reads besides TIMM_SIZES
_MORE_SIZES: dict[str, tuple[int, int, int, float]] = {
    "so400m": (1152, 27, 16, 3.7362),
    "giantopt": (1536, 40, 16, 4.0),
}
# AIMv2 (timm's aimv2_*): SwiGLU (no biases), RMSNorm, a norm on the patch embeddings, no CLS, mean of patches
_AIMV2_SIZES: dict[str, tuple[int, int, int, float]] = {"large": (1024, 24, 8, 2.75), "huge": (1536, 24, 12, 2.6667),
                                                        "1b": (2048, 24, 16, 2.75), "3b": (3072, 24, 24, 2.6667)}
# SigLIP architectures that timm builds with the tanh approximation of GELU (the others run exact GELU)
_SIGLIP_GELU_TANH = re.compile(r"^vit_(base_patch32|so400m_patch16|giantopt_patch16)_siglip|"
                               r"^vit_large_patch16_siglip(_gap)?_512")
# name fragments of timm architectures whose blocks HookedViT does not implement
_UNSUPPORTED = {
    "relpos": "timm's relpos ViTs (per-block relative position MLP)",
    "beit3": "BEiT-3 (multiway transformer)",
    "sapiens": "Sapiens (grouped-query attention, attention-only LayerScale)",
    "radio": "RADIO",
    "tips": "TIPS",
    "naflexvit": "NaFlex ViTs (variable-resolution patch sequences)",
}
# architectures whose arguments differ from what their size word says
_NAME_EXCEPTIONS: dict[str, dict[str, Any]] = {
    "vit_medium_patch16_gap": {"qkv_bias": False, "init_values": 1e-6},
    "vit_base_patch16_gap": {"num_heads": 16},
}
# timm keyword arguments that change the computation in a way HookedViT does not implement
_UNSUPPORTED_ARGS = {"dynamic_img_pad": True}


def split_name(name: str) -> tuple[str, str | None]:
    """``"timm/vit_small_patch16_224.dino"`` -> (``"vit_small_patch16_224"``, ``"dino"``)."""
    name = name.split("/")[-1]
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def timm_args_from_name(arch: str) -> dict[str, Any]:
    """timm keyword arguments implied by an architecture name (the ones vitscope needs).

    Unknown size words give no width/depth/heads (they come from the tensors); unsupported families raise.
    """
    from vitscope.models.converters import timm_eva

    arch, _ = split_name(arch)
    a = arch.lower()
    for frag, what in _UNSUPPORTED.items():
        if frag in f"_{a}_":
            raise ValueError(f"{arch!r}: {what} is not supported by HookedViT")
    if timm_eva.is_eva_arch(a):
        return {"_family": "eva", **timm_eva.eva_args_from_name(arch)}
    if "dinov2" in a and "giant" in a:
        raise ValueError(f"{arch!r}: DINOv2 giant uses a SwiGLU MLP with timm's packed weights (mlp.w12), "
                         "which vitscope does not read; the other DINOv2 sizes load")
    if a.startswith("aimv2_"):
        return _aimv2_args(arch)
    args: dict[str, Any] = {"_family": "beit" if a.startswith("beit") else "vit"}
    m = re.match(r"(?:vit|deit3?|beitv?2?|beit)_([a-z0-9]+)_", a)
    sizes = {**TIMM_SIZES, **_MORE_SIZES}
    if m and m.group(1) in sizes:
        D, depth, heads, ratio = sizes[m.group(1)]
        args.update(embed_dim=D, depth=depth, num_heads=heads, mlp_ratio=ratio)
    m = re.search(r"patch(\d+)", a)
    if m:
        args["patch_size"] = int(m.group(1))
    sizes = re.findall(r"_(\d{3,4})(?=_|$)", a.split("patch", 1)[-1])
    if sizes:
        args["img_size"] = int(sizes[-1])
    if "distilled" in a:
        args["distilled"] = True
    if a.startswith("deit3"):
        args.update(no_embed_class=True, init_values=1e-6)
    if "clip" in a:
        args.update(pre_norm=True, norm_eps=1e-5)
    if "quickgelu" in a:
        args["act_layer"] = "quick_gelu"
    if "siglip" in a:
        args.update(class_token=False, global_pool="avg" if "_gap" in a else "map", fc_norm=False)
        if _SIGLIP_GELU_TANH.match(a):
            args["act_layer"] = "gelu_tanh"
    if "dinov2" in a:
        args.update(init_values=1e-5)
        args.setdefault("img_size", 518)
    m = re.search(r"_reg(\d+)", a)
    if m:
        args.update(reg_tokens=int(m.group(1)), no_embed_class=True)
    if "_gap" in a:
        args.update(class_token=False, global_pool="avg", fc_norm=False)
    if "_rpn_" in f"_{a}_":        # timm ResPostBlock (its init_values only set the norms' initial weights)
        args.update(class_token=False, global_pool="avg", qkv_bias=False, res_post_norm=True)
    for prefix, extra in _NAME_EXCEPTIONS.items():
        if a.startswith(prefix):
            args.update(extra)
    if a.endswith("_miil"):
        args["qkv_bias"] = False
    if args["_family"] == "beit":
        args.update(global_pool="avg", use_abs_pos_emb=False, use_rel_pos_bias=True,
                    init_values=0.1 if a.startswith("beit_base") else 1e-5)
    return args


def _aimv2_args(arch: str) -> dict[str, Any]:
    m = re.match(r"aimv2_([a-z0-9]+)_patch(\d+)_(\d+)$", arch.lower())
    if not m or m.group(1) not in _AIMV2_SIZES:
        raise ValueError(f"{arch!r}: unknown AIMv2 architecture; vitscope reads "
                         f"aimv2_{{large,huge,1b,3b}}_patch14_<size>")
    D, depth, heads, ratio = _AIMV2_SIZES[m.group(1)]
    return dict(_family="vit", embed_dim=D, depth=depth, num_heads=heads, mlp_ratio=ratio, patch_size=int(m.group(2)),
                img_size=int(m.group(3)), class_token=False, fc_norm=False, global_pool="avg", qkv_bias=False,
                proj_bias=False, act_layer="silu", norm="rmsnorm", norm_eps=1e-5, patch_norm=True, gated_mlp=True)


# ----------------------------------------------------------------------------- state-dict helpers
def unwrap_state_dict(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Peel the usual wrappers (``model``, ``state_dict``, ``module``) off a checkpoint, as timm does."""
    for key in ("model", "state_dict", "module"):
        inner = sd.get(key) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            sd = inner
    return dict(sd)


def _square(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n else None


def _is_beit(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith("attn.q_bias") or "relative_position_bias_table" in k or re.search(r"\.gamma_[12]$", k)
               for k in sd)


# ----------------------------------------------------------------------------- config
def config_from_timm(arch_name: str | None, timm_config_json: dict | None = None, *,
                     state_dict: Mapping[str, torch.Tensor] | None = None,
                     native_act: bool = True) -> ViTConfig:
    """Build the ViTConfig of a timm model from its name, its hub ``config.json`` and (best) its tensors.

    ``arch_name`` may carry a tag (``vit_base_patch16_clip_224.openai``); when None it is read from the config.
    ``native_act``: CLIP weights that timm marks "natively QuickGELU" (OpenAI, MetaCLIP) run with QuickGELU as
    they were trained; timm's non-``quickgelu`` architecture names run them with GELU. Set False to match timm.
    """
    cj = dict(timm_config_json or {})
    pcfg = dict(cj.get("pretrained_cfg") or {})
    if arch_name is None:
        arch_name = cj.get("architecture") or pcfg.get("architecture")
        if arch_name is None:
            raise ValueError("no architecture name given and config.json has no 'architecture' field")
    arch, tag = split_name(arch_name)
    tag = tag or pcfg.get("tag")
    a = timm_args_from_name(arch)
    family = a.pop("_family")
    if family == "eva":
        from vitscope.models.converters import timm_eva

        sd = unwrap_state_dict(state_dict) if state_dict is not None else None
        return timm_eva.config_from_timm_eva(arch, tag, cj, sd)
    name_dims = {k: a[k] for k in ("embed_dim", "num_heads") if k in a}
    if "num_classes" in cj:
        a["num_classes"] = cj["num_classes"]
    elif "num_classes" in pcfg:
        a["num_classes"] = pcfg["num_classes"]
    if cj.get("global_pool") is not None:
        a["global_pool"] = cj["global_pool"]
    input_size = pcfg.get("input_size")
    if input_size is not None and pcfg.get("fixed_input_size", True):
        a["img_size"] = tuple(input_size[-2:])
    margs = dict(cj.get("model_args") or {})
    bad = {k: v for k, v in margs.items() if k in _UNSUPPORTED_ARGS and v == _UNSUPPORTED_ARGS[k]}
    if margs.get("global_pool") not in (None, "", "token", "avg", "map"):
        bad["global_pool"] = margs["global_pool"]
    if margs.get("pool_include_prefix") and margs.get("global_pool", a.get("global_pool")) != "map":
        bad["pool_include_prefix"] = True
    if bad:
        raise ValueError(f"{arch}: model_args {bad} select features HookedViT does not implement")
    a.update(margs)
    if tag and ("natively QuickGELU" in " ".join(pcfg.get("notes", ()) or ()) or tag.startswith("openai")) \
            and "clip" in arch and native_act:
        a["act_layer"] = "quick_gelu"
    meta: dict[str, Any] = {"family": family, "source": "timm", "architecture": arch}
    if tag:
        meta["tag"] = tag
    if native_act and a.get("act_layer") == "quick_gelu" and "quickgelu" not in arch:
        meta["note"] = "timm's architecture runs GELU; vitscope runs the native QuickGELU of these weights"

    sd = unwrap_state_dict(state_dict) if state_dict is not None else None
    if sd is not None:
        _check_supported_keys(sd, arch)
        family = "beit" if (_is_beit(sd) or family == "beit") else "vit"
        meta["family"] = family
        a.update(_args_from_tensors(sd, a, family))
    if "embed_dim" not in a or "depth" not in a:
        raise ValueError(f"cannot tell the width/depth of {arch!r} from its name; pass the checkpoint tensors "
                         "(state_dict=...) or model_args in config.json")
    # heads: model_args > BEiT's bias table > the name (when its width is the checkpoint's) > width // 64
    if "num_heads" in margs or a.get("_heads_from_tensors"):
        pass
    elif "num_heads" in name_dims and name_dims.get("embed_dim") == a["embed_dim"]:
        a["num_heads"] = name_dims["num_heads"]
    else:
        D = int(a["embed_dim"])
        a["num_heads"] = next((h for h in (D // 64, D // 32, D // 16, 1) if h >= 1 and D % h == 0), 1)
        meta["num_heads_guessed"] = True
    return _vitcfg_from_args(a, family, meta)


def _args_from_tensors(sd: Mapping[str, torch.Tensor], a: dict[str, Any], family: str) -> dict[str, Any]:
    """timm keyword arguments read from tensor shapes; they override the name and config."""
    out: dict[str, Any] = {}
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        raise CheckpointError("checkpoint has no patch_embed.proj.weight: not a timm ViT state dict")
    D = int(w.shape[0])
    if w.ndim == 4:
        out["patch_size"], out["in_chans"] = int(w.shape[-1]), int(w.shape[1])
    out["embed_dim"] = D
    out["patch_bias"] = "patch_embed.proj.bias" in sd
    ids = _block_ids(sd)
    if not ids:
        raise CheckpointError("checkpoint has no blocks.<i>. keys: not a ViT state dict")
    out["depth"] = ids[-1] + 1
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        out["mlp_dim"] = int(fc1.shape[0])
    out.update(_block_kinds_from_tensors(sd))
    out["qv_bias"] = "blocks.0.attn.q_bias" in sd
    out["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
    out["class_token"] = "cls_token" in sd
    out["distilled"] = "dist_token" in sd
    out["reg_tokens"] = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    has_ls = "blocks.0.ls1.gamma" in sd or "blocks.0.gamma_1" in sd
    out["init_values"] = (a.get("init_values") or 1e-5) if has_ls else None
    out["pre_norm"] = "norm_pre.weight" in sd
    out["final_norm_key"] = "norm.weight" in sd
    out["fc_norm_key"] = "fc_norm.weight" in sd
    if "head.weight" in sd:
        out["num_classes"] = int(sd["head.weight"].shape[0])
        out["head_bias"] = "head.bias" in sd
        out["head_bias_zero"] = bool("head.bias" in sd and not sd["head.bias"].any())
    else:
        out["num_classes"] = 0
    tables = [k for k in sd if k.endswith("relative_position_bias_table")]
    out["rel_pos_bias"] = bool(tables)
    if tables:
        out["num_heads"] = int(sd[tables[0]].shape[1])
        out["_heads_from_tensors"] = True
        side = _square(int(sd[tables[0]].shape[0]) - 3)
        if side is not None and side % 2 == 1:
            out["_rel_grid"] = ((side + 1) // 2,) * 2
    if "pos_embed" in sd:
        out["_pos_len"] = int(sd["pos_embed"].shape[1])
        out["pos_embed"] = "learn"
    else:
        out["pos_embed"] = "none"
    return out


def _vitcfg_from_args(a: dict[str, Any], family: str, meta: dict[str, Any]) -> ViTConfig:
    D = int(a["embed_dim"])
    p = int(a.get("patch_size", 16))
    img = a.get("img_size", 224)
    img = (int(img), int(img)) if isinstance(img, (int, float)) else tuple(int(x) for x in img)
    img = patch_multiple(img, p, meta)
    class_token = bool(a.get("class_token", True))
    distilled = bool(a.get("distilled", False))
    reg = int(a.get("reg_tokens", 0))
    num_classes = int(a.get("num_classes", 1000))
    beit = family == "beit"

    # pooling and norms (timm: fc_norm=None means "on when pooling by average")
    gp = a.get("global_pool", "avg" if beit else "token")
    gp = {"": "none", None: "none"}.get(gp, gp)
    if gp not in ("token", "avg", "map", "none"):
        raise ValueError(f"timm global_pool={gp!r} is not supported (token, avg, map or none)")
    if "final_norm_key" in a:
        final_norm, fc_norm = a["final_norm_key"], a["fc_norm_key"]
    else:
        fc = a.get("use_fc_norm" if beit else "fc_norm")
        use_fc = (gp == "avg") if fc is None else bool(fc)
        final = bool(a.get("final_norm", True))
        final_norm, fc_norm = (final and not use_fc, final and use_fc) if not beit else (not use_fc, use_fc)
    if gp == "none" and fc_norm:
        fc_norm = False

    # head
    if num_classes <= 0:
        head = "none"
    elif distilled:
        head = "distilled"
    elif a.get("pre_norm") and "clip" in meta.get("architecture", "") and \
            (a.get("head_bias_zero", True) or not a.get("head_bias", True)):
        head = "clip_proj"     # CLIP's projection: timm stores it as a Linear with a zero bias
    else:
        head = "linear"
    if head != "none" and gp == "none":
        raise ValueError("a timm model with a classifier and global_pool='' applies the head per token; "
                         "HookedViT needs pooling ('token' or 'avg')")

    # position embeddings: does the stored table hold entries for CLS/DIST (and registers)?
    pos = a.get("pos_embed", "learn")
    pos_kind = "none" if pos in ("", "none") or (beit and not a.get("use_abs_pos_emb", True)
                                                 and "_pos_len" not in a) else "learned"
    n_cls = int(class_token) + int(distilled)
    if "_rel_grid" in a and tuple(a["_rel_grid"]) != (img[0] // p, img[1] // p):
        img = (a["_rel_grid"][0] * p, a["_rel_grid"][1] * p)   # BEiT's bias table fixes the grid
        meta["img_size_from"] = "relative_position_bias_table"
    grid = (img[0] // p, img[1] // p)
    no_embed_class = bool(a.get("no_embed_class", False))
    pos_prefix = not no_embed_class
    pos_grid = None
    if pos_kind == "learned" and "_pos_len" in a:
        L = a["_pos_len"]
        n_img = grid[0] * grid[1]
        with_prefix, without = n_cls + (reg if not beit else 0), 0
        fits = {True: L - with_prefix == n_img, False: L - without == n_img}
        if fits[pos_prefix]:
            pass
        elif fits[not pos_prefix]:
            pos_prefix = not pos_prefix
        else:
            cands = [pp for pp in (pos_prefix, not pos_prefix)
                     if _square(L - (with_prefix if pp else without)) is not None]
            if not cands:
                raise CheckpointError(f"pos_embed of length {L} fits neither a square grid nor the "
                                      f"{grid[0]}x{grid[1]} grid of img_size={img} with patch {p}")
            pos_prefix = cands[0]
            s = _square(L - (with_prefix if pos_prefix else without))
            pos_grid = (s, s)
    if pos_kind == "learned" and n_cls == 0:
        pos_prefix = False

    act = {"quick_gelu": "quick_gelu", "quickgelu": "quick_gelu", "gelu_tanh": "gelu_tanh",
           "gelu": "gelu", "silu": "silu", "swish": "silu", None: "gelu"}.get(a.get("act_layer"))
    if act is None:
        raise ValueError(f"activation {a.get('act_layer')!r} is not supported (gelu, gelu_tanh, quick_gelu, silu)")
    qv_bias = bool(a.get("qv_bias", beit and a.get("qkv_bias", True)))
    qkv_bias = bool(a.get("qkv_bias", True)) and not qv_bias
    mlp_dim = a.get("mlp_dim") or int(D * float(a.get("mlp_ratio", 4.0)))
    post = bool(a.get("res_post_norm", False))
    ls = None if post else a.get("init_values")      # ResPostBlock's init_values is no LayerScale
    return ViTConfig(
        img_size=img, patch_size=p, in_chans=int(a.get("in_chans", 3)), embed_dim=D, depth=int(a["depth"]),
        num_heads=int(a["num_heads"]), mlp_dim=int(mlp_dim), qkv_bias=qkv_bias, qv_bias=qv_bias,
        patch_bias=bool(a.get("patch_bias", not a.get("pre_norm", False))), class_token=class_token,
        distill_token=distilled, num_registers=reg, register_location="prefix",
        pos_embed=pos_kind, pos_embed_prefix=pos_prefix, pos_embed_grid=pos_grid,
        pre_norm=bool(a.get("pre_norm", False)), res_post_norm=post, layer_scale_init=float(ls) if ls else None,
        rel_pos_bias=bool(a.get("rel_pos_bias", beit and (a.get("use_rel_pos_bias") or
                                                        a.get("use_shared_rel_pos_bias")))),
        act=act, norm_eps=float(a.get("norm_eps", 1e-6)), final_norm=bool(final_norm), global_pool=gp,
        fc_norm=bool(fc_norm), head=head, num_classes=max(num_classes, 0),
        head_bias=bool(a.get("head_bias", True)), meta=meta, **_modern_fields(a),
    )


def _modern_fields(a: dict[str, Any]) -> dict[str, Any]:
    """ViTConfig fields of timm's newer ViT switches (gated MLP, norms, biases, attention pool)."""
    out = {k: a[k] for k in ("gated_mlp", "norm", "patch_norm", "proj_bias", "mlp_bias", "mlp_norm",
                             "attn_out_norm", "qk_norm", "map_mlp", "map_q_proj", "map_qkv_bias", "map_mlp_dim",
                             "map_heads") if a.get(k) is not None}
    if "proj_bias" in a and "mlp_bias" not in a:
        out["mlp_bias"] = bool(a["proj_bias"])              # timm's Block: the MLP biases follow proj_bias
    if a.get("scale_attn_norm"):
        out["attn_out_norm"] = True
    if a.get("scale_mlp_norm"):
        out["mlp_norm"] = True
    if a.get("pool_include_prefix"):
        out["map_tokens"] = "all"
    return out


# ----------------------------------------------------------------------------- state dict
_RENAMES = [
    (re.compile(r"^norm_pre\."), "ln_pre."),
    (re.compile(r"^norm\."), "ln_final."),
    (re.compile(r"^(blocks\.\d+)\.norm1\."), r"\1.ln1."),
    (re.compile(r"^(blocks\.\d+)\.norm2\."), r"\1.ln2."),
    (re.compile(r"^(blocks\.\d+)\.gamma_1$"), r"\1.ls1.gamma"),
    (re.compile(r"^(blocks\.\d+)\.gamma_2$"), r"\1.ls2.gamma"),
]
# buffers and training-only tensors timm checkpoints may carry
_DROP = re.compile(r"(relative_position_index$|attn\.k_bias$|^pre_logits\.|^mask_token$|^lm_head\.)")


def rename_timm_key(k: str) -> str:
    for pat, rep in _RENAMES:
        k = pat.sub(rep, k)
    return k


def join_qkv(sd: dict[str, torch.Tensor], prefix: str, cfg: ViTConfig) -> None:
    """In place: ``<prefix>q_proj / k_proj / v_proj`` -> ``<prefix>qkv`` (weights stacked q, k, v) with biases
    as ``cfg`` has them (``qv_bias``: ``q_bias`` / ``v_bias``, the key's bias must be absent or zero;
    ``qkv_bias``: one ``qkv.bias``, a missing key bias filled with zeros)."""
    names = [f"{prefix}{n}_proj.weight" for n in "qkv"]
    if not all(n in sd for n in names):
        return
    sd[f"{prefix}qkv.weight"] = fuse_qkv(*(sd.pop(n) for n in names))
    bias = {n: sd.pop(f"{prefix}{n}_proj.bias", None) for n in "qkv"}
    if all(b is None for b in bias.values()):
        return
    zeros = next(b for b in bias.values() if b is not None).new_zeros(cfg.embed_dim)
    if cfg.qv_bias:
        if bias["k"] is not None and bias["k"].any():
            raise CheckpointError(f"{prefix}k_proj.bias is not zero, so q/v-only biases cannot hold it; "
                                  f"build the config with qkv_bias=True, qv_bias=False")
        sd[f"{prefix}q_bias"] = bias["q"] if bias["q"] is not None else zeros
        sd[f"{prefix}v_bias"] = bias["v"] if bias["v"] is not None else zeros
    else:
        sd[f"{prefix}qkv.bias"] = fuse_qkv(*(b if b is not None else zeros for b in bias.values()))


def split_packed_glu(sd: dict[str, torch.Tensor], prefix: str) -> None:
    """In place: a packed gated MLP's ``<prefix>fc1`` (gate rows first, as timm's ``GluMlp(gate_last=False)``)
    -> ``<prefix>fc1_g`` and ``<prefix>fc1_x``."""
    for param in ("weight", "bias"):
        key = f"{prefix}fc1.{param}"
        if key in sd:
            sd[f"{prefix}fc1_g.{param}"], sd[f"{prefix}fc1_x.{param}"] = sd.pop(key).chunk(2, dim=0)


def convert_timm_state_dict(sd: Mapping[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """timm (VisionTransformer, Beit or Eva) state dict -> vitscope state dict for ``cfg``; load it with
    ``load_strict``.

    Besides the renames: BEiT's shared relative position bias is added to every block's table (the same sum
    the shared bias makes at run time); position-embedding entries of registers are folded into ``reg_token``
    (they are constant per register); CLIP's zero projection bias is dropped for ``head='clip_proj'``; EVA's
    separate q / k / v projections are joined and a packed gated MLP is split (see the module docstring).
    """
    sd = unwrap_state_dict(sd)
    out: dict[str, torch.Tensor] = {}
    shared = sd.get("rel_pos_bias.relative_position_bias_table")
    for k, v in sd.items():
        if _DROP.search(k) or k == "rel_pos_bias.relative_position_bias_table":
            continue
        if k == "patch_embed.proj.weight" and v.ndim == 2:        # old linear patchify -> conv
            v = v.reshape(v.shape[0], cfg.in_chans, cfg.patch_size, cfg.patch_size)
        out[rename_timm_key(k)] = v
    for i in range(cfg.depth):
        join_qkv(out, f"blocks.{i}.attn.", cfg)
        if cfg.gated_mlp:
            split_packed_glu(out, f"blocks.{i}.mlp.")
    if shared is not None:
        for i in range(cfg.depth):
            key = f"blocks.{i}.attn.relative_position_bias_table"
            out[key] = out[key] + shared if key in out else shared.clone()
    if cfg.head == "clip_proj" and "head.bias" in out:
        if out["head.bias"].any():
            raise CheckpointError("head.bias is not zero, so this is not a bias-free CLIP projection; "
                                  "build the config with head='linear'")
        del out["head.bias"]
    if "pos_embed" in out and cfg.pos_embed != "none" and cfg.num_registers:
        rows, cols = cfg.stored_pos_grid
        n_pre = cfg.num_cls_tokens if cfg.pos_embed_prefix else 0
        pe = out["pos_embed"]
        R = cfg.num_registers
        if pe.shape[1] == n_pre + R + rows * cols:          # timm order: [CLS, DIST,] registers, patches
            out["reg_token"] = out["reg_token"] + pe[:, n_pre:n_pre + R]
            out["pos_embed"] = torch.cat([pe[:, :n_pre], pe[:, n_pre + R:]], dim=1)
    return out


convert_timm_beit = convert_timm_state_dict


# ----------------------------------------------------------------------------- hub folders
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def is_timm_folder(path: str | Path) -> bool:
    """A folder laid out as timm's hub repositories: config.json with ``architecture`` + weights."""
    cj = folder_config(path)
    return cj is not None and "architecture" in cj and any((Path(path) / f).is_file() for f in _WEIGHT_FILES[:2])


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """``*.safetensors`` or a torch pickle read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def preprocess_from_timm(pcfg: Mapping[str, Any], img_size: tuple[int, int],
                         patch_size: int | None = None) -> PreprocessConfig:
    """timm ``pretrained_cfg`` (input_size, crop_pct, interpolation, mean, std) -> PreprocessConfig.

    With ``patch_size``, an input size that is not a multiple of it is rounded down and ``crop_pct`` scaled so that
    the image is resized as timm resizes it (see :func:`patch_multiple`).
    """
    kw: dict[str, Any] = {"input_size": tuple(pcfg.get("input_size", (3, *img_size)))[-2:]}
    for k in ("crop_pct", "interpolation", "mean", "std"):
        if pcfg.get(k) is not None:
            kw[k] = pcfg[k]
    if patch_size:
        fit = patch_multiple(kw["input_size"], patch_size, {})
        if fit != tuple(kw["input_size"]):
            kw["crop_pct"] = float(kw.get("crop_pct", 0.875)) * max(fit) / max(kw["input_size"])
            kw["input_size"] = fit
    if kw.get("interpolation") not in (None, "bicubic", "bilinear", "nearest", "lanczos", "box"):
        kw["interpolation"] = "bicubic"
    return PreprocessConfig(**kw)


def load_timm_state_dict(sd: Mapping[str, torch.Tensor], arch_name: str | None = None,
                         config_json: dict | None = None, source: str = "timm checkpoint", **kw):
    """Build a HookedViT from a timm state dict (config from name + config.json + tensors) and load it strictly."""
    from vitscope.models.vit import HookedViT

    sd = unwrap_state_dict(sd)
    cfg = config_from_timm(arch_name, config_json, state_dict=sd, **kw)
    pcfg = dict((config_json or {}).get("pretrained_cfg") or {})
    if pcfg.get("crop_mode") not in (None, "center"):
        cfg.meta["crop_mode"] = pcfg["crop_mode"]      # vitscope's preprocessing always crops the centre
    model = HookedViT(cfg, preprocess_cfg=preprocess_from_timm(pcfg, cfg.img_size, cfg.patch_size))
    load_strict(model, convert_timm_state_dict(sd, cfg), source=source)
    return model.eval()


def load_timm_folder(path: str | Path, **kw):
    """Load a timm hub folder (config.json + model.safetensors or pytorch_model.bin) as an eval-mode HookedViT.

    The preprocessing of ``pretrained_cfg`` is attached as ``model.preprocess_cfg``.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} is not a folder")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{p} has no config.json; a timm hub folder holds config.json and model.safetensors")
    cj = json.loads(cfg_path.read_text())
    weights = next((p / f for f in _WEIGHT_FILES if (p / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{p} has neither model.safetensors nor pytorch_model.bin")
    return load_timm_state_dict(read_weights(weights), None, cj, source=str(weights), **kw)
