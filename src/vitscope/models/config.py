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
    "act": ("gelu", "gelu_tanh", "quick_gelu", "silu"),
    "norm": ("layernorm", "rmsnorm"),
    "rope": ("none", "axial", "mixed", "dinov3"),
    "rope_layout": ("interleaved", "half"),
    "rope_indexing": ("ij", "xy"),
    "rope_normalize": ("separate", "min", "max"),
    "global_pool": ("token", "avg", "map", "none"),
    "pos_interp_mode": ("bicubic", "bilinear"),
    "map_tokens": ("patches", "all"),
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

    Rotary position embeddings (``rope``) rotate the queries and keys of the patch tokens only; CLS, DIST and
    registers are left as they are (DINOv3, EVA-02, RoPE-ViT, Perception Encoder). See
    :mod:`vitscope.models.rope` for the variants.
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
    pos_interp_mode: str = "bicubic"      # resampling kernel; transformers' SigLIP 2: "bilinear" (antialiased)
    pre_norm: bool = False                # CLIP ln_pre
    res_post_norm: bool = False           # residual post-norm blocks: x + ln1(attn(x)), x + ln2(mlp(x))
    layer_scale_init: float | None = None # LayerScale (DINOv2, BEiT) when set
    rel_pos_bias: bool = False            # BEiT per-block relative position bias
    act: str = "gelu"                     # MLP activation; with gated_mlp the gate's (SwiGLU: "silu")
    norm: str = "layernorm"               # every norm of the model: "layernorm" or "rmsnorm" (AIMv2)
    norm_eps: float = 1e-6
    patch_norm: bool = False              # a norm on the patch embeddings before positions are added (AIMv2)
    proj_bias: bool = True                # bias of the attention output projection (AIMv2: none)
    qk_norm: bool = False                 # per-head norm of queries and keys before the dot product
    attn_out_norm: bool = False           # norm of the joined head outputs before the projection (EVA-CLIP)
    gated_mlp: bool = False               # act(fc1_g(x)) * fc1_x(x) -> fc2 (SwiGLU: act="silu")
    mlp_bias: bool = True                 # biases of the MLP's linear layers
    mlp_norm: bool = False                # norm of the MLP hidden state before fc2 (EVA-02 base / large)
    rope: str = "none"                    # rotary position embedding: "none", "axial", "mixed", "dinov3"
    rope_theta: float = 10000.0           # frequency base (axial, dinov3: the period base); mixed: init only
    rope_layout: str = "interleaved"      # rotated pairs: (x0, x1), (x2, x3)... or "half": (x_i, x_{i + Dh/2})
    rope_indexing: str = "ij"             # "ij": the first frequencies follow the row; "xy": the column
    rope_offset: float = 0.0              # added to patch coordinates (Perception Encoder: 1)
    rope_ref_grid: tuple[int, int] | None = None    # axial: coordinates rescaled to span this grid (EVA-02)
    rope_normalize: str = "separate"      # dinov3: coordinates divided by each side, the shorter or the longer
    final_norm: bool = True               # LayerNorm on all tokens after the last block
    global_pool: str = "token"            # what the head reads: "token" (CLS), "avg" (mean of patches),
                                          # "map" (attention pool: a learned query attends over tokens), "none"
    fc_norm: bool = False                 # LayerNorm after pooling (timm global_pool="avg")
    map_heads: int | None = None          # attention-pool heads (default num_heads)
    map_mlp_dim: int | None = None        # attention-pool MLP width (default the blocks' MLP width)
    map_tokens: str = "patches"           # what the pool attends over: "patches" (SigLIP) or "all" (PE: with CLS)
    map_q_proj: bool = True               # a query projection of the probe (AIMv2's head uses the probe as is)
    map_qkv_bias: bool = True             # biases of the pool's query / key / value projections
    map_mlp: bool = True                  # norm + MLP residual after the pooled attention (SigLIP, PE)
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
        if self.rope_ref_grid is not None:
            self.rope_ref_grid = _pair(self.rope_ref_grid)
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

    @property
    def map_hidden_dim(self) -> int:
        return self.map_mlp_dim if self.map_mlp_dim is not None else self.hidden_dim

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
            bad("global_pool='token' reads the CLS token but class_token=False; use global_pool='avg' or 'map'")
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
        if self.mlp_dim is not None and int(self.mlp_dim) <= 0:
            bad(f"ViTConfig.mlp_dim must be a positive integer or None, got {self.mlp_dim!r}")
        self._validate_rope(bad)
        self._validate_map(bad)

    def _validate_rope(self, bad) -> None:
        if self.rope == "none":
            if self.rope_ref_grid is not None:
                bad("rope_ref_grid is set but rope='none'; set rope='axial' or drop rope_ref_grid")
            return
        if self.head_dim % 4:
            bad(f"rope={self.rope!r} needs a head width divisible by 4 (two axes, sin and cos pairs), got "
                f"head_dim={self.head_dim} (embed_dim={self.embed_dim} / num_heads={self.num_heads})")
        if self.rel_pos_bias:
            bad("rope and rel_pos_bias (BEiT) are two position schemes for attention; pick one")
        if not self.rope_theta > 0:
            bad(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.rope == "mixed" and self.rope_layout != "interleaved":
            bad("rope='mixed' (RoPE-ViT, learned frequencies) rotates interleaved pairs; set rope_layout='interleaved'")
        if self.rope_ref_grid is not None and self.rope != "axial":
            bad(f"rope_ref_grid rescales axial coordinates (EVA-02); it has no meaning for rope={self.rope!r}")
        if self.rope_ref_grid is not None and min(self.rope_ref_grid) <= 0:
            bad(f"rope_ref_grid must hold positive sizes, got {self.rope_ref_grid}")

    def _validate_map(self, bad) -> None:
        if self.global_pool != "map":
            return
        heads = self.map_heads or self.num_heads
        if heads <= 0 or self.embed_dim % heads:
            bad(f"map_heads={self.map_heads} must be a positive divisor of embed_dim={self.embed_dim}")
        if self.map_mlp_dim is not None and int(self.map_mlp_dim) <= 0:
            bad(f"map_mlp_dim must be a positive integer or None, got {self.map_mlp_dim!r}")
        if self.head == "distilled":
            bad("head='distilled' reads CLS and DIST; an attention pool (global_pool='map') has one output")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        for name in ("pos_embed_grid", "rope_ref_grid"):
            if d[name] is not None:
                d[name] = list(d[name])
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
