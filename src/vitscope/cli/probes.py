"""`vitscope probe` (linear / attentive probes on stored features), `vitscope probe-e2e` (end-to-end: the attentive
probe on a frozen backbone, fine-tuning with a linear head) and `vitscope probe-stats` (gains and tests across models
and datasets): thin wrappers over vitscope.analysis.probes."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, FORMATS_HELP, MODEL_HELP, RANDOM_HELP, check_range, locks_out, parse_formats,
                                 save_tidy, slug)


def _floats(text: Optional[str], what: str):
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{what} takes comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{what} is empty")
    return vals


def _save_run(run, out: Path, formats, save_heads: bool) -> list[Path]:
    import numpy as np
    import pandas as pd

    from vitscope.analysis.probes.attentive import save_attentive_probe
    from vitscope.analysis.probes.linear import save_linear_head
    from vitscope.viz.per_block import save_metric_per_block
    from vitscope.viz.probes import plot_attention_heads
    from vitscope.viz.save import save_figure

    written = save_tidy(run.rows, out / "results")
    grids = []
    for (probe, exp), (fit, inputs) in run.fits.items():
        tag = f"{probe}_{slug(exp)}"
        grids += [{"probe": probe, "experiment": exp, **r} for r in fit.val_grid]
        np.save(out / "logits" / f"{tag}.npy", fit.test_logits) if (out / "logits").mkdir(exist_ok=True) is None else None
        pd.DataFrame({"row": np.arange(len(fit.test_targets)), "target": fit.test_targets,
                      "prediction": fit.test_predictions}).to_csv(out / "logits" / f"{tag}.predictions.csv", index=False)
        meta = {"model": run.model, "dataset": run.dataset, "experiment": exp, "lr": fit.lr,
                "weight_decay": fit.weight_decay, "attn_drop": fit.attn_drop, "classes": run.classes,
                "inputs": [{"site": i.site, "layer": i.layer, "reduction": i.reduction} for i in inputs],
                "normalize": "l2 per sample and input (all-token inputs: per token)",
                "test_metrics": fit.test_metrics}
        if save_heads and probe == "linear":
            written += save_linear_head(out / "heads" / tag, fit.head[0], fit.head[1], meta)
        elif save_heads:
            written += save_attentive_probe(out / "heads" / tag, fit.head, meta)
        if fit.attention is not None:
            labels = [i.label for i in inputs] if len(inputs) == fit.attention.shape[-1] else None
            fig = plot_attention_heads(fit.attention, labels, title=f"{run.model}: attentive probe, {exp}")
            written += save_figure(fig, out / f"attention_{slug(exp)}", formats,
                                   arrays={"mean": fit.attention.mean(0), "std": fit.attention.std(0)},
                                   meta={"inputs": labels, "experiment": exp})
    written += save_tidy(grids, out / "val_grid")
    if run.per_layer:
        written += save_metric_per_block(run.per_layer, out / "accuracy_per_layer", metric="test balanced_top1",
                                         formats=formats, title=f"linear probe per layer ({run.dataset[:40]})",
                                         ylabel="test balanced top-1")
    return written


def register(app: typer.Typer) -> None:
    @app.command("probe")
    @locks_out("vitscope probe")
    def probe_cmd(
        store: List[Path] = typer.Option(..., "--store", "-s", help="Training feature store (`vitscope extract`); "
                                         "repeat to read several stores of the same samples as one (a late-CLS "
                                         "model: CLS from its entry block on in one, AP of every block in another)."),
        test_store: Optional[List[Path]] = typer.Option(None, "--test-store", help="Test feature store(s) (same "
                                                        "model; repeatable like --store); without it a stratified "
                                                        "--test-fraction of --store is held out."),
        test_fraction: float = typer.Option(0.25, "--test-fraction", help="Held-out share when no --test-store."),
        layer_set: List[str] = typer.Option(["last", "all"], "--layer-set", "-l",
                                            help="last, middle, quarterly, all, tokens, or an explicit list "
                                                 "'ln2.3.cls,ln_final.ap'; repeat for several experiments."),
        probe: str = typer.Option("linear,attentive", "--probe", "-p", help="linear, attentive or both."),
        per_layer: bool = typer.Option(False, "--per-layer", help="Also a linear probe on every block (and the "
                                                                  "final layer), batched: accuracy per layer."),
        reductions: str = typer.Option("cls,ap", "--reductions", "-r", help="Reductions of each layer: cls, ap "
                                                                            "(patch mean), ap_all."),
        site: str = typer.Option("ln2", "--site", help="Store site of the intermediate layers (ciernik2025: ln2)."),
        heads: Optional[int] = typer.Option(None, "--heads", help="Attentive heads (default: number of inputs; "
                                                                  "8 for all tokens)."),
        attn_drops: str = typer.Option("0,0.1,0.3", "--attn-drops", help="Attention dropouts searched (each its own "
                                                                         "grid; the best by validation is kept)."),
        lrs: Optional[str] = typer.Option(None, "--lrs", help="Learning rates (default 0.1,0.01,0.001)."),
        wds: Optional[str] = typer.Option(None, "--wds", help="Weight decays (default logspace(-6, 0, 7))."),
        epochs: int = typer.Option(40, "--epochs", help="Epochs (at least --min-steps steps)."),
        min_steps: int = typer.Option(1000, "--min-steps", help="Minimum number of optimiser steps."),
        batch_size: int = typer.Option(2048, "--batch-size", "-b", help="Batch size before the seed's rule."),
        token_norm: str = typer.Option("token", "--token-norm", help="All-token inputs: 'token' (each token L2) or "
                                                                    "'over_tokens' (ciernik2025's stored variant)."),
        no_normalize: bool = typer.Option(False, "--no-normalize", help="Skip the load-time L2 normalisation."),
        clean_val: bool = typer.Option(False, "--clean-val", help="Score validation without jitter (the seed "
                                                                  "jitters it)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the split, initialisation, order and jitter."),
        model_name: Optional[str] = typer.Option(None, "--model-name", help="Model label in the results table."),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset label in the results table."),
        save_heads: bool = typer.Option(True, "--save-heads/--no-save-heads", help="Save the trained probes "
                                                                                   "(safetensors + JSON)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
        out: Path = typer.Option(Path("runs/probe"), "--out", "-o", help="Output folder."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
    ):
        """Linear and attentive probes over one, several or all layers of a feature store (ciernik2025's recipe,
        tuned over lr x weight decay as one batched computation); tidy results, heads, logits, figures."""
        from tqdm import tqdm

        from vitscope.analysis.probes.experiment import probe_store
        from vitscope.analysis.probes.train import TrainConfig
        from vitscope.cli.common import resolve_device
        from vitscope.features import open as open_store

        fmts = parse_formats(formats)
        check_range(test_fraction, "--test-fraction", 0, 1, low_open=True, high_open=True)
        probes = tuple(p.strip() for p in probe.split(",") if p.strip())
        t0 = time.time()
        tr = [open_store(p) for p in store]
        te = [open_store(p) for p in test_store] if test_store else None
        cfg = TrainConfig(epochs=epochs, min_steps=min_steps, batch_size=batch_size, seed=seed)
        bar = tqdm(desc="probe steps", unit="step", disable=quiet)
        run = probe_store(tr, te, experiments=tuple(layer_set), probes=probes,
                          reductions=tuple(r.strip() for r in reductions.split(",") if r.strip()), site=site,
                          per_layer=per_layer, cfg=cfg, test_fraction=test_fraction, heads=heads,
                          attn_drops=_floats(attn_drops, "--attn-drops"), lrs=_floats(lrs, "--lrs"),
                          wds=_floats(wds, "--wds"), normalize=not no_normalize, token_norm=token_norm,
                          jitter_val=not clean_val, device=resolve_device(device), model=model_name, dataset=dataset,
                          progress=bar.update, log=None if quiet else bar.write)
        bar.close()
        out.mkdir(parents=True, exist_ok=True)
        _save_run(run, out, fmts, save_heads)
        if not quiet:
            for (p, exp), (fit, _) in run.fits.items():
                if not exp.startswith("layer_"):
                    typer.echo(f"  {p:9s} {exp:14s} test balanced top-1 {100 * fit.test_metrics['balanced_top1']:5.1f}"
                               f"  (lr {fit.lr:g}, wd {fit.weight_decay:g}"
                               + (f", attn drop {fit.attn_drop:g})" if fit.attn_drop is not None else ")"))
            typer.echo(f"probed {run.model}: {len(run.fits)} probes in {time.time() - t0:.1f} s -> {out}/results.csv")

    @app.command("probe-e2e")
    def probe_e2e_cmd(
        model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        data: str = typer.Option(..., "--data", "-d", help="Training images. " + DATA_HELP),
        test_data: Optional[str] = typer.Option(None, "--test-data", help="Test images (same classes); without it "
                                                "only training runs."),
        recipe: str = typer.Option("attentive-frozen", "--recipe", help="attentive-frozen (attentive probe on a "
                                   "frozen backbone) or finetune (linear head, backbone trained)."),
        layer_set: Optional[str] = typer.Option(None, "--layer-set", "-l", help="last, middle, quarterly, all, "
                                                "tokens or 'ln2.3.cls,ln_final.ap' (default: tokens for "
                                                "attentive-frozen, the last layer's CLS for finetune)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Exact number of steps (default: --epochs, at "
                                                                  "least --min-steps)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default 10 attentive-frozen, 40 "
                                                                    "finetune)."),
        min_steps: int = typer.Option(1000, "--min-steps", help="Minimum number of steps when --steps is not set."),
        batch_size: int = typer.Option(256, "--batch-size", "-b", help="Global batch size (split over processes)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of the probe / head (default 1e-3)."),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay of the probe / head "
                                                                                  "(default 0.1)."),
        backbone_lr_scale: float = typer.Option(1e-3, "--backbone-lr-scale", help="finetune: backbone lr = lr x "
                                                                                 "this."),
        backbone_wd: float = typer.Option(1e-6, "--backbone-weight-decay", help="finetune: backbone weight decay."),
        heads: Optional[int] = typer.Option(None, "--heads", help="Attentive heads (default: number of inputs; 8 "
                                                                  "for all tokens)."),
        attn_drop: Optional[float] = typer.Option(None, "--attn-drop", help="Attention dropout (default 0.1)."),
        save_every: int = typer.Option(200, "--save-every", help="Checkpoint every N steps (and at the end)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        seed: int = typer.Option(0, "--seed", help="Seed of the probe / head, the data order, jitter and dropout "
                                                   "(and of --random weights)."),
        model_name: Optional[str] = typer.Option(None, "--model-name", help="Model label in the results table."),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset label in the results table."),
        num_workers: int = typer.Option(0, "--num-workers", help="Image-loading processes."),
        device: str = typer.Option("auto", "--device", help="'auto', 'cpu' or 'cuda'."),
        out: Path = typer.Option(Path("runs/probe-e2e"), "--out", "-o", help="Output folder."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
    ):
        """End-to-end probes (ciernik2025): the attentive probe on a frozen backbone with features computed every step
        from the images (no feature store), or fine-tuning with a linear head (two parameter groups); resumable.

        Data parallel: torchrun --nproc_per_node=N -m vitscope probe-e2e ..."""
        import os

        from vitscope.analysis.probes.e2e import E2EConfig, train_e2e
        from vitscope.models.loading import load_model

        m = load_model(model, pretrained=not random, seed=seed if random else None)
        cfg = E2EConfig(recipe=recipe, layer_set=layer_set, lr=lr, weight_decay=weight_decay,
                        backbone_lr_scale=backbone_lr_scale, backbone_weight_decay=backbone_wd, epochs=epochs,
                        steps=steps, min_steps=min_steps, batch_size=batch_size, heads=heads, attn_drop=attn_drop,
                        seed=seed, save_every=save_every)
        name = model_name or (str((getattr(m, "meta", None) or {}).get("name") or Path(model).name or model)
                              + (" (random)" if random else ""))
        s = train_e2e(m, data, test_data, cfg, out=out, resume=resume, device=device, num_workers=num_workers,
                      progress=not quiet, model_name=name, dataset=dataset or test_data)
        if not quiet and int(os.environ.get("RANK", "0")) == 0:
            tm = s.get("test_metrics")
            acc = f"test balanced top-1 {100 * tm['balanced_top1']:.1f}%, " if tm else ""
            typer.echo(f"probe-e2e {recipe} on {name}: {s['steps']}/{s['total_steps']} steps, {acc}last loss "
                       f"{s['loss']:.3f} ({s['wall_time_s']:.0f} s, {s['world_size']} process(es)) -> {out}")

    @app.command("probe-stats")
    @locks_out("vitscope probe-stats")
    def probe_stats_cmd(
        results: List[Path] = typer.Argument(..., help="results.csv / .parquet files of `vitscope probe` runs "
                                                       "(several models and datasets)."),
        pairs: Optional[str] = typer.Option(None, "--pairs", help="Run pairs a>b to test, e.g. "
                                            "'attentive:all>attentive:last,linear:all>linear:last' (default: "
                                            "ciernik2025's Figure 2 pairs present in the table)."),
        baseline: str = typer.Option("linear:last_cls", "--baseline", help="Run the gains are measured against."),
        alpha: float = typer.Option(0.05, "--alpha", help="Significance level."),
        out: Path = typer.Option(Path("runs/probe-stats"), "--out", "-o", help="Output folder."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary."),
    ):
        """Gains against the last-layer CLS linear probe, one-sided paired Wilcoxon tests over datasets (Benjamini-
        Hochberg) and per-dataset tests over models; the gain figure."""
        import pandas as pd

        from vitscope.analysis.probes.stats import (FIGURE2_PAIRS, gains, per_dataset_tests,
                                                    wilcoxon_over_datasets)
        from vitscope.viz.probes import plot_gains
        from vitscope.viz.save import save_figure

        fmts = parse_formats(formats)
        frames = []
        for p in results:
            if not p.exists():
                raise FileNotFoundError(f"results file not found: {p}")
            frames.append(pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p))
        table = pd.concat(frames, ignore_index=True)
        if ":" not in baseline:
            raise ValueError(f"--baseline is probe:experiment (e.g. linear:last_cls), got {baseline!r}")
        bp, be = baseline.split(":", 1)
        g = gains(table, baseline=(bp, be))
        runs = sorted(set(g["run"]))
        if pairs:
            pr = []
            for item in pairs.split(","):
                if ">" not in item:
                    raise ValueError(f"--pairs items are a>b, got {item!r}")
                a, b = (s.strip() for s in item.split(">", 1))
                pr.append((a, b))
        else:
            pr = [(a, b) for a, b in FIGURE2_PAIRS if a in runs and b in runs]
        out.mkdir(parents=True, exist_ok=True)
        save_tidy(g, out / "gains")
        n_tests = 0
        if pr and g["dataset"].nunique() > 1:
            tests = wilcoxon_over_datasets(g, pr, alpha=alpha)
            save_tidy(tests, out / "wilcoxon_over_datasets")
            n_tests = len(tests)
        if g["model"].nunique() > 1:
            save_tidy(per_dataset_tests(g, alpha=alpha), out / "per_dataset_tests")
        shown = [r for r in runs if r != baseline]
        fig = plot_gains(g, shown, title="gain over the last-layer CLS linear probe")
        save_figure(fig, out / "gains", fmts)
        if not quiet:
            typer.echo(f"{len(table)} rows, {g['model'].nunique()} model(s) x {g['dataset'].nunique()} dataset(s), "
                       f"{len(shown)} runs, {n_tests} Wilcoxon tests -> {out}")
