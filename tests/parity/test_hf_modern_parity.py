"""Live parity against transformers for the modern vision towers: DINOv3ViTModel (plain and gated MLP, with
registers), SiglipVisionModel, SiglipModel's vision tower, Siglip2VisionModel (fixed resolution), Aimv2VisionModel
and Aimv2Model's vision tower with its projection.

Tiny random-weight models (every parameter random: norms away from 1 / 0, LayerScale, tokens, positions) are
saved with ``save_pretrained`` and loaded with ``vs.load_model(folder)``; then, in float32, within 1e-4:
``hidden_states[0]`` vs ``blocks.0.hook_resid_pre``, ``hidden_states[i + 1]`` vs ``blocks.{i}.hook_resid_post``,
eager ``attentions[i]`` vs ``blocks.{i}.attn.hook_pattern``, ``last_hidden_state`` vs the final norm and
``pooler_output`` vs ``hook_pooled``, at the native size and (DINOv3, SigLIP, SigLIP 2) at 48 x 40 pixels, where
each library resamples its positions by its own rule (AIMv2's transformers model has no other-size path).
"""
from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

import vitscope as vs  # noqa: E402

TOL = 1e-4
DEPTH = 3
SMALL = dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=4, patch_size=8, intermediate_size=48,
             attn_implementation="eager")


def _siglip2_config():
    return transformers.Siglip2VisionConfig(**SMALL, num_patches=16)


FAMILIES = {
    "dinov3": lambda: transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
        **SMALL, image_size=32, num_register_tokens=2, layerscale_value=0.5)),
    "dinov3_gated": lambda: transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
        **SMALL, image_size=32, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu", key_bias=True)),
    "siglip": lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SMALL, image_size=32)),
    "siglip_model": lambda: transformers.SiglipModel(transformers.SiglipConfig(
        vision_config=dict(SMALL, image_size=32),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                         vocab_size=64), attn_implementation="eager")),
    "siglip2": lambda: transformers.Siglip2VisionModel(_siglip2_config()),
    "aimv2": lambda: transformers.Aimv2VisionModel(transformers.Aimv2VisionConfig(**SMALL, image_size=32)),
    "aimv2_model": lambda: transformers.Aimv2Model(transformers.Aimv2Config(
        vision_config=dict(SMALL, image_size=32, qkv_bias=True, mlp_bias=True),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                         vocab_size=64), projection_dim=16, attn_implementation="eager")),
}
OTHER_SIZE = ("dinov3", "dinov3_gated", "siglip", "siglip2")


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("lambda1"):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif p.ndim == 1 and "norm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        elif p.ndim >= 2 and "weight" in name and "embedding" not in name.split(".")[-2:][0]:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
        else:                                            # tokens, probes, position embeddings
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def build(name: str, tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    hf = FAMILIES[name]()
    randomize(hf, seed)
    hf.eval()
    folder = tmp_path / name
    hf.save_pretrained(folder)
    return hf, folder


def hf_forward(hf, name: str, x: torch.Tensor):
    """The transformers forward of the vision tower on images x (B, 3, H, W)."""
    kw = dict(output_hidden_states=True, output_attentions=True)
    if name == "siglip2":
        from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

        p = hf.config.patch_size
        patches = torch.stack([torch.from_numpy(convert_image_to_patches(img.numpy(), p)) for img in x])  # B, N, p*p*C
        shapes = torch.tensor([[x.shape[-2] // p, x.shape[-1] // p]] * x.shape[0])
        mask = torch.ones(patches.shape[:2], dtype=torch.long)
        return hf(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes, **kw)
    if name in ("siglip_model", "aimv2_model"):
        return hf.vision_model(pixel_values=x, **kw)
    if name == "siglip":
        return hf(pixel_values=x, interpolate_pos_encoding=tuple(x.shape[-2:]) != (32, 32), **kw)
    return hf(pixel_values=x, **kw)


def assert_close(a, b, what: str) -> None:
    assert a.shape == b.shape, (what, a.shape, b.shape)
    d = (a - b).abs().max().item()
    assert d <= TOL, f"{what}: max abs diff {d:.3g} > {TOL}"


@pytest.mark.parametrize("size", [(32, 32), (48, 40)], ids=["native", "48x40"])
@pytest.mark.parametrize("name", FAMILIES)
def test_modern_family_parity(name, size, tmp_path):
    if size != (32, 32) and name not in OTHER_SIZE:
        pytest.skip("transformers runs this model at its native size only")
    hf, folder = build(name, tmp_path)
    model = vs.load_model(folder)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf_forward(hf, name, x)
        logits, cache = model.run_with_cache(
            x, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post", "hook_pattern",
                                                  "hook_normalized", "hook_pooled")))
        fast = model(x)
    hs, att = out.hidden_states, out.attentions
    assert len(hs) == DEPTH + 1 and len(att) == DEPTH
    assert_close(hs[0], cache["blocks.0.hook_resid_pre"], "hidden_states[0]")
    for i in range(DEPTH):
        assert_close(hs[i + 1], cache[f"blocks.{i}.hook_resid_post"], f"hidden_states[{i + 1}]")
        assert_close(att[i], cache[f"blocks.{i}.attn.hook_pattern"], f"attentions[{i}]")
    assert_close(out.last_hidden_state, cache["ln_final.hook_normalized"], "last_hidden_state")
    assert_close(out.pooler_output, cache["hook_pooled"], "pooler_output")
    torch.testing.assert_close(fast, logits, atol=TOL, rtol=0)                           # SDPA = explicit path
    if name == "aimv2_model":
        with torch.no_grad():
            emb = hf.get_image_features(pixel_values=x)
        emb = emb.pooler_output if hasattr(emb, "pooler_output") else emb
        assert_close(emb, logits, "get_image_features vs the projection head")


def test_configs(tmp_path):
    d3 = vs.load_model(build("dinov3", tmp_path)[1]).cfg
    assert (d3.rope, d3.rope_layout, d3.num_registers, d3.qv_bias, d3.global_pool, d3.pos_embed) == (
        "dinov3", "half", 2, True, "token", "none")
    g = vs.load_model(build("dinov3_gated", tmp_path)[1]).cfg
    assert g.gated_mlp and g.act == "silu" and g.qkv_bias and not g.qv_bias
    s2 = vs.load_model(build("siglip2", tmp_path)[1]).cfg
    assert (s2.pos_interp_mode, s2.pos_interp_antialias, s2.global_pool, s2.class_token) == ("bilinear", True,
                                                                                          "map", False)
    a = vs.load_model(build("aimv2", tmp_path)[1]).cfg
    assert (a.norm, a.patch_norm, a.map_q_proj, a.map_mlp, a.map_qkv_bias) == ("rmsnorm", True, False, False, False)
    am = vs.load_model(build("aimv2_model", tmp_path)[1]).cfg
    assert (am.head, am.num_classes, am.qkv_bias, am.proj_bias) == ("clip_proj", 16, True, True)
