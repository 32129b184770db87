"""``blocks.{i}.attn.hook_result``: each head's output through its slice of the output projection."""
import pytest
import torch

from vitscope.models import HookedViT, ViTConfig
from vitscope.models.vit import Attention

VARIANTS = {
    "plain": dict(),
    "layer_scale_registers": dict(num_registers=2, pos_embed_prefix=False, layer_scale_init=0.3),
    "late_cls_seed004": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
    "distilled": dict(distill_token=True, head="distilled"),
}


def _model(tiny_cfg_kwargs, **kw) -> HookedViT:
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_resid_post_is_the_sum_of_its_parts(name, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, **VARIANTS[name])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, cache = m.run_with_cache(x)
    H, Dh = m.cfg.num_heads, m.cfg.head_dim
    for i, blk in enumerate(m.blocks):
        b = f"blocks.{i}."
        result, z = cache[b + "attn.hook_result"], cache[b + "attn.hook_z"]
        B, T = z.shape[:2]
        assert result.shape == (B, T, H, m.cfg.embed_dim)
        # each head from its own columns of proj, by a loop over heads
        W = blk.attn.proj.weight
        for h in range(H):
            want = z[:, :, h] @ W[:, h * Dh:(h + 1) * Dh].T
            torch.testing.assert_close(result[:, :, h], want, atol=1e-5, rtol=0)
        gamma = blk.ls1.gamma if m.cfg.layer_scale_init else 1.0
        parts = cache[b + "hook_resid_pre"] + gamma * (result.sum(2) + blk.attn.proj.bias) + cache[b + "hook_mlp_out"]
        torch.testing.assert_close(cache[b + "hook_resid_post"], parts, atol=1e-5, rtol=0)


def test_post_norm_block_parts(tiny_cfg_kwargs):
    """Residual post-norm: the heads sum to the attention output before the norm that follows it."""
    m = _model(tiny_cfg_kwargs, res_post_norm=True, class_token=False, global_pool="avg", fc_norm=True,
               final_norm=False)
    with torch.no_grad():
        _, cache = m.run_with_cache(torch.randn(2, 3, 32, 32))
    blk = m.blocks[1]
    attn = cache["blocks.1.attn.hook_result"].sum(2) + blk.attn.proj.bias
    torch.testing.assert_close(cache["blocks.1.hook_attn_out"], blk.ln1(attn), atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["blocks.1.hook_attn_out"], cache["blocks.1.ln1.hook_normalized"])


def test_fast_path_is_unchanged_and_never_computes_results(tiny_cfg_kwargs, monkeypatch):
    import torch.nn.functional as F

    m = _model(tiny_cfg_kwargs, layer_scale_init=0.3)
    m.set_linear_impl("torch")
    x = torch.randn(2, 3, 32, 32)
    calls = []
    original = Attention.head_results
    monkeypatch.setattr(Attention, "head_results", lambda self, z: calls.append(1) or original(self, z))
    with torch.no_grad():
        fast, cache = m.run_with_cache(x, names_filter=["blocks.*.attn.hook_z", "blocks.*.hook_attn_out"])
        assert not calls                                              # nothing attached to hook_result
        for i, blk in enumerate(m.blocks):                            # the attention output is the plain projection
            z = cache[f"blocks.{i}.attn.hook_z"]
            want = blk.ls1.gamma * F.linear(z.reshape(*z.shape[:2], -1), blk.attn.proj.weight, blk.attn.proj.bias)
            torch.testing.assert_close(cache[f"blocks.{i}.hook_attn_out"], want, atol=0, rtol=0)
        with_result, _ = m.run_with_cache(x, names_filter="blocks.*.attn.hook_result")
    assert len(calls) == m.cfg.depth
    torch.testing.assert_close(with_result, fast, atol=1e-5, rtol=0)


def test_replacing_result_flows_into_the_output(tiny_cfg_kwargs):
    """Zeroing head 1's result equals zeroing its weighted values (hook_z): the hook can ablate a head."""
    m = _model(tiny_cfg_kwargs)
    x = torch.randn(2, 3, 32, 32)

    def zero_head(t, hook):
        t = t.clone()
        t[:, :, 1] = 0
        return t

    with torch.no_grad():
        a = m.run_with_hooks(x, fwd_hooks=[("blocks.2.attn.hook_result", zero_head)])
        b = m.run_with_hooks(x, fwd_hooks=[("blocks.2.attn.hook_z", zero_head)])
        assert (a - m(x)).abs().max() > 1e-4
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
