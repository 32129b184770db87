"""The registry of named models: architecture, preprocessing and where the weights come from.

Names follow timm's ``arch.tag`` style (``vit_small_patch16_224.dino``); every entry also has short
aliases (``dino-vits16``). Preprocessing is timm's ``pretrained_cfg`` for the weights timm hosts, and the
official evaluation transform for checkpoints timm does not host (MoCo-v3, BEiT pt22k).

Besides the table, two name forms are resolved here:

- ``timm/<name>`` outside the table and ``hf:<repo>`` are resolved in :mod:`vitscope.models.loading`
  with the timm / transformers converters (their config comes from the repository's config.json).

The entries' architectures are derived here from timm's architecture names (:func:`timm_arch_config`),
independently of the timm converter's own parser; a test checks the two agree.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from vitscope.models.config import ViTConfig
from vitscope.models.converters.timm import TIMM_SIZES
from vitscope.models.preprocess import (
    CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, PreprocessConfig,
)


# ----------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class WeightSource:
    """Where one set of weights lives.

    ``kind``: "hub" (a Hugging Face hub repository; ``location`` is the repo id, ``filename`` the file)
    or "url" (a public URL of the official checkpoint). ``format`` names the checkpoint layout
    ("timm", "dino", "mae", "mocov3", "beit"): a hint, the converters also detect it from the keys.
    """

    kind: str
    location: str
    format: str
    filename: str = "model.safetensors"

    def describe(self) -> str:
        return f"hub:{self.location}" if self.kind == "hub" else f"url:{self.location}"


@dataclass(frozen=True)
class ModelEntry:
    """One named model: what it is, how it is built, how its images are prepared, where its weights are."""

    name: str
    family: str
    size: str                       # "S/16", "L/14-336", ...
    config: ViTConfig
    preprocess: PreprocessConfig
    sources: tuple[WeightSource, ...] = ()
    aliases: tuple[str, ...] = ()
    notes: str = ""
    extra: bool = False             # not one of the papers' models (listed all the same)
    meta: dict[str, Any] = field(default_factory=dict)

    def build_config(self) -> ViTConfig:
        """A fresh copy of the architecture (entries are shared; never mutate ``self.config``)."""
        d = copy.deepcopy(self.config.to_dict())
        d["meta"] = {**d.get("meta", {}), "name": self.name, "family": self.family}
        return ViTConfig.from_dict(d)

    @property
    def source(self) -> WeightSource | None:
        return self.sources[0] if self.sources else None

    def row(self) -> dict[str, Any]:
        """A flat summary (the ``vitscope models`` table)."""
        h, w = self.preprocess.input_size
        return {
            "name": self.name,
            "family": self.family,
            "size": self.size,
            "input_size": h if h == w else f"{h}x{w}",
            "aliases": list(self.aliases),
            "weights": self.source.describe() if self.source else "(none: random init only)",
            "format": self.source.format if self.source else None,
            "sources": [s.describe() for s in self.sources],
            "crop_pct": self.preprocess.crop_pct,
            "interpolation": self.preprocess.interpolation,
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "notes": self.notes,
        }


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def _norm_alias(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    for a in entry.aliases:
        key = _norm_alias(a)
        if key in _ALIASES and _ALIASES[key] != entry.name:
            raise ValueError(f"alias {a!r} is used by {_ALIASES[key]!r} and {entry.name!r}")
        _ALIASES[key] = entry.name
    return entry


def resolve_name(name: str) -> str | None:
    """Canonical registry name for a name or alias (case- and ``_``/``-``-insensitive for aliases), or None."""
    if name in _REGISTRY:
        return name
    stripped = name[len("timm/"):] if name.startswith("timm/") else name
    if stripped in _REGISTRY:
        return stripped
    return _ALIASES.get(_norm_alias(name))


def suggest_names(name: str, n: int = 3) -> list[str]:
    """Up to ``n`` names close to ``name`` that ``load_model`` accepts as written: registry names, aliases
    and the bundled models."""
    import difflib

    from vitscope.models.bundled import bundled_models

    pool: dict[str, str] = {}                      # normalised -> a spelling that loads
    for e in _REGISTRY.values():
        for spelling in (e.name, *e.aliases):
            pool.setdefault(_norm_alias(spelling), spelling)
    for b in bundled_models():
        pool.setdefault(_norm_alias(b), b)
    key = _norm_alias(name[len("timm/"):] if name.startswith("timm/") else name)
    return [pool[c] for c in difflib.get_close_matches(key, list(pool), n=n, cutoff=0.5)]


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name`` (a canonical name or an alias); a KeyError with suggestions otherwise."""
    canon = resolve_name(name)
    if canon is None:
        close = suggest_names(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (see `vitscope models`, or use timm/<name>, hf:<repo>, "
                       f"or a local file/folder)")
    return _REGISTRY[canon]


def list_models(family: str | None = None, include_extra: bool = True) -> list[ModelEntry]:
    """Registry entries, in registration order; ``family`` filters (e.g. "dino", "clip")."""
    out = []
    for e in _REGISTRY.values():
        if family is not None and e.family != family.lower():
            continue
        if not include_extra and e.extra:
            continue
        out.append(e)
    return out


def families() -> list[str]:
    return sorted({e.family for e in _REGISTRY.values()})


# ----------------------------------------------------------------------------- timm architectures

# timm architectures whose model_args the name alone does not give (copied from their definitions)
_TIMM_EXPLICIT: dict[str, dict[str, Any]] = {
    "vit_base_patch16_gap_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=16, class_token=False,
                                     global_pool="avg", fc_norm=False),
    "vit_medium_patch16_gap_240": dict(patch_size=16, embed_dim=512, depth=12, num_heads=8, class_token=False,
                                       global_pool="avg", qkv_bias=False, init_values=1e-6, fc_norm=False,
                                       img_size=240),
    "vit_medium_patch16_gap_256": dict(patch_size=16, embed_dim=512, depth=12, num_heads=8, class_token=False,
                                       global_pool="avg", qkv_bias=False, init_values=1e-6, fc_norm=False,
                                       img_size=256),
    "vit_medium_patch16_gap_384": dict(patch_size=16, embed_dim=512, depth=12, num_heads=8, class_token=False,
                                       global_pool="avg", qkv_bias=False, init_values=1e-6, fc_norm=False,
                                       img_size=384),
    "vit_base_patch16_rpn_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, qkv_bias=False,
                                     init_values=1e-5, class_token=False, block_fn="ResPostBlock",
                                     global_pool="avg"),
    "vit_xsmall_patch16_clip_224": dict(patch_size=16, embed_dim=256, depth=10, num_heads=4, pre_norm=True,
                                        norm_eps=1e-5),
    "vit_base_patch16_plus_clip_240": dict(patch_size=16, embed_dim=896, depth=12, num_heads=14, pre_norm=True,
                                           norm_eps=1e-5, img_size=240),
}

