"""Official DINO / MAE / MoCo-v3 checkpoints, format detection and timm-converter details, without timm.

The checkpoints are written here with the public key layouts (tiny dims), saved with ``torch.save`` and read
back with ``weights_only=True``. The reference is a plain functional ViT written from the definition (timm's
key names, a loop over heads), independent of HookedViT.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope.models import HookedViT, ViTConfig
from vitscope.models.converters import convert_state_dict, detect_format
from vitscope.models.converters.common import CheckpointError, load_strict
from vitscope.models.converters.official import (config_from_official, convert_mae, convert_mocov3,
                                                 load_official, read_checkpoint)
from vitscope.models.converters.timm import (config_from_timm, convert_timm_state_dict, is_timm_folder,
                                             load_timm_folder, load_timm_state_dict, timm_args_from_name)
from vitscope.models.vit import sincos_2d

D, DEPTH, HEADS, P, IMG, MLP = 32, 2, 4, 8, 32, 64
GRID = IMG // P


# ----------------------------------------------------------------------------- reference and fixtures
def ref_forward(sd, x, heads, *, no_embed_class=False, eps=1e-6):
    """timm-style ViT from the definition: conv patchify, [CLS, registers] + pos, pre-norm blocks, final norm.

    Returns (final tokens after the norm, block outputs, softmax attention per block).
    """
    w = sd["patch_embed.proj.weight"]
    p = w.shape[-1]
    t = F.conv2d(x, w, sd.get("patch_embed.proj.bias"), stride=p).flatten(2).transpose(1, 2)   # B, N, D
    B = x.shape[0]
    prefix = [sd["cls_token"].expand(B, -1, -1)]
    if "reg_token" in sd:
        prefix.append(sd["reg_token"].expand(B, -1, -1))
    if no_embed_class:
        t = torch.cat(prefix + [t + sd["pos_embed"]], dim=1)
    else:
        t = torch.cat(prefix + [t], dim=1) + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    outs, pats = [], []
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (t.shape[-1],), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps)
        qkv = h @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]                       # B, T, 3D
        Dm = t.shape[-1]
        dh = Dm // heads
        z = torch.zeros_like(t)
        pat = []
        for hd in range(heads):
            q = qkv[..., hd * dh:(hd + 1) * dh]
            k = qkv[..., Dm + hd * dh:Dm + (hd + 1) * dh]
            v = qkv[..., 2 * Dm + hd * dh:2 * Dm + (hd + 1) * dh]
            a = torch.softmax(q @ k.transpose(1, 2) / dh ** 0.5, dim=-1)                      # B, T, T
            z[..., hd * dh:(hd + 1) * dh] = a @ v
            pat.append(a)
        t = t + z @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        h = F.layer_norm(t, (Dm,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps)
        h = F.gelu(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        t = t + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        outs.append(t)
        pats.append(torch.stack(pat, dim=1))                                                   # B, H, T, T
    t = F.layer_norm(t, (t.shape[-1],), sd["norm.weight"], sd["norm.bias"], eps)
    return t, outs, pats


def timm_backbone(seed, pos=None, n_reg=0, pos_with_reg=True):
    """Random timm-layout backbone weights (no head), with non-trivial norms and biases."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0, m=0.0):
        return torch.randn(*shape, generator=g) * s + m

    sd = {"cls_token": r(1, 1, D, s=0.5), "patch_embed.proj.weight": r(D, 3, P, P, s=(3 * P * P) ** -0.5),
          "patch_embed.proj.bias": r(D, s=0.2), "norm.weight": r(D, s=0.3, m=1), "norm.bias": r(D, s=0.2)}
    n_pos = GRID * GRID + 1 + (n_reg if pos_with_reg else 0)
    sd["pos_embed"] = r(1, n_pos, D, s=0.5) if pos is None else pos
    if n_reg:
        sd["reg_token"] = r(1, n_reg, D, s=0.5)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": r(D, s=0.3, m=1), b + "norm1.bias": r(D, s=0.2),
                   b + "attn.qkv.weight": r(3 * D, D, s=1.5 / D ** 0.5), b + "attn.qkv.bias": r(3 * D, s=0.2),
                   b + "attn.proj.weight": r(D, D, s=D ** -0.5), b + "attn.proj.bias": r(D, s=0.2),
                   b + "norm2.weight": r(D, s=0.3, m=1), b + "norm2.bias": r(D, s=0.2),
                   b + "mlp.fc1.weight": r(MLP, D, s=D ** -0.5), b + "mlp.fc1.bias": r(MLP, s=0.2),
                   b + "mlp.fc2.weight": r(D, MLP, s=MLP ** -0.5), b + "mlp.fc2.bias": r(D, s=0.2)})
    return sd


