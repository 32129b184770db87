"""2-D rotary position embeddings (RoPE) of the ViT families vitscope loads.

A rotary embedding turns each query and key of a patch token, head by head, by angles that depend on the
patch's position: consecutive channel pairs are rotated (``(x0, x1), (x2, x3), ...``, layout "interleaved"),
or channel ``i`` with channel ``i + Dh/2`` (layout "half"). The dot product of a rotated query and key then
depends on the difference of their positions. Prefix tokens (CLS, registers) are not rotated.

With ``Dh`` the head width and ``F = Dh / 4`` frequencies per axis, the angle of frequency ``f`` on axis ``a``
(``a`` = row or column; ``rope_indexing="ij"`` puts the row's frequencies first, ``"xy"`` the column's) is

* ``axial`` (EVA-02, RoPE-ViT axial, Perception Encoder, timm's ``*_rope_*`` ViTs): ``c_a * theta ** (-f / F)``
  with integer patch coordinates ``c_a = i + rope_offset``; with ``rope_ref_grid`` (EVA-02) the coordinates are
  rescaled to span the reference grid at every input size, ``c_a = (i + offset) / n_a * ref_a``;
* ``dinov3``: ``2 pi c_a / theta ** (f / F)`` with patch centres normalised to [-1, 1] at every input size,
  ``c_a = 2 (i + 0.5 + offset) / n_a - 1`` (``rope_normalize="min"`` / ``"max"`` divide by the shorter / longer
  side instead of ``n_a``);
* ``mixed`` (RoPE-ViT mixed): learned frequencies per block and head, ``angle = c_x * w_x + c_y * w_y`` with one
  learned 2-D frequency ``(w_x, w_y)`` per channel pair (``freqs``: 2 x depth x H x Dh/2); not separable by axis.

Each frequency's angle is used by one channel pair, so the angles of one token are ``Dh / 2`` numbers,
laid out over the ``Dh`` channels as the rotation pairs them. The operations follow timm's
(``timm.layers.pos_embed_sincos``) in order and in float32, so that vitscope matches timm to float rounding.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vitscope.models.config import ViTConfig


# ----------------------------------------------------------------------------- coordinates
def _axis_coords(n: int, kind: str, offset: float, ref: int | None, denom: float) -> torch.Tensor:
    """Coordinates of the ``n`` patches along one axis (float32)."""
    if kind == "dinov3":
        return (torch.arange(0.5, n, dtype=torch.float32) + offset) / denom          # in (0, 1)
    t = torch.arange(n, dtype=torch.int64).to(torch.float32) + offset
    if ref is not None:
        t = t / n * ref                                                                 # EVA: span the ref grid
    return t


def patch_coords(cfg: ViTConfig, grid: tuple[int, int]) -> torch.Tensor:
    """Per-patch coordinates (N, 2), patches in row-major order; channel 0 is the row for "ij", the column
    for "xy"."""
    rows, cols = grid
    denom = {"separate": (float(rows), float(cols)), "min": (float(min(grid)),) * 2,
             "max": (float(max(grid)),) * 2}[cfg.rope_normalize]
    ref = cfg.rope_ref_grid if cfg.rope == "axial" else None
    offset = cfg.rope_offset if cfg.rope != "mixed" else 0.0
    c_row = _axis_coords(rows, cfg.rope, offset, ref[0] if ref else None, denom[0])   # rows
    c_col = _axis_coords(cols, cfg.rope, offset, ref[1] if ref else None, denom[1])   # cols
    g_row, g_col = torch.meshgrid(c_row, c_col, indexing="ij")                         # rows, cols each
    pair = (g_row, g_col) if cfg.rope_indexing == "ij" else (g_col, g_row)
    coords = torch.stack(pair, dim=-1).to(torch.float32)                               # rows, cols, 2
    if cfg.rope == "dinov3":
        coords = 2.0 * coords - 1.0                                                     # [0, 1] -> [-1, 1]
    return coords.reshape(rows * cols, 2)                                               # N, 2


# ----------------------------------------------------------------------------- angles
def axial_bands(head_dim: int, theta: float) -> torch.Tensor:
    """``theta ** (-f / F)`` for f = 0..F-1, F = head_dim / 4 (timm's ``freq_bands``)."""
    n = head_dim // 4
    exp = torch.arange(0, n, 1, dtype=torch.int64).to(torch.float32) / n
    return 1.0 / (theta ** exp)                                                         # F


def dinov3_periods(head_dim: int, theta: float) -> torch.Tensor:
    """``theta ** (f / F)`` for f = 0..F-1 (DINOv3's periods, float32)."""
    n = head_dim // 4
    return theta ** (2.0 * torch.arange(n, dtype=torch.float32) / (head_dim // 2))      # F


def mixed_init(head_dim: int, depth: int, heads: int, theta: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """RoPE-ViT's initial mixed frequencies (2, depth, H, Dh/2): per block and head, the axial magnitudes
    ``theta ** (-4k / Dh)`` along a random direction and the direction turned by 90 degrees."""
    mag = 1.0 / (theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim))   # Dh/4
    angle = torch.rand(depth, heads, 1, generator=generator) * 2 * math.pi                  # depth, H, 1
    fx = torch.cat([mag * torch.cos(angle), mag * torch.cos(angle + math.pi / 2)], dim=-1)   # depth, H, Dh/2
    fy = torch.cat([mag * torch.sin(angle), mag * torch.sin(angle + math.pi / 2)], dim=-1)   # depth, H, Dh/2
    return torch.stack([fx, fy], dim=0)                                                      # 2, depth, H, Dh/2


def spread(angles: torch.Tensor, layout: str) -> torch.Tensor:
    """Per-pair values (..., Dh/2) over the channels (..., Dh) in the rotation's pairing."""
    if layout == "half":
        return torch.cat([angles, angles], dim=-1)                                      # [a0..aK, a0..aK]
    return angles.repeat_interleave(2, dim=-1)                                          # [a0, a0, a1, a1, ...]


def rotate(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The rotation's partner of every channel, signed: interleaved (x0, x1) -> (-x1, x0); half
    (x_i, x_{i+Dh/2}) -> (-x_{i+Dh/2}, x_i)."""
    if layout == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, layout: str) -> torch.Tensor:
    """Rotate ``x`` (B, N, H, Dh) by the angles whose sin / cos are (N, Dh) or (N, H, Dh)."""
    if sin.ndim == 2:
        sin, cos = sin[None, :, None], cos[None, :, None]                               # 1, N, 1, Dh
    else:
        sin, cos = sin[None], cos[None]                                                 # 1, N, H, Dh
    return (x * cos + rotate(x, layout) * sin).to(x.dtype)


# ----------------------------------------------------------------------------- the module
class RotaryEmbedding(nn.Module):
    """The sin / cos tables of a model's rotary embedding for an input grid.

    ``forward(grid)`` returns ``(sin, cos)``: (N, Dh) each for "axial" / "dinov3" (every block and head
    shares them; computed once per grid and device, in float32) or (depth, N, H, Dh) for "mixed" (index by
    block; recomputed from the learned ``freqs``, the parameter's name in timm: ``rope.freqs``).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.rope == "mixed":
            self.freqs = nn.Parameter(mixed_init(cfg.head_dim, cfg.depth, cfg.num_heads, cfg.rope_theta))
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def angles(self, grid: tuple[int, int]) -> torch.Tensor:
        """Rotation angles per channel pair: (N, Dh/2), or (depth, N, H, Dh/2) for "mixed"."""
        cfg = self.cfg
        coords = patch_coords(cfg, grid)                                                # N, 2
        if cfg.rope == "mixed":
            w = self.freqs.float()                                                      # 2, depth, H, Dh/2
            coords = coords.to(w.device)
            ax = coords[:, 0, None] * w[0].unsqueeze(-2)                                 # depth, H, N, Dh/2
            ay = coords[:, 1, None] * w[1].unsqueeze(-2)                                 # depth, H, N, Dh/2
            return (ax + ay).permute(0, 2, 1, 3)                                        # depth, N, H, Dh/2
        if cfg.rope == "axial":
            ang = coords[:, :, None] * axial_bands(cfg.head_dim, cfg.rope_theta)         # N, 2, F
        else:
            periods = dinov3_periods(cfg.head_dim, cfg.rope_theta)
            ang = 2 * math.pi * coords[:, :, None] / periods[None, None, :]             # N, 2, F
        return ang.flatten(1)                                                           # N, Dh/2

    def forward(self, grid: tuple[int, int], device: torch.device | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        grid = (int(grid[0]), int(grid[1]))
        layout = self.cfg.rope_layout
        if self.cfg.rope == "mixed":
            a = self.angles(grid)
            return spread(a.sin(), layout), spread(a.cos(), layout)
        key = (grid, str(device))
        if key not in self._tables:
            if len(self._tables) >= 16:
                self._tables.clear()
            # normal tensors even under inference_mode: a later forward with autograd (relevance maps) reads them
            with torch.inference_mode(False), torch.no_grad():
                a = self.angles(grid)
                self._tables[key] = (spread(a.sin(), layout).to(device), spread(a.cos(), layout).to(device))
        return self._tables[key]