_ARCH_RE = re.compile(
    r"^(?P<fam>vit|deit3|deit|beitv2|beit)_(?P<size>[a-z]+)(?P<distilled>_distilled)?_patch(?P<patch>\d+)"
    r"(?P<rest>(?:_[a-z0-9]+)*)$")

_UNSUPPORTED_TOKENS = {
    "siglip": "SigLIP's attention-pool (MAP) head", "map": "an attention-pool (MAP) head",
"xp": "RMSNorm / parallel blocks / qk-norm", "plus": "a non-standard width",
    "rope": "rotary position embeddings", "relpos": "relative position MLPs", "srelpos": "relative position MLPs",
    "sam": "windowed attention", "parallel": "parallel blocks", "18x2": "parallel blocks",
}


def _unsupported(arch: str, why: str) -> ValueError:
    return ValueError(f"timm architecture {arch!r} is not covered by vitscope ({why}); covered: plain ViT "
                      f"(vit_*_patch*_*), *_clip_*, *_clip_quickgelu_*, *_dinov2, *_reg4_dinov2, deit_*, "
                      f"deit3_*, beit_* / beitv2_*, vit_base_patch16_224_miil and the vit_*_gap_* models")


def timm_arch_kwargs(arch: str) -> dict[str, Any]:
    """timm model_args of a covered timm architecture name, as timm builds it (plus ``img_size``).

    Raises ValueError naming the architecture when vitscope does not cover it.
    """
    if arch in _TIMM_EXPLICIT:
        return dict(_TIMM_EXPLICIT[arch])
    m = _ARCH_RE.match(arch)
    if not m:
        raise _unsupported(arch, "the name is not a ViT / DeiT / BEiT architecture name")
    fam, size, patch = m["fam"], m["size"], int(m["patch"])
    if size not in TIMM_SIZES:
        raise _unsupported(arch, f"unknown size {size!r}")
    tokens = [t for t in m["rest"].split("_") if t]
    res = None
    rest: list[str] = []
    for t in tokens:
        if t.isdigit():
            res = int(t)
        else:
            rest.append(t)
    for t in rest:
        if t in _UNSUPPORTED_TOKENS:
            raise _unsupported(arch, _UNSUPPORTED_TOKENS[t])
    D, depth, H, ratio = TIMM_SIZES[size]
    kw: dict[str, Any] = dict(patch_size=patch, embed_dim=D, depth=depth, num_heads=H)
    if ratio != 4.0:
        kw["mlp_ratio"] = ratio
    if fam in ("beit", "beitv2"):
        if rest:
            raise _unsupported(arch, f"unknown BEiT variant {'_'.join(rest)!r}")
        kw.update(use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1 if size == "base" else 1e-5,
                  beit=True)
        kw["img_size"] = res or 224
        return kw
    if fam == "deit3":
        kw.update(no_embed_class=True, init_values=1e-6)
    if m["distilled"]:
        if fam != "deit":
            raise _unsupported(arch, "only DeiT has a distilled variant")
        kw["distilled"] = True
    known = {"clip", "quickgelu", "dinov2", "miil", "gap"}
    regs = [t for t in rest if re.fullmatch(r"reg\d+", t)]
    other = [t for t in rest if t not in known and t not in regs]
    if other:
        raise _unsupported(arch, f"unknown variant token(s) {other}")
    if "clip" in rest:
        kw.update(pre_norm=True, norm_eps=1e-5)
    if "quickgelu" in rest:
        if "clip" not in rest:
            raise _unsupported(arch, "quickgelu outside a CLIP architecture")
        kw["act_layer"] = "quick_gelu"
    if "miil" in rest:
        kw["qkv_bias"] = False
    if "gap" in rest:
        raise _unsupported(arch, "a *_gap_* variant not in vitscope's table")
    if "dinov2" in rest:
        if size in ("giant", "gigantic"):
            raise _unsupported(arch, "DINOv2 giant uses a SwiGLU MLP")
        kw["init_values"] = 1e-5
        res = res or 518
    if regs:
        if "dinov2" not in rest:
            raise _unsupported(arch, "registers outside DINOv2")
        kw.update(reg_tokens=int(regs[0][3:]), no_embed_class=True)
    kw["img_size"] = res or 224
    return kw


