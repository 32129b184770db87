"""vitscope against timm itself: tiny random-weight timm models of every covered family, saved in timm's hub
folder layout with their outputs (tests/goldens/timm, written by scripts/make_timm_goldens.py with timm 1.0.31).

Each folder is loaded with ``load_timm_folder`` (config.json + weights, nothing else) and must reproduce timm's
logits, every block's output and every block's softmax attention within 1e-4 in float32.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitscope.models.converters.timm import config_from_timm, is_timm_folder, load_timm_folder, split_name
from vitscope.models.preprocess import CLIP_MEAN, CLIP_STD

ROOT = Path(__file__).resolve().parents[1] / "goldens" / "timm"
CASES = ["vit", "deit_distilled", "deit3", "dino", "mae", "vit_gap", "dinov2", "dinov2_reg4", "clip", "beit",
         "beit_shared", "vit_rpn"]
ATOL = 1e-4


def _golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(ROOT / name / "golden.safetensors"))


def test_every_golden_is_present_and_small():
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir()) == sorted(CASES)
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file())
    assert total < 2_000_000


@pytest.mark.parametrize("name", CASES)
def test_timm_golden_parity(name):
    folder = ROOT / name
    assert is_timm_folder(folder)
    model = load_timm_folder(folder)
    g = _golden(name)
    x = g["input"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            x, names_filter=lambda n: n.endswith(("hook_resid_post", "attn.hook_pattern")))
    assert logits.shape == g["logits"].shape
    torch.testing.assert_close(logits, g["logits"], atol=ATOL, rtol=0)
    depth = sum(1 for k in g if k.endswith(".out"))
    assert depth == model.cfg.depth == 2
    for i in range(depth):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], g[f"blocks.{i}.out"], atol=ATOL, rtol=0)
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], g[f"blocks.{i}.attn"], atol=ATOL, rtol=0)
    # the fast path (SDPA, no hooks) gives the same logits
    with torch.no_grad():
        torch.testing.assert_close(model(x), g["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["vit", "dinov2_reg4", "vit_rpn"])
def test_timm_golden_other_input_size(name):
    """timm (dynamic_img_size) resamples the position table to a 6 x 5 grid; so must vitscope."""
    model = load_timm_folder(ROOT / name)
    g = _golden(name)
    with torch.no_grad():
        torch.testing.assert_close(model(g["input_48x40"]), g["logits_48x40"], atol=ATOL, rtol=0)


def test_family_specific_config():
    cfgs = {n: load_timm_folder(ROOT / n).cfg for n in ("clip", "dinov2_reg4", "beit", "deit_distilled", "vit_gap",
                                                        "mae", "beit_shared")}
    clip = cfgs["clip"]
    assert (clip.head, clip.act, clip.pre_norm, clip.patch_bias, clip.norm_eps) == ("clip_proj", "quick_gelu",
                                                                                  True, False, 1e-5)
    reg = cfgs["dinov2_reg4"]
    assert (reg.num_registers, reg.pos_embed_prefix, reg.head) == (4, False, "none")
    assert reg.layer_scale_init is not None
    beit = cfgs["beit"]
    assert (beit.rel_pos_bias, beit.qv_bias, beit.qkv_bias, beit.pos_embed, beit.global_pool, beit.fc_norm,
            beit.final_norm) == (True, True, False, "none", "avg", True, False)
    assert cfgs["beit_shared"].pos_embed == "learned" and cfgs["beit_shared"].global_pool == "token"
    assert cfgs["deit_distilled"].head == "distilled" and cfgs["deit_distilled"].distill_token
    gap = cfgs["vit_gap"]
    assert (gap.class_token, gap.global_pool, gap.fc_norm, gap.final_norm, gap.qkv_bias) == (False, "avg", False,
                                                                                           True, False)
    assert (cfgs["mae"].global_pool, cfgs["mae"].fc_norm, cfgs["mae"].final_norm) == ("avg", True, False)
    rpn = load_timm_folder(ROOT / "vit_rpn").cfg          # timm's ResPostBlock: x + norm1(attn(x)), x + norm2(mlp(x))
    assert (rpn.res_post_norm, rpn.class_token, rpn.global_pool, rpn.fc_norm, rpn.final_norm, rpn.qkv_bias,
            rpn.layer_scale_init) == (True, False, "avg", True, False, False, None)
    assert not any(c.res_post_norm for c in cfgs.values())


def test_preprocessing_comes_from_pretrained_cfg():
    clip = load_timm_folder(ROOT / "clip").preprocess_cfg
    assert clip.mean == pytest.approx(CLIP_MEAN) and clip.std == pytest.approx(CLIP_STD)
    assert clip.input_size == (32, 32) and clip.interpolation == "bicubic"
    for name in ("vit", "dinov2"):
        cj = json.loads((ROOT / name / "config.json").read_text())["pretrained_cfg"]
        pp = load_timm_folder(ROOT / name).preprocess_cfg
        assert pp.crop_pct == pytest.approx(cj["crop_pct"]) and pp.mean == pytest.approx(tuple(cj["mean"]))
        assert pp.std == pytest.approx(tuple(cj["std"]))


def test_checkpoint_wins_over_the_name():
    """A tiny checkpoint under a big model's name: width, depth, MLP, patch and position grid follow the tensors."""
    sd = load_file(str(ROOT / "vit" / "model.safetensors"))
    cfg = config_from_timm("vit_base_patch16_224", None, state_dict=sd)
    assert (cfg.embed_dim, cfg.depth, cfg.hidden_dim, cfg.patch_size, cfg.num_classes) == (32, 2, 32, 8, 10)
    assert cfg.img_size == (224, 224) and cfg.pos_embed_grid == (4, 4)   # the stored grid, resampled at 224
    assert cfg.meta.get("num_heads_guessed")                              # heads are invisible in the tensors
    from vitscope.models.converters.timm import load_timm_state_dict

    model = load_timm_state_dict(sd, "vit_base_patch16_224", {"model_args": {"num_heads": 4}})
    g = _golden("vit")
    with torch.no_grad():
        torch.testing.assert_close(model(g["input"]), g["logits"], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- architecture names
_TABLE = json.loads((ROOT / "arch_table.json").read_text())


def _summary(cfg) -> dict:
    return dict(
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, patch_size=cfg.patch_size,
        img_size=list(cfg.img_size), mlp_dim=cfg.hidden_dim, norm_eps=cfg.norm_eps, act=cfg.act,
        class_token=cfg.class_token, distill_token=cfg.distill_token, num_registers=cfg.num_registers,
        pos_embed=cfg.pos_embed != "none", pos_embed_prefix=cfg.pos_embed != "none" and cfg.pos_embed_prefix,
        layer_scale=cfg.layer_scale_init is not None, pre_norm=cfg.pre_norm, patch_bias=cfg.patch_bias,
        qkv_bias=cfg.qkv_bias, qv_bias=cfg.qv_bias, rel_pos_bias=cfg.rel_pos_bias, final_norm=cfg.final_norm,
        fc_norm=cfg.fc_norm, global_pool=cfg.global_pool, num_classes=cfg.num_classes if cfg.head != "none" else 0,
        res_post_norm=cfg.res_post_norm)


@pytest.mark.parametrize("name", sorted(_TABLE["models"]))
def test_architecture_name_matches_timm(name):
    """The name + config.json (as the hub has it, no model_args) give what timm builds for that name."""
    row = _TABLE["models"][name]
    arch, _ = split_name(name)
    cj = {"architecture": arch, "num_classes": row["num_classes"],
          "global_pool": "" if row["global_pool"] == "none" else row["global_pool"],
          "pretrained_cfg": row["pretrained_cfg"]}
    got = _summary(config_from_timm(None, cj, native_act=False))
    want = {k: row.get(k, False) if k == "res_post_norm" else row[k] for k in got}   # older rows lack it
    assert got == want


def test_openai_clip_runs_native_quickgelu():
    row = _TABLE["models"]["vit_base_patch16_clip_224.openai"]
    cj = {"architecture": "vit_base_patch16_clip_224", "num_classes": 512, "pretrained_cfg": row["pretrained_cfg"]}
    cfg = config_from_timm(None, cj)
    assert cfg.act == "quick_gelu" and "QuickGELU" in cfg.meta["note"]
    assert cfg.head == "clip_proj" and cfg.num_classes == 512
    assert config_from_timm(None, cj, native_act=False).act == "gelu"      # what timm's own forward runs
