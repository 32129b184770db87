"""HookedViT: one Vision Transformer that covers every family vitscope loads.

Read top to bottom: position embeddings -> norms -> attention -> MLP -> attention pool -> block -> the model.
Shapes use B = batch, T = tokens at that block, N = patch tokens, H = heads, Dh = head width, D = model width,
Dm = MLP width. Rotary position embeddings live in ``vitscope.models.rope``. Every activation of the public
hook contract passes through a ``HookPoint`` (see ``vitscope.hooks``); the names are documented in the README.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitscope.hooks.hook_points import HookedRootModule, HookPoint
from vitscope.models.config import ViTConfig
from vitscope.models.kernels import ACTS, IMPLS, apply_linear, linear
from vitscope.models.layout import TokenLayout, token_layout
from vitscope.models.rope import RotaryEmbedding, apply_rope


# ----------------------------------------------------------------------------- position embeddings
def sincos_2d(embed_dim: int, grid: tuple[int, int], temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (MAE / MoCo-v3): [sin(x w), cos(x w), sin(y w), cos(y w)] -> (N, D)."""
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    rows, cols = grid
    y, x = torch.meshgrid(torch.arange(rows, dtype=torch.float64),
                          torch.arange(cols, dtype=torch.float64), indexing="ij")
    dim = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(dim, dtype=torch.float64) / dim)      # dim
    ox = x.flatten()[:, None] * omega[None]                                           # N, dim
    oy = y.flatten()[:, None] * omega[None]                                           # N, dim
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], dim=1).float()        # N, D


def resample_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                       antialias: bool = True, offset: float = 0.0, mode: str = "bicubic") -> torch.Tensor:
    """Bicubic (or ``mode="bilinear"``) resampling of patch position embeddings (1, N_old, D) -> (1, N_new, D).

    ``antialias=True`` is timm's kernel; transformers' ViT / DeiT / CLIP / DINOv2 use ``antialias=False``.
    ``offset > 0`` is the official DINO / DINOv2 code (offset 0.1): ``interpolate`` gets the scale factor
    ``(new + offset) / old`` instead of the output size, which moves the sampling positions slightly.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    D = pos.shape[-1]
    grid = pos.reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2).float()  # 1, D, h, w
    if offset:
        scale = ((new_grid[0] + offset) / old_grid[0], (new_grid[1] + offset) / old_grid[1])
        grid = F.interpolate(grid, scale_factor=scale, mode=mode, align_corners=False, antialias=antialias)
        if tuple(grid.shape[-2:]) != tuple(new_grid):
            raise ValueError(f"resampling {old_grid} -> {new_grid} with offset {offset} gave {tuple(grid.shape[-2:])}")
    else:
        grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False, antialias=antialias)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D).to(pos.dtype)  # 1, N, D


def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """BEiT's index into the relative-position bias table for [CLS] + patches -> (T, T) with T = N + 1."""
    rows, cols = grid
    n_rel = (2 * rows - 1) * (2 * cols - 1) + 3
    coords = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")).flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)                  # N, N, 2
    rel[:, :, 0] += rows - 1
    rel[:, :, 1] += cols - 1
    rel[:, :, 0] *= 2 * cols - 1
    index = torch.zeros(rows * cols + 1, rows * cols + 1, dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, :] = n_rel - 3          # CLS -> patch
    index[:, 0] = n_rel - 2          # patch -> CLS
    index[0, 0] = n_rel - 1          # CLS -> CLS
    return index