def config_from_timm_kwargs(arch: str, kw: dict[str, Any], num_classes: int | None = None,
                            global_pool: str | None = None) -> ViTConfig:
    """ViTConfig equivalent to ``timm.create_model(arch, **kw)`` (kw as from :func:`timm_arch_kwargs`,
    updated by the ``model_args`` of a timm config.json)."""
    kw = dict(kw)
    is_beit = kw.pop("beit", False)
    distilled = kw.pop("distilled", False)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if global_pool is not None:
        kw["global_pool"] = global_pool
    n_cls = int(kw.pop("num_classes", 1000))
    cfg: dict[str, Any] = {}
    for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                "qkv_bias", "class_token", "pre_norm", "drop_path_rate", "norm_eps"):
        if key in kw:
            cfg[key] = kw.pop(key)
    if cfg.get("pre_norm"):
        cfg["patch_bias"] = False               # timm: PatchEmbed(bias=not pre_norm)
    block_fn = kw.pop("block_fn", "Block")
    if block_fn not in ("Block", "ResPostBlock"):
        raise _unsupported(arch, f"block_fn={block_fn!r}")
    cfg["res_post_norm"] = block_fn == "ResPostBlock"
    if "init_values" in kw:
        iv = kw.pop("init_values")           # ResPostBlock: the norms' initial weight, not a LayerScale
        cfg["layer_scale_init"] = float(iv) if iv and not cfg["res_post_norm"] else None
    if "reg_tokens" in kw:
        cfg["num_registers"] = int(kw.pop("reg_tokens"))
    no_embed_class = bool(kw.pop("no_embed_class", False))
    cfg["pos_embed_prefix"] = not no_embed_class and cfg.get("class_token", True)   # no prefix: no entries
    if cfg.get("num_registers") and not no_embed_class:
        raise _unsupported(arch, "register tokens with position embeddings (no_embed_class=False)")
    act = kw.pop("act_layer", None)
    if act is not None:
        acts = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_tanh"}
        if act not in acts:
            raise _unsupported(arch, f"activation {act!r}")
        cfg["act"] = acts[act]
    pos = kw.pop("pos_embed", "learn")
    if pos not in ("learn", "none"):
        raise _unsupported(arch, f"pos_embed={pos!r}")
    if pos == "none":
        cfg["pos_embed"] = "none"
    for key in ("drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate",
                "weight_init", "dynamic_img_size", "dynamic_img_pad", "fix_init", "out_indices",
                "use_mean_pooling"):
        kw.pop(key, None)
    if is_beit:
        cfg.update(pos_embed="none" if not kw.pop("use_abs_pos_emb", False) else "learned",
                   rel_pos_bias=bool(kw.pop("use_rel_pos_bias", True)), qkv_bias=False, qv_bias=True)
        if kw.pop("use_shared_rel_pos_bias", False):
            raise _unsupported(arch, "a shared relative position bias (load the pt22k checkpoints by name)")
        if cfg["pos_embed"] == "learned":
            raise _unsupported(arch, "BEiT with absolute position embeddings")
        pool = kw.pop("global_pool", "avg")
    else:
        pool = kw.pop("global_pool", "token")
    fc_norm = kw.pop("fc_norm", None)
    final_norm = bool(kw.pop("final_norm", True))
    if pool == "":
        pool = "none"
    if pool not in ("token", "avg", "none"):
        raise _unsupported(arch, f"global_pool={pool!r}")
    if not cfg.get("class_token", True) and pool == "token":
        raise _unsupported(arch, "token pooling without a class token")
    use_fc_norm = (pool == "avg") if fc_norm is None else bool(fc_norm)
    cfg["global_pool"] = pool
    cfg["fc_norm"] = use_fc_norm
    cfg["final_norm"] = final_norm and not use_fc_norm
    if kw:
        raise _unsupported(arch, f"unsupported timm arguments {sorted(kw)}")
    if distilled:
        cfg["distill_token"] = True
        cfg["head"] = "distilled" if n_cls > 0 else "none"
    else:
        cfg["head"] = "linear" if n_cls > 0 else "none"
    cfg["num_classes"] = max(n_cls, 0)
    return ViTConfig(**cfg)


