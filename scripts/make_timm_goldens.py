"""Write the timm golden files that tests/parity/test_timm_goldens.py checks vitscope against.

timm needs torchvision, which vitscope does not depend on (on CPU-only machines it often comes only with the
multi-GB CUDA torch build), so this script runs in a separate virtual environment in the repository
(``goldens-venv``, git-ignored; see CONTRIBUTING.md), not the project's ``.venv``:

    python3 -m venv goldens-venv
    goldens-venv/bin/pip install torch torchvision timm safetensors
    goldens-venv/bin/python scripts/make_timm_goldens.py            # writes tests/goldens/timm/
    goldens-venv/bin/python scripts/make_timm_goldens.py vit_rpn    # only that case (+ missing table rows)

Generated with timm 1.0.31, torch 2.15.0 (torchvision 0.29.2, safetensors 0.8.0), CPU, float32; the
``vit_rpn`` case (and its table row) with timm 1.0.31, torch 2.14.1 (torchvision 0.29.1).

Given case names, only those folders are rewritten, and ``arch_table.json`` only gains the rows it lacks.

For every covered timm family it builds a tiny model (image 32, patch 8, width 32, depth 2, 4 heads) with random
weights, makes LayerNorm weights/biases, every bias, LayerScale, tokens, position embeddings and relative position
tables clearly non-trivial (so a wrong mapping cannot pass), and saves, under ``tests/goldens/timm/<name>/``:

* the model in timm's hub folder layout, written by timm's own ``save_for_hf`` (``config.json`` with
  ``architecture``, ``num_classes``, ``global_pool``, ``model_args``, ``pretrained_cfg``; ``model.safetensors``;
  the ``dino`` case is written as ``pytorch_model.bin`` to cover that path),
* ``golden.safetensors``: ``input`` (1, 3, 32, 32), ``logits`` (timm's ``forward``), ``blocks.{i}.out`` (each
  block's output) and ``blocks.{i}.attn`` (each block's softmax attention, B, H, T, T, read from the explicit
  path with ``fused_attn=False`` through a hook on ``attn.attn_drop``, whose input is the softmax); the
  ``vit`` and ``dinov2_reg4`` models are built with ``dynamic_img_size=True`` and also hold ``input_48x40`` /
  ``logits_48x40`` (position table resampled to a 6 x 5 grid).

It also writes ``tests/goldens/timm/arch_table.json``: for real timm model names of the families the seeds use,
what timm builds (width, depth, heads, patch, image size, MLP width, tokens, norms, activation, pooling, head
size) and the name's ``pretrained_cfg`` preprocessing, read from models built on the meta device (no weights,
no download). The parity test checks vitscope's name parser against it.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.models._hub import save_for_hf

OUT = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "timm"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=1.0)

# name -> (timm model name with tag, extra create_model kwargs, weight file)
CASES: dict[str, tuple[str, dict, str]] = {
    "vit": ("vit_small_patch16_224.augreg_in21k_ft_in1k", dict(num_classes=10, dynamic_img_size=True),
            "model.safetensors"),
    "deit_distilled": ("deit_small_distilled_patch16_224.fb_in1k", dict(num_classes=10), "model.safetensors"),
    "deit3": ("deit3_small_patch16_224.fb_in1k", dict(num_classes=10), "model.safetensors"),
    "dino": ("vit_small_patch16_224.dino", dict(num_classes=0), "pytorch_model.bin"),
    "mae": ("vit_base_patch16_224.mae", dict(num_classes=10, global_pool="avg"), "model.safetensors"),
    "vit_gap": ("vit_medium_patch16_gap_256.sw_in12k_ft_in1k", dict(num_classes=10), "model.safetensors"),
    "dinov2": ("vit_small_patch14_dinov2.lvd142m", dict(num_classes=0), "model.safetensors"),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2.lvd142m", dict(num_classes=0, dynamic_img_size=True),
                    "model.safetensors"),
    "clip": ("vit_base_patch16_clip_quickgelu_224.openai", dict(num_classes=16), "model.safetensors"),
    "beit": ("beit_base_patch16_224.in22k_ft_in22k_in1k", dict(num_classes=10), "model.safetensors"),
    "beit_shared": ("beit_base_patch16_224.in22k_ft_in22k_in1k",
                    dict(num_classes=10, use_abs_pos_emb=True, use_rel_pos_bias=False,
                         use_shared_rel_pos_bias=True, global_pool="token"), "model.safetensors"),
    "vit_rpn": ("vit_base_patch16_rpn_224.sw_in1k", dict(num_classes=10, dynamic_img_size=True),
                "model.safetensors"),
}

# real names for the architecture table (the seeds' families)
ARCH_NAMES = [
    "vit_small_patch32_224.augreg_in21k_ft_in1k", "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch32_224.augreg_in21k_ft_in1k", "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch8_224.augreg_in21k_ft_in1k", "vit_large_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch16_384.augreg_in21k_ft_in1k", "vit_base_patch16_224_miil.in21k_ft_in1k",
    "deit_small_patch16_224.fb_in1k", "deit_base_patch16_224.fb_in1k",
    "deit_small_distilled_patch16_224.fb_in1k", "deit_base_distilled_patch16_224.fb_in1k",
    "deit3_small_patch16_224.fb_in1k", "vit_small_patch16_224.dino", "vit_small_patch8_224.dino",
    "vit_base_patch16_224.dino", "vit_base_patch8_224.dino", "vit_small_patch14_dinov2.lvd142m",
    "vit_base_patch14_dinov2.lvd142m", "vit_large_patch14_dinov2.lvd142m",
    "vit_small_patch14_reg4_dinov2.lvd142m", "vit_base_patch14_reg4_dinov2.lvd142m",
    "vit_large_patch14_reg4_dinov2.lvd142m", "vit_base_patch32_clip_224.openai",
    "vit_base_patch16_clip_224.openai", "vit_large_patch14_clip_224.openai", "vit_large_patch14_clip_336.openai",
    "vit_base_patch16_clip_quickgelu_224.openai", "vit_base_patch16_224.mae", "vit_large_patch16_224.mae",
    "vit_huge_patch14_224.mae", "vit_medium_patch16_gap_256.sw_in12k_ft_in1k",
    "beit_base_patch16_224.in22k_ft_in22k_in1k", "beit_large_patch16_224.in22k_ft_in22k_in1k",
    "beitv2_base_patch16_224.in1k_ft_in22k_in1k", "vit_base_patch16_gap_224", "deit3_medium_patch16_224.fb_in1k",
    "vit_base_patch16_siglip_gap_224.webli", "vit_base_patch16_rpn_224.sw_in1k",
]


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial values everywhere, so that a parameter mapped to the wrong place changes the output."""
    for name, p in model.named_parameters():
        def rnd(scale: float, shift: float = 0.0) -> torch.Tensor:
            return torch.randn(p.shape, generator=gen) * scale + shift

        leaf = name.split(".")[-1]
        if name == "head.bias" and getattr(model, "_zero_head_bias", False):
            p.zero_()                                    # CLIP's projection has no bias (timm stores zeros)
        elif leaf in ("gamma", "gamma_1", "gamma_2"):
            p.copy_(rnd(0.3, 0.6))                       # LayerScale
        elif "norm" in name and leaf == "weight":
            p.copy_(rnd(0.3, 1.0))                       # LayerNorm scale
        elif leaf in ("bias", "q_bias", "v_bias"):
            p.copy_(rnd(0.2))
        elif leaf in ("cls_token", "dist_token", "reg_token", "pos_embed"):
            p.copy_(rnd(0.5))
        elif leaf == "relative_position_bias_table":
            p.copy_(rnd(1.0))
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            scale = 1.5 if "qkv" in name else 1.0
            p.copy_(rnd(scale / fan_in ** 0.5))
        else:
            p.copy_(rnd(0.2))


