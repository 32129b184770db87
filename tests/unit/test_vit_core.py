"""HookedViT against a plain, independent forward written from the definitions in this file."""
import math

import pytest
import torch
import torch.nn.functional as F

from vitscope.models import ConfigError, HookedViT, ViTConfig

VARIANTS = {
    "plain": dict(),
    "registers_prefix": dict(num_registers=3),
    "late_tokens_seed004": dict(num_registers=4, register_location="end", register_block=1, cls_block=2),
    "deit_distilled": dict(distill_token=True, head="distilled"),
    "beit": dict(rel_pos_bias=True, qkv_bias=False, qv_bias=True, pos_embed="none", layer_scale_init=0.1,
                 global_pool="avg", fc_norm=True, final_norm=False),
    "clip": dict(pre_norm=True, act="quick_gelu", head="clip_proj", num_classes=16, patch_bias=False, norm_eps=1e-5),
    "mae_sincos": dict(pos_embed="sincos"),
    "dinov2_reg": dict(num_registers=4, pos_embed_prefix=False, layer_scale_init=1e-1),
    "gap_no_cls": dict(class_token=False, global_pool="avg", fc_norm=True, final_norm=False),
    # vilas2023's GAP model (timm vit_base_patch16_rpn_224): residual post-norm blocks, no CLS, no qkv bias
    "res_post_norm_gap": dict(res_post_norm=True, class_token=False, global_pool="avg", fc_norm=True,
                              final_norm=False, qkv_bias=False),
}


def _randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)


def reference_forward(m: HookedViT, x: torch.Tensor):
    """Independent loop-based ViT forward from the definitions (no hooks, no SDPA). Returns logits, streams."""
    c = m.cfg
    B = x.shape[0]
    p = c.patch_size
    rows, cols = x.shape[2] // p, x.shape[3] // p
    # patch embedding as an explicit matmul over unfolded patches
    patches = x.unfold(2, p, p).unfold(3, p, p)                      # B, C, rows, cols, p, p
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(B, rows * cols, -1)
    w = m.patch_embed.proj.weight.reshape(c.embed_dim, -1)
    t = patches @ w.T
    if m.patch_embed.proj.bias is not None:
        t = t + m.patch_embed.proj.bias
    n_pre = c.num_cls_tokens if c.pos_embed_prefix else 0
    if c.pos_embed != "none":
        t = t + m.pos_embed[:, n_pre:]
    prefix_pos = m.pos_embed[:, :n_pre] if (c.pos_embed != "none" and n_pre) else None

    def insert(t, i):
        if c.num_registers and c.register_block == i:
            reg = m.reg_token.expand(B, -1, -1)
            if c.register_location == "end":
                t = torch.cat([t, reg], 1)
            else:
                k = c.num_cls_tokens if i > c.cls_block else 0   # CLS of this block comes after
                t = torch.cat([t[:, :k], reg, t[:, k:]], 1)
        if c.num_cls_tokens and c.cls_block == i:
            pre = [m.cls_token] + ([m.dist_token] if c.distill_token else [])
            pre = torch.cat(pre, 1)
            if prefix_pos is not None:
                pre = pre + prefix_pos
            t = torch.cat([pre.expand(B, -1, -1), t], 1)
        return t

    def ln(mod, v):
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias

    act = {"gelu": lambda v: 0.5 * v * (1 + torch.erf(v / math.sqrt(2))),
           "quick_gelu": lambda v: v / (1 + torch.exp(-1.702 * v))}[c.act]
    t = insert(t, 0)
    if m.ln_pre is not None:
        t = ln(m.ln_pre, t)
    streams, patterns = [], []
    H, Dh = c.num_heads, c.head_dim
    for i, blk in enumerate(m.blocks):
        if i > 0:
            t = insert(t, i)
        T = t.shape[1]
        a = blk.attn
        post = c.res_post_norm                    # x + norm1(attn(x)), x + norm2(mlp(x))
        h = t if post else ln(blk.ln1, t)
        W = a.qkv.weight
        bias = a.qkv.bias if a.qkv.bias is not None else torch.zeros(3 * c.embed_dim)
        if c.qv_bias:
            bias = torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
        q, k, v = (h @ W.T + bias).split(c.embed_dim, -1)
        out = torch.zeros(B, T, c.embed_dim)
        pat = torch.zeros(B, H, T, T)
        for hh in range(H):
            sl = slice(hh * Dh, (hh + 1) * Dh)
            s = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(Dh)
            if c.rel_pos_bias:
                s = s + a.relative_position_bias_table[a.relative_position_index.reshape(-1), hh].reshape(T, T)
            pr = torch.exp(s - s.max(-1, keepdim=True).values)
            pr = pr / pr.sum(-1, keepdim=True)
            pat[:, hh] = pr
            out[..., sl] = pr @ v[..., sl]
        ao = out @ a.proj.weight.T + a.proj.bias
        if c.layer_scale_init:
            ao = ao * blk.ls1.gamma
        if post:
            ao = ln(blk.ln1, ao)
        t = t + ao
        h = t if post else ln(blk.ln2, t)
        mo = act(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
        if c.layer_scale_init:
            mo = mo * blk.ls2.gamma
        if post:
            mo = ln(blk.ln2, mo)
        t = t + mo
        streams.append(t)
        patterns.append(pat)
    if m.ln_final is not None:
        t = ln(m.ln_final, t)
    lay = m.token_layout(c.depth)
    pooled = t[:, 0] if c.global_pool == "token" else t[:, lay.patches].mean(1)
    if m.fc_norm is not None:
        pooled = ln(m.fc_norm, pooled)
    logits = pooled @ m.head.weight.T + (m.head.bias if m.head.bias is not None else 0)
    if c.head == "distilled":
        logits = (logits + t[:, 1] @ m.head_dist.weight.T + m.head_dist.bias) / 2
    return logits, streams, patterns


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matches_reference_forward(name, tiny_cfg_kwargs):
    kw = {**tiny_cfg_kwargs, **VARIANTS[name]}
    m = HookedViT(ViTConfig(**kw)).eval()
    _randomise(m)
    x = torch.randn(2, 3, 32, 32)
    ref_logits, ref_streams, ref_patterns = reference_forward(m, x)
    with torch.no_grad():
        logits, cache = m.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_resid_post", "hook_pattern")))
    assert (logits - ref_logits).abs().max() <= 1e-4
    for i in range(m.cfg.depth):
        assert (cache[f"blocks.{i}.hook_resid_post"] - ref_streams[i]).abs().max() <= 1e-4
        assert (cache[f"blocks.{i}.attn.hook_pattern"] - ref_patterns[i]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_sdpa_and_explicit_paths_agree(name, tiny_cfg_kwargs):
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **VARIANTS[name]})).eval()
    _randomise(m)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        m.set_attention_impl("sdpa")
        fast, c1 = m.run_with_cache(x, names_filter="*hook_resid_post")
        m.set_attention_impl("explicit")
        slow, c2 = m.run_with_cache(x, names_filter="*hook_resid_post")
    assert (fast - slow).abs().max() <= 1e-5
    for k in c1:
        assert (c1[k] - c2[k]).abs().max() <= 1e-5