def mae_sincos(embed_dim, grid_size):
    """MAE's get_2d_sincos_pos_embed (numpy, 'xy' meshgrid, w first), with the zero CLS row, written out here."""
    gh = np.arange(grid_size, dtype=np.float32)
    gw = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid_size, grid_size)

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return torch.from_numpy(emb).float()[None]


def moco_sincos(embed_dim, grid_size):
    """MoCo-v3's build_2d_sincos_position_embedding (torch.meshgrid(w, h), 'ij' order), written out here."""
    gw, gh = torch.meshgrid(torch.arange(grid_size, dtype=torch.float32),
                            torch.arange(grid_size, dtype=torch.float32), indexing="ij")
    dim = embed_dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(dim, dtype=torch.float32) / dim)
    ow = gw.flatten()[:, None] * omega[None]
    oh = gh.flatten()[:, None] * omega[None]
    pe = torch.cat([ow.sin(), ow.cos(), oh.sin(), oh.cos()], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, embed_dim), pe], dim=1)


def _roundtrip(obj, tmp_path, name):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _check(model, sd_ref, x, heads=HEADS, **kw):
    ref_tokens, ref_outs, ref_pats = ref_forward(sd_ref, x, heads, **kw)
    with torch.no_grad():
        out, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_resid_post", "hook_pattern")))
    torch.testing.assert_close(out, ref_tokens[:, 0], atol=1e-4, rtol=0)
    for i in range(DEPTH):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], ref_outs[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], ref_pats[i], atol=1e-4, rtol=0)


X = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- DINO
def test_dino_flat_backbone(tmp_path):
    sd = timm_backbone(1)
    raw = read_checkpoint(_roundtrip(sd, tmp_path, "dino_deitsmall8_pretrain.pth"))
    assert detect_format(raw) == "dino"
    model = load_official(raw, num_heads=HEADS)
    assert (model.cfg.head, model.cfg.global_pool, model.cfg.img_size) == ("none", "token", (IMG, IMG))
    _check(model, sd, X)


