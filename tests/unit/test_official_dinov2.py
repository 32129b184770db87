"""Official DINOv2 checkpoints (``dinov2_vits14_pretrain.pth``, ``..._reg4_pretrain.pth``) against a forward pass
written here from the official model's definition: [CLS] + patches + position embedding (resampled with
the official rule at other sizes), registers inserted after CLS, LayerScale blocks, final norm."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitscope.models.converters import detect_format
from vitscope.models.converters.common import CheckpointError
from vitscope.models.converters.official import config_from_official, load_official, read_checkpoint

D, DEPTH, HEADS, P, GRID = 32, 2, 4, 14, 4


def official_checkpoint(seed: int, n_reg: int = 0, chunked: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0, m=0.0):
        return torch.randn(*shape, generator=g) * s + m

    sd = {"cls_token": r(1, 1, D, s=0.5), "pos_embed": r(1, 1 + GRID * GRID, D, s=0.5), "mask_token": r(1, D),
          "patch_embed.proj.weight": r(D, 3, P, P, s=(3 * P * P) ** -0.5), "patch_embed.proj.bias": r(D, s=0.2),
          "norm.weight": r(D, s=0.3, m=1), "norm.bias": r(D, s=0.2)}
    if n_reg:
        sd["register_tokens"] = r(1, n_reg, D, s=0.5)
    for i in range(DEPTH):
        b = f"blocks.0.{i}." if chunked else f"blocks.{i}."
        sd.update({b + "norm1.weight": r(D, s=0.3, m=1), b + "norm1.bias": r(D, s=0.2),
                   b + "attn.qkv.weight": r(3 * D, D, s=1.5 / D ** 0.5), b + "attn.qkv.bias": r(3 * D, s=0.2),
                   b + "attn.proj.weight": r(D, D, s=D ** -0.5), b + "attn.proj.bias": r(D, s=0.2),
                   b + "ls1.gamma": r(D, s=0.3, m=0.5), b + "norm2.weight": r(D, s=0.3, m=1),
                   b + "norm2.bias": r(D, s=0.2), b + "mlp.fc1.weight": r(4 * D, D, s=D ** -0.5),
                   b + "mlp.fc1.bias": r(4 * D, s=0.2), b + "mlp.fc2.weight": r(D, 4 * D, s=(4 * D) ** -0.5),
                   b + "mlp.fc2.bias": r(D, s=0.2), b + "ls2.gamma": r(D, s=0.3, m=0.5)})
    return sd


def official_forward(sd, x, *, offset: float, antialias: bool) -> torch.Tensor:
    """The tokens after the final norm, as DinoVisionTransformer.forward_features computes them."""
    B, _, h, w = x.shape
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], dim=1)
    pos = sd["pos_embed"]
    M = int(math.sqrt(pos.shape[1] - 1))
    h0, w0 = h // P, w // P
    if (h0, w0) != (M, M):
        grid = pos[:, 1:].reshape(1, M, M, D).permute(0, 3, 1, 2)
        if offset:
            grid = F.interpolate(grid, scale_factor=((h0 + offset) / M, (w0 + offset) / M), mode="bicubic",
                                 antialias=antialias)
        else:
            grid = F.interpolate(grid, size=(h0, w0), mode="bicubic", antialias=antialias)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, D)], dim=1)
    t = t + pos
    if "register_tokens" in sd:
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(B, -1, -1), t[:, 1:]], dim=1)
    dh = D // HEADS
    for i in range(DEPTH):
        b = next(f"blocks.{c}{i}." for c in ("", "0.") if f"blocks.{c}{i}.norm1.weight" in sd)
        y = F.layer_norm(t, (D,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        qkv = (y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]).reshape(B, -1, 3, HEADS, dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        z = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1) @ v).transpose(1, 2).reshape(B, -1, D)
        t = t + sd[b + "ls1.gamma"] * (z @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"])
        y = F.layer_norm(t, (D,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        y = F.gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]) @ sd[b + "mlp.fc2.weight"].T
        t = t + sd[b + "ls2.gamma"] * (y + sd[b + "mlp.fc2.bias"])
    return F.layer_norm(t, (D,), sd["norm.weight"], sd["norm.bias"], 1e-6)


@pytest.mark.parametrize("n_reg", [0, 4])
@pytest.mark.parametrize("grid", [GRID, 6, 3])
def test_official_dinov2_matches_its_definition(tmp_path, n_reg, grid):
    sd = official_checkpoint(n_reg + grid, n_reg)
    path = tmp_path / ("dinov2_vits14_reg4_pretrain.pth" if n_reg else "dinov2_vits14_pretrain.pth")
    torch.save(sd, path)
    raw = read_checkpoint(path)
    assert detect_format(raw) == "dinov2"
    cfg = config_from_official("dinov2", raw, num_heads=HEADS)
    assert cfg.img_size == (GRID * P, GRID * P) and cfg.num_registers == n_reg and cfg.layer_scale_init
    model = load_official(path, num_heads=HEADS)
    x = torch.randn(2, 3, grid * P, grid * P, generator=torch.Generator().manual_seed(grid))
    want = official_forward(sd, x, offset=0.0 if n_reg else 0.1, antialias=bool(n_reg))
    with torch.no_grad():
        got = model.forward_features(x)
    assert got.shape == want.shape == (2, 1 + n_reg + grid * grid, D)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    if grid != GRID:                     # the official resampling rule matters: timm's kernel gives other tokens
        timm_rule = official_forward(sd, x, offset=0.0, antialias=True)
        other = timm_rule if not n_reg else official_forward(sd, x, offset=0.1, antialias=False)
        assert (other - want).abs().max() > 1e-3


def test_training_checkpoint_teacher_and_fsdp_chunks():
    flat = official_checkpoint(7, 4)
    chunked = official_checkpoint(7, 4, chunked=True)
    raw = {"teacher": {f"backbone.{k}": v for k, v in chunked.items()}, "iteration": 5}
    assert detect_format(raw) == "dinov2"
    model = load_official(raw, num_heads=HEADS)
    x = torch.randn(1, 3, GRID * P, GRID * P)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), official_forward(flat, x, offset=0.0, antialias=True),
                                   atol=1e-4, rtol=0)


def test_giant_swiglu_is_refused_with_the_reason():
    sd = official_checkpoint(1)
    for i in range(DEPTH):
        sd[f"blocks.{i}.mlp.w12.weight"] = sd.pop(f"blocks.{i}.mlp.fc1.weight")
    with pytest.raises(CheckpointError, match="SwiGLU"):
        load_official(sd, num_heads=HEADS)


def test_official_dino_uses_its_offset_rule():
    """Official DINO (v1) resamples like DINOv2's plain models: scale factor (new + 0.1) / old, no antialias."""
    sd = {k: v for k, v in official_checkpoint(3).items() if ".ls" not in k and k != "mask_token"}
    cfg = config_from_official("dino", sd, num_heads=HEADS)
    assert (cfg.pos_interp_offset, cfg.pos_interp_antialias) == (0.1, False)