# ----------------------------------------------------------------------------- small modules
class HookedLayerNorm(nn.LayerNorm):
    """LayerNorm whose output is ``<name>.hook_normalized``.

    ``<name>.hook_scale`` (..., 1) is the divisor ``sqrt(var + eps)``; it exists only while something is attached
    to it (then the norm runs in explicit steps, so a hook may read or freeze the scale, TransformerLens-style).
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__(dim, eps=eps)
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.hook_scale.active:
            return self.hook_normalized(super().forward(x))
        centred = x - x.mean(-1, keepdim=True)                                         # ..., D
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # ..., 1
        return self.hook_normalized(centred / scale * self.weight + self.bias)


class HookedRMSNorm(nn.Module):
    """RMSNorm (scale only, no centring; AIMv2) whose output is ``<name>.hook_normalized``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(F, "rms_norm"):                                                      # torch >= 2.4
            y = F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        else:
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return self.hook_normalized(y)


def make_norm(cfg: ViTConfig, dim: int) -> nn.Module:
    """The model's norm (``cfg.norm``) over the last ``dim`` channels."""
    return HookedRMSNorm(dim, cfg.norm_eps) if cfg.norm == "rmsnorm" else HookedLayerNorm(dim, cfg.norm_eps)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


# ----------------------------------------------------------------------------- attention
class Attention(nn.Module):
    """Multi-head self-attention with a fast (SDPA) and an explicit (hookable pattern) path.

    ``impl``: "auto" uses ``scaled_dot_product_attention`` unless a hook is attached to
    ``hook_attn_scores`` or ``hook_pattern``; "sdpa" or "explicit" force one path. With a rotary embedding
    the patch tokens' queries and keys are rotated after ``hook_q`` / ``hook_k`` (and the qk-norm);
    ``hook_rot_q`` / ``hook_rot_k`` hold what the dot product sees.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        D, self.H, self.Dh = cfg.embed_dim, cfg.num_heads, cfg.head_dim
        self.scale = self.Dh ** -0.5
        self.qkv = nn.Linear(D, 3 * D, bias=cfg.qkv_bias)
        if cfg.qv_bias:
            self.q_bias = nn.Parameter(torch.zeros(D))
            self.v_bias = nn.Parameter(torch.zeros(D))
        if cfg.qk_norm:
            self.q_norm, self.k_norm = make_norm(cfg, self.Dh), make_norm(cfg, self.Dh)
        self.norm = make_norm(cfg, D) if cfg.attn_out_norm else None
        self.proj = nn.Linear(D, D, bias=cfg.proj_bias)
        if cfg.rel_pos_bias:
            rows, cols = cfg.grid
            n_rel = (2 * rows - 1) * (2 * cols - 1) + 3
            self.relative_position_bias_table = nn.Parameter(torch.zeros(n_rel, self.H))
            self.register_buffer("relative_position_index", relative_position_index(cfg.grid), persistent=False)
        self.rope_layout = cfg.rope_layout
        self.impl = "auto"
        self.linear_impl = "auto"
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        if cfg.rope != "none":
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()
        self.hook_result = HookPoint()    # per-head outputs; computed only when a hook is attached
        # per-head copies of the input that q, k, v read (B, T, H, D); computed only when a hook is attached
        self.hook_q_input, self.hook_k_input, self.hook_v_input = HookPoint(), HookPoint(), HookPoint()

    def rel_bias(self, T: int) -> torch.Tensor | None:
        if not hasattr(self, "relative_position_bias_table"):
            return None
        idx = self.relative_position_index
        if idx.shape[0] != T:
            raise ValueError(f"relative position bias was built for {idx.shape[0]} tokens, got {T}; "
                             "BEiT models run at their native input size only")
        bias = self.relative_position_bias_table[idx.reshape(-1)]                     # T*T, H
        return bias.reshape(T, T, self.H).permute(2, 0, 1)                              # H, T, T

    def _rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, int]) -> torch.Tensor:
        """Rotate the patch tokens of ``x`` (B, T, H, Dh); ``rope`` = (sin, cos, index of the first patch)."""
        sin, cos, start = rope
        stop = start + sin.shape[0]
        rotated = apply_rope(x[:, start:stop], sin, cos, self.rope_layout)              # B, N, H, Dh
        return torch.cat([x[:, :start], rotated, x[:, stop:]], dim=1)                   # B, T, H, Dh

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, int] | None = None
                ) -> torch.Tensor:
        B, T, D = x.shape
        bias = self.qkv.bias
        if hasattr(self, "q_bias"):
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        if self.hook_q_input.active or self.hook_k_input.active or self.hook_v_input.active:
            q, k, v = self.split_qkv(x, bias)                                           # 3 x B, T, H, Dh
        else:
            qkv = linear(x, self.qkv.weight, bias, impl=self.linear_impl)                # B, T, 3D
            q, k, v = qkv.reshape(B, T, 3, self.H, self.Dh).unbind(2)                   # 3 x B, T, H, Dh
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)                                       # B, T, H, Dh
        if rope is not None:
            q, k = self.hook_rot_q(self._rotate(q, rope)), self.hook_rot_k(self._rotate(k, rope))
        rel = self.rel_bias(T)                                                          # H, T, T or None
        explicit = self.impl == "explicit" or (
            self.impl == "auto" and (self.hook_attn_scores.active or self.hook_pattern.active))
        if explicit:
            scores = torch.einsum("bqhd,bkhd->bhqk", q * self.scale, k)                 # B, H, T, T
            if rel is not None:
                scores = scores + rel
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(scores.float().softmax(dim=-1).to(v.dtype))    # B, H, T, T
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)                             # B, T, H, Dh
        else:
            mask = None if rel is None else rel.to(q.dtype)
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, scale=self.scale)        # B, H, T, Dh
            z = z.transpose(1, 2)                                                       # B, T, H, Dh
        z = self.hook_z(z)
        if self.hook_result.active:
            out = self.head_results(z).sum(dim=2)                                       # B, T, D
            return out + self.proj.bias if self.proj.bias is not None else out
        z = z.reshape(B, T, D)                                                          # B, T, D
        if self.norm is not None:
            z = self.norm(z)
        return apply_linear(self.proj, z, impl=self.linear_impl)                        # B, T, D

    def split_qkv(self, x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """q, k, v (each B, T, H, Dh); the hooked ones of ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` from
        a copy of the input per head (B, T, H, D), so that a hook can give each head its own input (path patching).
        """
        B, T, D = x.shape
        W = self.qkv.weight.reshape(3, self.H, self.Dh, D)                              # 3, H, Dh, D
        b = bias.reshape(3, self.H, self.Dh) if bias is not None else None              # 3, H, Dh
        out = []
        for i, hp in enumerate((self.hook_q_input, self.hook_k_input, self.hook_v_input)):
            if hp.active:
                xi = hp(x[:, :, None, :].repeat(1, 1, self.H, 1))                       # B, T, H, D
                y = torch.einsum("bthd,hed->bthe", xi, W[i])                            # B, T, H, Dh
            else:
                y = F.linear(x, W[i].reshape(D, D)).reshape(B, T, self.H, self.Dh)      # B, T, H, Dh
            out.append(y if b is None else y + b[i])
        return tuple(out)

    def head_results(self, z: torch.Tensor) -> torch.Tensor:
        """Each head's output through its slice of ``proj`` (no bias), through ``hook_result`` -> (B, T, H, D).

        ``proj(z) = head_results(z).sum(heads) + proj.bias``. With ``attn_out_norm`` (EVA-CLIP) the norm of the
        joined heads comes first and each head's slice of the normalised output is projected.
        """
        if self.norm is not None:
            B, T, H, Dh = z.shape
            z = self.norm(z.reshape(B, T, H * Dh)).reshape(B, T, H, Dh)                 # B, T, H, Dh
        W = self.proj.weight.reshape(-1, self.H, self.Dh)                               # D, H, Dh
        return self.hook_result(torch.einsum("bthd,ehd->bthe", z, W))                   # B, T, H, D


class MLP(nn.Module):
    """fc1 -> act -> fc2, or gated (SwiGLU): act(fc1_g(x)) * fc1_x(x) -> fc2; an optional norm before fc2.

    Hooks: ``hook_pre`` (fc1 output, the gate's pre-activation when gated), ``hook_pre_linear`` (gated only:
    the linear branch), ``hook_post`` (what fc2 reads, before the optional ``norm``).
    """

    def __init__(self, dim: int, hidden: int, act: str, gated: bool = False, bias: bool = True,
                 norm: nn.Module | None = None) -> None:
        super().__init__()
        self.gated = gated
        if gated:
            self.fc1_g = nn.Linear(dim, hidden, bias=bias)
            self.fc1_x = nn.Linear(dim, hidden, bias=bias)
        else:
            self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.norm = norm
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.act_name = act
        self.linear_impl = "auto"
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()
        if gated:
            self.hook_pre_linear = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self.linear_impl
        first = self.fc1_g if self.gated else self.fc1
        if self.hook_pre.active:                                                        # GEMM, hook, activation
            h = ACTS[self.act_name](self.hook_pre(apply_linear(first, x, impl=impl)))  # B, T, Dm
        else:                                                                           # activation fused
            h = apply_linear(first, x, act=self.act_name, impl=impl)                    # B, T, Dm
        if self.gated:
            h = h * self.hook_pre_linear(apply_linear(self.fc1_x, x, impl=impl))        # B, T, Dm
        h = self.hook_post(h)
        if self.norm is not None:
            h = self.norm(h)                                                            # B, T, Dm
        return apply_linear(self.fc2, h, impl=impl)                                     # B, T, D


def block_mlp(cfg: ViTConfig) -> MLP:
    return MLP(cfg.embed_dim, cfg.hidden_dim, cfg.act, gated=cfg.gated_mlp, bias=cfg.mlp_bias,
               norm=make_norm(cfg, cfg.hidden_dim) if cfg.mlp_norm else None)


# ----------------------------------------------------------------------------- attention pool (MAP)
class AttentionPool(nn.Module):
    """Multi-head attention pooling (SigLIP, Perception Encoder, AIMv2): a learned probe query attends over
    the tokens; the result goes through ``proj`` and, with ``map_mlp``, a norm + MLP residual.

    ``hook_pattern`` (B, H, 1, T) is the probe's attention (explicit path, only when hooked); ``hook_z``
    (B, 1, H, Dh) the per-head weighted values; ``hook_attn_out`` (B, D) the projected attention output.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.H = cfg.map_heads or cfg.num_heads
        self.Dh = D // self.H
        self.scale = self.Dh ** -0.5
        self.latent = nn.Parameter(torch.zeros(1, 1, D))
        self.q = nn.Linear(D, D, bias=cfg.map_qkv_bias) if cfg.map_q_proj else None
        self.kv = nn.Linear(D, 2 * D, bias=cfg.map_qkv_bias)
        self.proj = nn.Linear(D, D)
        if cfg.map_mlp:
            self.norm = make_norm(cfg, D)
            self.mlp = MLP(D, cfg.map_hidden_dim, cfg.act)
        else:
            self.norm = self.mlp = None
        self.impl = "auto"
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> the pooled vector (B, D)."""
        B, T, D = x.shape
        probe = self.latent if self.q is None else self.q(self.latent)                  # 1, 1, D
        q = probe.reshape(1, 1, self.H, self.Dh).expand(B, -1, -1, -1)                  # B, 1, H, Dh
        k, v = self.kv(x).reshape(B, T, 2, self.H, self.Dh).unbind(2)                   # 2 x B, T, H, Dh
        explicit = self.impl == "explicit" or (
            self.impl == "auto" and (self.hook_attn_scores.active or self.hook_pattern.active))
        if explicit:
            scores = self.hook_attn_scores(torch.einsum("bqhd,bkhd->bhqk", q * self.scale, k))  # B, H, 1, T
            pattern = self.hook_pattern(scores.float().softmax(dim=-1).to(v.dtype))    # B, H, 1, T
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)                             # B, 1, H, Dh
        else:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               scale=self.scale).transpose(1, 2)        # B, 1, H, Dh
        z = self.hook_z(z)
        out = self.hook_attn_out(self.proj(z.reshape(B, D)))                            # B, D
        if self.mlp is not None:
            out = out + self.mlp(self.norm(out))                                        # B, D
        return out

    def pool_each(self, h: torch.Tensor) -> torch.Tensor:
        """Every vector of ``h`` (..., D) pooled alone, as a one-token sequence (the probe's attention is then 1):
        the attention pool's map of one residual-stream vector, for the logit lens."""
        D = h.shape[-1]
        v = self.kv(h)[..., D:]                                                         # ..., D
        out = self.proj(v)                                                              # ..., D
        if self.mlp is not None:
            out = out + self.mlp(self.norm(out))
        return out


class Block(nn.Module):
    """Pre-norm block: x + ls1(attn(ln1(x))), then + ls2(mlp(ln2(x))).

    With ``cfg.res_post_norm`` (timm's ``ResPostBlock``): x + ln1(attn(x)), then + ln2(mlp(x)); the norms act on
    the branch outputs, so ``ln1.hook_normalized`` equals ``hook_attn_out`` (and ``ln2`` ``hook_mlp_out``).
    """

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.ln1 = make_norm(cfg, cfg.embed_dim)
        self.attn = Attention(cfg)
        self.ln2 = make_norm(cfg, cfg.embed_dim)
        self.mlp = block_mlp(cfg)
        ls = cfg.layer_scale_init
        self.ls1 = LayerScale(cfg.embed_dim, ls) if ls else nn.Identity()
        self.ls2 = LayerScale(cfg.embed_dim, ls) if ls else nn.Identity()
        self.drop_path = DropPath(drop_path)
        self.post_norm = cfg.res_post_norm
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor, int] | None = None
                ) -> torch.Tensor:
        """``rope``: (sin, cos, index of the first patch token) of the rotary embedding, or None."""
        x = self.hook_resid_pre(x)                                                      # B, T, D
        if self.post_norm:
            attn_out = self.ln1(self.attn(x, rope))                                     # B, T, D
        else:
            attn_out = self.ls1(self.attn(self.ln1(x), rope))                           # B, T, D
        x = self.hook_resid_mid(x + self.drop_path(self.hook_attn_out(attn_out)))
        if self.post_norm:
            mlp_out = self.ln2(self.mlp(x))                                             # B, T, D
        else:
            mlp_out = self.ls2(self.mlp(self.ln2(x)))                                   # B, T, D
        x = x + self.drop_path(self.hook_mlp_out(mlp_out))
        return self.hook_resid_post(x)                                                  # B, T, D


# ----------------------------------------------------------------------------- the model
class HookedViT(HookedRootModule):
    """A Vision Transformer with the hook contract of ``vitscope.hooks`` (see the README for names)."""

    def __init__(self, cfg: ViTConfig, preprocess_cfg=None) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cfg.in_chans, D, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        if cfg.patch_norm:
            self.patch_embed.norm = make_norm(cfg, D)
        if cfg.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.distill_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.num_registers:
            self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_registers, D))
        n_pos = cfg.stored_pos_grid[0] * cfg.stored_pos_grid[1] + (cfg.num_cls_tokens if cfg.pos_embed_prefix else 0)
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, D))
        elif cfg.pos_embed == "sincos":
            pe = sincos_2d(D, cfg.stored_pos_grid)[None]                                # 1, N, D
            if cfg.pos_embed_prefix:
                pe = torch.cat([torch.zeros(1, cfg.num_cls_tokens, D), pe], dim=1)      # 1, P + N, D
            self.register_buffer("pos_embed", pe)
        self.rope = RotaryEmbedding(cfg) if cfg.rope != "none" else None
        # index of the first patch token entering each block (fixed by the config, any input size)
        self._patch_start = [token_layout(cfg, i, (1, 1)).patches.start for i in range(cfg.depth)]
        self.ln_pre = make_norm(cfg, D) if cfg.pre_norm else None
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([Block(cfg, dpr[i]) for i in range(cfg.depth)])
        self.ln_final = make_norm(cfg, D) if cfg.final_norm else None
        self.attn_pool = AttentionPool(cfg) if cfg.global_pool == "map" else None
        self.fc_norm = make_norm(cfg, D) if cfg.fc_norm else None
        if cfg.head in ("linear", "distilled"):
            self.head = nn.Linear(D, cfg.num_classes, bias=cfg.head_bias)
        elif cfg.head == "clip_proj":
            self.head = nn.Linear(D, cfg.num_classes, bias=False)
        if cfg.head == "distilled":
            self.head_dist = nn.Linear(D, cfg.num_classes, bias=cfg.head_bias)
        self.hook_embed, self.hook_pos_embed, self.hook_full_embed = HookPoint(), HookPoint(), HookPoint()
        self.hook_pooled, self.hook_logits = HookPoint(), HookPoint()
        if cfg.distill_token:
            self.hook_pooled_dist = HookPoint()
        self.preprocess_cfg = preprocess_cfg
        self.init_weights()
        self.setup_hooks()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init as timm's ViT (truncated normal 0.02, zero biases, unit LayerNorms)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name in ("cls_token", "dist_token", "reg_token"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name), std=0.02)
        if isinstance(self.pos_embed if self.cfg.pos_embed == "learned" else None, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for blk in self.blocks:
            if hasattr(blk.attn, "relative_position_bias_table"):
                nn.init.trunc_normal_(blk.attn.relative_position_bias_table, std=0.02)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.latent, std=self.cfg.embed_dim ** -0.5)

    # ------------------------------------------------------------------ layout and attention mode
    def token_layout(self, block: int, grid: tuple[int, int] | None = None) -> TokenLayout:
        """Where CLS, DIST, registers and patches sit in the tokens entering ``block`` (``depth`` = output)."""
        return token_layout(self.cfg, block, grid)

    def set_attention_impl(self, impl: str) -> None:
        """"auto" (default), "sdpa" or "explicit" for every block."""
        if impl not in ("auto", "sdpa", "explicit"):
            raise ValueError(f"attention impl must be 'auto', 'sdpa' or 'explicit', got {impl!r}")
        for blk in self.blocks:
            blk.attn.impl = impl
        if self.attn_pool is not None:
            self.attn_pool.impl = impl

    def set_linear_impl(self, impl: str) -> None:
        """"auto" (default), "torch" or "onednn" for the blocks' linear layers (see ``vitscope.models.kernels``)."""
        if impl not in IMPLS:
            raise ValueError(f"linear impl must be one of {IMPLS}, got {impl!r}")
        for blk in self.blocks:
            blk.attn.linear_impl = blk.mlp.linear_impl = impl
        if self.attn_pool is not None and self.attn_pool.mlp is not None:
            self.attn_pool.mlp.linear_impl = impl

    # ------------------------------------------------------------------ embedding and token insertion
    def _pos_embed(self, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(prefix position embeddings (1, P, D) or None, patch position embeddings (1, N, D) or None)."""
        cfg = self.cfg
        if cfg.pos_embed == "none":
            return None, None
        n_pre = cfg.num_cls_tokens if cfg.pos_embed_prefix else 0
        prefix, patch = self.pos_embed[:, :n_pre], self.pos_embed[:, n_pre:]
        if tuple(grid) != tuple(cfg.stored_pos_grid):
            if cfg.pos_embed == "sincos":
                patch = sincos_2d(cfg.embed_dim, grid)[None].to(patch)                  # 1, N, D
            else:
                patch = resample_pos_embed(patch, cfg.stored_pos_grid, grid, cfg.pos_interp_antialias,
                                           cfg.pos_interp_offset, cfg.pos_interp_mode)         # 1, N, D
        return (prefix if n_pre else None), patch

    def _insert_tokens(self, x: torch.Tensor, block: int, pos_prefix: torch.Tensor | None) -> torch.Tensor:
        """Insert CLS/DIST (prepended) and registers (after CLS/DIST or appended) that enter before ``block``."""
        cfg, B = self.cfg, x.shape[0]
        if cfg.num_registers and cfg.register_block == block:
            reg = self.reg_token.expand(B, -1, -1)                                      # B, R, D
            if cfg.register_location == "end":
                x = torch.cat([x, reg], dim=1)
            else:
                n_cls = cfg.num_cls_tokens if block > cfg.cls_block else 0               # CLS not yet prepended
                x = torch.cat([x[:, :n_cls], reg, x[:, n_cls:]], dim=1)
        if cfg.num_cls_tokens and cfg.cls_block == block:
            toks = [self.cls_token] + ([self.dist_token] if cfg.distill_token else [])
            prefix = torch.cat(toks, dim=1)                                             # 1, P, D
            if pos_prefix is not None:
                prefix = prefix + pos_prefix
            x = torch.cat([prefix.expand(B, -1, -1), x], dim=1)                         # B, P + T, D
        return x

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, C, H, W) -> (tokens entering block 0 (B, T, D), prefix position embedding)."""
        p = self.cfg.patch_size
        if x.ndim != 4:
            fix = "; add the batch dimension with x[None]" if x.ndim == 3 else ""
            raise ValueError(f"expected a batch of images of shape (B, {self.cfg.in_chans}, H, W), got a "
                             f"{x.ndim}-d tensor of shape {tuple(x.shape)}{fix} (model.preprocess(images) "
                             f"makes such a batch)")
        B, C, Hi, Wi = x.shape
        if C != self.cfg.in_chans or Hi % p or Wi % p:
            raise ValueError(f"expected images of shape (B, {self.cfg.in_chans}, H, W) with H and W multiples of "
                             f"the patch size {p}, got {tuple(x.shape)}; use model.preprocess(images)")
        grid = (Hi // p, Wi // p)
        x = self.patch_embed.proj(x)                                                    # B, D, rows, cols
        x = self.hook_embed(x.flatten(2).transpose(1, 2))                               # B, N, D
        if self.cfg.patch_norm:
            x = self.patch_embed.norm(x)                                                # B, N, D
        pos_prefix, pos_patch = self._pos_embed(grid)
        if pos_patch is not None:
            x = x + self.hook_pos_embed(pos_patch)                                      # B, N, D
        x = self._insert_tokens(x, 0, pos_prefix)                                       # B, T, D
        return self.hook_full_embed(x), pos_prefix

    # ------------------------------------------------------------------ forward
    def rope_tables(self, grid: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor, int]] | list[None]:
        """Per block: (sin, cos, index of the first patch token) of the rotary embedding at ``grid``, or None."""
        if self.rope is None:
            return [None] * self.cfg.depth
        sin, cos = self.rope(grid, self.device)                                         # N, Dh or depth, N, H, Dh
        if self.cfg.rope == "mixed":
            return [(sin[i], cos[i], self._patch_start[i]) for i in range(self.cfg.depth)]
        return [(sin, cos, start) for start in self._patch_start]

    def forward_features(self, x: torch.Tensor, stop_at: int | None = None) -> torch.Tensor:
        """Images -> tokens after the final norm (B, T, D); with ``stop_at=k``, the stream entering block k."""
        p, hw = self.cfg.patch_size, x.shape[-2:]
        x, pos_prefix = self.embed(x)                                                   # checks the input
        ropes = self.rope_tables((hw[0] // p, hw[1] // p))
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        for i, blk in enumerate(self.blocks):
            if i > 0:
                x = self._insert_tokens(x, i, pos_prefix)
            if stop_at is not None and i == stop_at:
                return x
            x = blk(x, ropes[i])
        if stop_at is not None and stop_at == self.cfg.depth:
            return x
        return self.ln_final(x) if self.ln_final is not None else x

    def forward_from(self, x: torch.Tensor, block: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits (B, C) from the tokens entering ``block`` (B, T, D; ``blocks.{block}.hook_resid_pre`` of an earlier
        run), skipping the blocks before it: patching runs every patched copy from the block it patches. Tokens
        that enter later are inserted as in :meth:`forward`; ``block == depth`` applies the final norm and head.
        ``grid``: the patch grid of that run (default: the model's)."""
        if not 0 <= block <= self.cfg.depth:
            raise ValueError(f"block must be in [0, {self.cfg.depth}] for a model of depth {self.cfg.depth}, "
                             f"got {block}")
        pos_prefix, _ = self._pos_embed(grid or self.cfg.grid)
        for i in range(block, self.cfg.depth):
            if i > block:
                x = self._insert_tokens(x, i, pos_prefix)
            x = self.blocks[i](x)
        return self.forward_head(self.ln_final(x) if self.ln_final is not None else x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens (B, T, D) -> the vector the head reads (B, D)."""
        cfg = self.cfg
        if cfg.global_pool == "token":
            pooled = tokens[:, 0]
        elif cfg.global_pool in ("avg", "map"):
            lay = self.token_layout(cfg.depth)
            n_patch = tokens.shape[1] - (lay.n_tokens - lay.n_patches)                  # any input size
            patches = tokens[:, lay.patches.start:lay.patches.start + n_patch]          # B, N, D
            if cfg.global_pool == "avg":
                pooled = patches.mean(dim=1)
            else:
                pooled = self.attn_pool(patches if cfg.map_tokens == "patches" else tokens)
        else:
            return tokens
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return self.hook_pooled(pooled)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens -> logits (B, C); the pooled vector when the model has no head."""
        cfg = self.cfg
        pooled = self.pool(tokens)
        if cfg.head == "none":
            return self.hook_logits(pooled)
        logits = self.head(pooled)
        if cfg.head == "distilled":
            dist = self.hook_pooled_dist(tokens[:, 1])
            logits = (logits + self.head_dist(dist)) / 2
        return self.hook_logits(logits)

    def forward(self, x: torch.Tensor, stop_at: int | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, C). With ``stop_at=k`` return the stream entering block k."""
        tokens = self.forward_features(x, stop_at=stop_at)
        if stop_at is not None:
            return tokens
        return self.forward_head(tokens)

    # ------------------------------------------------------------------ conveniences
    def head_input(self, h: torch.Tensor) -> torch.Tensor:
        """What the head reads for residual-stream vector(s) ``h`` (..., D): the final norm (``fc_norm`` for models
        pooled by averaging); for models pooled by an attention pool (``global_pool="map"``): the final norm, the
        pool applied to each vector alone, as a one-token sequence (``AttentionPool.pool_each``), then ``fc_norm``.
        """
        if self.attn_pool is not None:
            z = self.ln_final(h) if self.ln_final is not None else h
            z = self.attn_pool.pool_each(z)
            return self.fc_norm(z) if self.fc_norm is not None else z
        norm = self.fc_norm if self.fc_norm is not None else self.ln_final
        return norm(h) if norm is not None else h

    def project_to_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logit lens (vilas2023): ``head(head_input(h))`` for any residual-stream vector(s) (..., D)."""
        if self.cfg.head == "none":
            raise ValueError("this model has no classification head to project onto")
        z = self.head_input(h)
        logits = self.head(z)
        if self.cfg.head == "distilled":
            logits = (logits + self.head_dist(z)) / 2
        return logits

    def preprocess(self, images, **kwargs) -> torch.Tensor:
        """PIL images, arrays (H, W, C uint8) or paths -> a normalised batch (B, 3, H, W) for this model."""
        from vitscope.models.preprocess import PreprocessConfig, preprocess

        cfg = self.preprocess_cfg or PreprocessConfig(input_size=self.cfg.img_size)
        return preprocess(images, cfg, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.patch_embed.proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype
