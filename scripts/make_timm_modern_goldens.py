"""Write the golden files of the modern timm ViT families that tests/parity/test_timm_modern_goldens.py checks.

Families: DINOv3 (RoPE, registers, LayerScale, SwiGLU), SigLIP / SigLIP 2 (attention-pool head, no CLS),
EVA-02 (RoPE with a reference grid, packed and split SwiGLU, inner MLP norm, attention-output norm; the enormous
EVA-CLIP's residual post-norm blocks),
RoPE-ViT (axial, mixed with learned frequencies, with absolute embeddings), timm's RoPE + registers + GAP ViTs,
Perception Encoder (RoPE + absolute embedding, pre-norm, attention pool over all tokens), AIMv2 (RMSNorm,
patch-embedding norm, bias-free SwiGLU) and a qk-norm ViT.

Like scripts/make_timm_goldens.py it runs in the separate goldens virtual environment (timm needs torchvision;
see CONTRIBUTING.md):

    goldens-venv/bin/python scripts/make_timm_modern_goldens.py              # writes tests/goldens/timm_modern/
    goldens-venv/bin/python scripts/make_timm_modern_goldens.py pe_core      # only that case (+ missing rows)

Generated with timm 1.0.31, torch 2.14.1, CPU, float32.

Every case is a tiny model (image 32, patch 8, width 32, depth 2, 4 heads) built by ``timm.create_model`` with
the architecture's own arguments (rotary parameters, reference grids, norms, pooling) and
``dynamic_img_size=True``, with every parameter random and clearly non-trivial. Under
``tests/goldens/timm_modern/<case>/``: the model in timm's hub layout written by timm's ``save_for_hf``, and
``golden.safetensors`` with, for the input ``input`` (1, 3, 32, 32) and for ``s2.input`` (1, 3, 48, 40) (a
6 x 5 grid: rotary tables and absolute embeddings at another size, each by its family's rule):
``logits`` (timm's ``forward``), ``pooled`` (``forward_head(pre_logits=True)``), ``blocks.{i}.out`` and
``blocks.{i}.attn`` (softmax attention from the explicit path, through a hook on ``attn.attn_drop``) and, for
attention-pool models, ``attn_pool.attn`` (the probe's softmax attention, B, H, 1, T, recorded from timm's own
``softmax`` call).

For the two DINOv3 cases the same weights are also written in the layout of Meta's own DINOv3 releases
(``dinov3_official.pth``, ``dinov3_swiglu_official.pth``: ``storage_tokens``, ``ls1.gamma``, ``qkv.bias`` with a
nonzero key third and its ``bias_mask``, ``mlp.w1 / w2 / w3``, ``mask_token``, ``rope_embed.periods`` in bfloat16);
the script checks that timm's own ``checkpoint_filter_fn`` maps that file back onto the timm model.

``arch_table.json`` holds, for real timm names of these families, what timm builds (sizes, norms, MLP kind,
rotary parameters, pooling) read from models on the meta device; the parity test checks vitscope's name
parser against it.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.models._hub import save_for_hf

OUT = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "timm_modern"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=1.0, dynamic_img_size=True)

# case -> (timm name with tag, extra create_model kwargs)
CASES: dict[str, tuple[str, dict]] = {
    "dinov3": ("vit_small_patch16_dinov3_qkvb.lvd1689m", dict(num_classes=10, global_pool="token")),
    "dinov3_swiglu": ("vit_small_plus_patch16_dinov3.lvd1689m", dict(num_classes=0)),
    "siglip": ("vit_base_patch16_siglip_224.webli", dict(num_classes=10)),
    "siglip2": ("vit_base_patch32_siglip_256.v2_webli", dict(num_classes=0)),
    "eva02_tiny": ("eva02_tiny_patch14_224.mim_in22k", dict(num_classes=10)),
    "eva02_base": ("eva02_base_patch14_224.mim_in22k", dict(num_classes=0)),
    "eva02_clip": ("eva02_base_patch16_clip_224.merged2b", dict(num_classes=16)),
    "rope_axial": ("vit_small_patch16_rope_224.naver_in1k", dict(num_classes=10)),
    "rope_mixed": ("vit_small_patch16_rope_mixed_224.naver_in1k", dict(num_classes=10)),
    "rope_mixed_ape": ("vit_small_patch16_rope_mixed_ape_224.naver_in1k", dict(num_classes=10)),
    "rope_reg_gap": ("vit_medium_patch16_rope_reg1_gap_256.sbb_in1k", dict(num_classes=10)),
    "pe_core": ("vit_pe_core_tiny_patch16_384.fb", dict(num_classes=16)),
    "aimv2": ("aimv2_large_patch14_224.apple_pt", dict(num_classes=0)),
    "vit_qknorm": ("vit_small_patch16_224.augreg_in21k_ft_in1k", dict(num_classes=10, qk_norm=True)),
    "eva02_post_norm": ("eva02_enormous_patch14_clip_224.laion2b", dict(num_classes=16)),
}

ARCH_NAMES = [
    "vit_small_patch16_dinov3.lvd1689m", "vit_small_patch16_dinov3_qkvb.lvd1689m",
    "vit_small_plus_patch16_dinov3.lvd1689m", "vit_base_patch16_dinov3.lvd1689m",
    "vit_large_patch16_dinov3.lvd1689m", "vit_huge_plus_patch16_dinov3.lvd1689m", "vit_7b_patch16_dinov3.lvd1689m",
    "vit_base_patch16_siglip_224.webli", "vit_base_patch16_siglip_224.v2_webli", "vit_base_patch16_siglip_256.v2_webli",
    "vit_base_patch32_siglip_256.v2_webli", "vit_large_patch16_siglip_256.v2_webli",
    "vit_large_patch16_siglip_512.v2_webli", "vit_so400m_patch14_siglip_224.webli",
    "vit_so400m_patch14_siglip_384.webli", "vit_so400m_patch16_siglip_256.v2_webli",
    "vit_giantopt_patch16_siglip_256.v2_webli", "vit_base_patch16_siglip_gap_224.v2_webli",
    "eva02_tiny_patch14_224.mim_in22k", "eva02_small_patch14_336.mim_in22k_ft_in1k",
    "eva02_base_patch14_224.mim_in22k", "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k",
    "eva02_large_patch14_448.mim_m38m_ft_in22k_in1k", "eva02_base_patch16_clip_224.merged2b",
    "eva02_large_patch14_clip_336.merged2b", "eva02_enormous_patch14_clip_224.laion2b",
    "vit_small_patch16_rope_224.naver_in1k", "vit_base_patch16_rope_mixed_224.naver_in1k",
    "vit_large_patch16_rope_ape_224.naver_in1k", "vit_base_patch16_rope_mixed_ape_224.naver_in1k",
    "vit_medium_patch16_rope_reg1_gap_256.sbb_in1k", "vit_betwixt_patch16_rope_reg4_gap_256.sbb_in1k",
    "vit_mediumd_patch16_rope_reg1_gap_256.sbb_in1k",
    "vit_pe_core_tiny_patch16_384.fb", "vit_pe_core_base_patch16_224.fb", "vit_pe_core_large_patch14_336.fb",
    "vit_pe_core_gigantic_patch14_448.fb",
    "aimv2_large_patch14_224.apple_pt", "aimv2_huge_patch14_336.apple_pt", "aimv2_large_patch14_448.apple_pt",
]


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial values everywhere, so that a parameter mapped to the wrong place changes the output."""
    for name, p in model.named_parameters():
        def rnd(scale: float, shift: float = 0.0) -> torch.Tensor:
            return torch.randn(p.shape, generator=gen) * scale + shift

        leaf = name.split(".")[-1]
        if leaf in ("gamma", "gamma_1", "gamma_2"):
            p.copy_(rnd(0.3, 0.6))                       # LayerScale
        elif "norm" in name and leaf == "weight":
            p.copy_(rnd(0.3, 1.0))                       # LayerNorm / RMSNorm scale
        elif leaf in ("bias", "q_bias", "v_bias"):
            p.copy_(rnd(0.2))
        elif leaf in ("cls_token", "reg_token", "pos_embed", "latent"):
            p.copy_(rnd(0.5))
        elif leaf == "freqs":
            p.copy_(rnd(0.7))                            # RoPE-ViT mixed: learned 2-D frequencies
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            scale = 1.5 if any(t in name for t in ("qkv", "q_proj", "k_proj")) else 1.0
            p.copy_(rnd(scale / fan_in ** 0.5))
        else:
            p.copy_(rnd(0.2))


@contextlib.contextmanager
def record_softmax(store: list):
    """Record the outputs of ``Tensor.softmax`` (timm's attention pool calls it on its explicit path)."""
    original = torch.Tensor.softmax

    def wrapped(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        store.append(out.detach().clone())
        return out

    torch.Tensor.softmax = wrapped
    try:
        yield
    finally:
        torch.Tensor.softmax = original


@torch.no_grad()
def golden_outputs(model: torch.nn.Module, x: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {f"{prefix}input": x.contiguous()}
    handles = []
    for i, blk in enumerate(model.blocks):
        blk.attn.fused_attn = False
        handles.append(blk.register_forward_hook(
            lambda m, inp, o, i=i: out.__setitem__(f"{prefix}blocks.{i}.out", o.detach().clone())))
        handles.append(blk.attn.attn_drop.register_forward_hook(
            lambda m, inp, o, i=i: out.__setitem__(f"{prefix}blocks.{i}.attn", inp[0].detach().clone())))
    feats = model.forward_features(x)
    for h in handles:
        h.remove()
    pool = getattr(model, "attn_pool", None)
    if pool is not None:
        pool.fused_attn = False
        probs: list = []
        with record_softmax(probs):
            out[f"{prefix}pooled"] = model.forward_head(feats, pre_logits=True)
        assert len(probs) == 1, f"expected one softmax in the attention pool, got {len(probs)}"
        out[f"{prefix}attn_pool.attn"] = probs[0]
    else:
        out[f"{prefix}pooled"] = model.forward_head(feats, pre_logits=True)
    out[f"{prefix}logits"] = model(x)
    return out


def official_dinov3(model: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The model's weights in the key layout of Meta's DINOv3 checkpoints (inverse of timm's filter)."""
    from timm.models.eva import checkpoint_filter_fn

    sd = {k: v.clone() for k, v in model.state_dict().items()
          if not k.startswith("head.") and not k.endswith("k_bias") and not k.startswith("rope.")}
    swiglu = {"mlp.fc1_g.": "mlp.w1.", "mlp.fc1_x.": "mlp.w2.", "mlp.fc2.": "mlp.w3."}
    gated = any("mlp.fc1_g." in k for k in sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith("attn.q_bias"):
            v_bias = sd[k.replace("q_bias", "v_bias")]
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([v, torch.randn(v.shape, generator=gen), v_bias])
            out[k.replace("q_bias", "qkv.bias_mask")] = torch.cat([torch.ones_like(v), torch.zeros_like(v),
                                                                   torch.ones_like(v)])
            continue
        if k.endswith("attn.v_bias"):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        for timm_name, meta_name in swiglu.items() if gated else ():
            k = k.replace(timm_name, meta_name)
        out[k] = v
    D = model.embed_dim
    out["mask_token"] = torch.zeros(1, D)
    out["rope_embed.periods"] = model.rope.periods.to(torch.bfloat16)
    back = checkpoint_filter_fn(dict(out), model)
    want = {k: v for k, v in model.state_dict().items() if not k.startswith("head.") and not k.endswith("k_bias")
            and not k.startswith("rope.")}
    assert set(back) == set(want), sorted(set(back) ^ set(want))
    assert all(torch.equal(back[k], want[k]) for k in want)
    return out


def make_case(name: str, model_name: str, extra: dict, x: torch.Tensor, x2: torch.Tensor, seed: int) -> None:
    kwargs = dict(TINY, **extra)
    model = timm.create_model(model_name, pretrained=False, **kwargs).eval()
    randomise(model, torch.Generator().manual_seed(seed))
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    save_for_hf(model, str(folder), model_args=kwargs, safe_serialization=True)
    golden = {**golden_outputs(model, x), **golden_outputs(model, x2, prefix="s2.")}
    golden = {k: v.contiguous() for k, v in golden.items()}
    safetensors.torch.save_file(golden, str(folder / "golden.safetensors"))
    if name.startswith("dinov3"):
        torch.save(official_dinov3(model, torch.Generator().manual_seed(seed)), OUT / f"{name}_official.pth")
    ent = [(-(golden[f"blocks.{i}.attn"].clamp_min(1e-12).log() * golden[f"blocks.{i}.attn"]).sum(-1)).mean()
           for i in range(len(model.blocks))]
    T = golden["blocks.0.attn"].shape[-1]
    print(f"{name:15s} {model_name:48s} logits {tuple(golden['logits'].shape)} T={T} "
          f"attention entropy {[round(float(e), 2) for e in ent]} (uniform {torch.log(torch.tensor(T)):.2f})")


def _norm_kind(m) -> str:
    return {"RmsNorm": "rmsnorm", "LayerNorm": "layernorm"}.get(type(m).__name__, type(m).__name__)


def _is(m, cls: str) -> bool:
    return type(m).__name__ == cls


def arch_row(model_name: str) -> dict:
    """What timm builds for ``model_name`` (meta device: no weights, no download)."""
    m = timm.create_model(model_name, pretrained=False, device="meta")
    blk, attn, mlp = m.blocks[0], m.blocks[0].attn, m.blocks[0].mlp
    gated = hasattr(mlp, "fc1_g") or _is(mlp, "GluMlp")
    hidden = (mlp.fc1_g.out_features if hasattr(mlp, "fc1_g")
              else mlp.fc1.out_features // 2 if gated else mlp.fc1.out_features)
    act = type(mlp.act).__name__
    qkv = getattr(attn, "qkv", None)
    patch_norm = getattr(m.patch_embed, "norm", None)
    rope = getattr(m, "rope", None)
    row = {
        "embed_dim": m.embed_dim, "depth": len(m.blocks), "num_heads": attn.num_heads,
        "patch_size": m.patch_embed.patch_size[0], "img_size": list(m.patch_embed.img_size),
        "mlp_dim": hidden, "gated_mlp": gated, "norm": _norm_kind(blk.norm1), "norm_eps": blk.norm1.eps,
        "act": {"GELU": "gelu", "GELUTanh": "gelu_tanh", "SiLU": "silu", "QuickGELU": "quick_gelu"}.get(act, act),
        "mlp_norm": not _is(mlp.norm, "Identity"), "mlp_bias": mlp.fc2.bias is not None,
        "attn_out_norm": not _is(getattr(attn, "norm", torch.nn.Identity()), "Identity"),
        "qk_norm": not _is(getattr(attn, "q_norm", torch.nn.Identity()), "Identity"),
        "proj_bias": attn.proj.bias is not None,
        "qkv_bias": (qkv is not None and qkv.bias is not None) or getattr(attn, "q_bias", None) is not None
        or (getattr(attn, "q_proj", None) is not None and attn.q_proj.bias is not None),
        "k_bias": (qkv is not None and qkv.bias is not None)
        or (getattr(attn, "k_proj", None) is not None and attn.k_proj.bias is not None),
        "class_token": m.cls_token is not None,
        "num_registers": int(m.reg_token.shape[1]) if getattr(m, "reg_token", None) is not None else 0,
        "pos_embed": m.pos_embed is not None,
        "pos_embed_prefix": m.pos_embed is not None and not getattr(m, "no_embed_class", False)
        and m.num_prefix_tokens > 0,
        "layer_scale": (getattr(blk, "gamma_1", None) is not None
                        or not _is(getattr(blk, "ls1", torch.nn.Identity()), "Identity")),
        "pre_norm": not _is(getattr(m, "norm_pre", torch.nn.Identity()), "Identity"),
        "patch_norm": patch_norm is not None and not _is(patch_norm, "Identity"),
        "patch_bias": m.patch_embed.proj.bias is not None,
        "final_norm": not _is(m.norm, "Identity"), "fc_norm": not _is(m.fc_norm, "Identity"),
        "global_pool": m.global_pool or "none", "num_classes": m.num_classes,
        "rope": None,
    }
    pool = getattr(m, "attn_pool", None)
    if pool is not None:
        row["map"] = {"heads": pool.num_heads, "mlp_dim": pool.mlp.fc1.out_features,
                      "tokens": "all" if type(m).__name__ == "Eva" or getattr(m, "pool_include_prefix", False)
                      else "patches"}
    if rope is not None:
        kind = {"RotaryEmbeddingCat": "axial", "RotaryEmbeddingMixed": "mixed",
                "RotaryEmbeddingDinoV3": "dinov3"}[type(rope).__name__]
        row["rope"] = {"kind": kind, "theta": float(rope.temperature), "indexing": rope.grid_indexing,
                       "layout": "half" if getattr(rope, "rotate_half", False) else "interleaved",
                       "offset": float(getattr(rope, "grid_offset", 0.0)),
                       "ref_grid": list(rope.ref_feat_shape) if getattr(rope, "ref_feat_shape", None) else None,
                       "normalize": getattr(rope, "normalize_coords", "separate")}
    pcfg = m.pretrained_cfg
    row["pretrained_cfg"] = {k: pcfg.get(k) for k in ("tag", "input_size", "crop_pct", "interpolation", "mean",
                                                      "std", "num_classes") if pcfg.get(k) is not None}
    return row


def main(argv: list[str]) -> int:
    unknown = sorted(set(argv) - set(CASES))
    if unknown:
        print(f"unknown case(s) {unknown}; cases: {sorted(CASES)}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x2 = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    for seed, (name, (model_name, extra)) in enumerate(CASES.items()):
        if not argv or name in argv:
            make_case(name, model_name, extra, x, x2, 100 + seed)
    versions = {"timm": timm.__version__, "torch": torch.__version__.split("+")[0]}
    table_path = OUT / "arch_table.json"
    if argv and table_path.exists():           # partial run: keep the table, add the rows it lacks
        table = json.loads(table_path.read_text())
        table["models"].update({n: arch_row(n) for n in ARCH_NAMES if n not in table["models"]})
    else:
        table = {"_generated_with": versions, "models": {n: arch_row(n) for n in ARCH_NAMES}}
    table_path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
