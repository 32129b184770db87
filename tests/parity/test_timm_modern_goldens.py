"""vitscope against timm for the modern ViT families: DINOv3, SigLIP / SigLIP 2, EVA-02 (and EVA-CLIP's
post-norm enormous), RoPE-ViT, the RoPE + register ViTs, Perception Encoder, AIMv2 and a qk-norm ViT
(tests/goldens/timm_modern, written by scripts/make_timm_modern_goldens.py with timm 1.0.31).

Each folder (timm's ``save_for_hf`` layout) loads with ``vs.load_model(folder)`` alone and must reproduce timm's
logits, pooled output, every block's output, every block's softmax attention and the attention pool's attention
within 1e-4 in float32, at the native 32 x 32 input and at 48 x 40 (rotary tables and position embeddings at
another grid, each family's rule).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitscope as vs
from vitscope.models.converters.timm import config_from_timm, is_timm_folder

ROOT = Path(__file__).resolve().parents[1] / "goldens" / "timm_modern"
CASES = ["dinov3", "dinov3_swiglu", "siglip", "siglip2", "eva02_tiny", "eva02_base", "eva02_clip", "rope_axial",
         "rope_mixed", "rope_mixed_ape", "rope_reg_gap", "pe_core", "aimv2", "vit_qknorm", "eva02_post_norm"]
ATOL = 1e-4
_HOOKS = ("hook_resid_post", "hook_pattern", "hook_pooled")


@pytest.fixture(scope="module")
def models():
    return {}


def _model(models, name):
    if name not in models:
        models[name] = vs.load_model(ROOT / name)
    return models[name]


def test_every_golden_is_present_and_small():
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir()) == sorted(CASES)
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file())
    assert total < 4_000_000


@pytest.mark.parametrize("size", ["", "s2."], ids=["32x32", "48x40"])
@pytest.mark.parametrize("name", CASES)
def test_modern_timm_golden_parity(models, name, size):
    assert is_timm_folder(ROOT / name)
    model = _model(models, name)
    g = load_file(str(ROOT / name / "golden.safetensors"))
    x = g[f"{size}input"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith(_HOOKS))
    torch.testing.assert_close(logits, g[f"{size}logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache["hook_pooled"], g[f"{size}pooled"], atol=ATOL, rtol=0)
    assert model.cfg.depth == 2
    for i in range(2):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], g[f"{size}blocks.{i}.out"], atol=ATOL, rtol=0)
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], g[f"{size}blocks.{i}.attn"], atol=ATOL,
                                   rtol=0)
    if f"{size}attn_pool.attn" in g:
        assert cache["attn_pool.hook_pattern"].shape[2] == 1                              # B, H, 1, T
        torch.testing.assert_close(cache["attn_pool.hook_pattern"], g[f"{size}attn_pool.attn"], atol=ATOL, rtol=0)
    with torch.no_grad():                                                                 # the fast path (SDPA)
        torch.testing.assert_close(model(x), g[f"{size}logits"], atol=ATOL, rtol=0)


def test_family_configs(models):
    c = {n: _model(models, n).cfg for n in CASES}
    d3 = c["dinov3"]
    assert (d3.rope, d3.rope_layout, d3.rope_theta, d3.num_registers, d3.class_token, d3.pos_embed,
            d3.qv_bias, d3.global_pool, d3.norm_eps) == ("dinov3", "half", 100.0, 4, True, "none", True, "token", 1e-5)
    assert d3.layer_scale_init is not None and not d3.gated_mlp
    assert c["dinov3_swiglu"].gated_mlp and c["dinov3_swiglu"].act == "silu" and not c["dinov3_swiglu"].qv_bias
    for n in ("siglip", "siglip2"):
        assert (c[n].class_token, c[n].global_pool, c[n].map_tokens, c[n].pos_embed_prefix) == (False, "map",
                                                                                               "patches", False)
    assert (c["siglip"].act, c["siglip2"].act) == ("gelu", "gelu_tanh")
    e = c["eva02_tiny"]
    assert (e.rope, e.rope_ref_grid, e.rope_layout, e.gated_mlp, e.mlp_norm, e.qv_bias, e.fc_norm,
            e.final_norm) == ("axial", (16, 16), "interleaved", True, False, True, True, False)
    assert c["eva02_base"].mlp_norm and c["eva02_clip"].attn_out_norm and c["eva02_clip"].global_pool == "token"
    assert (c["rope_axial"].rope, c["rope_axial"].rope_indexing, c["rope_axial"].rope_theta) == ("axial", "xy", 100.0)
    assert c["rope_mixed"].rope == "mixed" and c["rope_mixed_ape"].pos_embed == "learned"
    assert not c["rope_mixed_ape"].pos_embed_prefix
    r = c["rope_reg_gap"]
    assert (r.class_token, r.num_registers, r.global_pool, r.rope) == (False, 1, "avg", "axial")
    pe = c["pe_core"]
    assert (pe.rope_offset, pe.rope_indexing, pe.rope_ref_grid, pe.map_tokens, pe.map_heads, pe.pre_norm,
            pe.patch_bias, pe.pos_embed_prefix) == (1.0, "xy", (24, 24), "all", 8, True, False, True)
    a = c["aimv2"]
    assert (a.norm, a.patch_norm, a.gated_mlp, a.mlp_bias, a.proj_bias, a.qkv_bias, a.class_token, a.norm_eps) == (
        "rmsnorm", True, True, False, False, False, False, 1e-5)
    assert c["vit_qknorm"].qk_norm
    post = c["eva02_post_norm"]                             # EVA-CLIP enormous: x + norm(attn(x)), no RoPE
    assert (post.res_post_norm, post.rope, post.qv_bias, post.layer_scale_init) == (True, "none", True, None)


@pytest.mark.parametrize("name", ["dinov3", "eva02_tiny", "rope_mixed", "pe_core", "rope_reg_gap"])
def test_prefix_tokens_are_not_rotated(models, name):
    """CLS and registers keep their queries and keys; the patches' are rotated (hook_q vs hook_rot_q)."""
    model = _model(models, name)
    x = load_file(str(ROOT / name / "golden.safetensors"))["input"]
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter="blocks.1.attn.hook_*")
    lay = model.token_layout(1)
    for kind in "qk":
        before, after = cache[f"blocks.1.attn.hook_{kind}"], cache[f"blocks.1.attn.hook_rot_{kind}"]
        assert before.shape == after.shape                                                 # B, T, H, Dh
        pre = list(lay.prefix)
        assert pre and torch.equal(before[:, pre], after[:, pre])
        assert not torch.allclose(before[:, lay.patches], after[:, lay.patches])
        # a rotation keeps every pair's length
        torch.testing.assert_close(before[:, lay.patches].norm(dim=-1), after[:, lay.patches].norm(dim=-1))