def timm_arch_config(arch: str, num_classes: int | None = None, **overrides) -> ViTConfig:
    """ViTConfig for a covered timm architecture name (``vit_small_patch16_224``); ``overrides`` are timm kwargs."""
    kw = timm_arch_kwargs(arch)
    kw.update(overrides)
    return config_from_timm_kwargs(arch, kw, num_classes=num_classes)


def _timm_tag_fixups(arch: str, tag: str | None, cfg: ViTConfig) -> ViTConfig:
    """Architecture facts that depend on the weights (tag), not on timm's class.

    OpenAI CLIP towers are natively QuickGELU (timm's note on every ``*.openai`` tag); a CLIP tower
    whose head is the CLIP projection (not a fine-tuned classifier) uses the bias-free ``clip_proj`` head.
    """
    if "_clip_" not in arch or not tag:
        return cfg
    if tag.startswith("openai") and cfg.act == "gelu":
        cfg = cfg.replace(act="quick_gelu")
    if "_ft_" not in tag and not tag.endswith("_ft") and cfg.head == "linear":
        cfg = cfg.replace(head="clip_proj", head_bias=False)
    return cfg


# ----------------------------------------------------------------------------- the table
def _pp(size: int = 224, crop: float = 0.9, interp: str = "bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD):
    return PreprocessConfig(input_size=size, crop_pct=crop, interpolation=interp, mean=mean, std=std)


def _hub(name: str, fmt: str = "timm") -> WeightSource:
    return WeightSource("hub", f"timm/{name}", fmt)


def _url(url: str, fmt: str) -> WeightSource:
    return WeightSource("url", url, fmt, filename=url.rsplit("/", 1)[-1])


_SIZE_LETTER = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}


def _timm_entry(name: str, family: str, pp: PreprocessConfig, aliases=(), sources=None, notes: str = "",
                extra: bool = False, num_classes: int | None = None, cfg_changes: dict | None = None,
                **overrides) -> ModelEntry:
    arch, tag = name.split(".", 1)
    cfg = timm_arch_config(arch, num_classes=num_classes, **overrides)
    cfg = _timm_tag_fixups(arch, tag, cfg)
    if cfg_changes:
        cfg = cfg.replace(**cfg_changes)
    m = _ARCH_RE.match(arch)
    size = f"{_SIZE_LETTER.get(m['size'], m['size'])}/{m['patch']}" if m else arch
    if cfg.img_size[0] != 224 and not arch.endswith("dinov2"):
        size += f"-{cfg.img_size[0]}"
    return register(ModelEntry(name=name, family=family, size=size, config=cfg, preprocess=pp,
                               sources=tuple(sources) if sources is not None else (_hub(name),),
                               aliases=tuple(aliases), notes=notes, extra=extra))


# vilas2023's own model names (its load_vit), as aliases of the entries they load
_VILAS2023_ALIASES = {"vit-b32": ("vit_b_32",), "vit-b16": ("vit_b_16",), "vit-l16": ("vit_large_16",)}

# --- supervised ViT, "How to train your ViT" (AugReg): in21k pretrain, in1k fine-tune; inputs in [-1, 1]
for _arch, _alias in [("vit_small_patch32", "vit-s32"), ("vit_small_patch16", "vit-s16"),
                      ("vit_base_patch32", "vit-b32"), ("vit_base_patch16", "vit-b16"),
                      ("vit_base_patch8", "vit-b8"), ("vit_large_patch16", "vit-l16")]:
    _timm_entry(f"{_arch}_224.augreg_in21k_ft_in1k", "vit", _pp(224, 0.9),
                aliases=(_alias,) + _VILAS2023_ALIASES.get(_alias, ()), notes="AugReg in21k -> in1k (timm hub)")
    if _arch != "vit_base_patch8":       # no B/8 at 384 exists
        _timm_entry(f"{_arch}_384.augreg_in21k_ft_in1k", "vit", _pp(384, 1.0), aliases=(f"{_alias}-384",),
                    notes="AugReg in21k -> in1k at 384 px (timm hub)")