@torch.no_grad()
def golden_outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {"input": x.contiguous()}
    handles = []
    for i, blk in enumerate(model.blocks):
        blk.attn.fused_attn = False
        handles.append(blk.register_forward_hook(
            lambda m, inp, o, i=i: out.__setitem__(f"blocks.{i}.out", o.detach().clone())))
        handles.append(blk.attn.attn_drop.register_forward_hook(
            lambda m, inp, o, i=i: out.__setitem__(f"blocks.{i}.attn", inp[0].detach().clone())))
    out["logits"] = model(x).contiguous()
    for h in handles:
        h.remove()
    return out


def make_case(name: str, model_name: str, extra: dict, weight_file: str, x: torch.Tensor, seed: int) -> None:
    kwargs = dict(TINY, **extra)
    model = timm.create_model(model_name, pretrained=False, **kwargs).eval()
    model._zero_head_bias = name == "clip"
    gen = torch.Generator().manual_seed(seed)
    randomise(model, gen)
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    save_for_hf(model, str(folder), model_args=kwargs, safe_serialization=True)
    if weight_file == "pytorch_model.bin":
        sd = safetensors.torch.load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        torch.save(sd, folder / "pytorch_model.bin")
    golden = golden_outputs(model, x)
    if extra.get("dynamic_img_size"):
        # another input size: timm resamples the position table (bicubic, antialiased) to the 6 x 5 grid
        x2 = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(seed + 100))
        with torch.no_grad():
            golden["input_48x40"], golden["logits_48x40"] = x2, model(x2)
    golden = {k: v.contiguous() for k, v in golden.items()}
    safetensors.torch.save_file(golden, str(folder / "golden.safetensors"))
    ent = [(-(golden[f"blocks.{i}.attn"].clamp_min(1e-12).log() * golden[f"blocks.{i}.attn"]).sum(-1)).mean()
           for i in range(len(model.blocks))]
    T = golden["blocks.0.attn"].shape[-1]
    print(f"{name:15s} {model_name:48s} logits {tuple(golden['logits'].shape)} T={T} "
          f"attention entropy {[round(float(e), 2) for e in ent]} (uniform {torch.log(torch.tensor(T)):.2f})")