def test_dino_full_training_checkpoint_uses_the_teacher(tmp_path):
    teacher, student = timm_backbone(2), timm_backbone(3)
    head = {"head.mlp.0.weight": torch.randn(16, D), "head.mlp.0.bias": torch.randn(16),
            "head.last_layer.weight_g": torch.randn(8, 1), "head.last_layer.weight_v": torch.randn(8, 16)}
    ckpt = {"teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
            "student": {**{f"module.backbone.{k}": v for k, v in student.items()},
                        **{f"module.{k}": v for k, v in head.items()}},
            "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=P)}
    path = _roundtrip(ckpt, tmp_path, "checkpoint.pth")
    raw = read_checkpoint(path)                   # weights_only=True with argparse.Namespace allowed
    assert detect_format(raw) == "dino"
    model = load_official(path, num_heads=HEADS)
    _check(model, teacher, X)


# ----------------------------------------------------------------------------- MAE
def _mae_checkpoint(seed):
    sd = timm_backbone(seed, pos=mae_sincos(D, GRID))
    dec = {"mask_token": torch.randn(1, 1, 16), "decoder_embed.weight": torch.randn(16, D),
           "decoder_embed.bias": torch.randn(16), "decoder_pos_embed": torch.randn(1, GRID * GRID + 1, 16),
           "decoder_blocks.0.norm1.weight": torch.randn(16), "decoder_blocks.0.attn.qkv.weight": torch.randn(48, 16),
           "decoder_norm.weight": torch.randn(16), "decoder_norm.bias": torch.randn(16),
           "decoder_pred.weight": torch.randn(P * P * 3, 16), "decoder_pred.bias": torch.randn(P * P * 3)}
    return sd, {"model": {**sd, **dec}}


def test_mae_pretrain_checkpoint(tmp_path):
    sd, ckpt = _mae_checkpoint(4)
    raw = read_checkpoint(_roundtrip(ckpt, tmp_path, "mae_pretrain_vit_tiny.pth"))
    assert detect_format(raw) == "mae" and detect_format(raw["model"]) == "mae"
    model = load_official(raw, num_heads=HEADS)
    assert model.cfg.pos_embed == "sincos" and model.cfg.pos_embed_prefix
    # MAE's table is vitscope's sincos_2d (with a zero CLS row)
    torch.testing.assert_close(mae_sincos(D, GRID)[0, 1:], sincos_2d(D, (GRID, GRID)), atol=1e-6, rtol=0)
    _check(model, sd, X)


def test_mae_encoder_only_release_detects_as_mae(tmp_path):
    sd = timm_backbone(5, pos=mae_sincos(D, GRID))
    raw = read_checkpoint(_roundtrip({"model": sd}, tmp_path, "mae_pretrain_vit_base.pth"))
    assert detect_format(raw) == "mae"
    _check(load_official(raw, num_heads=HEADS), sd, X)


# ----------------------------------------------------------------------------- MoCo-v3
def _moco_checkpoint(seed):
    base = timm_backbone(seed, pos=moco_sincos(D, GRID))
    mom = timm_backbone(seed + 50, pos=moco_sincos(D, GRID))
    proj = {"head.0.weight": torch.randn(64, D), "head.1.weight": torch.randn(64), "head.1.bias": torch.randn(64),
            "head.1.running_mean": torch.zeros(64), "head.1.running_var": torch.ones(64),
            "head.1.num_batches_tracked": torch.tensor(7), "head.3.weight": torch.randn(16, 64)}
    state = {**{f"module.base_encoder.{k}": v for k, v in {**base, **proj}.items()},
             **{f"module.momentum_encoder.{k}": v for k, v in {**mom, **proj}.items()},
             "module.predictor.0.weight": torch.randn(64, 16), "module.predictor.3.weight": torch.randn(16, 64)}
    ckpt = {"epoch": 300, "arch": "vit_small", "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.1, "params": [0, 1]}]},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0}}
    return base, ckpt


def test_mocov3_checkpoint(tmp_path):
    base, ckpt = _moco_checkpoint(6)
    raw = read_checkpoint(_roundtrip(ckpt, tmp_path, "vit-s-300ep.pth.tar"))
    assert detect_format(raw) == "mocov3" and detect_format(raw["state_dict"]) == "mocov3"
    model = load_official(raw, num_heads=HEADS)
    assert model.preprocess_cfg.interpolation == "bilinear"
    # MoCo's table is sincos_2d with the row and column halves swapped (= sincos_2d of the transposed grid)
    moco = moco_sincos(D, GRID)[0, 1:]
    ours = sincos_2d(D, (GRID, GRID))
    assert (moco - ours).abs().max() > 0.1
    half = D // 2
    torch.testing.assert_close(moco, torch.cat([ours[:, half:], ours[:, :half]], dim=1), atol=1e-5, rtol=0)
    transposed = ours.reshape(GRID, GRID, D).transpose(0, 1).reshape(GRID * GRID, D)
    torch.testing.assert_close(moco, transposed, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.pos_embed.detach(), moco_sincos(D, GRID), atol=0, rtol=0)
    _check(model, base, X)


def test_heads_of_the_released_architectures():
    """Heads are invisible in the tensors; each project's released widths fix them (MoCo-v3 ViT-S: 12)."""
    g = torch.Generator().manual_seed(0)

    def backbone(width):
        sd = {"cls_token": torch.zeros(1, 1, width), "pos_embed": torch.zeros(1, 197, width),
              "patch_embed.proj.weight": torch.zeros(width, 3, 16, 16), "patch_embed.proj.bias": torch.zeros(width),
              "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)}
        b = "blocks.0."
        sd.update({b + "norm1.weight": torch.ones(width), b + "attn.qkv.weight": torch.randn(3, width, generator=g),
                   b + "attn.qkv.bias": torch.zeros(3 * width), b + "mlp.fc1.weight": torch.zeros(4 * width, 1)})
        return sd

    moco = config_from_official("mocov3", {"state_dict": {f"module.base_encoder.{k}": v
                                                          for k, v in backbone(384).items()}})
    dino = config_from_official("dino", backbone(384))
    mae = config_from_official("mae", {"model": backbone(1024)})
    assert (moco.num_heads, dino.num_heads, mae.num_heads) == (12, 6, 16)
    assert (moco.img_size, moco.patch_size, moco.hidden_dim) == ((224, 224), 16, 1536)
    assert moco.pos_embed == "learned" and mae.pos_embed == "sincos" and dino.pos_embed == "learned"


# ----------------------------------------------------------------------------- strictness
def test_strict_loading_lists_offending_keys():
    sd, ckpt = _mae_checkpoint(7)
    cfg = config_from_official("mae", ckpt, num_heads=HEADS)
    model = HookedViT(cfg)
    extra = {"model": {**ckpt["model"], "blocks.0.attn.rel_bias": torch.zeros(3)}}
    with pytest.raises(CheckpointError, match=r"unexpected keys.*blocks\.0\.attn\.rel_bias"):
        load_strict(model, convert_mae(extra, cfg))
    missing = {"model": {k: v for k, v in ckpt["model"].items() if k != "norm.weight"}}
    with pytest.raises(CheckpointError, match=r"missing keys.*ln_final\.weight"):
        load_strict(model, convert_mae(missing, cfg))
    bad = {"model": {**ckpt["model"], "blocks.1.mlp.fc1.bias": torch.zeros(MLP + 1)}}
    with pytest.raises(CheckpointError, match=r"shape mismatches.*blocks\.1\.mlp\.fc1\.bias"):
        load_strict(model, convert_mae(bad, cfg))
    _, moco = _moco_checkpoint(8)
    del moco["state_dict"]["module.base_encoder.blocks.1.attn.proj.bias"]
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.proj\.bias"):
        load_strict(HookedViT(config_from_official("mocov3", moco, num_heads=HEADS)), convert_mocov3(moco, cfg))


# ----------------------------------------------------------------------------- detection
def test_detect_format():
    timm_sd = timm_backbone(9)
    assert detect_format({**timm_sd, "head.weight": torch.zeros(10, D), "head.bias": torch.zeros(10)}) == "timm"
    assert detect_format({"model": {**timm_sd, "head.weight": torch.zeros(10, D)}}) == "timm"   # DeiT release
    assert detect_format(timm_sd) == "dino"
    beit = {k.replace("attn.qkv.bias", "attn.q_bias"): v for k, v in timm_sd.items()}
    assert detect_format(beit) == "timm_beit"
    assert detect_format({"model": beit}) == "timm_beit"
    vs = HookedViT(ViTConfig(img_size=IMG, patch_size=P, embed_dim=D, depth=1, num_heads=HEADS)).state_dict()
    assert detect_format(vs) == "vitscope"
    assert detect_format({"vit.embeddings.cls_token": torch.zeros(1), "classifier.weight": torch.zeros(1)}) == "hf"
    assert detect_format({"vision_model.embeddings.patch_embedding.weight": torch.zeros(1)}) == "hf"
    assert detect_format({"embeddings.patch_embeddings.projection.weight": torch.zeros(1)}) == "hf"
    assert detect_format({"state_dict": {"module.base_encoder.cls_token": torch.zeros(1)}}) == "mocov3"
    with pytest.raises(ValueError, match="unrecognised"):
        detect_format({"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="wrapper"):
        detect_format({"epoch": 3})


def test_convert_state_dict_dispatch():
    sd, ckpt = _mae_checkpoint(10)
    cfg = config_from_official("mae", ckpt, num_heads=HEADS)
    out = convert_state_dict(ckpt, cfg)
    assert set(out) == set(HookedViT(cfg).state_dict())


# ----------------------------------------------------------------------------- timm details without timm
def test_register_position_entries_fold_into_reg_token():
    """A timm model with registers and no_embed_class=False has pos entries for the registers (constants)."""
    sd = timm_backbone(11, n_reg=2, pos_with_reg=True)
    cfg = config_from_timm("vit_small_patch16_224", {"model_args": {"num_heads": HEADS, "img_size": IMG}},
                           state_dict=sd)
    assert cfg.num_registers == 2 and cfg.pos_embed_prefix
    model = load_timm_state_dict(sd, "vit_small_patch16_224", {"model_args": {"num_heads": HEADS, "img_size": IMG}})
    ref_tokens, ref_outs, _ = ref_forward(sd, X, HEADS)
    with torch.no_grad():
        out, cache = model.run_with_cache(X, names_filter="blocks.*.hook_resid_post")
    torch.testing.assert_close(out, ref_tokens[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], ref_outs[1], atol=1e-4, rtol=0)


def test_registers_without_class_pos_entries():
    sd = timm_backbone(12, n_reg=4, pos=torch.randn(1, GRID * GRID, D))
    args = {"model_args": {"num_heads": HEADS, "img_size": IMG}}
    model = load_timm_state_dict(sd, "vit_small_patch14_reg4_dinov2", args)
    assert not model.cfg.pos_embed_prefix
    ref_tokens, _, _ = ref_forward(sd, X, HEADS, no_embed_class=True)
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref_tokens[:, 0], atol=1e-4, rtol=0)


def test_old_linear_patch_embedding_is_reshaped():
    sd = timm_backbone(13)
    w = sd["patch_embed.proj.weight"]
    flat = {**sd, "patch_embed.proj.weight": w.reshape(D, -1)}
    cfg = config_from_timm("vit_small_patch8_224", {"model_args": {"num_heads": HEADS, "img_size": IMG}},
                           state_dict=sd)
    out = convert_timm_state_dict(flat, cfg)
    assert torch.equal(out["patch_embed.proj.weight"], w)


def test_unsupported_architectures_fail_clearly():
    for name in ("vit_relpos_base_patch16_224", "naflexvit_base_patch16_siglip", "vit_giant_patch14_dinov2",
                 "vit_large_patch16_sapiens2", "vit_small_patch16_lingbot", "vit_pe_lang_large_patch14_448"):
        with pytest.raises(ValueError, match="not"):
            timm_args_from_name(name)
    sd = {**timm_backbone(14), "blocks.0.attn.gate.weight": torch.ones(8, 8)}
    with pytest.raises(CheckpointError, match="gated attention"):
        config_from_timm("vit_small_patch16_224", None, state_dict=sd)
    with pytest.raises(ValueError, match="dynamic_img_pad"):
        config_from_timm("vit_small_patch16_224", {"model_args": {"dynamic_img_pad": True}})


def test_clip_projection_with_a_bias_is_a_linear_head():
    sd = {**timm_backbone(15), "norm_pre.weight": torch.ones(D), "norm_pre.bias": torch.zeros(D),
          "head.weight": torch.randn(16, D)}
    del sd["patch_embed.proj.bias"]
    args = {"model_args": {"num_heads": HEADS, "img_size": IMG}}
    zero = config_from_timm("vit_base_patch16_clip_224", args, state_dict={**sd, "head.bias": torch.zeros(16)})
    nonzero = config_from_timm("vit_base_patch16_clip_224", args, state_dict={**sd, "head.bias": torch.ones(16)})
    assert zero.head == "clip_proj" and nonzero.head == "linear"
    with pytest.raises(CheckpointError, match="not zero"):
        convert_timm_state_dict({**sd, "head.bias": torch.ones(16)}, zero)


def test_timm_folder_detection_and_errors(tmp_path):
    assert not is_timm_folder(tmp_path)
    (tmp_path / "config.json").write_text('{"architecture": "vit_small_patch16_224"}')
    assert not is_timm_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_timm_folder(tmp_path)
    torch.save(timm_backbone(16), tmp_path / "pytorch_model.bin")
    assert is_timm_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_timm_folder(tmp_path / "nope")
