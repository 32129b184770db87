"""ViTConfig: every architectural switch of the hooked ViT, validated when built."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CHOICES = {
    "pos_embed": ("learned", "sincos", "none"),
    "register_location": ("prefix", "end"),
    "act": ("gelu", "gelu_tanh", "quick_gelu"),
    "global_pool": ("token", "avg", "none"),
    "head": ("linear", "distilled", "clip_proj", "none"),
}


class ConfigError(ValueError):
    """A ViTConfig field has a value that cannot work; the message says which and how to fix it."""


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ConfigError(f"expected an int or (height, width), got {v!r}")
    return v  # type: ignore[return-value]


@dataclass
class ViTConfig:
    """Architecture of a :class:`~vitscope.models.vit.HookedViT`.

    Token order at a block where everything has entered:
    ``[CLS] [DIST] [registers if register_location == "prefix"] patches [registers if "end"]``.
    """

    img_size: tuple[int, int] | int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mlp_dim: int | None = None            # overrides mlp_ratio when set
    qkv_bias: bool = True                 # bias on q, k and v
    qv_bias: bool = False                 # BEiT: separate q and v biases, no k bias (needs qkv_bias=False)
    patch_bias: bool = True               # CLIP's conv1 has no bias
    class_token: bool = True
    distill_token: bool = False           # DeiT-distilled: a second prefix token after CLS
    num_registers: int = 0
    register_location: str = "prefix"     # "prefix" (DINOv2: after CLS) or "end" (cls-register: appended)
    cls_block: int = 0                    # CLS (and DIST) are inserted before this block
    register_block: int = 0               # registers are inserted before this block
    pos_embed: str = "learned"            # "learned", "sincos" (fixed 2-D, MAE / MoCo-v3) or "none" (BEiT)
    pos_embed_prefix: bool = True         # pos_embed holds entries for CLS/DIST (timm no_embed_class=False)
    pos_embed_grid: tuple[int, int] | None = None   # grid the stored pos_embed was trained at (default img grid)
    pos_interp_antialias: bool = True     # bicubic resampling kernel: timm antialiases, transformers does not
    pos_interp_offset: float = 0.0        # official DINO / DINOv2 code: scale factor (new + 0.1) / old, not the size
    pre_norm: bool = False                # CLIP ln_pre
    res_post_norm: bool = False           # residual post-norm blocks: x + ln1(attn(x)), x + ln2(mlp(x))
    layer_scale_init: float | None = None # LayerScale (DINOv2, BEiT) when set
    rel_pos_bias: bool = False            # BEiT per-block relative position bias
    act: str = "gelu"
    norm_eps: float = 1e-6
    final_norm: bool = True               # LayerNorm on all tokens after the last block
    global_pool: str = "token"            # what the head reads: "token" (CLS), "avg" (mean of patches), "none"
    fc_norm: bool = False                 # LayerNorm after pooling (timm global_pool="avg")
    head: str = "linear"
    num_classes: int = 1000               # linear/distilled heads; the CLIP projection width for clip_proj
    head_bias: bool = True
    drop_path_rate: float = 0.0
    # free-form provenance (family, source name); not used by the model
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.img_size = _pair(self.img_size)
        if self.pos_embed_grid is not None:
            self.pos_embed_grid = _pair(self.pos_embed_grid)
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else int(self.embed_dim * self.mlp_ratio)

    @property
    def num_cls_tokens(self) -> int:
        """Prefix tokens that enter at ``cls_block``: CLS and the distillation token."""
        return int(self.class_token) + int(self.distill_token)

    @property
    def stored_pos_grid(self) -> tuple[int, int]:
        return self.pos_embed_grid or self.grid

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                bad(f"ViTConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if int(getattr(self, name)) <= 0:
                bad(f"ViTConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.embed_dim % self.num_heads:
            bad(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                f"pick num_heads among the divisors of embed_dim")
        h, w = self.img_size
        if h % self.patch_size or w % self.patch_size:
            bad(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        if self.num_registers < 0:
            bad(f"num_registers must be >= 0, got {self.num_registers}")
        for name in ("cls_block", "register_block"):
            v = getattr(self, name)
            if not 0 <= v < self.depth:
                bad(f"ViTConfig.{name}={v} must be in [0, depth-1=={self.depth - 1}]: "
                    f"tokens are inserted before a block that exists")
        if self.distill_token and not self.class_token:
            bad("distill_token=True needs class_token=True (DeiT puts DIST right after CLS)")
        if self.qv_bias and self.qkv_bias:
            bad("qv_bias=True (BEiT: q and v biases only) and qkv_bias=True exclude each other; set qkv_bias=False")
        if self.global_pool == "token" and not self.class_token:
            bad("global_pool='token' reads the CLS token but class_token=False; use global_pool='avg'")
        if self.head == "distilled" and not self.distill_token:
            bad("head='distilled' needs distill_token=True")
        if self.head != "none" and self.global_pool == "none":
            bad(f"head={self.head!r} needs a pooled vector; set global_pool to 'token' or 'avg', or head='none'")
        if self.rel_pos_bias and (self.num_registers or self.distill_token or self.cls_block
                                  or not self.class_token):
            bad("rel_pos_bias (BEiT) supports exactly [CLS] + patches from block 0; "
                "registers, DIST or a late CLS are not defined for it")
        if self.pos_embed == "none" and not self.rel_pos_bias:
            pass  # allowed: a model with no position information at all (ablations)
        if self.res_post_norm and self.layer_scale_init is not None:
            bad("res_post_norm blocks (x + norm(branch(x))) have no LayerScale; set layer_scale_init=None")
        if self.layer_scale_init is not None and self.layer_scale_init <= 0:
            bad(f"layer_scale_init must be > 0 or None, got {self.layer_scale_init}")
        if not 0.0 <= self.pos_interp_offset < 1.0:
            bad(f"pos_interp_offset must be in [0, 1) (official DINO / DINOv2: 0.1), got {self.pos_interp_offset}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            bad(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        if self.pos_embed_grid is not None:
            d["pos_embed_grid"] = list(self.pos_embed_grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ViTConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "ViTConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes) -> "ViTConfig":
        return dataclasses.replace(self, **changes)
