"""Attribution patching equals the finite-difference directional derivative of the metric along (source - base),
cell by cell (a plain loop of ``run_with_hooks`` written here); its agreement with real patching is reported."""
import numpy as np
import pytest
import torch

from vitscope.analysis.patching.activation import activation_patching
from vitscope.analysis.patching.attribution import agreement, attribution_patching
from vitscope.analysis.patching.pairs import PatchPairs
from vitscope.analysis.patching.sites import SITES


def _model(tiny_cfg_kwargs, **kw):
    from vitscope.models import HookedViT, ViTConfig

    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, "depth": 2, **kw})).eval().double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def _pairs(n=2):
    g = torch.Generator().manual_seed(3)
    return PatchPairs(torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64),
                      torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64))


def _cells(kind, T, H):
    return list(range(T)) if kind == "position" else list(range(H)) if kind == "head" else \
        [(h, q) for h in range(H) for q in range(T)]


def _step(kind, cell, src, eps):
    """A hook that moves one cell a step ``eps`` of the way to the other run's activation."""
    def fn(act, hook):
        act = act.clone()
        if kind == "position":
            act[:, cell] += eps * (src[:, cell] - act[:, cell])
        elif kind == "head":
            act[:, :, cell] += eps * (src[:, :, cell] - act[:, :, cell])
        else:
            h, q = cell
            act[:, h, q] += eps * (src[:, h, q] - act[:, h, q])
        return act
    return fn


@pytest.mark.parametrize("site, kind", [("resid_pre", "position"), ("mlp_out", "position"), ("z", "head"),
                                        ("result", "head"), ("pattern", "pattern")])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_equals_the_finite_difference_directional_derivative(site, kind, direction, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, num_registers=1, register_location="end", register_block=1)
    pairs = _pairs()
    grid = attribution_patching(m, pairs, site, "logit", direction=direction)
    base, other = (pairs.corrupted, pairs.clean) if direction == "denoising" else (pairs.clean, pairs.corrupted)
    eps = 1e-5
    with torch.no_grad():
        labels = m(pairs.clean).argmax(-1)
        idx = torch.arange(2)
        for b in range(2):
            name = f"blocks.{b}.{SITES[site]}"
            _, c = m.run_with_cache(other, names_filter=name)
            T = m.token_layout(b).n_tokens
            m0 = m(base)[idx, labels]
            for k, cell in enumerate(_cells(kind, T, m.cfg.num_heads)):
                up = m.run_with_hooks(base, fwd_hooks=[(name, _step(kind, cell, c[name], eps))])[idx, labels]
                down = m.run_with_hooks(base, fwd_hooks=[(name, _step(kind, cell, c[name], -eps))])[idx, labels]
                want = m0 + (up - down) / (2 * eps)                 # M(base) + directional derivative, per pair
                np.testing.assert_allclose(grid.values[b][k], want.numpy(), atol=1e-6, rtol=1e-6)


def test_frozen_norm_scales_are_the_derivative_with_the_scales_held(tiny_cfg_kwargs):
    """freeze_norm: the derivative of the metric with every LayerNorm divisor held at its base-run value."""
    m = _model(tiny_cfg_kwargs)
    pairs = _pairs()
    grid = attribution_patching(m, pairs, "resid_pre", "logit", freeze_norm=True)
    free = attribution_patching(m, pairs, "resid_pre", "logit")
    assert not np.allclose(grid.values[1], free.values[1])
    eps = 1e-5
    idx = torch.arange(2)
    with torch.no_grad():
        labels = m(pairs.clean).argmax(-1)
        _, scales = m.run_with_cache(pairs.corrupted, names_filter=lambda n: n.endswith("hook_scale"))
        held = [(n, (lambda s, hook: scales[hook.name])) for n in scales]
        _, c = m.run_with_cache(pairs.clean, names_filter="blocks.1.hook_resid_pre")
        src = c["blocks.1.hook_resid_pre"]
        m0 = m(pairs.corrupted)[idx, labels]
        for cell in range(m.token_layout(1).n_tokens):
            f = [m.run_with_hooks(pairs.corrupted, fwd_hooks=held + [("blocks.1.hook_resid_pre",
                                                                        _step("position", cell, src, e))])[idx, labels]
                 for e in (eps, -eps)]
            np.testing.assert_allclose(grid.values[1][cell], (m0 + (f[0] - f[1]) / (2 * eps)).numpy(),
                                       atol=1e-6, rtol=1e-6)


def test_agreement_rows(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs).float()
    pairs = PatchPairs(_pairs().clean.float(), _pairs().corrupted.float())
    real = activation_patching(m, pairs, "resid_pre")
    est = attribution_patching(m, pairs, "resid_pre")
    rows = agreement(real, est)
    assert [r["block"] for r in rows] == [0, 1, None]
    x = np.concatenate([real.effect(b) for b in (0, 1)])
    y = np.concatenate([est.effect(b) for b in (0, 1)])
    assert rows[-1]["value"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert rows[-1]["cells"] == 34
