"""Per-head direct logit attribution against a slow loop, and the lens logit as the sum of every part's share."""
import math

import numpy as np
import pytest
import torch

from vitscope.analysis.class_embedding.attribution import head_logit_attribution
from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings
from vitscope.models import HookedViT, ViTConfig


def _model(tiny_cfg_kwargs, **kw) -> HookedViT:
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


@torch.no_grad()
def _slow_dla(m, x, target):
    """From the definitions, token by token: head h's output at token t is z[t, h] times its columns of proj (and
    LayerScale); the final norm at t, its scale frozen, maps it to gamma * (v - mean v) / sigma_t; the share of
    class y is that dotted with the class row. Tokens are matched to the output by what they are (CLS, register
    k, patch n)."""
    depth, H, Dh = m.cfg.depth, m.cfg.num_heads, m.cfg.head_dim
    with torch.no_grad():
        _, cache = m.run_with_cache(x, names_filter=lambda n: n.endswith("attn.hook_z")
                                    or n == f"blocks.{depth - 1}.hook_resid_post")
    final = cache[f"blocks.{depth - 1}.hook_resid_post"]
    ln = m.fc_norm if m.fc_norm is not None else m.ln_final
    out_lay = m.token_layout(depth)
    res = np.full((x.shape[0], depth, H, final.shape[1]), np.nan)
    for b, blk in enumerate(m.blocks):
        lay = m.token_layout(b)
        where = {}
        if lay.cls is not None:
            where[lay.cls] = out_lay.cls
        for k, r in enumerate(lay.registers):
            where[r] = out_lay.registers[k]
        for n in range(lay.n_patches):
            where[lay.patches.start + n] = out_lay.patches.start + n
        z = cache[f"blocks.{b}.attn.hook_z"]
        W = blk.attn.proj.weight
        for i in range(x.shape[0]):
            y = int(target[i])
            for t_in, t_out in where.items():
                f = final[i, t_out]
                mu = f.mean()
                sigma = math.sqrt(float(((f - mu) ** 2).mean()) + ln.eps)
                for h in range(H):
                    v = z[i, t_in, h] @ W[:, h * Dh:(h + 1) * Dh].T
                    if m.cfg.layer_scale_init:
                        v = v * blk.ls1.gamma
                    normed = ln.weight * (v - v.mean()) / sigma
                    res[i, b, h, t_out] = float(normed @ m.head.weight[y])
    return res


@pytest.mark.parametrize("kw", [dict(layer_scale_init=0.5),
                                dict(num_registers=2, register_location="end", register_block=1, cls_block=2)])
def test_matches_a_slow_loop(kw, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, **kw)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 7])
    got = head_logit_attribution(m, x, target)
    want = _slow_dla(m, x, target)
    assert got.shape == want.shape == (2, m.cfg.depth, m.cfg.num_heads, m.token_layout(m.cfg.depth).n_tokens)
    np.testing.assert_array_equal(np.isnan(got.numpy()), np.isnan(want))     # late tokens are absent early
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4, equal_nan=True)
    sub = head_logit_attribution(m, x, target, blocks=[-1, 0])
    np.testing.assert_allclose(sub.numpy(), got.numpy()[:, [m.cfg.depth - 1, 0]], atol=1e-6, equal_nan=True)


def test_parts_sum_to_the_lens_logit(tiny_cfg_kwargs):
    """Embeddings + every head + every projection bias + every MLP output, each through the frozen final norm,
    plus beta . w_y + b_y, is the lens logit of the true class at every token (the model's own head)."""
    m = _model(tiny_cfg_kwargs, layer_scale_init=0.5)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 5, 9])
    heads = head_logit_attribution(m, x, target).sum(dim=(1, 2))               # B, T
    depth = m.cfg.depth
    with torch.no_grad():
        _, cache = m.run_with_cache(x)
        final = cache[f"blocks.{depth - 1}.hook_resid_post"]
        lens = m.project_to_logits(final).gather(-1, target[:, None, None].expand(-1, final.shape[1], 1))[..., 0]
        ln, w = m.ln_final, m.head.weight[target]                                 # B, D
        sigma = (final.var(-1, unbiased=False) + ln.eps).sqrt()                  # B, T

        def share(v):                                                           # B, T, D -> B, T
            return ((v - v.mean(-1, keepdim=True)) * ln.weight * w[:, None]).sum(-1) / sigma

        rest = share(cache["hook_full_embed"])
        for b, blk in enumerate(m.blocks):
            rest = rest + share((blk.attn.proj.bias * blk.ls1.gamma).expand_as(final))
            rest = rest + share(cache[f"blocks.{b}.hook_mlp_out"])
        const = w @ ln.bias + m.head.bias[target]                                 # B
    torch.testing.assert_close(heads + rest + const[:, None], lens, atol=1e-4, rtol=0)