# ----------------------------------------------------------------------------- architecture names
_TABLE = json.loads((ROOT / "arch_table.json").read_text())


def _summary(cfg) -> dict:
    rope = None
    if cfg.rope != "none":
        rope = {"kind": cfg.rope, "theta": cfg.rope_theta, "indexing": cfg.rope_indexing, "layout": cfg.rope_layout,
                "offset": cfg.rope_offset, "ref_grid": list(cfg.rope_ref_grid) if cfg.rope_ref_grid else None,
                "normalize": cfg.rope_normalize}
    out = dict(
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, patch_size=cfg.patch_size,
        img_size=list(cfg.img_size), mlp_dim=cfg.hidden_dim, gated_mlp=cfg.gated_mlp, norm=cfg.norm,
        norm_eps=cfg.norm_eps, act=cfg.act, mlp_norm=cfg.mlp_norm, mlp_bias=cfg.mlp_bias,
        attn_out_norm=cfg.attn_out_norm, qk_norm=cfg.qk_norm, proj_bias=cfg.proj_bias,
        qkv_bias=cfg.qkv_bias or cfg.qv_bias, k_bias=cfg.qkv_bias, class_token=cfg.class_token,
        num_registers=cfg.num_registers, pos_embed=cfg.pos_embed != "none",
        pos_embed_prefix=cfg.pos_embed != "none" and cfg.pos_embed_prefix, layer_scale=cfg.layer_scale_init is not None,
        pre_norm=cfg.pre_norm, patch_norm=cfg.patch_norm, patch_bias=cfg.patch_bias, final_norm=cfg.final_norm,
        fc_norm=cfg.fc_norm, global_pool=cfg.global_pool, num_classes=cfg.num_classes if cfg.head != "none" else 0,
        rope=rope)
    if cfg.global_pool == "map":
        out["map"] = {"heads": cfg.map_heads or cfg.num_heads, "mlp_dim": cfg.map_hidden_dim, "tokens": cfg.map_tokens}
    return out


