"""HookedViT's modern parts: the attention pool against torch's MultiheadAttention, the hooks of rotary
embeddings, gated MLPs and the pool, the fast path, and the logit lens through the pool."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitscope.models.config import ConfigError, ViTConfig
from vitscope.models.vit import HookedViT

BASE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=7)


def _model(**kw) -> HookedViT:
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**BASE, **kw})).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():                   # away from the init's zero biases / unit norms
            p.add_(0.2 * torch.randn_like(p))
    return m


def test_attention_pool_matches_torch_multihead_attention():
    """SigLIP's head is nn.MultiheadAttention(probe, x, x), then x + mlp(norm(x)): the same numbers here."""
    m = _model(class_token=False, global_pool="map", map_heads=2, act="gelu_tanh")
    pool, D = m.attn_pool, 32
    mha = torch.nn.MultiheadAttention(D, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([pool.q.weight, pool.kv.weight]))
        mha.in_proj_bias.copy_(torch.cat([pool.q.bias, pool.kv.bias]))
        mha.out_proj.weight.copy_(pool.proj.weight)
        mha.out_proj.bias.copy_(pool.proj.bias)
    x = torch.randn(3, 11, D)
    with torch.no_grad():
        ref, weights = mha(pool.latent.expand(3, -1, -1), x, x)                         # B, 1, D; B, 1, T
        ref = ref + pool.mlp.fc2(F.gelu(pool.mlp.fc1(F.layer_norm(ref, (D,), pool.norm.weight, pool.norm.bias,
                                                                     1e-6)), approximate="tanh"))
        got = pool(x)
        _, cache = m.run_with_cache(torch.randn(3, 3, 32, 32), names_filter="attn_pool.hook_pattern")
    torch.testing.assert_close(got, ref[:, 0], atol=1e-5, rtol=0)
    assert cache["attn_pool.hook_pattern"].shape == (3, 2, 1, 16)                      # B, H, 1, T
    with torch.no_grad():
        with m.hooks([("attn_pool.hook_pattern", lambda t, hook: None)]):
            torch.testing.assert_close(pool(x), got, atol=1e-5, rtol=0)                # explicit = SDPA path
        _, w = mha(pool.latent.expand(3, -1, -1), x, x, average_attn_weights=False)
        p2 = []
        with m.hooks([("attn_pool.hook_pattern", lambda t, hook: p2.append(t))]):
            pool(x)
    torch.testing.assert_close(p2[0], w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kw", [dict(class_token=False, global_pool="map"),
                                dict(global_pool="map", map_tokens="all", pre_norm=True, rope="axial"),
                                dict(class_token=False, global_pool="map", map_q_proj=False, map_mlp=False,
                                     norm="rmsnorm")])
def test_logit_lens_through_the_pool_reproduces_uniform_tokens(kw):
    """When every final token is the same vector, the pool's output is that vector pooled alone, so the logit
    lens of that vector equals the model's logits."""
    m = _model(**kw)
    v = torch.randn(2, 1, 32)
    T = m.token_layout(2).n_tokens
    tokens = v.expand(-1, T, -1)
    with torch.no_grad():
        logits = m.forward_head(m.ln_final(tokens) if m.ln_final is not None else tokens)
        lens = m.project_to_logits(v[:, 0])
    torch.testing.assert_close(lens, logits, atol=1e-5, rtol=0)


def test_rotary_hooks_and_the_fast_path(monkeypatch):
    m = _model(rope="dinov3", rope_layout="half", rope_theta=100.0, num_registers=2, gated_mlp=True, act="silu",
               mlp_norm=True, qk_norm=True)
    x = torch.randn(2, 3, 32, 40)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        fast = m(x)
        assert len(calls) == 2                                                          # SDPA in every block
        _, cache = m.run_with_cache(x, names_filter=lambda n: "blocks.0" in n)
    assert len(calls) == 3                                    # block 0's pattern is hooked: explicit there only
    T, N = 3 + 20, 20
    assert cache["blocks.0.attn.hook_rot_q"].shape == (2, T, 4, 8)
    assert cache["blocks.0.mlp.hook_pre"].shape == cache["blocks.0.mlp.hook_pre_linear"].shape == (2, T, 128)
    assert cache["blocks.0.mlp.norm.hook_normalized"].shape == (2, T, 128)
    # the q-norm sits between hook_q and the rotation: prefix tokens equal the normalised queries
    torch.testing.assert_close(cache["blocks.0.attn.hook_rot_q"][:, :3],
                               cache["blocks.0.attn.q_norm.hook_normalized"][:, :3])
    with torch.no_grad():
        torch.testing.assert_close(m.run_with_cache(x)[0], fast, atol=1e-5, rtol=0)
    assert T - N == 3


def test_head_results_sum_to_the_attention_output_with_an_output_norm():
    m = _model(attn_out_norm=True, layer_scale_init=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, cache = m.run_with_cache(x, names_filter=lambda n: n.startswith("blocks.1.") and
                                    n.endswith(("hook_result", "hook_resid_pre", "hook_resid_mid")))
    blk = m.blocks[1]
    attn = (cache["blocks.1.attn.hook_result"].sum(dim=2) + blk.attn.proj.bias) * blk.ls1.gamma
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"] + attn, cache["blocks.1.hook_resid_mid"],
                               atol=1e-5, rtol=0)


def test_modern_fields_are_validated_and_round_trip():
    for kw, msg in [(dict(global_pool="map", map_heads=5), "map_heads"),
                    (dict(global_pool="map", distill_token=True, head="distilled"), "attention pool"),
                    (dict(norm="batchnorm"), "norm='batchnorm'"),
                    (dict(class_token=False), "global_pool='avg' or 'map'")]:
        with pytest.raises(ConfigError, match=msg):
            ViTConfig(**{**BASE, **kw})
    cfg = ViTConfig(**BASE, rope="axial", rope_ref_grid=16, global_pool="map", map_tokens="all", gated_mlp=True)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg and cfg.rope_ref_grid == (16, 16)


def test_rotary_tables_made_under_inference_mode_serve_autograd_later():
    """The tables are cached; the first forward may run in inference_mode, a later one needs gradients
    (relevance maps, saliency)."""
    m = _model(rope="axial", rope_ref_grid=(16, 16))
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        m(x)
    x.requires_grad_(True)
    m(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