def _dinov2_entry(tmp_path, monkeypatch, sd):
    """A registry entry with timm's resampling rule whose "url" source is an official DINOv2 file."""
    from vitscope.models import registry
    from vitscope.models.preprocess import PreprocessConfig
    from vitscope.models.registry import ModelEntry, WeightSource

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))
    src = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, src)
    timm_cfg = config_from_official("dinov2", sd, num_heads=HEADS).replace(pos_interp_antialias=True,
                                                                           pos_interp_offset=0.0)
    e = ModelEntry(name="dinov2_test.unit", family="dinov2", size="T/14", config=timm_cfg,
                   preprocess=PreprocessConfig(input_size=GRID * P), aliases=(),
                   sources=(WeightSource("url", src.as_uri(), "dinov2", filename=src.name),))
    monkeypatch.setitem(registry._REGISTRY, e.name, e)
    return e, src


def test_official_file_resamples_by_its_format_whatever_the_route(tmp_path, monkeypatch):
    """A registry name (timm's resampling) whose "url" source is the official file: from the URL or given as
    ``weights=``, the model resamples as the official code does, and ``meta["format"]`` says "dinov2"."""
    import vitscope as vs

    sd = official_checkpoint(11)
    e, src = _dinov2_entry(tmp_path, monkeypatch, sd)
    x = torch.randn(1, 3, 6 * P, 6 * P, generator=torch.Generator().manual_seed(0))
    want = official_forward(sd, x, offset=0.1, antialias=False)
    with torch.no_grad():
        from_url = vs.load_model(e.name)
        as_weights = vs.load_model(e.name, weights=src)
        torch.testing.assert_close(from_url.forward_features(x), want, atol=1e-4, rtol=0)
        torch.testing.assert_close(as_weights.forward_features(x), want, atol=1e-4, rtol=0)
    assert from_url.meta["format"] == as_weights.meta["format"] == "dinov2"
    assert (as_weights.cfg.pos_interp_offset, as_weights.cfg.pos_interp_antialias) == (0.1, False)


