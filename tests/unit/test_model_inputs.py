"""Wrong inputs to a HookedViT fail with a line that says what was expected."""
import pytest
import torch

from vitscope.models import HookedViT, ViTConfig


@pytest.fixture
def model(tiny_cfg_kwargs):
    torch.manual_seed(0)
    return HookedViT(ViTConfig(**tiny_cfg_kwargs, num_registers=2, register_block=1, register_location="end")).eval()


@pytest.mark.parametrize("names", [["blocks.99.hook_resid_post"], ["blocks.0.hook_resid_post", "blocks.0.hook_nope"],
                                   ("blocks.*.attn.hook_patern",)])
def test_unknown_hook_in_a_list_is_an_error(model, names):
    bad = names[-1]
    with pytest.raises(KeyError, match="unknown hook name") as err:
        model.run_with_cache(torch.randn(1, 3, 32, 32), names_filter=names)
    assert bad in str(err.value)
    with pytest.raises(KeyError, match="unknown hook name"):
        model.run_with_hooks(torch.randn(1, 3, 32, 32), fwd_hooks=[(list(names), lambda t, hook: None)])
    # known names and patterns in a list still work
    _, cache = model.run_with_cache(torch.randn(1, 3, 32, 32), names_filter=["blocks.0.hook_resid_post",
                                                                             "blocks.*.attn.hook_pattern"])
    assert len(cache) == 1 + model.cfg.depth


def test_unbatched_image_says_what_shape_was_expected(model):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(3, 64, 64\).*x\[None\]"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(64, 64\)"):
        model(torch.randn(64, 64))


def test_token_layout_accepts_negative_blocks(model):
    depth = model.cfg.depth
    assert model.token_layout(-1) == model.token_layout(depth - 1)       # -1: the last block, as on the CLI
    assert model.token_layout(-depth) == model.token_layout(0)
    assert model.token_layout(-1).registers and not model.token_layout(-depth).registers
    with pytest.raises(ValueError, match=rf"\[-{depth}, {depth}\]"):
        model.token_layout(-depth - 1)
