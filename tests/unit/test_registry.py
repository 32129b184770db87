"""The model registry: every seed model is there, every entry builds, sizes match the published counts."""
import pytest
import torch

from vitscope.models.preprocess import CLIP_MEAN, IMAGENET_MEAN, INCEPTION_MEAN
from vitscope.models.registry import get_entry, list_models, resolve_name
from vitscope.models.vit import HookedViT

# the seeds' table (reference/algorithms.md, "Models the seeds use"): (alias, canonical name)
SEED_MODELS = [
    # supervised ViT (timm AugReg), 224 and 384
    ("vit-s32", "vit_small_patch32_224.augreg_in21k_ft_in1k"),
    ("vit-s16", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
    ("vit-b32", "vit_base_patch32_224.augreg_in21k_ft_in1k"),
    ("vit-b16", "vit_base_patch16_224.augreg_in21k_ft_in1k"),
    ("vit-b8", "vit_base_patch8_224.augreg_in21k_ft_in1k"),
    ("vit-l16", "vit_large_patch16_224.augreg_in21k_ft_in1k"),
    ("vit-s32-384", "vit_small_patch32_384.augreg_in21k_ft_in1k"),
    ("vit-s16-384", "vit_small_patch16_384.augreg_in21k_ft_in1k"),
    ("vit-b32-384", "vit_base_patch32_384.augreg_in21k_ft_in1k"),
    ("vit-b16-384", "vit_base_patch16_384.augreg_in21k_ft_in1k"),
    ("vit-l16-384", "vit_large_patch16_384.augreg_in21k_ft_in1k"),
    # DeiT plain and distilled
    ("deit-s16", "deit_small_patch16_224.fb_in1k"),
    ("deit-b16", "deit_base_patch16_224.fb_in1k"),
    ("deit-s16-distilled", "deit_small_distilled_patch16_224.fb_in1k"),
    ("deit-b16-distilled", "deit_base_distilled_patch16_224.fb_in1k"),
    # DINO
    ("dino-vits16", "vit_small_patch16_224.dino"),
    ("dino-vits8", "vit_small_patch8_224.dino"),
    ("dino-vitb16", "vit_base_patch16_224.dino"),
    ("dino-vitb8", "vit_base_patch8_224.dino"),
    # DINOv2 plain and reg4
    ("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m"),
    ("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m"),
    ("dinov2-vitl14", "vit_large_patch14_dinov2.lvd142m"),
    ("dinov2-vits14-reg4", "vit_small_patch14_reg4_dinov2.lvd142m"),
    ("dinov2-vitb14-reg4", "vit_base_patch14_reg4_dinov2.lvd142m"),
    ("dinov2-vitl14-reg4", "vit_large_patch14_reg4_dinov2.lvd142m"),
    # CLIP
    ("clip-b32", "vit_base_patch32_clip_224.openai"),
    ("clip-b16", "vit_base_patch16_clip_224.openai"),
    ("clip-l14", "vit_large_patch14_clip_224.openai"),
    ("clip-l14-336", "vit_large_patch14_clip_336.openai"),
    # MAE, MoCo-v3, BEiT
    ("mae-b16", "vit_base_patch16_224.mae"),
    ("mae-l16", "vit_large_patch16_224.mae"),
    ("mae-h14", "vit_huge_patch14_224.mae"),
    ("mocov3-s16", "vit_small_patch16_224.mocov3_300ep"),
    ("mocov3-b16", "vit_base_patch16_224.mocov3_300ep"),
    ("beit-b16", "beit_base_patch16_224.pt22k"),
    ("beit-l16", "beit_large_patch16_224.pt22k"),
    # vilas2023's others: MIIL, the GAP model (residual post-norm), its CIFAR-100 fine-tune (weights=PATH only)
    ("vit-b16-miil", "vit_base_patch16_224_miil.in21k_ft_in1k"),
    ("vit-b16-rpn", "vit_base_patch16_rpn_224.sw_in1k"),
]

# vilas2023's own model names (src/models/load.py: load_vit) resolve to the entries it loads
SEED001_NAMES = [("vit_b_32", "vit_base_patch32_224.augreg_in21k_ft_in1k"),
                 ("vit_b_16", "vit_base_patch16_224.augreg_in21k_ft_in1k"),
                 ("vit_large_16", "vit_large_patch16_224.augreg_in21k_ft_in1k"),
                 ("vit_miil_16", "vit_base_patch16_224_miil.in21k_ft_in1k"),
                 ("vit_gap_16", "vit_base_patch16_rpn_224.sw_in1k"),
                 ("vit_cifar_16", "vit_base_patch16_224.cifar100")]


@pytest.mark.parametrize("seed_name,name", SEED001_NAMES)
def test_seed001_model_names(seed_name, name):
    assert resolve_name(seed_name) == name


@pytest.mark.parametrize("alias,name", SEED_MODELS)
def test_every_seed_model_is_registered(alias, name):
    assert resolve_name(alias) == name
    assert resolve_name(name) == name
    assert resolve_name(f"timm/{name}") == name
    assert resolve_name(alias.upper().replace("-", "_")) == name      # aliases: case and _/- insensitive
    e = get_entry(alias)
    assert e.sources, f"{name} has no weight source"
    assert e.source.kind in ("hub", "url")


def test_official_checkpoint_urls():
    # DINO / MAE / MoCo-v3 / BEiT: the official URLs (walmer2023's download lists; DINO's release)
    urls = {s.location for e in list_models() for s in e.sources if s.kind == "url"}
    for u in ["https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
              "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_large.pth",
              "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_huge.pth",
              "https://dl.fbaipublicfiles.com/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
              "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
              "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
              "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
              "https://conversationhub.blob.core.windows.net/beit-share-public/beit/beit_base_patch16_224_pt22k.pth"]:
        assert u in urls


def test_every_entry_builds_and_runs_its_preprocessing_size():
    for e in list_models():
        cfg = e.build_config()
        with torch.device("meta"):
            m = HookedViT(cfg, e.preprocess)
        # the preprocessing output fits the patch grid
        assert all(s % cfg.patch_size == 0 for s in e.preprocess.input_size), e.name
        assert tuple(e.preprocess.input_size) == tuple(cfg.img_size), e.name
        assert m.cfg.meta["name"] == e.name and m.cfg.meta["family"] == e.family
        # entries are shared: building must hand out copies
        cfg.meta["scratch"] = 1
        assert "scratch" not in e.build_config().meta


# published parameter counts (timm model cards / the papers; OpenAI CLIP's visual tower), 1000-class heads
# where the model has one
PUBLISHED = [
    ("vit-s16", 22_050_664, 0),           # ViT-S/16: 22.05M
    ("vit-b16", 86_567_656, 0),           # ViT-B/16: 86.6M
    ("vit-l16", 304_326_632, 0),          # ViT-L/16: 304.3M
    ("deit-b16-distilled", 87_338_192, 0),  # DeiT-B distilled: 87.3M
    ("clip-b32", 87_849_216, 0),          # OpenAI CLIP ViT-B/32 visual (with projection)
    ("clip-l14", 303_970_000, 5_000),     # OpenAI CLIP ViT-L/14 visual: 303.97M
    ("dinov2-vits14", 22_060_000, 5_000),  # timm card: 22.06M (no mask token)
    ("dino-vits16", 21_670_000, 5_000),    # timm card: 21.67M
    ("beit-b16-ft", 86_530_000, 5_000),    # timm card beit_base_patch16_224: 86.53M
    ("vit-b16-rpn", 86_540_000, 5_000),    # timm card vit_base_patch16_rpn_224: 86.54M
    ("vit-b16-cifar100", 85_880_000, 5_000),  # ViT-B/16 with a 100-class head: 86,567,656 - 900 x 769
]


@pytest.mark.parametrize("name,count,tol", PUBLISHED)
def test_parameter_counts_match_published(name, count, tol):
    with torch.device("meta"):
        m = HookedViT(get_entry(name).build_config())
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - count) <= tol, (name, n, count)


