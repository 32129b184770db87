"""Activation patching: every grid equals a plain loop of one ``run_with_hooks`` per cell (written here from the
definition), identical inputs give 0, a whole block's residual patched gives the clean run, and models with
registers, a late CLS and a DIST token name their positions through ``token_layout``."""
import numpy as np
import pytest
import torch

from vitscope.analysis.patching.activation import activation_patching, patch_cells
from vitscope.analysis.patching.pairs import PatchPairs
from vitscope.analysis.patching.sites import SITES, resolve_site
from vitscope.models import HookedViT, ViTConfig

VARIANTS = {
    "plain": dict(),
    "late_cls_registers_end": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
    "distilled_registers": dict(distill_token=True, head="distilled", num_registers=1, pos_embed_prefix=False),
    "layer_scale": dict(layer_scale_init=0.3),
}


def _model(tiny_cfg_kwargs, **kw) -> HookedViT:
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def _pairs(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return PatchPairs(torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g))


def _metric(logits, labels, kind):
    if kind == "logit":
        return logits[torch.arange(len(labels)), labels]
    if kind == "prob":
        return logits.softmax(-1)[torch.arange(len(labels)), labels]
    return logits[:, 3] - logits[:, 5]                                  # logit-diff:3,5


def _replace(site_kind, cell, src):
    """A hook that puts ``src`` (the other run's activation) into one cell, from the definition."""
    def fn(act, hook):
        act = act.clone()
        if site_kind == "position":                                      # B, T, D
            act[:, cell] = src[:, cell]
        elif site_kind == "head":                                        # B, T, H, X
            act[:, :, cell] = src[:, :, cell]
        else:                                                            # B, H, T, T
            h, q = cell
            act[:, h, q] = src[:, h, q]
        return act
    return fn


