"""Live parity against Hugging Face transformers: tiny random-weight models, saved with save_pretrained,
loaded with vitscope, compared activation by activation (fp32, max abs diff <= 1e-4).

Every parameter is randomised (LayerNorm weights and biases, layer-scale, tokens, position embeddings) so
that a wrong mapping cannot pass. HF ``hidden_states[0]`` is compared with ``blocks.0.hook_resid_pre``,
``hidden_states[i + 1]`` with ``blocks.{i}.hook_resid_post`` and ``attentions[i]`` (eager attention) with
``blocks.{i}.attn.hook_pattern``.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vitscope.models.config import ViTConfig  # noqa: E402
from vitscope.models.converters.common import CheckpointError, load_strict  # noqa: E402
from vitscope.models.converters.hf import (DROPPED_KEYS, config_from_hf, convert_hf_state_dict,  # noqa: E402
                                           hf_preprocess, is_hf_folder, load_hf_folder)
from vitscope.models.preprocess import CLIP_MEAN, IMAGENET_MEAN, INCEPTION_MEAN  # noqa: E402
from vitscope.models.vit import HookedViT, sincos_2d  # noqa: E402

TOL = 1e-4
DEPTH = 3
SMALL = dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=4, image_size=32, patch_size=8,
             attn_implementation="eager")


def _vit_like(cls_cfg, **kw):
    return cls_cfg(**SMALL, intermediate_size=64, **kw)


def _dinov2_like(cls_cfg, **kw):
    return cls_cfg(**SMALL, mlp_ratio=2, **kw)


# name -> (builder of the HF model, forward kwargs)
FAMILIES = {
    "vit_cls": lambda: transformers.ViTForImageClassification(_vit_like(transformers.ViTConfig, num_labels=7)),
    "vit_model": lambda: transformers.ViTModel(_vit_like(transformers.ViTConfig)),
    "deit_teacher": lambda: transformers.DeiTForImageClassificationWithTeacher(
        _vit_like(transformers.DeiTConfig, num_labels=7)),
    "dinov2": lambda: transformers.Dinov2Model(_dinov2_like(transformers.Dinov2Config)),
    "dinov2_reg": lambda: transformers.Dinov2WithRegistersModel(
        _dinov2_like(transformers.Dinov2WithRegistersConfig, num_register_tokens=4)),
    "clip": lambda: transformers.CLIPVisionModel(_vit_like(transformers.CLIPVisionConfig)),
    "clip_proj": lambda: transformers.CLIPVisionModelWithProjection(
        _vit_like(transformers.CLIPVisionConfig, projection_dim=16)),
    "mae": lambda: transformers.ViTMAEModel(_vit_like(transformers.ViTMAEConfig, mask_ratio=0.0)),
}




def hf_mae_sincos(height: int, width: int, dim: int) -> torch.Tensor:
    """The table HF's ViTMAEEmbeddings.initialize_weights writes (1, 1 + h * w, dim), from HF's own function."""
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    pe = build_2d_sinusoidal_position_embedding(height=height, width=width, embed_dim=dim, cls_token=True)
    half = dim // 2
    return torch.cat([pe[..., half:], pe[..., :half]], dim=-1)[None]     # HF's h/w rotation


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random, LayerNorms away from (1, 0), layer-scale away from its init."""
    g = torch.Generator().manual_seed(seed)
    mae = model.config.model_type == "vit_mae"
    for name, p in model.named_parameters():
        if mae and name.endswith("position_embeddings"):
            # MAE's fixed sin-cos table (transformers 5 leaves it at zero when built from a config)
            side = int(round((p.shape[1] - 1) ** 0.5))
            p.copy_(hf_mae_sincos(side, side, p.shape[2]))
        elif name.endswith("lambda1"):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif p.ndim == 1 and "norm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        elif p.ndim >= 2 and name.endswith("weight"):
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
        else:                                           # cls / dist / register tokens, position embeddings
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def build(name: str, tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    hf = FAMILIES[name]()
    randomize(hf, seed)
    hf.eval()
    folder = tmp_path / name
    hf.save_pretrained(folder)
    return hf, folder


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def assert_close(a, b, what: str) -> None:
    d = maxdiff(a, b)
    assert d <= TOL, f"{what}: max abs diff {d:.3g} > {TOL}"


def run_vs(model: HookedViT, x: torch.Tensor):
    wanted = ("hook_resid_pre", "hook_resid_post", "hook_pattern", "hook_normalized", "hook_pooled",
              "hook_pooled_dist")
    with torch.no_grad():
        return model.run_with_cache(x, names_filter=lambda n: n.endswith(wanted))


def check_stream(out, cache, depth: int, perm: torch.Tensor | None = None) -> None:
    """HF hidden states and attentions vs the vitscope cache; ``perm[b]`` = vitscope token index of HF token j."""
    def re(t, kind):
        if perm is None:
            return t
        idx = perm
        if kind == "resid":                                                  # B, T, D
            return torch.stack([t[b, idx[b]] for b in range(t.shape[0])])
        return torch.stack([t[b][:, idx[b]][:, :, idx[b]] for b in range(t.shape[0])])   # B, H, T, T

    hs, att = out.hidden_states, out.attentions
    assert len(hs) == depth + 1 and len(att) == depth
    assert_close(hs[0], re(cache["blocks.0.hook_resid_pre"], "resid"), "hidden_states[0] vs blocks.0.hook_resid_pre")
    for i in range(depth):
        assert_close(hs[i + 1], re(cache[f"blocks.{i}.hook_resid_post"], "resid"),
                     f"hidden_states[{i + 1}] vs blocks.{i}.hook_resid_post")
        assert_close(att[i], re(cache[f"blocks.{i}.attn.hook_pattern"], "pattern"),
                     f"attentions[{i}] vs blocks.{i}.attn.hook_pattern")


# ----------------------------------------------------------------------------- per-family parity
@pytest.mark.parametrize("name", FAMILIES)
def test_family_parity(name, tmp_path):
    hf, folder = build(name, tmp_path)
    model = load_hf_folder(folder)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kw = {"noise": torch.arange(16.0).expand(2, 16)} if name == "mae" else {}   # argsort = identity: no shuffle
    with torch.no_grad():
        out = hf(x, output_hidden_states=True, output_attentions=True, **kw)
    logits, cache = run_vs(model, x)
    check_stream(out, cache, DEPTH)
    L = DEPTH - 1

    if name in ("vit_cls",):
        assert model.cfg.head == "linear" and model.cfg.num_classes == 7
        assert_close(out.logits, logits, "logits")
    elif name == "deit_teacher":
        assert model.cfg.head == "distilled"
        assert_close(out.logits, logits, "logits")
        assert_close(out.cls_logits, model.head(cache["hook_pooled"]), "cls_logits")
        assert_close(out.distillation_logits, model.head_dist(cache["hook_pooled_dist"]), "distillation_logits")
    elif name in ("vit_model", "dinov2", "dinov2_reg", "mae"):
        assert model.cfg.head == "none"
        assert_close(out.last_hidden_state, cache["ln_final.hook_normalized"], "last_hidden_state vs ln_final")
        assert_close(out.last_hidden_state[:, 0], logits, "CLS of last_hidden_state vs pooled")
        if name.startswith("dinov2"):
            assert_close(out.pooler_output, logits, "pooler_output")
    elif name == "clip":
        assert_close(out.last_hidden_state, cache[f"blocks.{L}.hook_resid_post"], "last_hidden_state vs resid_post")
        assert_close(out.pooler_output, logits, "pooler_output vs pooled")
    elif name == "clip_proj":
        assert model.cfg.head == "clip_proj" and model.cfg.num_classes == 16
        assert_close(out.last_hidden_state, cache[f"blocks.{L}.hook_resid_post"], "last_hidden_state vs resid_post")
        assert_close(out.image_embeds, logits, "image_embeds vs logits")

    if name == "dinov2_reg":
        lay = model.token_layout(0)
        assert lay.cls == 0 and lay.registers == (1, 2, 3, 4) and lay.patches == slice(5, 21)
    # the fast (SDPA) path without hooks gives the same output
    with torch.no_grad():
        assert_close(model(x), logits, "SDPA forward vs explicit forward")


def test_mae_shuffled_tokens(tmp_path):
    """Random noise with mask_ratio=0 permutes the patch tokens in HF; un-permuted they match vitscope."""
    hf, folder = build("mae", tmp_path)
    model = load_hf_folder(folder)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = hf(x, noise=noise, output_hidden_states=True, output_attentions=True)
    _, cache = run_vs(model, x)
    ids_shuffle = noise.argsort(dim=1)
    assert torch.equal(out.ids_restore, ids_shuffle.argsort(dim=1))
    assert not torch.equal(ids_shuffle, torch.arange(16).expand(2, 16))
    perm = torch.cat([torch.zeros(2, 1, dtype=torch.long), 1 + ids_shuffle], dim=1)      # HF token j <- vitscope
    check_stream(out, cache, DEPTH, perm=perm)
    lhs = torch.stack([cache["ln_final.hook_normalized"][b, perm[b]] for b in range(2)])
    assert_close(out.last_hidden_state, lhs, "last_hidden_state (shuffled)")


def test_mae_pos_table_is_vitscope_sincos(tmp_path):
    """HF's stored MAE table is the 2-D sin-cos vitscope recomputes at other sizes (so pos_embed='sincos' is right)."""
    hf, folder = build("mae", tmp_path)
    table = hf_mae_sincos(4, 4, 32)
    assert_close(table[0, 1:], sincos_2d(32, (4, 4)), "HF MAE sin-cos table vs sincos_2d")
    assert table[0, 0].abs().max() == 0
    model = load_hf_folder(folder)
    assert model.cfg.pos_embed == "sincos"
    assert_close(model.pos_embed, hf.embeddings.position_embeddings.detach(), "loaded table")
    # a non-square 4x6 grid: HF's function and vitscope's recomputed table agree too (row-major, x first)
    assert_close(hf_mae_sincos(4, 6, 32)[0, 1:], sincos_2d(32, (4, 6)), "4x6 sin-cos grid")


def test_clip_full_model_drops_text_tower(tmp_path):
    """A CLIPModel folder (model_type 'clip'): the vision tower + visual projection load, the text tower is dropped."""
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=4, intermediate_size=64,
                           image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=24, attn_implementation="eager")
    hf = transformers.CLIPModel(cfg)
    randomize(hf)
    hf.eval()
    hf.save_pretrained(tmp_path / "clipfull")
    model = load_hf_folder(tmp_path / "clipfull")
    assert model.cfg.head == "clip_proj" and model.cfg.num_classes == 24 and model.cfg.act == "gelu"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        emb = hf.get_image_features(pixel_values=x)
        emb = emb if torch.is_tensor(emb) else emb.pooler_output
        vis = hf.vision_model(x, output_hidden_states=True, output_attentions=True)
    logits, cache = run_vs(model, x)
    assert_close(emb, logits, "get_image_features vs logits")
    check_stream(vis, cache, DEPTH)