@pytest.mark.parametrize("name", sorted(_TABLE["models"]))
def test_architecture_name_matches_timm(name):
    """The name + config.json as the hub has it (no model_args) give what timm builds for that name."""
    row = dict(_TABLE["models"][name])
    row.pop("pretrained_cfg")
    cj = {"architecture": name.split(".")[0], "num_classes": row["num_classes"],
          "global_pool": "" if row["global_pool"] == "none" else row["global_pool"],
          "pretrained_cfg": _TABLE["models"][name]["pretrained_cfg"]}
    got = _summary(config_from_timm(None, cj))
    got["norm_eps"] = pytest.approx(row["norm_eps"])
    p = row["patch_size"]
    row["img_size"] = [s // p * p for s in row["img_size"]]    # so400m/14 at 384: timm's conv ignores 6 px
    assert got == row


# ----------------------------------------------------------------------------- Meta's DINOv3 file layout
@pytest.mark.parametrize("name", ["dinov3", "dinov3_swiglu"])
def test_official_dinov3_layout(name, tmp_path):
    """The same weights in the layout of Meta's DINOv3 releases (storage_tokens, ls1.gamma, a masked qkv bias with
    a nonzero key third, mlp.w1/w2/w3, bf16 RoPE periods; checked against timm's own filter by the golden script)
    load as format "dinov3" and give timm's blocks, attention and CLS output."""
    from vitscope.models.converters import detect_format
    from vitscope.models.converters.official import load_official

    path = ROOT / f"{name}_official.pth"
    raw = torch.load(path, weights_only=True)
    assert detect_format(raw) == "dinov3"
    model = load_official(path, num_heads=4)
    cfg = model.cfg
    assert (cfg.rope, cfg.rope_layout, cfg.num_registers, cfg.head, cfg.global_pool, cfg.norm_eps) == (
        "dinov3", "half", 4, "none", "token", 1e-5)
    g = load_file(str(ROOT / name / "golden.safetensors"))
    for size in ("", "s2."):
        with torch.no_grad():
            out, cache = model.run_with_cache(g[f"{size}input"], names_filter=lambda n: n.endswith(_HOOKS))
        for i in range(2):
            torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], g[f"{size}blocks.{i}.out"], atol=ATOL,
                                       rtol=0)
            torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], g[f"{size}blocks.{i}.attn"],
                                       atol=ATOL, rtol=0)
        if name == "dinov3":                                     # token pooling: the normalised CLS
            torch.testing.assert_close(out, g[f"{size}pooled"], atol=ATOL, rtol=0)
    # load_model(architecture, weights=official file): the format is detected from the keys
    vs.save_model(model, tmp_path / "arch")
    again = vs.load_model(tmp_path / "arch", weights=path)
    assert again.meta["format"] == "dinov3"
    with torch.no_grad():
        torch.testing.assert_close(again(g["input"]), model(g["input"]), atol=0, rtol=0)
    wrong = dict(raw)
    wrong["rope_embed.periods"] = raw["rope_embed.periods"] * 3
    torch.save(wrong, tmp_path / "periods.pth")
    with pytest.raises(ValueError, match="min/max-period"):
        load_official(tmp_path / "periods.pth", num_heads=4)
