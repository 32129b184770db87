"""`vitscope removal` (token-removal curves) and `vitscope probe-tokens` (per-token ridge probes), vilas2023.

Thin wrappers over ``vitscope.analysis.class_embedding.removal`` / ``importance`` and
``vitscope.analysis.probes.ridge``: every figure is saved with its numbers, and the results are tidy tables
(CSV + parquet) under ``--out``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP
from vitscope.cli.common import load_models as _load_models
from vitscope.cli.common import parse_formats as _formats
from vitscope.cli.common import save_tidy
from vitscope.cli.common import slug as _slug


def _open_labelled(model, spec: Optional[str], option: str, what: str, limit: Optional[int]):
    """The dataset of ``spec`` with the model's preprocessing; one clear line when it is missing or unlabelled."""
    import numpy as np

    from vitscope.cli.common import open_images

    if not spec:
        raise ValueError(f"{what} needs labelled images: pass {option} SPEC (a folder with one sub-folder per class, "
                         f"a list file with labels, or synthetic:...)")
    ds, _ = open_images(model, spec, None, limit)
    labels = np.asarray(ds.labels)
    if labels.size and (labels < 0).any():
        raise ValueError(f"{what} needs class labels, and {option} {spec!r} has images without one; use a folder "
                         f"with one sub-folder per class, a list file with labels, or synthetic:...")
    return ds, labels


def _n_batches(ds, batch_size: int) -> int:
    return (len(ds) + batch_size - 1) // batch_size


