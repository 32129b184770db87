"""Sites, layers and token reductions: parsing, validation, and reductions against loops over the layout."""
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.features.plan import canonical_site, make_plan, parse_layers, parse_reductions, reduce_tokens


def test_canonical_sites():
    assert canonical_site("resid_post") == ("resid_post", True, None)
    assert canonical_site("blocks.{i}.hook_resid_post") == ("resid_post", True, None)
    assert canonical_site("blocks.*.ln2.hook_normalized") == ("ln2", True, None)
    assert canonical_site("blocks.3.mlp.hook_pre") == ("mlp.hook_pre", True, 3)
    assert canonical_site("attn.hook_v") == ("attn.hook_v", True, None)
    assert canonical_site("ln_final.hook_normalized") == ("ln_final", False, None)
    assert canonical_site("hook_full_embed") == ("embed", False, None)
    with pytest.raises(ValueError, match="no token axis"):
        canonical_site("blocks.0.attn.hook_pattern")
    with pytest.raises(ValueError, match="unknown"):
        canonical_site("resid")


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0,3", 4) == [0, 3]
    assert parse_layers("-1", 12) == [11]
    assert parse_layers("4:8", 12) == [4, 5, 6, 7]
    assert parse_layers([2, 1, 2], 4) == [1, 2]
    with pytest.raises(ValueError, match="blocks 0..3"):
        parse_layers("0,4", 4)
    with pytest.raises(ValueError, match="comma list"):
        parse_layers("first", 4)
    with pytest.raises(ValueError, match="unknown token reduction"):
        parse_reductions("cls,max")


def _loop_reduce(t, n_prefix_before, n_patch, cls_idx, reg_idx, reduction):
    """Reference from the definition, one image at a time, with explicit index lists."""
    out = []
    for b in range(t.shape[0]):
        patches = [t[b, n_prefix_before + j] for j in range(n_patch)]
        mean = sum(patches) / n_patch
        if reduction == "cls":
            out.append(t[b, cls_idx])
        elif reduction == "mean":
            out.append(mean)
        elif reduction == "cls+mean":
            out.append(torch.stack([t[b, cls_idx], mean]))
        elif reduction == "registers":
            out.append(torch.stack([t[b, r] for r in reg_idx]))
        elif reduction == "patches":
            out.append(torch.stack(patches))
        elif reduction == "all":
            out.append(t[b])
    return torch.stack(out)


@pytest.mark.parametrize("reduction", ["cls", "mean", "cls+mean", "registers", "patches", "all"])
def test_reduce_tokens_prefix_registers(reduction):
    # DINOv2-style: [CLS] [R0 R1 R2] patches (grid 3x3)
    cfg = ViTConfig(img_size=24, patch_size=8, embed_dim=8, depth=2, num_heads=2, num_registers=3, num_classes=4)
    lay = HookedViT(cfg).token_layout(1)
    t = torch.randn(2, 13, 8)
    ref = _loop_reduce(t, 4, 9, 0, [1, 2, 3], reduction)
    torch.testing.assert_close(reduce_tokens(t, lay, reduction), ref)


@pytest.mark.parametrize("reduction", ["cls", "mean", "registers", "patches"])
def test_reduce_tokens_late_cls_end_registers(reduction):
    # cls-register: registers appended at the end from block 1, CLS prepended from block 2
    cfg = ViTConfig(img_size=16, patch_size=8, embed_dim=8, depth=4, num_heads=2, num_registers=2,
                    register_location="end", register_block=1, cls_block=2, num_classes=4)
    m = HookedViT(cfg)
    lay = m.token_layout(3)                                            # CLS p0..p3 R0 R1
    t = torch.randn(3, 7, 8)
    ref = _loop_reduce(t, 1, 4, 0, [5, 6], reduction)
    torch.testing.assert_close(reduce_tokens(t, lay, reduction), ref)
    # at block 1 there is no CLS yet: asking for it is a clear error, not a silent wrong token
    with pytest.raises(ValueError, match="no CLS"):
        make_plan(m, "resid_post", "1", "cls")
    plan = make_plan(m, "resid_post", "2,3", "cls")
    assert plan.stop_at == 4 and [e.hook for e in plan.entries] == ["blocks.2.hook_resid_post",
                                                                      "blocks.3.hook_resid_post"]


def test_head_split_hooks_are_flattened():
    cfg = ViTConfig(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2, num_classes=4)
    lay = HookedViT(cfg).token_layout(0)
    t = torch.randn(2, 5, 2, 4)                                        # B, T, H, Dh
    torch.testing.assert_close(reduce_tokens(t, lay, "cls"), t[:, 0].reshape(2, 8))


def test_plan_stops_after_last_needed_block():
    cfg = ViTConfig(img_size=16, patch_size=8, embed_dim=8, depth=5, num_heads=2, num_classes=4)
    m = HookedViT(cfg)
    p = make_plan(m, ["resid_post", "blocks.1.mlp.hook_pre"], "0,2", ("cls",))
    assert p.stop_at == 3
    assert [e.hook for e in p.entries] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post",
                                           "blocks.1.mlp.hook_pre"]
    assert make_plan(m, "ln_final", "all", "mean").stop_at is None
    with pytest.raises(ValueError, match="no register"):
        make_plan(m, "resid_post", "all", "registers")
