import pytest
import torch

from vitscope.models import HookedViT, ViTConfig

DESIGN_HOOKS = [  # (name, expected shape) for B=2, T=17, H=4, Dh=8, D=32, Dm=128, N=16, C=10
    ("hook_embed", (2, 16, 32)),
    ("hook_pos_embed", (1, 16, 32)),
    ("hook_full_embed", (2, 17, 32)),
    ("blocks.1.hook_resid_pre", (2, 17, 32)),
    ("blocks.1.ln1.hook_normalized", (2, 17, 32)),
    ("blocks.1.attn.hook_q", (2, 17, 4, 8)),
    ("blocks.1.attn.hook_k", (2, 17, 4, 8)),
    ("blocks.1.attn.hook_v", (2, 17, 4, 8)),
    ("blocks.1.attn.hook_z", (2, 17, 4, 8)),
    ("blocks.1.attn.hook_attn_scores", (2, 4, 17, 17)),
    ("blocks.1.attn.hook_pattern", (2, 4, 17, 17)),
    ("blocks.1.hook_attn_out", (2, 17, 32)),
    ("blocks.1.hook_resid_mid", (2, 17, 32)),
    ("blocks.1.ln2.hook_normalized", (2, 17, 32)),
    ("blocks.1.mlp.hook_pre", (2, 17, 128)),
    ("blocks.1.mlp.hook_post", (2, 17, 128)),
    ("blocks.1.hook_mlp_out", (2, 17, 32)),
    ("blocks.1.hook_resid_post", (2, 17, 32)),
    ("ln_final.hook_normalized", (2, 17, 32)),
    ("hook_pooled", (2, 32)),
    ("hook_logits", (2, 10)),
]


@pytest.fixture
def model(tiny_cfg_kwargs):
    torch.manual_seed(0)
    return HookedViT(ViTConfig(**tiny_cfg_kwargs)).eval()


def test_hook_contract_names_and_shapes(model):
    _, cache = model.run_with_cache(torch.randn(2, 3, 32, 32))
    for name, shape in DESIGN_HOOKS:
        assert name in model.hook_names, name
        assert tuple(cache[name].shape) == shape, name


def test_cache_values_are_consistent(model):
    x = torch.randn(2, 3, 32, 32)
    logits, cache = model.run_with_cache(x)
    b = "blocks.1."
    torch.testing.assert_close(cache[b + "hook_resid_mid"], cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"])
    torch.testing.assert_close(cache[b + "hook_resid_post"], cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"])
    torch.testing.assert_close(cache[b + "attn.hook_pattern"], cache[b + "attn.hook_attn_scores"].softmax(-1))
    torch.testing.assert_close(cache["hook_logits"], logits)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], cache["hook_full_embed"])
    assert cache.stack("hook_resid_post").shape == (4, 2, 17, 32)


def test_names_filter_forms(model):
    x = torch.randn(1, 3, 32, 32)
    for f in ("blocks.0.hook_resid_post", ["blocks.0.hook_resid_post"], "blocks.0.hook_resid_po*",
              lambda n: n == "blocks.0.hook_resid_post"):
        _, cache = model.run_with_cache(x, names_filter=f)
        assert set(cache) == {"blocks.0.hook_resid_post"}
    with pytest.raises(KeyError, match="unknown hook name"):
        model.run_with_cache(x, names_filter="blocks.0.hook_nope")


def test_hooks_removed_after_call_and_after_error(model):
    x = torch.randn(1, 3, 32, 32)
    model.run_with_cache(x, names_filter="*hook_pattern")
    assert all(not hp.active for hp in model.hook_dict.values())

    def boom(t, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.2.hook_resid_post", boom)])
    assert all(not hp.active for hp in model.hook_dict.values())
    with pytest.raises(RuntimeError):
        with model.hooks([("hook_logits", boom)]):
            model(x)
    assert all(not hp.active for hp in model.hook_dict.values())


def test_hook_return_replaces_activation(model):
    x = torch.randn(2, 3, 32, 32)
    # zeroing the final tokens: the logits become the head bias
    logits = model.run_with_hooks(x, fwd_hooks=[("ln_final.hook_normalized", lambda t, hook: torch.zeros_like(t))])
    torch.testing.assert_close(logits, model.head.bias.expand(2, -1))
    # a hook on the pattern forces the explicit path and changes the output
    uniform = model.run_with_hooks(x, fwd_hooks=[("blocks.*.attn.hook_pattern",
                                                  lambda t, hook: torch.full_like(t, 1.0 / t.shape[-1]))])
    assert not torch.allclose(uniform, model(x))


def test_hook_receives_its_name(model):
    seen = []
    model.run_with_hooks(torch.randn(1, 3, 32, 32), fwd_hooks=[("*hook_resid_post", lambda t, hook: seen.append(hook.name))])
    assert seen == [f"blocks.{i}.hook_resid_post" for i in range(4)]