def test_token_layout_matches_sequence(tiny_cfg_kwargs):
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **VARIANTS["late_tokens_seed004"]})).eval()
    x = torch.randn(1, 3, 32, 32)
    _, cache = m.run_with_cache(x, names_filter="*hook_resid_pre")
    for i in range(m.cfg.depth):
        lay = m.token_layout(i)
        assert cache[f"blocks.{i}.hook_resid_pre"].shape[1] == lay.n_tokens
    assert m.token_layout(0).cls is None and m.token_layout(0).registers == ()
    assert m.token_layout(1).registers == (16, 17, 18, 19) and m.token_layout(1).cls is None
    lay = m.token_layout(2)
    assert lay.cls == 0 and lay.patches == slice(1, 17) and lay.registers == (17, 18, 19, 20)
    # the register tokens really are the learned register vectors at the block where they enter
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"][0, 16:], m.reg_token[0].detach())
    with pytest.raises(ValueError, match="no CLS token at block 1"):
        m.token_layout(1).index_of("cls")


def test_other_input_size_interpolates_pos_embed(tiny_cfg_kwargs):
    m = HookedViT(ViTConfig(**tiny_cfg_kwargs)).eval()
    y = m(torch.randn(1, 3, 48, 64))
    assert y.shape == (1, 10)
    _, cache = m.run_with_cache(torch.randn(1, 3, 48, 64), names_filter="hook_pos_embed")
    assert cache["hook_pos_embed"].shape == (1, 6 * 8, 32)
    # bicubic resampling of the grid, as timm does
    grid = m.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(6, 8), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(cache["hook_pos_embed"], ref.permute(0, 2, 3, 1).reshape(1, 48, 32))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        m(torch.randn(1, 3, 30, 32))


def test_stop_at_returns_stream_entering_block(tiny_cfg_kwargs):
    m = HookedViT(ViTConfig(**tiny_cfg_kwargs)).eval()
    x = torch.randn(2, 3, 32, 32)
    _, cache = m.run_with_cache(x, names_filter="blocks.2.hook_resid_pre")
    torch.testing.assert_close(m(x, stop_at=2), cache["blocks.2.hook_resid_pre"])


@pytest.mark.parametrize("bad, match", [
    (dict(embed_dim=30), "not divisible by num_heads"),
    (dict(img_size=30), "not a multiple of patch_size"),
    (dict(cls_block=9), "cls_block=9"),
    (dict(head="distilled"), "needs distill_token"),
    (dict(class_token=False), "global_pool='token'"),
    (dict(qv_bias=True), "exclude each other"),
    (dict(rel_pos_bias=True, num_registers=2), "rel_pos_bias"),
    (dict(act="relu"), "act='relu'"),
    (dict(res_post_norm=True, layer_scale_init=0.1), "no LayerScale"),
])
def test_config_errors_are_clear(bad, match, tiny_cfg_kwargs):
    with pytest.raises(ConfigError, match=match):
        ViTConfig(**{**tiny_cfg_kwargs, **bad})


def test_config_roundtrip(tmp_path, tiny_cfg_kwargs):
    cfg = ViTConfig(**{**tiny_cfg_kwargs, **VARIANTS["late_tokens_seed004"]})
    cfg.save(tmp_path / "c.json")
    assert ViTConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="unknown ViTConfig field"):
        ViTConfig.from_dict({**cfg.to_dict(), "depht": 3})


@pytest.mark.parametrize("name", ["registers_prefix", "dinov2_reg", "late_tokens_seed004"])
def test_registers_sit_where_the_layout_says(name, tiny_cfg_kwargs):
    # independent of the reference forward: the learned register vectors must appear verbatim at the
    # indices token_layout gives, at the block where they enter
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **VARIANTS[name]})).eval()
    b = m.cfg.register_block
    _, cache = m.run_with_cache(torch.randn(2, 3, 32, 32), names_filter=f"blocks.{b}.hook_resid_pre")
    lay = m.token_layout(b)
    regs = cache[f"blocks.{b}.hook_resid_pre"][:, list(lay.registers)]
    torch.testing.assert_close(regs, m.reg_token.detach().expand(2, -1, -1))
