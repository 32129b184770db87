"""`vitscope explain` (one method's maps for images) and `vitscope explain-bench` (every method x metric on a
dataset with masks): thin adapters over :mod:`vitscope.analysis.attribution_maps`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP,
                                 cli_options, locks_out)

METHOD_HELP = ("Attribution method: gradcam, gradcam++, xgradcam, layercam, eigencam, scorecam, ablationcam, "
               "hirescam, saliency, input-x-gradient, integrated-gradients, smoothgrad, smoothgrad-sq, vargrad, "
               "occlusion, rollout, grad-rollout, chefer2021-generic, chefer2021-lrp (random: a control).")
BLOCK_HELP = "CAMs: the block read (negative counts from the end); attention methods: the last block rolled out."
SITE_HELP = "CAMs: the activation read in the block: ln1 (pytorch-grad-cam's norm1), ln2, resid_pre, resid_mid, " \
            "resid_post, attn_out, mlp_out."
STEPS_HELP = "Integrated Gradients: quadrature steps (Gauss-Legendre by default, see --ig-rule)."
BASELINE_HELP = "Integrated Gradients: baseline image: black, zeros (0 after normalisation), blur or noise."
SAMPLES_HELP = "SmoothGrad / VarGrad: noisy copies per image."
STDEV_HELP = "SmoothGrad / VarGrad: noise standard deviation, in the model's normalised input units."


@locks_out("vitscope explain")
def explain_cmd(
    images: Optional[List[Path]] = typer.Argument(None, help="Image files (or --data)."),
    model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    method: str = typer.Option("gradcam", "--method", help=METHOD_HELP),
    target: Optional[int] = typer.Option(None, "--target", help="Class index explained (default: the "
                                                                "predicted class of each image)."),
    block: int = typer.Option(-1, "--block", help=BLOCK_HELP),
    site: str = typer.Option("ln1", "--site", help=SITE_HELP),
    steps: int = typer.Option(64, "--ig-steps", "--steps", help=STEPS_HELP),
    ig_rule: str = typer.Option("gausslegendre", "--ig-rule", help="Integrated Gradients: gausslegendre, "
                                "riemann_left, riemann_right, riemann_middle, riemann_trapezoid (Captum's)."),
    baseline: str = typer.Option("black", "--ig-baseline", "--baseline", help=BASELINE_HELP),
    samples: int = typer.Option(16, "--samples", help=SAMPLES_HELP),
    stdev: float = typer.Option(0.15, "--stdev", help=STDEV_HELP),
    ablation_value: str = typer.Option("zero", "--ablation-value", help="Ablation-CAM: zero (the paper) or "
                                                                        "pytorch-grad-cam (min - 1e7)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many images."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise (SmoothGrad) and of --random weights."),
    out: Path = typer.Option(Path("runs/explain"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages."),
) -> None:
    """The attribution map of one method for each image: `<image>_<method>.png` (image and map), the map in
    `.npy`, and `explain.csv` (target class, its probability, IG's completeness error)."""
    import numpy as np
    import torch

    from vitscope.analysis.attribution_maps import ExplainOptions, explain, resolve_method
    from vitscope.cli.common import (check_limit, finish_skips, load_model, open_images, parse_formats, save_tidy,
                                     slug)
    from vitscope.features.access import require_images
    from vitscope.viz.attribution_maps import plot_method_map
    from vitscope.viz.save import save_figure

    fmts = parse_formats(formats)
    check_limit(limit)
    opts = cli_options(ExplainOptions, block=block, site=site, steps=steps, ig_rule=ig_rule, baseline=baseline,
                       samples=samples, stdev=stdev, ablation_value=ablation_value, seed=seed, device=device)
    method = resolve_method(method)
    model = load_model(model_name, random=random, seed=seed, device=device)
    if target is not None and not 0 <= target < model.cfg.num_classes:
        raise ValueError(f"--target must be a class index in [0, {model.cfg.num_classes - 1}], got {target}")
    ds, pcfg = open_images(model, data, images, limit)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    classes = list(model.cfg.meta.get("classes") or [])
    for x, _, idx in ds.batches(batch_size=8):
        x = x.to(model.device, model.dtype)
        e = explain(model, x, target, method, options=opts)
        with torch.inference_mode():
            prob = torch.softmax(model(x).float(), -1).gather(1, e.targets[:, None].to(x.device))[:, 0].cpu()
        for j, i in enumerate(idx.tolist()):
            name = slug(Path(str(ds.ids[i] if hasattr(ds, "ids") else i)).stem)
            stem = out / f"{name}_{method}"
            t = int(e.targets[j])
            cls = classes[t] if t < len(classes) else str(t)
            fig = plot_method_map(x[j].cpu(), e.maps[j].cpu(), pcfg.mean, pcfg.std,
                                  title=f"{method}: class {cls} (p = {float(prob[j]):.2f})")
            save_figure(fig, stem, fmts)
            np.save(stem.with_suffix(".npy"), e.maps[j].cpu().numpy())
            row = {"image": str(ds.ids[i]) if hasattr(ds, "ids") else i, "method": method, "target": t,
                   "class": cls, "probability": float(prob[j])}
            if "completeness" in e.extra:
                row["completeness_error"] = float(e.extra["completeness"][j])
            rows.append(row)
    finish_skips(ds, out)                     # skipped.csv and the one-line summary of unreadable files
    require_images(len(rows), ds)             # not one readable image: one line, exit 1
    save_tidy(rows, out / "explain")
    if not quiet:
        typer.echo(f"{method}: {len(rows)} map(s) -> {out}")


@locks_out("vitscope explain-bench")
def explain_bench_cmd(
    model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " With object masks (synthetic, "
                                                                 "COCO, PartImageNet) for the localisation metrics."),
    methods: str = typer.Option("", "--methods", help="Methods compared, comma-separated (default: all). "
                                                      + METHOD_HELP),
    metrics: str = typer.Option("deletion,insertion,road,pointing,iou,auroc", "--metrics",
                                help="Metric groups: deletion, insertion, road, pointing, iou, auroc."),
    target: str = typer.Option("label", "--target", help="Explain the true class (label) or the predicted one."),
    block: int = typer.Option(-1, "--block", help=BLOCK_HELP),
    site: str = typer.Option("ln1", "--site", help=SITE_HELP),
    steps: int = typer.Option(64, "--ig-steps", "--steps", help=STEPS_HELP),
    baseline: str = typer.Option("black", "--ig-baseline", "--baseline", help=BASELINE_HELP),
    samples: int = typer.Option(16, "--samples", help=SAMPLES_HELP),
    stdev: float = typer.Option(0.15, "--stdev", help=STDEV_HELP),
    removal_step: int = typer.Option(1, "--removal-step", help="Deletion / insertion: patches per step."),
    sanity: bool = typer.Option(False, "--sanity", help="Also run the cascading randomisation check (Adebayo et "
                                                        "al. 2018) on --sanity-images images."),
    sanity_methods: str = typer.Option("gradcam,saliency,integrated-gradients,smoothgrad,chefer2021-generic",
                                       "--sanity-methods", help="Methods of the randomisation check."),
    sanity_images: int = typer.Option(8, "--sanity-images", help="Images of the randomisation check."),
    limit: Optional[int] = typer.Option(64, "--limit", help="At most this many images (every method runs on "
                                                            "each: Score-CAM, Ablation-CAM and occlusion cost "
                                                            "one forward pass per channel or patch)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per batch."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of SmoothGrad's and ROAD's noise, the random control, the "
                                               "randomisation and --random weights."),
    out: Path = typer.Option(Path("runs/explain-bench"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """Every attribution method x faithfulness / localisation metric on a dataset: `attribution-maps.csv`
    (one row per model x method x metric, with each method's rank) and the ranking figure."""
    from vitscope.analysis.attribution_maps import ExplainOptions, evaluate
    from vitscope.cli.common import check_limit, default_data, load_models, parse_formats

    fmts = parse_formats(formats)
    check_limit(limit)
    opts = cli_options(ExplainOptions, methods=methods, metrics=metrics, target=target, block=block, site=site,
                       steps=steps, baseline=baseline, samples=samples, stdev=stdev, removal_step=removal_step,
                       sanity=sanity, sanity_methods=sanity_methods, sanity_images=sanity_images, limit=limit,
                       batch_size=batch_size, seed=seed, device=device, progress=not quiet)
    data = default_data(model_names, data, quiet)
    if not data:
        raise ValueError("the benchmark needs images: --data SPEC (e.g. 'synthetic:n=64' or builtin:demo)")
    models = load_models(list(model_names), random, device, seed=seed)
    result = evaluate(models, data, opts)
    result.save(out, fmts)
    typer.echo(f"{result.summary} -> {Path(out) / 'attribution-maps.csv'}")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)
    app.command("explain-bench")(explain_bench_cmd)
