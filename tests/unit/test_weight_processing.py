"""Weight processing on load (fold_ln, center_writing_weights, fold_value_biases): the logits do not move (1e-5),
and each step does what it says to the weights and activations."""
import pytest
import torch

from vitscope.models import HookedViT, ViTConfig
from vitscope.models.processing import center_writing_weights, fold_layer_norm, fold_value_biases, process_weights

VARIANTS = {
    "plain": dict(),
    "layer_scale_registers": dict(num_registers=2, pos_embed_prefix=False, layer_scale_init=0.3),
    "late_cls_registers_end": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
    "distilled": dict(distill_token=True, head="distilled"),
    "avg_pool_fc_norm": dict(class_token=False, global_pool="avg", fc_norm=True, final_norm=False,
                             pos_embed_prefix=False),
    "beit": dict(qkv_bias=False, qv_bias=True, rel_pos_bias=True, pos_embed="none", layer_scale_init=0.1,
                 global_pool="avg", fc_norm=True, final_norm=False),
    "sincos": dict(pos_embed="sincos"),
}
STEPS = {"fold_ln": dict(fold_ln=True), "center": dict(center_writing_weights=True),
         "fold_value_biases": dict(fold_value_biases=True),
         "all": dict(fold_ln=True, center_writing_weights=True, fold_value_biases=True)}


def _model(tiny_cfg_kwargs, **kw) -> HookedViT:
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_logits_do_not_move(name, step, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, **VARIANTS[name])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = m(x)
        process_weights(m, **STEPS[step])
        after = m(x)
        other = m(torch.randn(1, 3, 40, 40)) if not m.cfg.rel_pos_bias else None     # another grid too
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert other is None or torch.isfinite(other).all()
    assert m.meta["processing"] == [k for k in ("fold_ln", "center_writing_weights", "fold_value_biases")
                                    if STEPS[step].get(k)]


def test_fold_ln_leaves_bare_norms_and_keeps_the_stream(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, layer_scale_init=0.3)
    x = torch.randn(2, 3, 32, 32)
    names = ["blocks.*.hook_resid_post", "blocks.2.ln1.hook_normalized"]
    with torch.no_grad():
        _, c0 = m.run_with_cache(x, names_filter=names)
        folded = fold_layer_norm(m)
        _, c1 = m.run_with_cache(x, names_filter=names)
    assert folded == [f"blocks.{i}.ln{j}" for i in range(4) for j in (1, 2)] + ["ln_final"]
    for blk in m.blocks:
        for ln in (blk.ln1, blk.ln2):
            assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and not ln.bias.any()
    for i in range(4):                                    # the residual stream is exactly what it was (to rounding)
        torch.testing.assert_close(c1[f"blocks.{i}.hook_resid_post"], c0[f"blocks.{i}.hook_resid_post"],
                                   atol=1e-5, rtol=0)
    n = c1["blocks.2.ln1.hook_normalized"]              # the norm now only centres and scales
    torch.testing.assert_close(n.mean(-1), torch.zeros_like(n.mean(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.pow(2).mean(-1), torch.ones_like(n.mean(-1)), atol=1e-3, rtol=0)


def test_centred_writes_give_a_centred_stream(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, layer_scale_init=0.3, num_registers=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        center_writing_weights(m)
        _, cache = m.run_with_cache(x, names_filter=["blocks.*.hook_resid_pre", "blocks.*.hook_attn_out",
                                                     "blocks.*.hook_mlp_out"])
    for name, t in cache.items():
        torch.testing.assert_close(t.mean(-1), torch.zeros_like(t.mean(-1)), atol=1e-5, rtol=0, msg=name)
    assert all(torch.equal(b.ls1.gamma, torch.ones_like(b.ls1.gamma)) for b in m.blocks)


def test_value_biases_move_into_the_output_bias(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, c0 = m.run_with_cache(x, names_filter=["blocks.1.hook_attn_out", "blocks.1.attn.hook_v"])
        b_v = m.blocks[1].attn.qkv.bias[64:].clone()
        fold_value_biases(m)
        _, c1 = m.run_with_cache(x, names_filter=["blocks.1.hook_attn_out", "blocks.1.attn.hook_v"])
    assert not m.blocks[1].attn.qkv.bias[64:].any()
    torch.testing.assert_close(c1["blocks.1.attn.hook_v"], c0["blocks.1.attn.hook_v"] - b_v.reshape(4, 8),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(c1["blocks.1.hook_attn_out"], c0["blocks.1.hook_attn_out"], atol=1e-5, rtol=0)


def test_clip_style_models_fold_what_can_be_folded(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, pre_norm=True, patch_bias=False, head="clip_proj")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = m(x)
        folded = fold_layer_norm(m)
        fold_value_biases(m)
        torch.testing.assert_close(m(x), before, atol=1e-5, rtol=0)
    assert "ln_final" not in folded                      # the projection has no bias to take the shift
    with pytest.raises(ValueError, match="ln_pre writes"):
        center_writing_weights(m)


def test_post_norm_blocks_refuse_with_one_line(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, res_post_norm=True, class_token=False, global_pool="avg", fc_norm=True,
               final_norm=False, pos_embed_prefix=False)
    for fn in (fold_layer_norm, center_writing_weights):
        with pytest.raises(ValueError, match="post-norm") as e:
            fn(m)
        assert "\n" not in str(e.value)


def test_load_model_applies_the_named_options():
    from vitscope.models.loading import load_model

    x = torch.randn(2, 3, 64, 64)
    plain = load_model("demo-vit")
    done = load_model("demo-vit", fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    with torch.no_grad():
        torch.testing.assert_close(done(x), plain(x), atol=1e-5, rtol=0)
    assert done.meta["processing"] == ["fold_ln", "center_writing_weights", "fold_value_biases"]
    assert "processing" not in plain.meta
    assert torch.equal(done.blocks[0].ln1.weight, torch.ones(64))