def loop_grid(m, pairs, site, metric, direction):
    """{block: (K,) effect} by one full forward per cell, normalised on the pair-averaged metric."""
    hook = SITES[site]
    kind = "position" if site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out") else \
        "pattern" if site == "pattern" else "head"
    base, src_x = (pairs.corrupted, pairs.clean) if direction == "denoising" else (pairs.clean, pairs.corrupted)
    out = {}
    with torch.no_grad():
        clean_logits = m(pairs.clean)
        labels = clean_logits.argmax(-1)
        mc = _metric(clean_logits, labels, metric).mean().item()
        mx = _metric(m(pairs.corrupted), labels, metric).mean().item()
        for b in range(m.cfg.depth):
            name = f"blocks.{b}.{hook}"
            _, cache = m.run_with_cache(src_x, names_filter=name)
            src = cache[name]
            T, H = m.token_layout(b).n_tokens, m.cfg.num_heads
            cells = range(T) if kind == "position" else range(H) if kind == "head" else \
                [(h, q) for h in range(H) for q in range(T)]
            vals = []
            for c in cells:
                logits = m.run_with_hooks(base, fwd_hooks=[(name, _replace(kind, c, src))])
                vals.append(_metric(logits, labels, metric).mean().item())
            out[b] = (np.array(vals) - mx) / (mc - mx)
    return out


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "resid_mid", "z", "result", "v", "pattern"])
def test_grid_equals_one_run_with_hooks_per_cell(site, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, depth=2) if site == "pattern" else _model(tiny_cfg_kwargs)
    pairs = _pairs()
    want = loop_grid(m, pairs, site, "logit", "denoising")
    grid = activation_patching(m, pairs, site, "logit", batch_size=7)       # chunks that do not divide the cells
    for b, w in want.items():
        np.testing.assert_allclose(grid.effect(b), w, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("metric, spec", [("prob", "prob"), ("diff", "logit-diff:3,5")])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_metrics_and_directions(metric, spec, direction, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, depth=3)
    pairs = _pairs(3)
    want = loop_grid(m, pairs, "resid_pre", metric, direction)
    grid = activation_patching(m, pairs, "resid_pre", spec, direction=direction)
    for b, w in want.items():
        np.testing.assert_allclose(grid.effect(b), w, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_token_layouts_of_registers_late_cls_and_dist(name, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, **VARIANTS[name])
    pairs = _pairs()
    want = loop_grid(m, pairs, "resid_pre", "logit", "denoising")
    grid = activation_patching(m, pairs, "resid_pre", "logit")
    for b, w in want.items():
        np.testing.assert_allclose(grid.effect(b), w, atol=2e-5, rtol=1e-4)
        lay = m.token_layout(b)
        toks = {c["position"]: c["token"] for c in grid.cells[b]}
        assert len(toks) == lay.n_tokens
        if lay.cls is not None:
            assert toks[lay.cls] == "cls"
        if lay.dist is not None:
            assert toks[lay.dist] == "dist"
        assert [toks[r] for r in lay.registers] == [f"reg{k}" for k in range(len(lay.registers))]
        patches = [c for c in grid.cells[b] if c["token"] == "patch"]
        assert [(c["row"], c["col"]) for c in patches] == [(r, c) for r in range(4) for c in range(4)]
        assert [c["position"] for c in patches] == list(range(lay.patches.start, lay.patches.stop))
    maps, prefix = grid.position_maps()
    assert maps.shape == (4, 4, 4) and not np.isnan(maps).any()
    if name == "late_cls_registers_end":                     # CLS enters at block 2: absent (NaN) before
        assert np.isnan(prefix["cls"][:2]).all() and not np.isnan(prefix["cls"][2:]).any()


@pytest.mark.parametrize("site", ["resid_pre", "z", "pattern"])
def test_identical_inputs_give_zero_everywhere(site, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, depth=2)
    x = torch.randn(2, 3, 32, 32)
    grid = activation_patching(m, PatchPairs(x, x.clone()), site, "logit")
    for b in grid.blocks:
        assert np.all(grid.effect(b) == 0)
        assert np.abs(grid.values[b] - grid.corrupted[None]).max() < 1e-4


def test_whole_block_residual_patch_is_the_clean_run(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, num_registers=2, register_location="end", register_block=1, cls_block=2)
    pairs = _pairs(2)
    with torch.no_grad():
        clean_logits, cc = m.run_with_cache(pairs.clean, names_filter="blocks.*.hook_resid_pre")
        _, xc = m.run_with_cache(pairs.corrupted, names_filter="blocks.*.hook_resid_pre")
        labels = clean_logits.argmax(-1)
        for b in range(4):
            T = m.token_layout(b).n_tokens
            every = torch.ones(1, T, dtype=torch.bool)
            got = {}

            def metric(logits, labels):
                got["logits"] = logits
                return logits[torch.arange(len(labels)), labels]

            v = patch_cells(m, xc[f"blocks.{b}.hook_resid_pre"], cc[f"blocks.{b}.hook_resid_pre"], "resid_pre", b,
                            every, metric, labels)
            torch.testing.assert_close(got["logits"], clean_logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(v[0], clean_logits[torch.arange(2), labels], atol=1e-5, rtol=0)


def test_patching_only_some_patches(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    pairs = _pairs()
    full = activation_patching(m, pairs, "attn_out", "logit")
    sel = np.zeros((4, 4), bool)
    sel[1:3, 2] = True
    part = activation_patching(m, pairs, "attn_out", "logit", patches=sel)
    for b in range(4):
        idx = [i for i, c in enumerate(full.cells[b]) if c["token"] == "patch" and sel[c["row"], c["col"]]]
        assert [c["position"] for c in part.cells[b]] == [full.cells[b][i]["position"] for i in idx]
        np.testing.assert_allclose(part.effect(b), full.effect(b)[idx], atol=1e-6)


def test_sites_resolve_and_bad_sites_list_the_valid_ones(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, depth=2)
    assert resolve_site(m, "attn.hook_z") == "z" and resolve_site(m, "blocks.1.hook_mlp_out") == "mlp_out"
    assert resolve_site(m, "hook_pattern") == "pattern"
    with pytest.raises(ValueError, match="site 'resid' does not exist on this model; valid sites: resid_pre") as e:
        resolve_site(m, "resid")
    assert "\n" not in str(e.value)