def test_headless_model_needs_class_embeddings(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, head="none", num_classes=0)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="no classification head"):
        head_logit_attribution(m, x, torch.tensor([0]))
    emb = ClassEmbeddings(torch.randn(4, 32))
    assert head_logit_attribution(m, x, torch.tensor([2]), embeddings=emb).shape == (1, 4, 4, 17)
    with pytest.raises(ValueError, match="outside the 4 classes"):
        head_logit_attribution(m, x, torch.tensor([4]), embeddings=emb)


def test_post_norm_blocks_are_refused(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, res_post_norm=True, class_token=False, global_pool="avg", fc_norm=True,
               final_norm=False)
    with pytest.raises(ValueError, match="post-norm"):
        head_logit_attribution(m, torch.randn(1, 3, 32, 32), torch.tensor([0]))


def test_table_and_figure(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, num_registers=2, register_location="end", register_block=1, cls_block=2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    dla = head_logit_attribution(m, x, torch.tensor([1, 2, 3]))
    from vitscope.analysis.class_embedding.attribution import attribution_table
    from vitscope.viz.logit_attribution import plot_head_attribution

    rows = attribution_table(dla, m, model_name="tiny")
    got = {(r["block"], r["head"], r["tokens"]): r["value"] for r in rows}
    d = dla.numpy()
    lay = m.token_layout(m.cfg.depth)
    for b in range(m.cfg.depth):
        for h in range(m.cfg.num_heads):
            patches = d[:, b, h, lay.patches]
            assert got[(b, h, "patches")] == pytest.approx(float(patches.mean()), abs=1e-6)
            regs = d[:, b, h, list(lay.registers)]
            if b < m.cfg.register_block:                       # registers not there yet: no value
                assert math.isnan(got[(b, h, "registers")])
            else:
                assert got[(b, h, "registers")] == pytest.approx(float(regs.mean()), abs=1e-6)
    fig = plot_head_attribution(rows, tokens="all", title="tiny")
    assert len(fig.axes) == 4                                  # CLS, patches, registers + the colour bar
    with pytest.raises(ValueError, match="no rows for tokens"):
        plot_head_attribution(rows, tokens="dist")


def test_parts_sum_to_the_lens_logit_of_an_l2_head(tiny_cfg_kwargs):
    """A head on L2-normalised final-norm features (the probe's recipe) on a headless model: with the norm's scale
    and the feature length frozen at the final stream, the parts sum to W_y . unit(LN(h)) + b_y at every token."""
    m = _model(tiny_cfg_kwargs, head="none", num_classes=0)
    g = torch.Generator().manual_seed(3)
    W, bias = torch.randn(6, 32, generator=g), torch.randn(6, generator=g)
    emb = ClassEmbeddings.from_linear_head(W, bias, l2_normalize=True)
    x = torch.randn(2, 3, 32, 32, generator=g)
    target = torch.tensor([1, 4])
    heads = head_logit_attribution(m, x, target, embeddings=emb).sum(dim=(1, 2))   # B, T
    depth = m.cfg.depth
    with torch.no_grad():
        _, cache = m.run_with_cache(x)
        final = cache[f"blocks.{depth - 1}.hook_resid_post"]
        ln, w = m.ln_final, W[target]                                             # B, D
        z = torch.nn.functional.layer_norm(final, (32,), ln.weight, ln.bias, ln.eps)
        length = z.norm(dim=-1)                                                    # B, T
        lens = (z / length[..., None] * w[:, None]).sum(-1) + bias[target][:, None]
        sigma = (final.var(-1, unbiased=False) + ln.eps).sqrt() * length

        def share(v):
            return ((v - v.mean(-1, keepdim=True)) * ln.weight * w[:, None]).sum(-1) / sigma

        rest = share(cache["hook_full_embed"])
        for b, blk in enumerate(m.blocks):
            rest = rest + share(blk.attn.proj.bias.expand_as(final))
            rest = rest + share(cache[f"blocks.{b}.hook_mlp_out"])
        const = (w @ ln.bias)[:, None] / length + bias[target][:, None]
    torch.testing.assert_close(heads + rest + const, lens, atol=1e-4, rtol=0)