def test_official_dino_file_as_weights_uses_dino_rule_and_timm_copy_keeps_timm_rule(tmp_path, monkeypatch):
    """Official DINO (v1) files and timm's hub copies have the same keys: the file decides. A ``.pth`` release
    resamples with DINO's rule; the same tensors as a timm hub ``model.safetensors`` run as timm runs them."""
    import vitscope as vs
    from safetensors.torch import save_file

    sd = {k: v for k, v in official_checkpoint(5).items() if ".ls" not in k and k != "mask_token"}   # DINO v1
    official = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(sd, official)
    hub_copy = tmp_path / "model.safetensors"
    save_file(sd, str(hub_copy))
    # an entry like the registry's DINO ViT-S/16 (timm's rule), at the tiny width of these tensors
    from vitscope.models import registry
    from vitscope.models.registry import ModelEntry

    cfg = config_from_official("dino", sd, num_heads=HEADS).replace(pos_interp_antialias=True, pos_interp_offset=0.0)
    base = registry.get_entry("dino-vits16")
    e = ModelEntry(name="dino_test.unit", family="dino", size="T/14", config=cfg, preprocess=base.preprocess,
                   sources=base.sources)
    monkeypatch.setitem(registry._REGISTRY, e.name, e)
    a = vs.load_model(e.name, weights=official)
    b = vs.load_model(e.name, weights=hub_copy)
    assert (a.meta["format"], b.meta["format"]) == ("dino", "timm")
    x = torch.randn(1, 3, 6 * P, 5 * P, generator=torch.Generator().manual_seed(1))

    def dino_forward(offset, antialias):       # DINO v1 = DINOv2's plain forward without LayerScale
        ones = {f"blocks.{i}.ls{j}.gamma": torch.ones(D) for i in range(DEPTH) for j in (1, 2)}
        return official_forward({**sd, **ones}, x, offset=offset, antialias=antialias)

    with torch.no_grad():
        torch.testing.assert_close(a.forward_features(x), dino_forward(0.1, False), atol=1e-4, rtol=0)
        torch.testing.assert_close(b.forward_features(x), dino_forward(0.0, True), atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_reg", [0, 4])
def test_timm_folder_with_an_official_file_as_weights(tmp_path, n_reg):
    """The timm route (a timm folder or timm/<name>, config from config.json) with an official DINOv2 file as
    ``weights=``: read as that format and resampled with the official rule."""
    import json

    import vitscope as vs

    sd = official_checkpoint(21 + n_reg, n_reg)
    arch = "vit_small_patch14_reg4_dinov2" if n_reg else "vit_small_patch14_dinov2"
    folder = tmp_path / "timm_folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": 0,
        "model_args": {"embed_dim": D, "depth": DEPTH, "num_heads": HEADS, "patch_size": P, "img_size": GRID * P},
        "pretrained_cfg": {"input_size": [3, GRID * P, GRID * P], "crop_pct": 1.0}}))
    official = tmp_path / "dinov2_pretrain.pth"
    torch.save(sd, official)
    m = vs.load_model(folder, weights=official)
    assert m.meta["format"] == "dinov2"
    x = torch.randn(1, 3, 6 * P, 5 * P, generator=torch.Generator().manual_seed(3))
    want = official_forward(sd, x, offset=0.0 if n_reg else 0.1, antialias=bool(n_reg))
    with torch.no_grad():
        torch.testing.assert_close(m.forward_features(x), want, atol=1e-4, rtol=0)