# walmer2023's extra: the original L/32 at 384, and the original (non-AugReg) B/16; vilas2023's MIIL ViT
_timm_entry("vit_large_patch32_384.orig_in21k_ft_in1k", "vit", _pp(384, 1.0), aliases=("vit-l32-384",),
            notes="original ViT (Dosovitskiy et al.) in21k -> in1k", extra=True)
_timm_entry("vit_base_patch16_224.orig_in21k_ft_in1k", "vit", _pp(224, 0.9), aliases=("vit-b16-orig",),
            notes="original ViT (Dosovitskiy et al.) in21k -> in1k", extra=True)
_timm_entry("vit_base_patch16_224.orig_in21k", "vit", _pp(224, 0.9), aliases=("vit-b16-in21k",),
            num_classes=0, notes="original ViT in21k, no classifier", extra=True)
_timm_entry("vit_base_patch16_224_miil.in21k_ft_in1k", "vit",
            _pp(224, 0.875, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
            aliases=("vit-b16-miil", "vit_miil_16"),
            notes="ImageNet-21K-P (Alibaba MIIL), no qkv bias; inputs in [0, 1]")
# vilas2023's GAP model: no CLS, average pooling + fc_norm, residual post-norm blocks, no qkv bias
_timm_entry("vit_base_patch16_rpn_224.sw_in1k", "vit", _pp(224, 0.9), aliases=("vit-b16-rpn", "vit_gap_16"),
            notes="residual post-norm blocks (x + norm(branch(x))), average pooling, no CLS (timm hub)")
# vilas2023's ViT-B/16 fine-tuned on CIFAR-100: the author's checkpoint is not public, so there is no source;
# load_model("vit-b16-cifar100", weights=PATH) reads it (timm keys, also under a "model." prefix)
_timm_entry("vit_base_patch16_224.cifar100", "vit", _pp(224, 1.0, "bilinear"), aliases=("vit-b16-cifar100",
            "vit_cifar_16"), sources=(), num_classes=100,
            notes="ViT-B/16 with a 100-class head (vilas2023's CIFAR-100 fine-tune); weights=PATH only. "
                  "The seed resizes to 224x224 without keeping the aspect ratio")

# --- DeiT (ImageNet-1k), plain and distilled (CLS + DIST tokens, two heads averaged)
for _size, _letter in [("small", "s"), ("base", "b")]:
    _timm_entry(f"deit_{_size}_patch16_224.fb_in1k", "deit", _pp(224, 0.9, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                aliases=(f"deit-{_letter}16",), notes="DeiT (timm hub)")
    _timm_entry(f"deit_{_size}_distilled_patch16_224.fb_in1k", "deit",
                _pp(224, 0.9, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                aliases=(f"deit-{_letter}16-distilled", f"deit-{_letter}16-dist"),
                notes="DeiT distilled: CLS + distillation token, logits = mean of the two heads")

# --- DINO (self-supervised, no classifier): timm hub copy of the official weights, official URL as fallback
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/{0}_pretrain/{0}_pretrain.pth"
for _arch, _off, _alias in [("vit_small_patch16", "dino_deitsmall16", "dino-vits16"),
                            ("vit_small_patch8", "dino_deitsmall8", "dino-vits8"),
                            ("vit_base_patch16", "dino_vitbase16", "dino-vitb16"),
                            ("vit_base_patch8", "dino_vitbase8", "dino-vitb8")]:
    _n = f"{_arch}_224.dino"
    _timm_entry(_n, "dino", _pp(224, 0.9, mean=IMAGENET_MEAN, std=IMAGENET_STD), aliases=(_alias,),
                num_classes=0, sources=(_hub(_n), _url(_DINO_URL.format(_off), "dino")),
                notes="DINO backbone, no head (hub: timm copy; url: official checkpoint)")

# --- DINOv2 (LayerScale; 518 px as trained; 224 also works, position embeddings are interpolated)
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{0}14/dinov2_vit{0}14{1}_pretrain.pth"
for _size, _l in [("small", "s"), ("base", "b"), ("large", "l")]:
    _n = f"vit_{_size}_patch14_dinov2.lvd142m"
    _timm_entry(_n, "dinov2", _pp(518, 1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                aliases=(f"dinov2-vit{_l}14", f"dinov2-{_l}14"), num_classes=0,
                sources=(_hub(_n), _url(_DINOV2_URL.format(_l, ""), "dinov2")),
                notes="DINOv2, LayerScale, 518 px (pass input_size=224 for the common 224 px use); "
                      "url: official file, resampled at other sizes as the official code does")
    _n = f"vit_{_size}_patch14_reg4_dinov2.lvd142m"
    _timm_entry(_n, "dinov2", _pp(518, 1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                aliases=(f"dinov2-vit{_l}14-reg4", f"dinov2-vit{_l}14-reg", f"dinov2-{_l}14-reg4"), num_classes=0,
                sources=(_hub(_n), _url(_DINOV2_URL.format(_l, "_reg4"), "dinov2")),
                notes="DINOv2 with 4 registers after CLS (no position embedding on CLS/registers)")

# --- CLIP image towers (OpenAI): pre-norm, QuickGELU, LayerNorm eps 1e-5, bias-free patch embedding,
#     head = the CLIP projection to the joint embedding (512 / 768)
for _n, _alias, _crop, _size in [("vit_base_patch32_clip_224.openai", "clip-b32", 0.9, 224),
                                 ("vit_base_patch16_clip_224.openai", "clip-b16", 0.9, 224),
                                 ("vit_large_patch14_clip_224.openai", "clip-l14", 1.0, 224),
                                 ("vit_large_patch14_clip_336.openai", "clip-l14-336", 1.0, 336)]:
    _timm_entry(_n, "clip", _pp(_size, _crop, mean=CLIP_MEAN, std=CLIP_STD),
                aliases=(_alias, _alias.replace("clip-", "clip-vit-")),
                num_classes=512 if "base" in _n else 768,
                notes="OpenAI CLIP image tower (timm hub); QuickGELU; head = CLIP projection. "
                      "OpenAI's own transform crops at 1.0, timm's pretrained_cfg says 0.9 for B")

# --- MAE (pretrain encoders; run with no masking): timm hub copy, official URL as fallback
for _arch, _off, _alias in [("vit_base_patch16", "base", "mae-b16"), ("vit_large_patch16", "large", "mae-l16"),
                            ("vit_huge_patch14", "huge", "mae-h14")]:
    _n = f"{_arch}_224.mae"
    _timm_entry(_n, "mae", _pp(224, 0.9, mean=IMAGENET_MEAN, std=IMAGENET_STD), aliases=(_alias,),
                num_classes=0, cfg_changes={"pos_embed": "sincos"},
                sources=(_hub(_n), _url(f"https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_{_off}.pth",
                                        "mae")),
                notes="MAE pretrained encoder (fixed 2-D sin-cos position embedding), no head")


def _register_custom(name: str, family: str, size: str, cfg: ViTConfig, pp: PreprocessConfig,
                     sources, aliases, notes: str = "", extra: bool = False) -> ModelEntry:
    return register(ModelEntry(name=name, family=family, size=size, config=cfg, preprocess=pp,
                               sources=tuple(sources), aliases=tuple(aliases), notes=notes, extra=extra))


# --- MoCo-v3 (300 epochs): official checkpoints only. ViT-S in MoCo-v3 has 12 heads (not timm's 6).
#     Its fixed 2-D sin-cos table has the row in the first half of the channels (the transpose of MAE's and
#     of vitscope's "sincos"), so the stored table is kept as a learned-style embedding (resampled bicubically
#     at other input sizes). Eval transform: Resize(256) + CenterCrop(224), bilinear.
for _size, _D, _H, _l in [("small", 384, 12, "s"), ("base", 768, 12, "b")]:
    _register_custom(
        f"vit_{_size}_patch16_224.mocov3_300ep", "mocov3", f"{_l.upper()}/16",
        ViTConfig(img_size=224, patch_size=16, embed_dim=_D, depth=12, num_heads=_H, head="none", num_classes=0),
        _pp(224, 0.875, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        [_url(f"https://dl.fbaipublicfiles.com/moco-v3/vit-{_l}-300ep/vit-{_l}-300ep.pth.tar", "mocov3")],
        aliases=(f"mocov3-vit{_l}16", f"mocov3-{_l}16", f"moco-v3-{_l}16"),
        notes="MoCo-v3 base encoder (module.base_encoder.*), 300 epochs, official checkpoint; "
              "its stored sin-cos table is kept as is")

# --- BEiT self-supervised on ImageNet-22k (pt22k): official checkpoints; relative position bias, LayerScale,
#     q/v biases; no absolute position embedding; eval transform of the BEiT repo (256/224 crop, [-1, 1]).
for _size, _D, _depth, _H, _ls, _l in [("base", 768, 12, 12, 0.1, "b"), ("large", 1024, 24, 16, 1e-5, "l")]:
    _register_custom(
        f"beit_{_size}_patch16_224.pt22k", "beit", f"{_l.upper()}/16",
        ViTConfig(img_size=224, patch_size=16, embed_dim=_D, depth=_depth, num_heads=_H, qkv_bias=False,
                  qv_bias=True, pos_embed="none", rel_pos_bias=True, layer_scale_init=_ls, head="none",
                  num_classes=0),
        _pp(224, 0.875, "bicubic", INCEPTION_MEAN, INCEPTION_STD),
        [_url(f"https://conversationhub.blob.core.windows.net/beit-share-public/beit/"
              f"beit_{_size}_patch16_224_pt22k.pth", "beit")],
        aliases=(f"beit-{_l}16", f"beit-vit{_l}16"),
        notes="BEiT pt22k (self-supervised), official checkpoint; the shared relative position bias "
              "is copied into every block")
    # fine-tuned BEiT on the timm hub (mean-pooled patch tokens + fc_norm, 1000 classes)
    _timm_entry(f"beit_{_size}_patch16_224.in22k_ft_in22k_in1k", "beit", _pp(224, 0.9),
                aliases=(f"beit-{_l}16-ft",), notes="BEiT pt22k -> in22k -> in1k fine-tuned (timm hub)",
                extra=True)


# ----------------------------------------------------------------------------- modern families (timm hub)
# Architectures from the timm converter's parser (converters.timm / converters.timm_eva, checked against what timm
# builds by tests/parity/test_timm_modern_goldens.py); preprocessing and head sizes are timm's pretrained_cfg.
def _modern_entry(name: str, family: str, size: str, pp: PreprocessConfig, aliases, num_classes: int = 0,
                  global_pool: str | None = None, notes: str = "", extra: bool = False) -> ModelEntry:
    from vitscope.models.converters.timm import config_from_timm, preprocess_from_timm

    pcfg = {"input_size": [3, *pp.input_size], "fixed_input_size": True, "crop_pct": pp.crop_pct,
            "interpolation": pp.interpolation, "mean": pp.mean, "std": pp.std}
    cj: dict[str, Any] = {"architecture": name.split(".")[0], "num_classes": num_classes, "pretrained_cfg": pcfg}
    if global_pool is not None:
        cj["global_pool"] = global_pool
    cfg = config_from_timm(name, cj)
    cfg.meta.pop("source", None)
    pp = preprocess_from_timm(pcfg, cfg.img_size, cfg.patch_size)      # so400m/14 at 384: 378 px
    return register(ModelEntry(name=name, family=family, size=size, config=cfg, preprocess=pp,
                               sources=(_hub(name),), aliases=tuple(aliases), notes=notes, extra=extra))


_IMNET = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
_CLIP = dict(mean=CLIP_MEAN, std=CLIP_STD)

# --- DINOv3 (LVD-1689M): RoPE with normalised patch-centre coordinates, 4 registers after CLS, LayerScale; the
#     CLS token is the pooled output, as upstream and transformers' pooler (timm's own default averages patches)
for _arch, _size, _alias in [("vit_small_patch16_dinov3", "S/16", "vits16"),
                             ("vit_small_plus_patch16_dinov3", "S+/16", "vits16plus"),
                             ("vit_base_patch16_dinov3", "B/16", "vitb16"),
                             ("vit_large_patch16_dinov3", "L/16", "vitl16"),
                             ("vit_huge_plus_patch16_dinov3", "H+/16", "vith16plus")]:
    _modern_entry(f"{_arch}.lvd1689m", "dinov3", _size, _pp(256, 1.0, **_IMNET), (f"dinov3-{_alias}",),
                  notes="DINOv3 backbone, no head; RoPE (no position table: any input size), "
                                             "4 registers; pooled = CLS (timm hub copy of Meta's weights, DINOv3 "
                                             "license)")

# --- SigLIP / SigLIP 2 image towers (WebLI): no CLS, attention-pool (MAP) head; inputs in [-1, 1]
for _name, _size, _aliases in [
        ("vit_base_patch16_siglip_224.webli", "B/16", ("siglip-b16-224",)),
        ("vit_so400m_patch14_siglip_384.webli", "So400m/14-384", ("siglip-so400m14-384",)),
        ("vit_base_patch16_siglip_224.v2_webli", "B/16", ("siglip2-b16-224",)),
        ("vit_base_patch16_siglip_256.v2_webli", "B/16-256", ("siglip2-b16-256",)),
        ("vit_base_patch16_siglip_384.v2_webli", "B/16-384", ("siglip2-b16-384",)),
        ("vit_large_patch16_siglip_256.v2_webli", "L/16-256", ("siglip2-l16-256",)),
        ("vit_so400m_patch14_siglip_224.v2_webli", "So400m/14", ("siglip2-so400m14-224",)),
        ("vit_so400m_patch16_siglip_256.v2_webli", "So400m/16-256", ("siglip2-so400m16-256",))]:
    _res = int(_name.split("_siglip_")[1].split(".")[0])
    _modern_entry(_name, "siglip2" if ".v2_" in _name else "siglip", _size, _pp(_res, 0.9), _aliases,
                  notes="SigLIP image tower: no CLS, attention-pool head (its output is the image embedding); "
                        "the fixed-resolution checkpoints (timm hub)")

# --- EVA-02: RoPE scaled to a 16 x 16 reference grid, SwiGLU, CLS + absolute position table; MIM-pretrained
#     backbones (mean of patches + fc_norm) and the EVA-CLIP image towers (CLS, projection head)
for _size, _l in [("tiny", "t"), ("small", "s"), ("base", "b"), ("large", "l")]:
    _modern_entry(f"eva02_{_size}_patch14_224.mim_in22k", "eva02", f"{_l.upper()}/14", _pp(224, 0.9, **_CLIP),
                  (f"eva02-{_l}14",), notes="EVA-02 MIM-pretrained (IN-22k) backbone, no head (timm hub)")
_modern_entry("eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", "eva02", "B/14-448", _pp(448, 1.0, **_CLIP),
              ("eva02-b14-448-in1k",), num_classes=1000, notes="EVA-02 fine-tuned IN-22k -> IN-1k at 448 px",
              extra=True)
for _name, _size, _alias, _n in [("eva02_base_patch16_clip_224.merged2b", "B/16", "eva02-clip-b16", 512),
                                 ("eva02_large_patch14_clip_224.merged2b", "L/14", "eva02-clip-l14", 768)]:
    _modern_entry(_name, "eva02", _size, _pp(224, 0.9, **_CLIP), (_alias,), num_classes=_n,
                  notes="EVA-CLIP image tower: head = projection to the joint embedding (timm hub)")

# --- Perception Encoder (core): RoPE (offset 1: CLS at the origin) + absolute table, pre-norm, attention pool
#     over CLS and patches, projection head
for _name, _size, _alias, _res, _n in [("vit_pe_core_tiny_patch16_384.fb", "T/16-384", "pe-core-t16-384", 384, 512),
                                       ("vit_pe_core_small_patch16_384.fb", "S/16-384", "pe-core-s16-384", 384, 512),
                                       ("vit_pe_core_base_patch16_224.fb", "B/16", "pe-core-b16", 224, 1024),
                                       ("vit_pe_core_large_patch14_336.fb", "L/14-336", "pe-core-l14-336", 336, 1024)]:
    _modern_entry(_name, "pe", _size, _pp(_res, 1.0), (_alias,), num_classes=_n,
                  notes="Perception Encoder core image tower; head = projection to the joint embedding (timm hub)")

# --- AIMv2 (autoregressive pretraining): RMSNorm, norm on the patch embeddings, bias-free SwiGLU, no CLS
for _name, _size, _alias, _res in [("aimv2_large_patch14_224.apple_pt", "L/14", "aimv2-l14-224", 224),
                                   ("aimv2_huge_patch14_224.apple_pt", "H/14", "aimv2-h14-224", 224),
                                   ("aimv2_large_patch14_448.apple_pt", "L/14-448", "aimv2-l14-448", 448)]:
    _modern_entry(_name, "aimv2", _size, _pp(_res, 1.0, **_CLIP), (_alias,),
                  notes="AIMv2 backbone: no CLS, pooled = mean of patches (timm hub)")

# --- RoPE-ViT (Naver, DeiT-3 recipe on IN-1k): axial or mixed (learned) RoPE, optionally with absolute positions
for _name, _size, _alias in [("vit_small_patch16_rope_224.naver_in1k", "S/16", "rope-vit-s16"),
                             ("vit_base_patch16_rope_224.naver_in1k", "B/16", "rope-vit-b16"),
                             ("vit_small_patch16_rope_mixed_224.naver_in1k", "S/16", "rope-mixed-vit-s16"),
                             ("vit_base_patch16_rope_mixed_224.naver_in1k", "B/16", "rope-mixed-vit-b16"),
                             ("vit_base_patch16_rope_ape_224.naver_in1k", "B/16", "rope-ape-vit-b16"),
                             ("vit_base_patch16_rope_mixed_ape_224.naver_in1k", "B/16", "rope-mixed-ape-vit-b16")]:
    _modern_entry(_name, "rope-vit", _size, _pp(224, 0.9, **_IMNET), (_alias,), num_classes=1000,
                  notes="RoPE-ViT (Heo et al. 2024) IN-1k classifier (timm hub)")
_modern_entry("vit_base_patch16_rope_reg1_gap_256.sbb_in1k", "rope-vit", "B/16-256", _pp(256, 0.95),
              ("vit-b16-rope-reg1-gap",), num_classes=1000,
              notes="timm's RoPE ViT: 1 register, no CLS, mean of patches (IN-12k -> IN-1k)", extra=True)
