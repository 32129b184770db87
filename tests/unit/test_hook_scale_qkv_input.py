"""The mechanistic hooks: LayerNorm ``hook_scale``, per-head ``attn.hook_q_input`` / ``hook_k_input`` /
``hook_v_input`` (only computed when hooked), and ``HookedViT.forward_from``."""
import pytest
import torch
import torch.nn.functional as F

from vitscope.models import HookedViT, ViTConfig
from vitscope.models.vit import Attention

VARIANTS = {
    "plain": dict(),
    "layer_scale_registers": dict(num_registers=2, pos_embed_prefix=False, layer_scale_init=0.3),
    "late_cls_registers_end": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
    "distilled": dict(distill_token=True, head="distilled"),
    "avg_pool": dict(class_token=False, global_pool="avg", fc_norm=True, final_norm=False, pos_embed_prefix=False),
}


def _model(tiny_cfg_kwargs, **kw) -> HookedViT:
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def test_hook_scale_is_the_norm_divisor_and_can_be_frozen(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = m(x)
        logits, cache = m.run_with_cache(x, names_filter=["blocks.1.hook_resid_pre", "blocks.1.ln1.hook_scale",
                                                          "blocks.1.ln1.hook_normalized", "ln_final.hook_scale"])
    torch.testing.assert_close(logits, fast, atol=1e-5, rtol=0)
    r = cache["blocks.1.hook_resid_pre"].double()
    want = (r.var(-1, unbiased=False, keepdim=True) + m.cfg.norm_eps).sqrt()            # from the definition
    assert cache["blocks.1.ln1.hook_scale"].shape == (2, 17, 1)
    torch.testing.assert_close(cache["blocks.1.ln1.hook_scale"].double(), want, atol=1e-6, rtol=1e-6)
    assert cache["ln_final.hook_scale"].shape == (2, 17, 1)
    # a hook that fixes the scale: the norm divides by what the hook returns
    ln = m.blocks[1].ln1
    with torch.no_grad():
        seen = {}
        m.run_with_hooks(x, fwd_hooks=[("blocks.1.ln1.hook_scale", lambda s, hook: torch.full_like(s, 2.0)),
                                       ("blocks.1.ln1.hook_normalized", lambda t, hook: seen.setdefault("n", t))])
    want = (r - r.mean(-1, keepdim=True)) / 2.0 * ln.weight.double() + ln.bias.double()
    torch.testing.assert_close(seen["n"].double(), want, atol=1e-5, rtol=0)


def test_norm_fast_path_is_unchanged_without_a_scale_hook(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, cache = m.run_with_cache(x, names_filter=["blocks.2.hook_resid_pre", "blocks.2.ln1.hook_normalized"])
    ln = m.blocks[2].ln1
    want = F.layer_norm(cache["blocks.2.hook_resid_pre"], (32,), ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(cache["blocks.2.ln1.hook_normalized"], want, atol=0, rtol=0)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_qkv_inputs_are_per_head_copies_and_each_head_can_get_its_own(which, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, layer_scale_init=0.3)
    x = torch.randn(2, 3, 32, 32)
    name = f"blocks.1.attn.hook_{which}_input"
    with torch.no_grad():
        fast, base = m.run_with_cache(x, names_filter=["blocks.1.ln1.hook_normalized", "blocks.1.attn.hook_q",
                                                       "blocks.1.attn.hook_k", "blocks.1.attn.hook_v"])
        logits, cache = m.run_with_cache(x, names_filter=[name, f"blocks.1.attn.hook_{which}"])
    torch.testing.assert_close(logits, fast, atol=1e-5, rtol=0)
    n = base["blocks.1.ln1.hook_normalized"]
    assert cache[name].shape == (2, 17, 4, 32)
    for h in range(4):
        torch.testing.assert_close(cache[name][:, :, h], n)
    # give head 2 another input: only head 2's q / k / v changes, to the linear map of that input
    new = torch.randn(2, 17, 32)

    def swap(t, hook):
        t = t.clone()
        t[:, :, 2] = new
        return t

    with torch.no_grad():
        got = {}
        m.run_with_hooks(x, fwd_hooks=[(name, swap),
                                       (f"blocks.1.attn.hook_{which}", lambda t, hook: got.setdefault("a", t))])
    i = "qkv".index(which)
    W = m.blocks[1].attn.qkv.weight[i * 32:(i + 1) * 32]
    b = m.blocks[1].attn.qkv.bias[i * 32:(i + 1) * 32]
    full = (new @ W.T + b).reshape(2, 17, 4, 8)
    before = base[f"blocks.1.attn.hook_{which}"]
    torch.testing.assert_close(got["a"][:, :, 2], full[:, :, 2], atol=1e-5, rtol=0)
    keep = [0, 1, 3]
    torch.testing.assert_close(got["a"][:, :, keep], before[:, :, keep], atol=1e-5, rtol=0)


def test_qkv_input_path_only_runs_when_hooked(tiny_cfg_kwargs, monkeypatch):
    m = _model(tiny_cfg_kwargs)
    calls = []
    original = Attention.split_qkv
    monkeypatch.setattr(Attention, "split_qkv", lambda self, x, b: calls.append(1) or original(self, x, b))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        m.run_with_cache(x, names_filter=["blocks.*.attn.hook_q", "blocks.*.hook_resid_post"])
        assert not calls
        m.run_with_cache(x, names_filter="blocks.3.attn.hook_v_input")
    assert len(calls) == 1


def test_qkv_inputs_with_beit_biases(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, qkv_bias=False, qv_bias=True, rel_pos_bias=True, pos_embed="none",
               global_pool="avg", fc_norm=True, final_norm=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast, c1 = m.run_with_cache(x, names_filter="blocks.*.attn.hook_k")
        split, c2 = m.run_with_cache(x, names_filter=["blocks.*.attn.hook_k", "blocks.*.attn.hook_k_input"])
    torch.testing.assert_close(split, fast, atol=1e-5, rtol=0)
    torch.testing.assert_close(c2["blocks.0.attn.hook_k"], c1["blocks.0.attn.hook_k"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_from_any_block_equals_the_full_forward(name, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, **VARIANTS[name])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, cache = m.run_with_cache(x, names_filter=["blocks.*.hook_resid_pre", "blocks.3.hook_resid_post"])
        for b in range(m.cfg.depth):
            torch.testing.assert_close(m.forward_from(cache[f"blocks.{b}.hook_resid_pre"], b), logits,
                                       atol=1e-5, rtol=0)
        torch.testing.assert_close(m.forward_from(cache["blocks.3.hook_resid_post"], 4), logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="block must be in"):
        m.forward_from(cache["blocks.0.hook_resid_pre"], 5)