def arch_row(model_name: str) -> dict:
    m = timm.create_model(model_name, pretrained=False, device="meta")
    blk = m.blocks[0]
    ln = blk.norm1
    act = type(blk.mlp.act).__name__
    pcfg = m.pretrained_cfg
    beit = type(m).__name__ == "Beit"
    row = {
        "embed_dim": m.embed_dim, "depth": len(m.blocks), "num_heads": blk.attn.num_heads,
        "patch_size": m.patch_embed.patch_size[0], "img_size": list(m.patch_embed.img_size),
        "mlp_dim": blk.mlp.fc1.out_features, "norm_eps": ln.eps,
        "act": {"GELU": "gelu", "QuickGELU": "quick_gelu", "GELUTanh": "gelu_tanh"}.get(act, act),
        "class_token": m.cls_token is not None, "distill_token": hasattr(m, "dist_token"),
        "num_registers": int(getattr(m, "num_reg_tokens", 0) or 0),
        "pos_embed": m.pos_embed is not None,
        "pos_embed_prefix": (m.pos_embed is not None and not getattr(m, "no_embed_class", False)
                             and m.num_prefix_tokens > 0),
        "layer_scale": (getattr(blk, "gamma_1", None) is not None) if beit
        else not isinstance(getattr(blk, "ls1", torch.nn.Identity()), torch.nn.Identity),
        "res_post_norm": type(blk).__name__ == "ResPostBlock",
        "pre_norm": not isinstance(getattr(m, "norm_pre", torch.nn.Identity()), torch.nn.Identity),
        "patch_bias": m.patch_embed.proj.bias is not None,
        "qkv_bias": getattr(blk.attn.qkv, "bias", None) is not None,
        "qv_bias": getattr(blk.attn, "q_bias", None) is not None,
        "rel_pos_bias": getattr(blk.attn, "relative_position_bias_table", None) is not None,
        "final_norm": not isinstance(m.norm, torch.nn.Identity),
        "fc_norm": not isinstance(m.fc_norm, torch.nn.Identity),
        "global_pool": m.global_pool or "none", "num_classes": m.num_classes,
        "pretrained_cfg": {k: pcfg.get(k) for k in ("tag", "input_size", "crop_pct", "interpolation", "mean", "std",
                                                     "num_classes", "notes", "fixed_input_size")
                           if pcfg.get(k) is not None},
    }
    return row


def main(argv: list[str]) -> int:
    unknown = sorted(set(argv) - set(CASES))
    if unknown:
        print(f"unknown case(s) {unknown}; cases: {sorted(CASES)}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for seed, (name, (model_name, extra, wf)) in enumerate(CASES.items()):
        if not argv or name in argv:
            make_case(name, model_name, extra, wf, x, seed + 1)
    versions = {"timm": timm.__version__, "torch": torch.__version__.split("+")[0]}
    table_path = OUT / "arch_table.json"
    if argv and table_path.exists():           # partial run: keep the table, add the rows it lacks
        table = json.loads(table_path.read_text())
        added = [n for n in ARCH_NAMES if n not in table["models"]]
        table["models"].update({n: arch_row(n) for n in added})
        if added:
            table.setdefault("_rows_added_with", {}).update({n: versions for n in added})
    else:
        table = {"_generated_with": versions, "models": {n: arch_row(n) for n in ARCH_NAMES}}
    table_path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
