import pytest
import torch

from vitscope.hooks.interventions import ablate_heads, attention_perturbation, drop_patches, kept_patches
from vitscope.models import HookedViT, ViTConfig


@pytest.fixture
def model(tiny_cfg_kwargs):
    torch.manual_seed(0)
    return HookedViT(ViTConfig(**tiny_cfg_kwargs)).eval()


def _patterns(model, x, hooks):
    cache = {}
    with model.hooks(hooks):
        _, cache = model.run_with_cache(x, names_filter="*hook_pattern")
    return cache


def test_self_only_makes_patch_rows_one_hot(model):
    x = torch.randn(2, 3, 32, 32)
    base = _patterns(model, x, [])
    cache = _patterns(model, x, attention_perturbation(model, "self_only", blocks=[1]))
    p = cache["blocks.1.attn.hook_pattern"]
    for q in range(1, 17):                      # patch queries (CLS at 0)
        expect = torch.zeros(17)
        expect[q] = 1
        assert torch.equal(p[:, :, q], expect.expand(2, 4, 17))
    torch.testing.assert_close(p[:, :, 0], base["blocks.1.attn.hook_pattern"][:, :, 0])   # CLS query untouched
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], base["blocks.0.attn.hook_pattern"])


def test_self_only_equals_a_model_without_token_mixing(model):
    # with self_only in every block, a patch token's stream only depends on itself: changing other
    # patches of the image must not change it
    x = torch.randn(1, 3, 32, 32)
    x2 = x.clone()
    x2[..., 8:, :] = torch.randn_like(x2[..., 8:, :])      # change every patch but the first row
    hooks = attention_perturbation(model, "self_only")
    with model.hooks(hooks):
        _, c1 = model.run_with_cache(x, names_filter="blocks.3.hook_resid_post")
        _, c2 = model.run_with_cache(x2, names_filter="blocks.3.hook_resid_post")
    torch.testing.assert_close(c1["blocks.3.hook_resid_post"][:, 1:5], c2["blocks.3.hook_resid_post"][:, 1:5])


@pytest.mark.parametrize("kind", ["no_cls", "no_cls_renorm"])
def test_no_cls(model, kind):
    x = torch.randn(2, 3, 32, 32)
    base = _patterns(model, x, [])["blocks.2.attn.hook_pattern"]
    p = _patterns(model, x, attention_perturbation(model, kind, blocks=[2]))["blocks.2.attn.hook_pattern"]
    assert torch.all(p[:, :, 1:, 0] == 0)
    expect = base.clone()
    expect[:, :, 1:, 0] = 0
    if kind == "no_cls_renorm":
        expect[:, :, 1:] = expect[:, :, 1:] / expect[:, :, 1:].sum(-1, keepdim=True)
        torch.testing.assert_close(p[:, :, 1:].sum(-1), torch.ones(2, 4, 16))
    torch.testing.assert_close(p, expect)


def test_perturbation_with_late_cls_skips_blocks_without_cls(tiny_cfg_kwargs):
    m = HookedViT(ViTConfig(**tiny_cfg_kwargs, cls_block=2)).eval()
    x = torch.randn(1, 3, 32, 32)
    base = _patterns(m, x, [])
    p = _patterns(m, x, attention_perturbation(m, "no_cls"))
    torch.testing.assert_close(p["blocks.0.attn.hook_pattern"], base["blocks.0.attn.hook_pattern"])
    assert torch.all(p["blocks.2.attn.hook_pattern"][:, :, 1:, 0] == 0)


def test_drop_patches_equals_running_on_the_kept_tokens(model):
    x = torch.randn(2, 3, 32, 32)
    drop = [0, 5, 6, 15]
    logits = model.run_with_hooks(x, fwd_hooks=drop_patches(model, drop))
    # reference: build the token sequence by hand and run the blocks
    keep = kept_patches(drop, 16)
    assert keep.tolist() == [i for i in range(16) if i not in drop]
    with torch.no_grad():
        emb = model.patch_embed.proj(x).flatten(2).transpose(1, 2) + model.pos_embed[:, 1:]
        t = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1), emb[:, keep]], 1)
        for blk in model.blocks:
            t = blk(t)
        ref = model.head(model.ln_final(t)[:, 0])
    torch.testing.assert_close(logits, ref)
    with pytest.raises(ValueError, match="same number of patches"):
        m = torch.zeros(2, 16, dtype=torch.bool)
        m[0, 0] = True
        model.run_with_hooks(x, fwd_hooks=drop_patches(model, m))


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablate_heads(model, mode):
    x = torch.randn(3, 3, 32, 32)
    hooks = ablate_heads(model, {1: [2]}, mode=mode)
    with model.hooks(hooks):
        _, cache = model.run_with_cache(x, names_filter=["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"])
    _, base = model.run_with_cache(x, names_filter="blocks.1.attn.hook_z")
    z, z0 = cache["blocks.1.attn.hook_z"], base["blocks.1.attn.hook_z"]
    torch.testing.assert_close(z[:, :, [0, 1, 3]], z0[:, :, [0, 1, 3]])
    expect = torch.zeros_like(z0[:, :, 2]) if mode == "zero" else z0[:, :, 2].mean((0, 1)).expand_as(z0[:, :, 2])
    torch.testing.assert_close(z[:, :, 2], expect)
    # the attention output is the projection of the edited z
    attn = model.blocks[1].attn
    torch.testing.assert_close(cache["blocks.1.hook_attn_out"], attn.proj(z.reshape(3, 17, 32)))
    with pytest.raises(ValueError, match="out of range"):
        ablate_heads(model, {1: [7]})
