"""Rotary position embeddings (vitscope.models.rope) against slow loops written from each variant's definition,
and the properties a rotary embedding must have. timm parity of every variant is in
tests/parity/test_timm_modern_goldens.py."""
from __future__ import annotations

import math

import pytest
import torch

from vitscope.models.config import ConfigError, ViTConfig
from vitscope.models.rope import RotaryEmbedding, apply_rope

BASE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)     # head_dim 16: F = 4 per axis


def _cfg(**kw) -> ViTConfig:
    return ViTConfig(**{**BASE, **kw})


def _slow_angles(cfg: ViTConfig, grid, r: int, c: int) -> list[float]:
    """The Dh/2 angles of the patch in row r, column c, from the definitions in the module docstring."""
    rows, cols = grid
    F = cfg.head_dim // 4
    if cfg.rope == "axial":
        coords = [r + cfg.rope_offset, c + cfg.rope_offset]
        if cfg.rope_ref_grid:
            coords = [coords[0] / rows * cfg.rope_ref_grid[0], coords[1] / cols * cfg.rope_ref_grid[1]]
    else:
        denom = {"separate": (rows, cols), "min": (min(grid),) * 2, "max": (max(grid),) * 2}[cfg.rope_normalize]
        coords = [2 * (r + 0.5 + cfg.rope_offset) / denom[0] - 1, 2 * (c + 0.5 + cfg.rope_offset) / denom[1] - 1]
    first, second = (coords[0], coords[1]) if cfg.rope_indexing == "ij" else (coords[1], coords[0])
    out = []
    for value in (first, second):
        for f in range(F):
            if cfg.rope == "axial":
                out.append(value * cfg.rope_theta ** (-f / F))
            else:
                out.append(2 * math.pi * value / cfg.rope_theta ** (f / F))
    return out


def _slow_rotate(x: torch.Tensor, angles: list[float], layout: str) -> torch.Tensor:
    """Rotate the vector x (Dh,) pair by pair: pair j is (2j, 2j+1) ("interleaved") or (j, j + Dh/2) ("half")."""
    Dh = x.shape[0]
    y = x.clone()
    for j, a in enumerate(angles):
        i0, i1 = (2 * j, 2 * j + 1) if layout == "interleaved" else (j, j + Dh // 2)
        y[i0] = x[i0] * math.cos(a) - x[i1] * math.sin(a)
        y[i1] = x[i0] * math.sin(a) + x[i1] * math.cos(a)
    return y


@pytest.mark.parametrize("kw", [
    dict(rope="axial"),
    dict(rope="axial", rope_indexing="xy", rope_offset=1.0, rope_theta=100.0),
    dict(rope="axial", rope_ref_grid=(16, 16), rope_layout="half"),
    dict(rope="dinov3", rope_theta=100.0, rope_layout="half"),
    dict(rope="dinov3", rope_theta=100.0, rope_normalize="max", rope_indexing="xy"),
    dict(rope="dinov3", rope_theta=100.0, rope_normalize="min", rope_offset=0.25, rope_layout="interleaved"),
])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_separable_rope_matches_its_definition(kw, grid):
    cfg = _cfg(**kw)
    sin, cos = RotaryEmbedding(cfg)(grid)                                           # N, Dh
    x = torch.randn(1, grid[0] * grid[1], 1, cfg.head_dim, dtype=torch.float64)
    got = apply_rope(x, sin.double(), cos.double(), cfg.rope_layout)[0, :, 0]
    for n in range(grid[0] * grid[1]):
        r, c = divmod(n, grid[1])
        want = _slow_rotate(x[0, n, 0], _slow_angles(cfg, grid, r, c), cfg.rope_layout)
        torch.testing.assert_close(got[n], want, atol=1e-5, rtol=0)


def test_mixed_rope_matches_its_definition():
    cfg = _cfg(rope="mixed", rope_indexing="xy")
    rope = RotaryEmbedding(cfg)
    rope.freqs.requires_grad_(False).normal_()
    grid = (3, 4)
    sin, cos = rope(grid)                                                           # depth, N, H, Dh
    assert sin.shape == (cfg.depth, 12, cfg.num_heads, cfg.head_dim)
    x = torch.randn(1, 12, cfg.num_heads, cfg.head_dim, dtype=torch.float64)
    for blk in range(cfg.depth):
        got = apply_rope(x, sin[blk].double(), cos[blk].double(), "interleaved")[0]
        for n in range(12):
            r, c = divmod(n, grid[1])
            cx, cy = c, r                                                           # "xy": x is the column
            for h in range(cfg.num_heads):
                angles = [cx * float(rope.freqs[0, blk, h, j]) + cy * float(rope.freqs[1, blk, h, j])
                          for j in range(cfg.head_dim // 2)]
                torch.testing.assert_close(got[n, h], _slow_rotate(x[0, n, h], angles, "interleaved"), atol=1e-5,
                                           rtol=0)


def test_axial_scores_depend_on_the_offset_only():
    """Without a reference grid, q(p) . k(p') after rotation depends on p - p' only: shift both, same score."""
    cfg = _cfg(rope="axial", rope_theta=100.0)
    sin, cos = RotaryEmbedding(cfg)((6, 6))
    q, k = torch.randn(cfg.head_dim, dtype=torch.float64), torch.randn(cfg.head_dim, dtype=torch.float64)
    x = torch.stack([q, k])[:, None, None].expand(2, 36, 1, -1)                      # 2, N, 1, Dh
    rot = apply_rope(x, sin.double(), cos.double(), cfg.rope_layout)[:, :, 0]        # 2, N, Dh
    score = lambda a, b: float(rot[0, a] @ rot[1, b])                              # noqa: E731
    idx = lambda r, c: r * 6 + c                                                    # noqa: E731
    assert score(idx(0, 0), idx(2, 3)) == pytest.approx(score(idx(3, 1), idx(5, 4)), abs=1e-5)
    assert score(idx(1, 1), idx(1, 1)) == pytest.approx(float(q @ k), abs=1e-5)   # same position: no rotation


def test_rope_config_is_validated():
    for kw, msg in [(dict(rope="axial", embed_dim=24, num_heads=4), "divisible by 4"),
                    (dict(rope="mixed", rope_layout="half"), "interleaved"),
                    (dict(rope="dinov3", rope_ref_grid=(16, 16)), "rope_ref_grid"),
                    (dict(rope_ref_grid=(16, 16)), "rope='none'"),
                    (dict(rope="axial", rope_theta=0.0), "rope_theta"),
                    (dict(rope="spiral"), "rope='spiral'"),
                    (dict(rope="axial", rel_pos_bias=True), "pick one")]:
        with pytest.raises(ConfigError, match=msg) as e:
            _cfg(**kw)
        assert "\n" not in str(e.value)