# ----------------------------------------------------------------------------- other inputs and formats
def test_transformers5_in_memory_names(tmp_path):
    """convert_hf_state_dict also reads the in-memory names of transformers >= 5 (layers.N.attention.q_proj)."""
    for name in ("vit_cls", "dinov2", "clip_proj"):
        hf, folder = build(name, tmp_path)
        sd = hf.state_dict()
        assert any(".q_proj." in k for k in sd), "expected transformers-5 names in model.state_dict()"
        cfg = config_from_hf(json.loads((folder / "config.json").read_text()), keys=sd.keys())
        model = HookedViT(cfg).eval()
        load_strict(model, convert_hf_state_dict(sd, cfg, hf.config.model_type))
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            out = hf(x)
            ref = out.logits if name == "vit_cls" else (out.pooler_output if name == "dinov2" else out.image_embeds)
            assert_close(ref, model(x), f"{name} from in-memory names")


def test_pytorch_bin_and_sharded_folders(tmp_path):
    from safetensors.torch import load_file

    hf, folder = build("vit_cls", tmp_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = hf(x).logits
    # pytorch_model.bin read with torch.load(weights_only=True)
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    with torch.no_grad():
        assert_close(ref, load_hf_folder(folder)(x), "pytorch_model.bin")
    # sharded safetensors with an index
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    with torch.no_grad():
        assert_close(ref, load_hf_folder(tmp_path / "sharded")(x), "sharded safetensors")


# ----------------------------------------------------------------------------- interpolated position embeddings
def test_interpolation_dinov2_registers_matches(tmp_path):
    """Dinov2WithRegisters interpolates like vitscope (bicubic, antialias=True): parity at 48x48 (6x6 grid)."""
    hf, folder = build("dinov2_reg", tmp_path)
    model = load_hf_folder(folder)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        out = hf(x, output_hidden_states=True, output_attentions=True)
    _, cache = run_vs(model, x)
    check_stream(out, cache, DEPTH)
    assert_close(out.last_hidden_state, cache["ln_final.hook_normalized"], "last_hidden_state at 48x40")


@pytest.mark.parametrize("name", ["vit_cls", "dinov2", "clip_proj"])
def test_interpolation_matches_hf_kernel(name, tmp_path):
    """HF ViT, DeiT, CLIP and plain Dinov2 resample with bicubic *without* antialias (timm antialiases);
    config_from_hf sets ``pos_interp_antialias=False`` for them, so outputs at another size agree."""
    hf, folder = build(name, tmp_path)
    model = load_hf_folder(folder)
    assert model.cfg.pos_interp_antialias is False
    x = torch.randn(2, 3, 48, 48)
    kw = {} if name == "dinov2" else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        out = hf(x, **kw)
        ref = out.logits if name == "vit_cls" else (out.pooler_output if name == "dinov2" else out.image_embeds)
        assert_close(ref, model(x), f"{name} at 48x48")
        model.cfg.pos_interp_antialias = True          # timm's kernel really is different here
        assert maxdiff(ref, model(x)) > TOL


# ----------------------------------------------------------------------------- errors
def _rewrite(folder, edit):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"))


def test_unexpected_key_is_named(tmp_path):
    _, folder = build("vit_cls", tmp_path)
    _rewrite(folder, lambda sd: sd.__setitem__("vit.encoder.layer.1.attention.attention.extra.weight",
                                               torch.zeros(32, 32)))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*vit\.encoder\.layer\.1\.attention\.attention\.extra"):
        load_hf_folder(folder)


def test_unexpected_top_level_key_is_named(tmp_path):
    _, folder = build("dinov2", tmp_path)
    _rewrite(folder, lambda sd: sd.__setitem__("embeddings.surprise", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*embeddings\.surprise"):
        load_hf_folder(folder)


def test_misshaped_key_is_named(tmp_path):
    _, folder = build("vit_cls", tmp_path)
    _rewrite(folder, lambda sd: sd.__setitem__("vit.encoder.layer.1.intermediate.dense.weight", torch.zeros(60, 32)))
    with pytest.raises(CheckpointError) as e:
        load_hf_folder(folder)
    msg = str(e.value)
    assert "shape mismatches" in msg and "blocks.1.mlp.fc1.weight" in msg
    assert "vit.encoder.layer.1.intermediate.dense.weight" in msg          # the HF name too


def test_misshaped_qkv_is_named(tmp_path):
    _, folder = build("clip", tmp_path)
    _rewrite(folder, lambda sd: sd.__setitem__("encoder.layers.0.self_attn.k_proj.weight", torch.zeros(32, 30)))
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.self_attn\.k_proj\.weight"):
        load_hf_folder(folder)


def test_missing_key_is_named(tmp_path):
    _, folder = build("dinov2_reg", tmp_path)
    _rewrite(folder, lambda sd: sd.pop("encoder.layer.2.layer_scale2.lambda1"))
    with pytest.raises(CheckpointError, match=r"missing keys.*blocks\.2\.ls2\.gamma"):
        load_hf_folder(folder)


def test_dropped_keys_are_only_the_listed_ones(tmp_path):
    hf, folder = build("vit_model", tmp_path)              # has a pooler
    sd = hf.state_dict()
    assert any(k.startswith("pooler.") for k in sd)
    cfg = config_from_hf(hf.config.to_dict(), keys=sd.keys())
    conv = convert_hf_state_dict(sd, cfg, "vit")
    assert not any("pooler" in k for k in conv)
    assert r"^pooler\." in DROPPED_KEYS and r"^embeddings\.mask_token$" in DROPPED_KEYS


@pytest.mark.parametrize("change, field", [
    ({"model_type": "dinov2", "use_swiglu_ffn": True}, "use_swiglu_ffn"),
    ({"model_type": "vit", "hidden_act": "relu"}, "hidden_act"),
    ({"model_type": "vit", "patch_size": [16, 8]}, "patch_size"),
    ({"model_type": "swin"}, "model_type"),
    ({"model_type": "dinov2", "architectures": ["Dinov2ForImageClassification"]}, "Dinov2ForImageClassification"),
])
def test_unsupported_config_fields(change, field):
    with pytest.raises(ValueError, match=field):
        config_from_hf(change)


# ----------------------------------------------------------------------------- config mapping details
def test_config_mapping_fields():
    c = config_from_hf({"model_type": "vit", "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                        "image_size": 384, "patch_size": 32, "qkv_bias": False, "num_labels": 3,
                        "architectures": ["ViTForImageClassification"]})
    assert (c.act, c.norm_eps, c.img_size, c.patch_size, c.qkv_bias, c.head, c.num_classes) == \
        ("gelu_tanh", 1e-6, (384, 384), 32, False, "linear", 3)
    # head decided by the keys when given, not by the architectures field
    c = config_from_hf({"model_type": "vit", "architectures": ["ViTForImageClassification"]},
                       keys=["vit.layernorm.weight"])
    assert c.head == "none"
    d = config_from_hf({"model_type": "dinov2", "image_size": 518, "patch_size": 14, "layerscale_value": 1e-5})
    assert d.pos_embed_grid == (37, 37) and d.layer_scale_init == 1e-5 and d.pos_embed_prefix
    r = config_from_hf({"model_type": "dinov2_with_registers", "num_register_tokens": 4})
    assert r.num_registers == 4 and r.register_location == "prefix" and not r.pos_embed_prefix
    full = config_from_hf({"model_type": "clip", "projection_dim": 768, "architectures": ["CLIPModel"],
                           "vision_config": {"projection_dim": 512, "patch_size": 14}})
    assert full.head == "clip_proj" and full.num_classes == 768 and full.pre_norm and not full.patch_bias
    assert full.act == "quick_gelu" and full.norm_eps == 1e-5
    assert config_from_hf({"model_type": "deit", "architectures": ["DeiTForImageClassificationWithTeacher"]}
                          ).head == "distilled"
    assert isinstance(c, ViTConfig)


# ----------------------------------------------------------------------------- folders and preprocessing
def test_is_hf_folder(tmp_path):
    _, folder = build("vit_model", tmp_path)
    assert is_hf_folder(folder)
    own = tmp_path / "own"
    own.mkdir()
    ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4).save(own / "config.json")
    assert not is_hf_folder(own)
    assert not is_hf_folder(tmp_path / "missing")
    assert not is_hf_folder(folder / "config.json")
    (own / "config.json").write_text("{not json")
    assert not is_hf_folder(own)


def test_hf_preprocess_from_processor_files(tmp_path):
    """preprocessor_config.json as written by transformers' own image processors."""
    cases = {
        "clip": (transformers.CLIPImageProcessor(), {"model_type": "clip_vision_model"}),
        "vit": (transformers.ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3),
                {"model_type": "vit"}),
        "dino": (transformers.BitImageProcessor(size={"shortest_edge": 256}, crop_size=224, do_center_crop=True,
                                                image_mean=list(IMAGENET_MEAN), image_std=[0.229, 0.224, 0.225],
                                                resample=3), {"model_type": "dinov2"}),
        "deit": (transformers.DeiTImageProcessor(image_mean=list(IMAGENET_MEAN), image_std=[0.229, 0.224, 0.225]),
                 {"model_type": "deit"}),
    }
    got = {}
    for name, (proc, conf) in cases.items():
        d = tmp_path / name
        proc.save_pretrained(d)
        (d / "config.json").write_text(json.dumps(conf))
        got[name] = hf_preprocess(d)
    assert got["clip"].input_size == (224, 224) and got["clip"].crop_pct == 1.0
    assert got["clip"].mean == pytest.approx(CLIP_MEAN) and got["clip"].interpolation == "bicubic"
    assert got["vit"].input_size == (224, 224) and got["vit"].crop_pct == 1.0
    assert got["vit"].interpolation == "bilinear" and got["vit"].mean == pytest.approx(INCEPTION_MEAN)
    assert got["dino"].input_size == (224, 224) and got["dino"].crop_pct == pytest.approx(0.875)
    assert got["dino"].mean == pytest.approx(IMAGENET_MEAN)
    assert got["deit"].input_size == (224, 224) and got["deit"].crop_pct == pytest.approx(224 / 256)


def test_hf_preprocess_defaults_and_dinov2_img_size(tmp_path):
    assert hf_preprocess({"model_type": "clip_vision_model", "image_size": 336}).input_size == (336, 336)
    assert hf_preprocess({"model_type": "dinov2", "image_size": 518}).input_size == (518, 518)
    assert hf_preprocess({"model_type": "vit"}).mean == pytest.approx(INCEPTION_MEAN)
    # a DINOv2 folder trained at a larger size whose processor crops to 32: img_size follows the crop
    hf = transformers.Dinov2Model(transformers.Dinov2Config(**{**SMALL, "image_size": 48}, mlp_ratio=2))
    randomize(hf)
    hf.eval()
    hf.save_pretrained(tmp_path / "d")
    transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(tmp_path / "d")
    model = load_hf_folder(tmp_path / "d")
    assert model.cfg.img_size == (32, 32) and model.cfg.pos_embed_grid == (6, 6)
    assert model.preprocess_cfg.input_size == (32, 32)