def register(app: typer.Typer) -> None:  # noqa: C901 - one function that declares the group's commands
    # ------------------------------------------------------------------ removal
    @app.command("removal")
    def removal_cmd(
        model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeat for several."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Needs class labels."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        out: Path = typer.Option(Path("runs/removal"), "--out", "-o", help=OUT_HELP),
        orders: Optional[str] = typer.Option(None, "--orders",
                                             help="Token orders, comma-separated: grads (vilas2023's class-embedding "
                                                  "gradients), chefer, probe (per-token ridge probes; needs "
                                                  "--probe-data), random. Default: grads,chefer,random, and probe "
                                                  "when --probe-data is given."),
        probe_data: Optional[str] = typer.Option(None, "--probe-data",
                                                 help="Labelled images to fit the per-token ridge probes of the "
                                                      "probe order on (vilas2023: another split than --data)."),
        n_random: int = typer.Option(10, "--random-orders", help="Number of random orders (vilas2023: 10)."),
        seed: int = typer.Option(0, "--seed", help="Random order i uses seed SEED + i (vilas2023: 0..9)."),
        step: int = typer.Option(1, "--step", help="Evaluate every STEP-th number of removed tokens (1 = all)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images of --data."),
        probe_limit: Optional[int] = typer.Option(None, "--probe-limit",
                                                  help="Use only the first N images of --probe-data."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Token-removal curves: accuracy as patch tokens are removed, least (negative) or most (positive)
        important first, for gradient, Chefer, linear-probe and random orders, with both AUCs."""
        import numpy as np

        from vitscope.analysis.class_embedding.removal import removal_curves, resolve_orders
        from vitscope.analysis.probes.ridge import fit_token_probes
        from vitscope.cli.common import model_meta
        from vitscope.viz.removal import save_removal_curves

        fmts = _formats(formats)
        order_list = resolve_orders(orders) if orders else (
            ["grads", "chefer"] + (["probe"] if probe_data else []) + ["random"])
        if "probe" in order_list and not probe_data:
            raise ValueError("the probe order needs --probe-data SPEC: labelled images to fit the per-token ridge "
                             "probes on (another split than --data)")
        if n_random < 1 and "random" in order_list:
            raise ValueError("--random-orders must be at least 1 (or leave random out of --orders)")
        from vitscope.cli.common import default_data

        data = default_data(model_names, data, quiet)
        if not data:
            raise ValueError("removal curves need labelled images: pass --data SPEC (a folder with one sub-folder "
                             "per class, a list file with labels, or synthetic:...)")
        models = _load_models(model_names, random, device)
        for label, model in models.items():
            if model.cfg.head == "none":
                raise ValueError(f"{label} has no classification head: removal curves measure class accuracy; use "
                                 f"a model with a classifier")
            if not model.cfg.class_token and {"grads", "chefer"} & set(order_list):
                raise ValueError(f"{label} has no CLS token, which the grads and chefer orders read; pass "
                                 f"--orders probe,random")
        out.mkdir(parents=True, exist_ok=True)
        curve_rows, auc_rows, written, summary = [], [], [], []
        for label, model in models.items():
            ds, labels = _open_labelled(model, data, "--data", "removal curves", limit)
            C = model.cfg.num_classes
            if labels.size and labels.max() >= C:
                raise ValueError(f"--data has labels up to {int(labels.max())} but {label}'s head has {C} classes; "
                                 f"use the dataset the model was trained on")
            probes = None
            if "probe" in order_list:
                pds, _ = _open_labelled(model, probe_data, "--probe-data", "the probe order", probe_limit)
                probes = fit_token_probes(model, pds.batches(batch_size), C, sites=("resid_post",),
                                          progress=not quiet, total=_n_batches(pds, batch_size))
            imps: dict = {}
            res = removal_curves(model, ds.batches(batch_size), orders=order_list, probes=probes, n_random=n_random,
                                 seed=seed, step=step, progress=not quiet, total=_n_batches(ds, batch_size),
                                 importances=imps)
            meta = {**model_meta(model, label, random), "data": data, "probe_data": probe_data,
                    "orders": order_list, "step": step}
            stem = out / f"removal_{_slug(label)}"
            written += save_removal_curves(res, stem, fmts, title=f"{label}: token removal ({res.n_images} images)",
                                           meta=meta)
            for o, imp in imps.items():
                np.save(out / f"importance_{_slug(label)}_{o}.npy", imp.numpy())
            curve_rows += res.curve_rows(label)
            auc_rows += res.auc_rows(label)
            aucs = res.aucs()
            parts = [f"{o} {aucs[(o, 'negative', 'auc_seed')]:.3f}/{aucs[(o, 'positive', 'auc_seed')]:.3f}"
                     for o in order_list if o != "random"]
            if "random" in order_list:
                parts.append(f"random {aucs[('random', 'both', 'auc_seed')]:.3f}")
            summary.append(f"{label}: " + ", ".join(parts))
            if ds.skipped:
                ds.write_skip_report(out / "skipped.csv")
        save_tidy(curve_rows, out / "removal_curves")
        save_tidy(auc_rows, out / "removal_auc")
        if not quiet:
            for p in written:
                if str(p).endswith((".png", ".pdf", ".svg")):
                    typer.echo(f"wrote {p}")
        typer.echo(f"removal curves (seed AUC negative/positive) written to {out}: " + "; ".join(summary))

    # ------------------------------------------------------------------ probe-tokens
    @app.command("probe-tokens")
    def probe_tokens_cmd(
        model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeat for several."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help="Labelled test images. " + DATA_HELP),
        train_data: Optional[str] = typer.Option(None, "--train-data",
                                                 help="Labelled images the probes are fitted on (vilas2023: another "
                                                      "split than --data)."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        out: Path = typer.Option(Path("runs/probe-tokens"), "--out", "-o", help=OUT_HELP),
        sites: str = typer.Option("resid_post,attn_out,mlp_out", "--sites",
                                  help="Sites, comma-separated: resid_post, attn_out, mlp_out (vilas2023's hs, attn, "
                                       "mlp)."),
        alpha: float = typer.Option(1.0, "--alpha", help="Ridge penalty (vilas2023: 1.0)."),
        num_classes: Optional[int] = typer.Option(None, "--num-classes",
                                                  help="Classes of the targets (default: the training set's)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images of --data."),
        train_limit: Optional[int] = typer.Option(None, "--train-limit",
                                                  help="Use only the first N images of --train-data."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Per-token ridge probes (vilas2023): one probe per site, block and token position; accuracy and
        true-class rank per token, and the rank sum over blocks that orders patches for `vitscope removal`."""
        import numpy as np

        from vitscope.analysis.attention.tokens import token_names
        from vitscope.analysis.probes.ridge import evaluate_token_probes, fit_token_probes, resolve_sites
        from vitscope.cli.common import model_meta
        from vitscope.viz.removal import plot_token_probe_accuracy
        from vitscope.viz.save import save_figure

        fmts = _formats(formats)
        site_list = resolve_sites(sites)
        if alpha <= 0:
            raise ValueError(f"--alpha must be > 0, got {alpha}")
        if not train_data:
            raise ValueError("per-token probes need labelled training images: pass --train-data SPEC (and the test "
                             "images with --data)")
        if not data:
            raise ValueError("per-token probes need labelled test images: pass --data SPEC (another split than "
                             "--train-data)")
        models = _load_models(model_names, random, device)
        out.mkdir(parents=True, exist_ok=True)
        rows, written, summary = [], [], []
        for label, model in models.items():
            tr, ytr = _open_labelled(model, train_data, "--train-data", "per-token probes", train_limit)
            te, yte = _open_labelled(model, data, "--data", "per-token probes", limit)
            C = num_classes or max(len(getattr(tr, "classes", []) or []), int(ytr.max()) + 1)
            if yte.size and yte.max() >= C:
                raise ValueError(f"--data has labels up to {int(yte.max())} but the probes have {C} classes "
                                 f"(from --train-data); use splits of the same dataset")
            probes = fit_token_probes(model, tr.batches(batch_size), C, sites=site_list, alpha=alpha,
                                      progress=not quiet, total=_n_batches(tr, batch_size))
            res = evaluate_token_probes(model, probes, te.batches(batch_size), progress=not quiet,
                                        total=_n_batches(te, batch_size))
            rows += [{**r, "alpha": alpha, "n_train": probes.n_train, "n_test": len(yte)} for r in res.rows(label)]
            all_names = token_names(model.token_layout(model.cfg.depth))
            meta = {**model_meta(model, label, random), "train_data": train_data, "data": data, "alpha": alpha,
                    "num_classes": C, "n_train": probes.n_train, "tokens": all_names}
            for site in site_list:
                acc = np.full((len(probes.blocks), len(all_names)), np.nan)
                for i, b in enumerate(probes.blocks):
                    names = token_names(res.layouts[b])
                    a = res.accuracy(site, b)
                    for p, n in enumerate(names):
                        acc[i, all_names.index(n)] = a[p]
                fig = plot_token_probe_accuracy(acc, all_names, blocks=probes.blocks,
                                                title=f"{label}: per-token ridge probes, {site} (test accuracy)")
                written += save_figure(fig, out / f"probe_tokens_{_slug(label)}_{site}", fmts,
                                       arrays={"accuracy": acc}, meta={**meta, "site": site})
            if "resid_post" in site_list:
                np.save(out / f"rank_sum_{_slug(label)}.npy", res.rank_sum("resid_post"))
            last = probes.blocks[-1]
            lay = res.layouts[last]
            s0 = site_list[0]
            patch_acc = float(res.accuracy(s0, last)[lay.patches].mean())
            cls = f", CLS {res.accuracy(s0, last)[lay.cls]:.3f}" if lay.cls is not None else ""
            summary.append(f"{label} block {last} {s0}: patch tokens {patch_acc:.3f}{cls}")
        save_tidy(rows, out / "token_probes")
        if not quiet:
            for p in written:
                if str(p).endswith((".png", ".pdf", ".svg")):
                    typer.echo(f"wrote {p}")
        typer.echo(f"per-token ridge probes (mean test accuracy) written to {out}: " + "; ".join(summary))
