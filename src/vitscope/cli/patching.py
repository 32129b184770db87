"""`vitscope patch`, `vitscope ablate`, `vitscope composition`: causal interventions per block, position and head.

Thin adapters over :mod:`vitscope.analysis.patching` (``evaluate``), its ``ablation`` and ``composition`` modules:
they parse, load the models, call ``evaluate``, save the table and figures and print the one-line summary.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP,
                                 check_limit, locks_out)

SITE_HELP = ("Where to patch: resid_pre, resid_mid, resid_post, attn_out, mlp_out (per block x position), z, result, "
             "q, k, v (per block x head), pattern (per block x head x query).")
METRIC_HELP = ("What is measured on the logits: logit (true class: the label, else the clean prediction), prob, "
               "logit:CLASS, prob:CLASS, or logit-diff:CLASS_A,CLASS_B (class names or indices).")
CORRUPT_HELP = ("Make the corrupted input from the clean one: blur:S (Gaussian, S patch widths), noise:S (pixel "
                "units), replace:OTHER.jpg (another image's patches), or edit (synthetic data: the object swapped "
                "for another class's shape).")


@locks_out("vitscope patch")
def patch_cmd(
    images: Optional[List[Path]] = typer.Argument(None, help="CLEAN [CORRUPTED]: two images of the same size, or "
                                                            "one image (or several) with --corrupt."),
    model_names: Optional[List[str]] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeatable."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of random weights and of the noise corruption."),
    site: str = typer.Option("resid_pre", "--site", help=SITE_HELP),
    metric: str = typer.Option("logit", "--metric", help=METRIC_HELP),
    direction: str = typer.Option("denoising", "--direction", help="denoising: clean activations into the "
                                                                   "corrupted run; noising: the reverse."),
    method: str = typer.Option("activation", "--method", help="activation (real patching), attribution (the "
                                                              "gradient estimate, two passes) or both (and their "
                                                              "agreement)."),
    corrupt: Optional[str] = typer.Option(None, "--corrupt", help=CORRUPT_HELP),
    region: Optional[str] = typer.Option(None, "--region", help="Corrupt only these patches: 'r0:r1,c0:c1' (patch "
                                                                "rows, columns; ends excluded) or 'r,c'."),
    patches: Optional[str] = typer.Option(None, "--patches", help="Patch only these positions ('r0:r1,c0:c1'); "
                                                                  "position and pattern sites."),
    receivers: Optional[str] = typer.Option(None, "--receivers", help="Path patching from every head to these "
                                                                      "receivers: logits, or BLOCK.HEAD.q|k|v "
                                                                      "(comma-separated; BLOCK.q: every head)."),
    freeze_mlps: bool = typer.Option(False, "--freeze-mlps", help="Path patching: freeze the MLPs too (default: "
                                                                  "recomputed, as in the IOI work)."),
    freeze_norm: bool = typer.Option(False, "--freeze-norm", help="Attribution: hold the LayerNorm scales."),
    blocks: str = typer.Option("all", "--blocks", help="Blocks: all, '0,3,-1' or '4:8'."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " With --corrupt: patch its first "
                                                                  "--limit images (default 8)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Images taken from --data (default 8)."),
    per_pair: bool = typer.Option(False, "--per-pair", help="Also one row per pair (column pair)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Patched runs per forward pass."),
    out: Path = typer.Option(Path("runs/patching"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """Activation patching (or attribution / path patching) between a clean and a corrupted input: the effect of
    every block x position (or head) on the metric, 0 = corrupted, 1 = clean.

    \b
    vitscope patch -m demo-vit clean.png corrupted.png --site resid_pre --metric logit-diff:circle,square
    vitscope patch -m demo-vit clean.png --corrupt blur:0.5 --site z
    vitscope patch -m demo-vit --corrupt edit            (synthetic pairs that differ in one object)
    vitscope patch -m demo-vit a.png b.png --receivers 5.q
    """
    from vitscope.analysis.patching import PatchOptions, evaluate
    from vitscope.cli.common import default_data, load_models, parse_formats

    fmts = parse_formats(formats)
    check_limit(limit)
    opts = PatchOptions(site=site, metric=metric, direction=direction, method=method, corrupt=corrupt, region=region,
                        patches=patches, receivers=receivers, freeze_mlps=freeze_mlps, freeze_norm=freeze_norm,
                        blocks=blocks, per_pair=per_pair, limit=limit, seed=seed, batch_size=batch_size,
                        device=device, progress=not quiet)
    names = list(model_names or [])
    if not names:
        raise ValueError("give a model with -m/--model (e.g. -m demo-vit)")
    inputs = _patch_inputs(list(images or []), corrupt, data, names, quiet, default_data)
    models = load_models(names, random, device, seed=seed)
    result = evaluate(models, inputs, opts)
    result.save(out, fmts)
    typer.echo(f"{result.summary} -> {Path(out) / 'patching.csv'}")


def _patch_inputs(images: list[Path], corrupt: str | None, data: str | None, names, quiet: bool, default_data):
    """What `vitscope patch` patches: two files, one or more files with --corrupt, or --data with --corrupt."""
    missing = [str(p) for p in images if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"image file not found: {missing[0]}")
    if data and images:
        raise ValueError("give either image files or --data, not both")
    if corrupt is None:
        if data:
            raise ValueError("--data needs --corrupt (blur:S, noise:S, replace, edit) to make the corrupted inputs")
        if len(images) != 2:
            raise ValueError(f"give two images (CLEAN CORRUPTED), or one with --corrupt (e.g. --corrupt blur:0.5); "
                             f"got {len(images)} image(s)")
        return tuple(images)
    if images:
        return images if len(images) > 1 else images[0]
    data = default_data(names, data, quiet)
    if not data:
        raise ValueError("--corrupt needs images to corrupt: image files or --data SPEC")
    return data


@locks_out("vitscope ablate")
def ablate_cmd(
    model_names: Optional[List[str]] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeatable."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of random weights and of the resampling."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Labelled (else the accuracy is "
                                                                  "agreement with the unablated model)."),
    method: str = typer.Option("mean", "--method", help="zero, mean (over --reference, default the data) or "
                                                        "resample (another image's activation)."),
    mean_over: str = typer.Option("position", "--mean-over", help="mean: per position or global."),
    components: str = typer.Option("heads,mlps", "--components", help="heads, mlps or heads,mlps."),
    blocks: str = typer.Option("all", "--blocks", help="Blocks: all, '0,3,-1' or '4:8'."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Dataset spec of the reference set for the "
                                                                      "mean (default: the data)."),
    prune: bool = typer.Option(False, "--prune", help="Also the iterative head-pruning curve."),
    prune_step: int = typer.Option(4, "--prune-step", help="Heads pruned per step."),
    prune_images: int = typer.Option(64, "--prune-images", help="Images that rank the heads and draw the curve."),
    limit: Optional[int] = typer.Option(256, "--limit", help="Images of the data used."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    out: Path = typer.Option(Path("runs/ablation"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """Ablate every attention head and MLP (zero, mean or resample) over a dataset: accuracy and true-class logit
    drops per component; --prune adds the iterative head-pruning curve. Accuracies are percentages."""
    from vitscope.analysis.patching.ablation import AblateOptions, evaluate
    from vitscope.cli.common import default_data, load_models, parse_formats

    fmts = parse_formats(formats)
    check_limit(limit)
    opts = AblateOptions(method=method, mean_over=mean_over, components=components, blocks=blocks,
                         reference=reference, prune=prune, prune_step=prune_step, prune_images=prune_images,
                         limit=limit, seed=seed, batch_size=batch_size, device=device, progress=not quiet)
    names = list(model_names or [])
    if not names:
        raise ValueError("give a model with -m/--model (e.g. -m demo-vit)")
    data = default_data(names, data, quiet)
    if not data:
        raise ValueError("ablations need images: --data SPEC (a labelled dataset)")
    result = evaluate(load_models(names, random, device, seed=seed), data, opts)
    result.save(out, fmts)
    typer.echo(f"{result.summary} -> {Path(out) / 'ablation.csv'}")


@locks_out("vitscope composition")
def composition_cmd(
    model_names: Optional[List[str]] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeatable."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of random weights."),
    modes: str = typer.Option("Q,K,V", "--modes", help="Composition kinds: Q, K, V (comma-separated)."),
    out: Path = typer.Option(Path("runs/composition"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Q-, K- and V-composition scores between every pair of heads in different blocks (weights only)."""
    from vitscope.analysis.patching.composition import CompositionOptions, evaluate
    from vitscope.cli.common import load_models, parse_formats

    fmts = parse_formats(formats)
    opts = CompositionOptions(modes=modes)
    names = list(model_names or [])
    if not names:
        raise ValueError("give a model with -m/--model (e.g. -m demo-vit)")
    result = evaluate(load_models(names, random, device, seed=seed), None, opts)
    result.save(out, fmts)
    typer.echo(f"{result.summary} -> {Path(out) / 'composition.csv'}")


def register(app: typer.Typer) -> None:
    app.command("patch")(patch_cmd)
    app.command("ablate")(ablate_cmd)
    app.command("composition")(composition_cmd)