def test_architecture_details():
    clip = get_entry("clip-l14-336").config
    assert (clip.act, clip.pre_norm, clip.patch_bias, clip.norm_eps, clip.head) == \
        ("quick_gelu", True, False, 1e-5, "clip_proj")
    assert clip.img_size == (336, 336) and clip.num_classes == 768
    reg = get_entry("dinov2-vitb14-reg4").config
    assert (reg.num_registers, reg.register_location, reg.pos_embed_prefix, reg.layer_scale_init) == \
        (4, "prefix", False, 1e-5)
    assert get_entry("dinov2-vitb14").config.pos_embed_prefix
    d = get_entry("deit-s16-distilled").config
    assert d.distill_token and d.head == "distilled"
    moco = get_entry("mocov3-s16").config
    # MoCo-v3 ViT-S: 12 heads; its sin-cos table is the transpose of MAE's, so it is kept as stored
    assert (moco.embed_dim, moco.num_heads, moco.pos_embed) == (384, 12, "learned")
    assert get_entry("mae-h14").config.pos_embed == "sincos"
    beit = get_entry("beit-b16").config
    assert (beit.rel_pos_bias, beit.qv_bias, beit.qkv_bias, beit.pos_embed, beit.layer_scale_init) == \
        (True, True, False, "none", 0.1)
    ft = get_entry("beit-b16-ft").config
    assert (ft.global_pool, ft.fc_norm, ft.final_norm) == ("avg", True, False)
    assert not get_entry("vit-b16-miil").config.qkv_bias
    rpn = get_entry("vit_gap_16").config       # vilas2023's GAP model: timm's ResPostBlock ViT
    assert (rpn.res_post_norm, rpn.class_token, rpn.global_pool, rpn.fc_norm, rpn.final_norm, rpn.qkv_bias,
            rpn.layer_scale_init) == (True, False, "avg", True, False, False, None)
    assert [e.name for e in list_models() if e.config.res_post_norm] == ["vit_base_patch16_rpn_224.sw_in1k"]
    cifar = get_entry("vit_cifar_16")
    assert cifar.config.num_classes == 100 and not cifar.sources


