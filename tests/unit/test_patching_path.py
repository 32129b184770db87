"""Path patching equals a plain loop written from its definition (IOI): per sender, one run with the sender from
the other input and every other head frozen that records the receivers' inputs, then one run with only those
inputs replaced."""
import numpy as np
import pytest
import torch

from vitscope.analysis.patching.activation import activation_patching
from vitscope.analysis.patching.pairs import PatchPairs
from vitscope.analysis.patching.path import parse_receivers, path_patching
from vitscope.models import HookedViT, ViTConfig


def _model(tiny_cfg_kwargs, **kw):
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def _pairs(n=2):
    g = torch.Generator().manual_seed(5)
    return PatchPairs(torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g))


def loop_path(m, pairs, receivers, freeze_mlps, direction="denoising"):
    """{sender block: (H,) effect}, one sender at a time, from the definition."""
    L, H = m.cfg.depth, m.cfg.num_heads
    base, other = (pairs.corrupted, pairs.clean) if direction == "denoising" else (pairs.clean, pairs.corrupted)
    idx = torch.arange(len(base))
    with torch.no_grad():
        labels = m(pairs.clean).argmax(-1)
        mc, mx = m(pairs.clean)[idx, labels].mean().item(), m(pairs.corrupted)[idx, labels].mean().item()
        _, cb = m.run_with_cache(base)
        _, co = m.run_with_cache(other)
        last = L if receivers is None else max(r for r, _, _ in receivers)
        out = {}
        for s in range(last):
            eff = []
            for h in range(H):
                def sender(z, hook, s=s, h=h):
                    b = int(hook.name.split(".")[1])
                    z = cb[hook.name].clone()                       # every head frozen to the base run ...
                    if b == s:
                        z[:, :, h] = co[hook.name][:, :, h]        # ... but the sender
                    return z
                hooks = [(f"blocks.{b}.attn.hook_z", sender) for b in range(L)]
                if freeze_mlps:
                    hooks += [(f"blocks.{b}.hook_mlp_out", lambda a, hook: cb[hook.name]) for b in range(L)]
                rec = {}
                for r, hr, x in receivers or []:
                    hooks.append((f"blocks.{r}.attn.hook_{x}_input",
                                  lambda a, hook, key=(r, hr, x): rec.__setitem__(key, a[:, :, key[1]].clone())))
                logits = m.run_with_hooks(base, fwd_hooks=hooks)
                if receivers is not None:
                    def put(a, hook, want=None):
                        a = a.clone()
                        b, x = int(hook.name.split(".")[1]), hook.name.split("hook_")[1][0]
                        for (r, hr, xr), v in rec.items():
                            if r == b and xr == x:
                                a[:, :, hr] = v
                        return a
                    names = sorted({f"blocks.{r}.attn.hook_{x}_input" for r, _, x in receivers})
                    logits = m.run_with_hooks(base, fwd_hooks=[(n, put) for n in names])
                eff.append((logits[idx, labels].mean().item() - mx) / (mc - mx))
            out[s] = np.array(eff)
    return out


@pytest.mark.parametrize("receivers, freeze", [("logits", False), ("logits", True), ("3.1.q,3.k", False),
                                               ("2.0.v,3.2.qk", True)])
def test_path_patching_equals_the_loop(receivers, freeze, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, num_registers=1, register_location="end", register_block=2, cls_block=1)
    pairs = _pairs()
    want = loop_path(m, pairs, parse_receivers(m, receivers), freeze)
    grid = path_patching(m, pairs, receivers, "logit", freeze_mlps=freeze, batch_size=6)
    assert grid.blocks == sorted(want)
    for s, w in want.items():
        np.testing.assert_allclose(grid.effect(s), w, atol=2e-5, rtol=1e-4)


def test_noising_direction(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, depth=3)
    pairs = _pairs()
    want = loop_path(m, pairs, parse_receivers(m, "2.q"), False, direction="noising")
    grid = path_patching(m, pairs, "2.q", direction="noising")
    for s, w in want.items():
        np.testing.assert_allclose(grid.effect(s), w, atol=2e-5, rtol=1e-4)


def test_last_block_sender_to_logits_is_activation_patching_of_its_head(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    pairs = _pairs()
    path = path_patching(m, pairs, "logits", blocks=[3])
    act = activation_patching(m, pairs, "z", blocks=[3])
    np.testing.assert_allclose(path.effect(3), act.effect(3), atol=1e-5)


@pytest.mark.parametrize("text, words", [("9.q", "block 9 does not exist"), ("1.7.q", "head 7 does not exist"),
                                         ("1.x", "receivers take 'logits'")])
def test_bad_receivers(text, words, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    with pytest.raises(ValueError, match=words):
        parse_receivers(m, text)
    assert parse_receivers(m, "1.2.qk") == [(1, 2, "k"), (1, 2, "q")]