def test_preprocessing_per_family():
    assert get_entry("vit-b16").preprocess.mean == INCEPTION_MEAN        # AugReg: inputs in [-1, 1]
    assert get_entry("vit-b16").preprocess.crop_pct == 0.9
    assert get_entry("vit-b16-384").preprocess.crop_pct == 1.0
    assert get_entry("clip-b16").preprocess.mean == CLIP_MEAN
    assert get_entry("dino-vitb8").preprocess.mean == IMAGENET_MEAN
    dv2 = get_entry("dinov2-vitl14").preprocess
    assert dv2.input_size == (518, 518) and dv2.crop_pct == 1.0
    moco = get_entry("mocov3-b16").preprocess
    assert (moco.crop_pct, moco.interpolation) == (0.875, "bilinear")


def test_unknown_name_suggests():
    with pytest.raises(KeyError, match="dino-vits16"):
        get_entry("dino-vits61")


@pytest.mark.slow
def test_registry_agrees_with_the_timm_converter():
    """Two independent derivations of each timm-hosted architecture: the registry's table and the timm
    converter's name parser (+ the hub config's num_classes). Same tensors and same computation flags."""
    tconv = pytest.importorskip("vitscope.models.converters.timm")
    flags = ("act", "norm_eps", "pre_norm", "res_post_norm", "patch_bias", "qkv_bias", "qv_bias", "class_token",
             "distill_token", "num_registers", "pos_embed_prefix", "layer_scale_init", "rel_pos_bias", "final_norm", "fc_norm",
             "global_pool", "head", "num_classes", "img_size")
    checked = 0
    for e in list_models():
        if e.source is None or e.source.kind != "hub" or e.source.format != "timm":
            continue
        mine = e.build_config()
        theirs = tconv.config_from_timm(e.name, {"num_classes": mine.num_classes})
        with torch.device("meta"):
            sa = {k: tuple(v.shape) for k, v in HookedViT(mine).state_dict().items()}
            sb = {k: tuple(v.shape) for k, v in HookedViT(theirs).state_dict().items()}
        assert sa == sb, e.name
        for f in flags:
            if f == "pos_embed_prefix" and "mae" in e.name:
                continue
            assert getattr(mine, f) == getattr(theirs, f), (e.name, f, getattr(mine, f), getattr(theirs, f))
        checked += 1
    assert checked >= 30


def _timm_names(sd):
    out = {}
    for k, v in sd.items():
        k = (k.replace(".ln1.", ".norm1.").replace(".ln2.", ".norm2.")
             .replace("ln_final.", "norm.").replace("ln_pre.", "norm_pre."))
        out[k] = v
    return out


@pytest.mark.parametrize("alias,fmt", [("dino-vits16", "dino"), ("dino-vitb8", "dino"), ("mae-b16", "mae"),
                                       ("mae-h14", "mae"), ("mocov3-s16", "mocov3"), ("mocov3-b16", "mocov3")])
def test_registry_agrees_with_the_official_converters(alias, fmt):
    """The official converters read heads, position-embedding kind, norms and pooling from a checkpoint laid
    out as each project releases it; they must describe the registry's architecture."""
    official = pytest.importorskip("vitscope.models.converters.official")
    mine = get_entry(alias).build_config()
    with torch.device("meta"):
        sd = _timm_names(HookedViT(mine).state_dict())
    raw = {"dino": lambda d: d, "mae": lambda d: {"model": d},
           "mocov3": lambda d: {"state_dict": {f"module.base_encoder.{k}": v for k, v in d.items()}}}[fmt](sd)
    theirs = official.config_from_official(fmt, raw)
    for f in ("embed_dim", "depth", "num_heads", "hidden_dim", "patch_size", "img_size", "pos_embed",
              "pos_embed_prefix", "final_norm", "fc_norm", "global_pool", "head", "qkv_bias", "layer_scale_init"):
        assert getattr(mine, f) == getattr(theirs, f), (alias, f, getattr(mine, f), getattr(theirs, f))
