"""Attention commands: `attention`, `rollout`, `attention-distance`, `attention-stats`, `saliency`, `video`,
`tokens-pdf`, `pos-embed`.

Every command is thin: it loads the model and the images, calls ``vitscope.analysis.attention`` and saves each
figure with ``save_figure`` so that the numbers (``.npy`` / ``.csv`` / ``.json``) sit beside it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (  # noqa: F401 - shared option texts and helpers
    DATA_HELP, DEVICE_HELP, FORMATS_HELP, IMAGES_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP, check_inputs, check_range,
    check_limit, load_model_for_cli, open_images, parse_heads, require_images)
from vitscope.cli.common import finish_skips as _finish
from vitscope.cli.common import model_meta as _model_meta
from vitscope.cli.common import parse_formats as _formats


def _display(x, pcfg):
    from vitscope.viz.attention import denormalize

    return denormalize(x, pcfg.mean, pcfg.std)


def _qname(query: str) -> str:
    """A query as a file-name part: ``"3,4"`` -> ``r3c4``."""
    q = query.strip().lower().replace(" ", "")
    if "," in q:
        r, c = q.split(",", 1)
        return f"r{r}c{c}"
    return q


def _ids(ds, idx) -> list[str]:
    return [Path(ds.ids[int(i)]).name for i in idx]


def register(app: typer.Typer) -> None:  # noqa: C901 - one function that declares the group's commands
    # ------------------------------------------------------------------ attention
    @app.command("attention")
    def attention_cmd(
        images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
        model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        out: Path = typer.Option(Path("runs/attention"), "--out", "-o", help=OUT_HELP),
        block: int = typer.Option(-1, "--block", "-b", help="Block whose attention is drawn (-1 = last)."),
        query: str = typer.Option("cls", "--query",
                                  help="Query token: cls, dist, reg<k>, mean, centre, top, left, right, bottom or "
                                       "'row,col'."),
        heads: Optional[str] = typer.Option(None, "--heads", help="Heads to draw, comma-separated (default all)."),
        fusion: str = typer.Option("mean", "--fusion",
                                   help="Head fusion for the batch overlay figure: mean, max, min or sum."),
        threshold: Optional[float] = typer.Option(None, "--threshold",
                                                  help="Also draw DINO-style masks keeping this share of "
                                                       "attention mass (e.g. 0.6)."),
        all_blocks: bool = typer.Option(False, "--all-blocks",
                                        help="Also draw the block x head grid (blocks where the query exists)."),
        overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Draw maps over the image."),
        cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
        alpha: float = typer.Option(0.6, "--alpha", help="Opacity of the map over the image (0-1)."),
        limit: int = typer.Option(8, "--limit", help="At most this many images."),
        batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Per-head attention maps of one block (and optionally every block) for each image."""
        check_inputs(data, images, limit)                 # at once, before torch and the model load
        check_range(threshold, "--threshold", 0, 1, low_open=True)
        check_range(alpha, "--alpha", 0, 1)
        check_range(batch_size, "--batch-size", 1)
        import torch

        from vitscope.analysis.attention.maps import (
            attention_map, block_head_maps, collect_patterns, fuse_heads, mass_threshold,
        )
        from vitscope.analysis.attention.tokens import grid_of, normalize_block, resolve_query
        from vitscope.viz.attention import plot_block_head_grid, plot_head_maps, plot_image_overlays
        from vitscope.viz.save import save_figure

        fmts = _formats(formats)
        model = load_model_for_cli(model_name, random, device)
        b = normalize_block(block, model.cfg.depth)
        resolve_query(query, model.token_layout(b), model.cfg)
        head_list = parse_heads(heads, model.cfg.num_heads)
        ds, pcfg = open_images(model, data, images, limit)
        out.mkdir(parents=True, exist_ok=True)
        meta = _model_meta(model, model_name, random)
        qn = _qname(query)
        all_imgs, all_fused, names = [], [], []
        for x, _, idx in ds.batches(batch_size=batch_size, progress=not quiet):
            x = x.to(model.device, model.dtype)
            lay = model.token_layout(b, grid_of(x, model))
            pat = collect_patterns(model, x, [b])[b]
            maps = attention_map(pat, lay, query, heads=head_list, cfg=model.cfg).float().cpu()    # B, H', r, c
            disp = _display(x.cpu(), pcfg)
            grids = block_head_maps(model, x, query=query) if all_blocks else None
            for k, i in enumerate(idx.tolist()):
                name = Path(ds.ids[i]).stem
                labels = [f"head {h}" for h in (head_list or range(maps.shape[1]))]
                fig = plot_head_maps(maps[k], image=disp[k], overlay_image=overlay, cmap=cmap, alpha=alpha,
                                     title=f"{name}: {query} -> patches, block {b}", head_labels=labels)
                arrays = {"maps": maps[k].numpy()}
                if threshold is not None:
                    arrays["mask"] = mass_threshold(maps[k], threshold).numpy()
                save_figure(fig, out / f"{i:04d}_{name}_block{b}_{qn}", fmts, arrays=arrays,
                            meta={**meta, "image": ds.ids[i], "block": b, "query": query, "heads": labels})
                if threshold is not None:
                    fig = plot_head_maps(arrays["mask"].astype(float), image=disp[k], overlay_image=overlay,
                                         cmap="gray", alpha=alpha, head_labels=labels,
                                         title=f"{name}: top {threshold:.0%} of attention mass, block {b}")
                    save_figure(fig, out / f"{i:04d}_{name}_block{b}_{qn}_mass{threshold:g}", fmts,
                                arrays={"mask": arrays["mask"]},
                                meta={**meta, "image": ds.ids[i], "block": b, "query": query, "mass": threshold})
                if grids is not None:
                    blocks, g = grids
                    fig = plot_block_head_grid(g[k].float().cpu(), blocks, image=disp[k] if overlay else None,
                                               cmap=cmap, alpha=alpha, title=f"{name}: {query} -> patches")
                    save_figure(fig, out / f"{i:04d}_{name}_blocks_{qn}", fmts,
                                arrays={"maps": g[k].float().cpu().numpy(), "blocks": torch.tensor(blocks).numpy()},
                                meta={**meta, "image": ds.ids[i], "blocks": blocks, "query": query})
            all_imgs += list(disp)
            all_fused.append(fuse_heads(maps, fusion, dim=1))
            names += _ids(ds, idx)
        if not all_fused:
            _finish(ds, out)
        require_images(len(all_fused), ds, out)
        fused = torch.cat(all_fused).numpy()
        fig = plot_image_overlays(all_imgs, fused, names, cmap=cmap, alpha=alpha,
                                  title=f"{query} attention, block {b}, heads fused by {fusion}")
        save_figure(fig, out / f"overlays_block{b}_{qn}", fmts, arrays={"maps": fused},
                    meta={**meta, "images": names, "block": b, "query": query, "fusion": fusion})
        _finish(ds, out)
        typer.echo(f"wrote {len(names)} image(s) of attention maps to {out}")

    # ------------------------------------------------------------------ rollout
    @app.command("rollout")
    def rollout_cmd(
        images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
        model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        out: Path = typer.Option(Path("runs/rollout"), "--out", "-o", help=OUT_HELP),
        method: str = typer.Option("rollout", "--method",
                                   help="rollout (attention only), grad-rollout (vit-explain's gradient rollout), "
                                        "chefer2021-generic (Chefer et al. ICCV 2021, 'Generic Attention-model "
                                        "Explainability') or chefer2021-lrp (Chefer et al. CVPR 2021, 'Transformer "
                                        "Attribution'). Old names grad, grad_rollout, chefer are accepted."),
        head_fusion: str = typer.Option("mean", "--head-fusion", help="Rollout head fusion: mean, max or min."),
        discard_ratio: float = typer.Option(0.0, "--discard-ratio",
                                            help="Zero this share of the lowest entries per block (rollout and "
                                                 "grad-rollout)."),
        discard_rule: str = typer.Option("exclude-cls", "--discard-rule",
                                         help="Which entries the discard zeroes: exclude-cls (the k lowest other "
                                              "than CLS->CLS), vit-explain (that code's rule: rollout spares "
                                              "CLS->CLS among the k lowest, grad-rollout spares nothing), "
                                              "spare-cls or all."),
        normalize: str = typer.Option("max", "--normalize",
                                      help="Map scaling: max (divide by the max), minmax (to [0, 1], as Chefer et "
                                           "al.'s notebooks show) or none."),
        start_block: int = typer.Option(0, "--start-block", help="First block of the rollout."),
        query: str = typer.Option("cls", "--query", help="Row read from the rolled-out matrix (cls, reg<k>, ...)."),
        target: Optional[int] = typer.Option(None, "--target",
                                             help="Class explained by grad / chefer (default: the predicted one)."),
        cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
        alpha: float = typer.Option(0.6, "--alpha", help="Opacity of the map over the image (0-1)."),
        limit: int = typer.Option(8, "--limit", help="At most this many images."),
        batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Attention rollout, gradient rollout or Chefer et al.'s relevance maps over the images."""
        check_inputs(data, images, limit)                 # at once, before torch and the model load
        check_range(discard_ratio, "--discard-ratio", 0, 1, high_open=True)
        import torch

        from vitscope.analysis.attention.relevance import METHOD_TITLES, relevance_from_model, resolve_method
        from vitscope.analysis.attention.rollout import NORMALIZATIONS, resolve_discard_rule, rollout_from_model
        from vitscope.viz.attention import plot_image_overlays
        from vitscope.viz.save import save_figure

        try:
            method = resolve_method(method)
        except ValueError as e:
            raise ValueError(f"--method: {e}") from None
        try:
            resolve_discard_rule(discard_rule)
        except ValueError as e:
            raise ValueError(f"--discard-rule: {e}") from None
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"--normalize takes {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        fmts = _formats(formats)
        model = load_model_for_cli(model_name, random, device)
        if method != "rollout" and model.cfg.head == "none":
            raise ValueError(f"--method {method} explains a class score, and this model has no classification "
                             f"head; use --method rollout")
        ds, pcfg = open_images(model, data, images, limit)
        out.mkdir(parents=True, exist_ok=True)
        imgs, maps, names, targets = [], [], [], []
        for x, _, idx in ds.batches(batch_size=batch_size, progress=not quiet):
            x = x.to(model.device, model.dtype)
            if method == "rollout":
                m, _, _ = rollout_from_model(model, x, head_fusion, discard_ratio, start_block, query=query,
                                             normalize=normalize, discard_rule=discard_rule)
            else:
                m, _, t = relevance_from_model(model, x, target, method, discard_ratio, start_block, query=query,
                                               normalize=normalize, discard_rule=discard_rule)
                targets += t.tolist()
            maps.append(m.float().cpu())
            imgs += list(_display(x.cpu(), pcfg))
            names += _ids(ds, idx)
        if not maps:
            _finish(ds, out)
        require_images(len(maps), ds, out)
        maps_arr = torch.cat(maps).numpy()
        titles = [f"{n} (class {t})" for n, t in zip(names, targets)] if targets else names
        what = METHOD_TITLES[method]
        if method == "rollout":
            what += f" ({head_fusion}, discard {discard_ratio:g})"
        fig = plot_image_overlays(imgs, maps_arr, titles, cmap=cmap, alpha=alpha, title=what)
        save_figure(fig, out / f"{method}", fmts, arrays={"maps": maps_arr},
                    meta={**_model_meta(model, model_name, random), "images": [ds.ids[i] for i in range(len(ds))],
                          "method": method, "head_fusion": head_fusion, "discard_ratio": discard_ratio,
                          "discard_rule": discard_rule, "normalize": normalize, "start_block": start_block, "query": query, "targets": targets})
        _finish(ds, out)
        typer.echo(f"wrote {what} of {len(names)} image(s) to {out}")

    # ------------------------------------------------------------------ attention distance
    @app.command("attention-distance")
    def distance_cmd(
        images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
        model_names: List[str] = typer.Option(..., "--model", "-m",
                                              help=MODEL_HELP + " Repeat to compare models on one figure."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
        random_models: Optional[List[str]] = typer.Option(None, "--random-model",
                                                          help="Also compare this architecture with random weights "
                                                               "(repeatable), e.g. the baseline of a --model."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        out: Path = typer.Option(Path("runs/attention-distance"), "--out", "-o", help=OUT_HELP),
        variants: str = typer.Option("A,B", "--variants",
                                     help="A: normalised coordinates, prefix tokens dropped and rows renormalised "
                                          "(walmer2023); B: pixels, not renormalised (probing-vits)."),
        limit: Optional[int] = typer.Option(1000, "--limit", help="At most this many images (probing-vits: 1000)."),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
        relative_depth: bool = typer.Option(False, "--relative-depth",
                                            help="Comparison figure: blocks on [0, 1] (models of different depth)."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Mean attention distance per block x head over a dataset (streamed), scatter per model and compared."""
        check_inputs(data, images, limit)                 # at once, before torch and the model load
        from vitscope.analysis.attention.distance import VARIANTS, attention_distance
        from vitscope.viz.attention_distance import plot_attention_distance, plot_attention_distance_models
        from vitscope.viz.save import save_figure, save_table

        fmts = _formats(formats)
        vs = [v.strip().upper() for v in variants.split(",") if v.strip()]
        if not vs or any(v not in VARIANTS for v in vs):
            raise ValueError(f"--variants takes A and/or B, got {variants!r}")
        results: dict[str, dict] = {v: {} for v in vs}
        used = {}
        runs = [(n, random) for n in model_names] + [(n, True) for n in (random_models or [])]
        for name, rnd in runs:
            model = load_model_for_cli(name, rnd, device)
            ds, _ = open_images(model, data, images, limit)
            label = Path(name).name if Path(name).exists() else name
            label = f"{label} (random)" if rnd and random_models else label
            label = label if label not in used else f"{label} ({len(used)})"
            used[label] = name
            acc = attention_distance(model, (b[0] for b in ds.batches(batch_size=batch_size)), vs,
                                     progress=not quiet, total=len(ds))
            if acc[vs[0]].n_images == 0:
                _finish(ds, out)
            require_images(acc[vs[0]].n_images, ds, out)
            stem = label.replace("/", "_").replace(":", "_").replace(" (", "_").replace(")", "").replace(" ", "_")
            rows = []
            for v in vs:
                mean, std = acc[v].compute(), acc[v].std()
                results[v][label] = mean
                fig = plot_attention_distance(mean, v, title=f"{label} (variant {v})", std=std,
                                              data=data or ds.description, n_images=acc[v].n_images)
                save_figure(fig, out / f"{stem}_distance_{v}", fmts, arrays={"mean": mean, "std": std},
                            meta={**_model_meta(model, name, rnd), "variant": v, "n_images": acc[v].n_images,
                                  "data": data or [str(p) for p in images or []],
                                  "units": "normalised [0, 1]" if v == "A" else "pixels"})
                for bl in range(mean.shape[0]):
                    for h in range(mean.shape[1]):
                        rows.append({"model": label, "variant": v, "block": bl, "head": h,
                                     "mean_distance": float(mean[bl, h]), "std": float(std[bl, h]),
                                     "n_images": acc[v].n_images})
            save_table(rows, out / f"{stem}_distance.csv")
            _finish(ds, out)
        if len(runs) > 1:
            for v in vs:
                fig = plot_attention_distance_models(results[v], v, relative_depth=relative_depth,
                                                     title=f"mean attention distance, variant {v}",
                                                     data=data or ds.description, n_images=acc[vs[0]].n_images)
                save_figure(fig, out / f"models_distance_{v}", fmts,
                            arrays={f"model{k}": m for k, m in enumerate(results[v].values())},
                            meta={"variant": v, "models": list(results[v]),
                                  "random_init": [bool(r) for _, r in runs]})
        typer.echo(f"wrote mean attention distance ({', '.join(vs)}) of {len(runs)} model(s) to {out}")

    # ------------------------------------------------------------------ walmer2023 statistics
    @app.command("attention-stats")
    def stats_cmd(
        images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
        model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        out: Path = typer.Option(Path("runs/attention-stats"), "--out", "-o", help=OUT_HELP),
        limit: Optional[int] = typer.Option(1000, "--limit", help="At most this many images."),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """walmer2023's statistics: std over heads / positions, spatial->CLS, average and query-centred maps, offsets.

        Query-centred maps are written twice: aligned (walmer2023: divided by the number of queries) and
        aligned_overlap (each offset divided by the number of queries that reach it; flat for uniform attention).
        """
        check_inputs(data, images, limit)                 # at once, before torch and the model load
        from vitscope.analysis.attention.stats import attention_statistics
        from vitscope.viz.attention import plot_block_head_grid
        from vitscope.viz.attention_stats import (
            plot_block_head_heatmap, plot_block_metric, plot_head_metric, plot_offsets,
        )
        from vitscope.viz.save import save_figure, save_table

        fmts = _formats(formats)
        model = load_model_for_cli(model_name, random, device)
        ds, _ = open_images(model, data, images, limit)
        res = attention_statistics(model, (b[0] for b in ds.batches(batch_size=batch_size)), progress=not quiet,
                                   total=len(ds))
        if int(res["n_images"]) == 0:
            _finish(ds, out)
        require_images(int(res["n_images"]), ds, out)
        meta = {**_model_meta(model, model_name, random), "n_images": int(res["n_images"])}
        ctx = {"data": data or ds.description, "n_images": int(res["n_images"])}          # for the titles
        save_figure(plot_block_metric(res["head_std"], "std over heads", **ctx), out / "std_over_heads", fmts,
                    arrays={"values": res["head_std"]}, meta=meta)
        for key, label in [("position_std", "std over token positions"), ("spatial_to_cls", "spatial -> CLS attention"),
                           ("offset", "attention offset (query-centred maps)")]:
            save_figure(plot_head_metric(res[key], label, **ctx), out / key, fmts, arrays={"values": res[key]},
                        meta=meta)
            save_figure(plot_block_head_heatmap(res[key], label=label, title=label, **ctx), out / f"{key}_summary", fmts,
                        arrays={"values": res[key]}, meta=meta)
        save_figure(plot_offsets(res["offset_x"], res["offset_y"], "centre of the query-centred maps", **ctx),
                    out / "offsets", fmts, arrays={"x": res["offset_x"], "y": res["offset_y"],
                                                   "offset_head": res["offset_head"]}, meta=meta)
        L = model.cfg.depth
        for key in ("map_cls", "map_mean", "map_centre", "map_all", "map_spcpure", "aligned", "aligned_overlap"):
            keep = [b for b in range(L) if not (res[key][b] != res[key][b]).all()]      # skip all-NaN blocks
            if keep:
                fig = plot_block_head_grid(res[key][keep], keep, title=key.replace("_", " "), **ctx)
                save_figure(fig, out / key, fmts, arrays={"maps": res[key], "blocks": keep}, meta=meta)
        rows = [{"block": b, "head": h, "position_std": float(res["position_std"][b, h]),
                 "spatial_to_cls": float(res["spatial_to_cls"][b, h]), "offset": float(res["offset"][b, h]),
                 "offset_x": float(res["offset_x"][b, h]), "offset_y": float(res["offset_y"][b, h]),
                 "offset_head": bool(res["offset_head"][b, h]), "head_std_block": float(res["head_std"][b])}
                for b in range(L) for h in range(model.cfg.num_heads)]
        save_table(rows, out / "attention_stats.csv")
        _finish(ds, out)
        typer.echo(f"wrote attention statistics of {int(res['n_images'])} image(s) to {out}")

    # ------------------------------------------------------------------ saliency IoU
    @app.command("saliency")
    def saliency_cmd(
        model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        coco: Optional[Path] = typer.Option(None, "--coco", help="COCO instances json (with --image-root)."),
        partimagenet: Optional[Path] = typer.Option(None, "--partimagenet",
                                                    help="PartImageNet annotation json (with --image-root)."),
        imagenet_s: Optional[Path] = typer.Option(None, "--imagenet-s", help="ImageNet-S root folder."),
        image_root: Optional[Path] = typer.Option(None, "--image-root", help="Image folder of --coco / --partimagenet."),
        data: Optional[str] = typer.Option(None, "--data", "-d",
                                           help="Instead of a task format: synthetic[:...] (shapes with masks)."),
        out: Path = typer.Option(Path("runs/saliency"), "--out", "-o", help=OUT_HELP),
        queries: str = typer.Option("cls,mean,centre", "--queries",
                                    help="Queries: cls, mean (all spatial queries), centre."),
        mass: float = typer.Option(0.6, "--mass", help="Share of attention mass kept in the binary map."),
        mask_rule: str = typer.Option("bicubic", "--mask-rule",
                                      help="Mask to token grid: bicubic (walmer2023: each object resized, then "
                                           "ORed), bicubic-union (the union resized once), any, majority."),
        merge_rule: str = typer.Option("sum", "--merge-rule",
                                       help="Heads summed: sum (raw maps, then renormalised) or walmer2023 (CLS and "
                                            "centre maps renormalised per head first, as walmer2023's code does)."),
        limit: Optional[int] = typer.Option(5000, "--limit", help="At most this many images (walmer2023: 5000)."),
        batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Saliency IoU of binarised attention maps against ground-truth object masks, per block x head."""
        check_range(mass, "--mass", 0, 1, low_open=True)
        check_range(batch_size, "--batch-size", 1)
        import numpy as np

        from vitscope.analysis.attention.saliency import (
            MASK_RULES, MERGE_RULE_ALIASES, MERGE_RULES, image_mask_pairs, saliency_batches, saliency_iou,
            summarize_iou,
        )
        merge_rule = MERGE_RULE_ALIASES.get(merge_rule, merge_rule)

        if mask_rule not in MASK_RULES:
            raise ValueError(f"--mask-rule takes {', '.join(MASK_RULES)}, got {mask_rule!r}")
        if merge_rule not in MERGE_RULES:
            raise ValueError(f"--merge-rule takes {', '.join(MERGE_RULES)}, got {merge_rule!r}")
        from vitscope.viz.attention_stats import plot_block_head_heatmap
        from vitscope.viz.save import save_figure, save_json, save_table

        fmts = _formats(formats)
        given = [s for s in (coco, partimagenet, imagenet_s, data) if s]
        if len(given) != 1:
            raise ValueError("give exactly one of --coco, --partimagenet, --imagenet-s or --data synthetic:...")
        if coco or partimagenet:
            from vitscope.data.tasks import load_segmentation

            structure = load_segmentation(coco, partimagenet, image_root)
        elif imagenet_s:
            from vitscope.data.tasks import load_imagenet_s

            structure = load_imagenet_s(imagenet_s)
        else:
            from vitscope.data import open_dataset

            structure = open_dataset(data)
            if not hasattr(structure.source, "sample"):
                raise ValueError(f"--data {data!r} has no object masks; use synthetic[:...] or a task format")
        qs = [q.strip() for q in queries.split(",") if q.strip()]
        bad = [q for q in qs if q not in ("cls", "mean", "centre")]
        if bad or not qs:
            raise ValueError(f"--queries takes cls, mean, centre; got {queries!r}")
        model = load_model_for_cli(model_name, random, device)
        if "cls" in qs and not model.cfg.class_token:
            raise ValueError("this model has no CLS token; use --queries mean,centre")
        check_limit(limit)
        n_total = len(structure) if limit is None else min(limit, len(structure))
        skipped: list[str] = []
        batches = saliency_batches(model, image_mask_pairs(structure, limit), batch_size, mask_rule, skipped)
        res = saliency_iou(model, batches, qs, mass, progress=not quiet, total=n_total, merge_rule=merge_rule)
        n_used = int(next(iter(res.values())).shape[0])
        if n_used == 0:
            raise ValueError(f"no usable image: none of the {n_total} image(s) could be read or had an object mask "
                             f"({len(skipped)} without objects); check the data with `vitscope check-data`")
        out.mkdir(parents=True, exist_ok=True)
        meta = {**_model_meta(model, model_name, random), "mass": mass, "mask_rule": mask_rule, "merge_rule": merge_rule,
                "n_images": int(next(iter(res.values())).shape[0]), "skipped_no_object": len(skipped)}
        import warnings

        for q in qs:
            per_head, summed = res[(q, False)], res[(q, True)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                table = np.concatenate([np.nanmean(per_head, 0), np.nanmean(summed, 0)], axis=1)   # L, H + 1
            labels = [str(h) for h in range(per_head.shape[2])] + ["sum"]
            fig = plot_block_head_heatmap(table, title=f"saliency IoU, {q} query (mass {mass:g})", cmap="viridis",
                                          data=str(given[0]), n_images=meta["n_images"],
                                          label="IoU", head_labels=labels)
            save_figure(fig, out / f"iou_{q}", fmts, arrays={"per_image_heads": per_head,
                                                             "per_image_summed": summed, "mean": table},
                        meta={**meta, "query": q, "columns": labels})
        save_table(summarize_iou(res), out / "saliency_iou.csv")
        save_json({"skipped_no_object": skipped}, out / "skipped_no_object.json")
        typer.echo(f"saliency IoU over {meta['n_images']} image(s) ({len(skipped)} without objects left out) "
                   f"written to {out}")

    # ------------------------------------------------------------------ video
    @app.command("video")
    def video_cmd(
        source: Path = typer.Argument(..., help="Video file (mp4, GIF, ...) or a folder of frame images."),
        model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        out: Path = typer.Option(Path("runs/video/attention.mp4"), "--out", "-o",
                                 help="Output video: .mp4 or .gif (frames go to <name>_frames/ beside it)."),
        block: int = typer.Option(-1, "--block", "-b", help="Block (-1 = last)."),
        query: str = typer.Option("cls", "--query", help="Query token (cls, reg<k>, mean, centre, ...)."),
        fusion: str = typer.Option("mean", "--fusion", help="Head fusion: mean, max, min or sum."),
        short_side: Optional[int] = typer.Option(None, "--short-side",
                                                 help="Resize frames to this short side (default: the model's size)."),
        layout: str = typer.Option("overlay", "--layout", help="overlay (map over the frame) or side (frame | map)."),
        cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
        alpha: float = typer.Option(0.6, "--alpha", help="Opacity of the map over the frame (0-1)."),
        fps: Optional[float] = typer.Option(None, "--fps", help="Output frame rate (default: the source's)."),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after this many frames."),
        step: int = typer.Option(1, "--step", help="Use every k-th frame."),
        batch_size: int = typer.Option(8, "--batch-size", help="Frames per forward pass."),
        no_frames: bool = typer.Option(False, "--no-frames", help="Do not write the PNG frames."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP + " (summary figure)"),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Attention heat-map video: per-frame attention blended over the frames (mp4 or GIF, plus PNG frames)."""
        check_range(max_frames, "--max-frames", 1)
        check_range(batch_size, "--batch-size", 1)
        from vitscope.analysis.attention.video import attention_video
        from vitscope.viz.attention import plot_frames
        from vitscope.viz.save import save_figure

        fmts = _formats(formats)
        model = load_model_for_cli(model_name, random, device)
        res = attention_video(model, source, out, block, query, fusion, short_side, cmap, alpha, layout, fps,
                              max_frames, step, batch_size, save_frames=not no_frames, progress=not quiet)
        b = block + model.cfg.depth if block < 0 else block
        fig = plot_frames([f for _, f in res["samples"]], [f"frame {k}" for k, _ in res["samples"]],
                          title=f"{query} attention, block {b}, heads fused by {fusion}")
        maps = res["maps"]
        arrays = {"maps": maps} if maps.dtype != object else {}
        save_figure(fig, out.with_name(out.stem + "_summary"), fmts, arrays=arrays,
                    meta={**_model_meta(model, model_name, random), "source": str(source), "block": block,
                          "query": query, "fusion": fusion, "fps": res["fps"], "n_frames": res["n_frames"],
                          "video": str(res["video"])})
        typer.echo(f"wrote {res['video']} ({res['n_frames']} frames at {res['fps']:g} fps)")

    # ------------------------------------------------------------------ tokens PDF (cls-register)
    @app.command("tokens-pdf")
    def tokens_pdf_cmd(
        images: Optional[List[Path]] = typer.Argument(None, help=IMAGES_HELP),
        model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        out: Path = typer.Option(Path("runs/tokens"), "--out", "-o", help=OUT_HELP),
        block: int = typer.Option(-1, "--block", "-b", help="Block whose attention is drawn (-1 = last)."),
        cmap: str = typer.Option("inferno", "--cmap", help="Matplotlib colour map."),
        limit: int = typer.Option(4, "--limit", help="At most this many images (one PDF each)."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP + " (one figure per page)"),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """CLS and register attention over patches for every head: one PDF per image, one page per token."""
        check_inputs(data, images, limit)                 # at once, before torch and the model load
        from vitscope.analysis.attention.maps import attention_map, collect_patterns
        from vitscope.analysis.attention.tokens import grid_of, normalize_block, resolve_query
        from vitscope.viz.attention_tokens import plot_token_page, tokens_pdf
        from vitscope.viz.save import save_figure

        fmts = _formats(formats)
        model = load_model_for_cli(model_name, random, device)
        cfg = model.cfg
        b = normalize_block(block, cfg.depth)
        tokens = (["cls"] if cfg.class_token else []) + [f"reg{k}" for k in range(cfg.num_registers)]
        if not tokens:
            raise ValueError("this model has neither a CLS token nor registers")
        lay = model.token_layout(b)
        for t in tokens:
            resolve_query(t, lay, cfg)                 # a token before its block: one clear error, nothing written
        ds, pcfg = open_images(model, data, images, limit)
        out.mkdir(parents=True, exist_ok=True)
        meta = _model_meta(model, model_name, random)
        n = 0
        for x, _, idx in ds.batches(batch_size=4, progress=not quiet):
            x = x.to(model.device, model.dtype)
            lay = model.token_layout(b, grid_of(x, model))
            pat = collect_patterns(model, x, [b])[b]
            disp = _display(x.cpu(), pcfg)
            for k, i in enumerate(idx.tolist()):
                name = Path(ds.ids[i]).stem
                maps = {t: attention_map(pat[k:k + 1], lay, t, cfg=cfg)[0].float().cpu().numpy() for t in tokens}
                pdf = tokens_pdf(out / f"{i:04d}_{name}_block{b}.pdf", disp[k], maps, b, cmap)
                for t, m in maps.items():
                    save_figure(plot_token_page(disp[k], m, t, b, cmap), out / f"{i:04d}_{name}_block{b}_{t}", fmts,
                                arrays={"maps": m}, meta={**meta, "image": ds.ids[i], "block": b, "token": t,
                                                          "pdf": str(pdf)})
                n += 1
        _finish(ds, out)
        require_images(n, ds, out)
        typer.echo(f"wrote {n} PDF(s) with pages {', '.join(tokens)} to {out}")

    # ------------------------------------------------------------------ position embeddings
    @app.command("pos-embed")
    def pos_embed_cmd(
        model_name: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        out: Path = typer.Option(Path("runs/pos-embed"), "--out", "-o", help=OUT_HELP),
        grid: Optional[str] = typer.Option(None, "--grid", help="Token grid 'rows,cols' (default: the model's); "
                                                                "learned embeddings are resampled."),
        filters: int = typer.Option(28, "--filters", help="Number of patch-embedding filters to draw."),
        filter_mode: str = typer.Option("pca", "--filter-mode",
                                        help="pca (principal components, ViT paper) or raw (first filters)."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    ) -> None:
        """Position-embedding cosine-similarity grid and patch-embedding filter images."""
        from vitscope.analysis.attention.posembed import patch_embedding_filters, position_similarity
        from vitscope.viz.attention_tokens import plot_patch_filters, plot_position_similarity
        from vitscope.viz.save import save_figure

        fmts = _formats(formats)
        model = load_model_for_cli(model_name, random, device)
        meta = _model_meta(model, model_name, random)
        g = tuple(int(v) for v in grid.split(",")) if grid else None
        if g is not None and len(g) != 2:
            raise ValueError(f"--grid takes 'rows,cols', got {grid!r}")
        written = []
        if model.cfg.pos_embed != "none":
            sim = position_similarity(model, g)
            save_figure(plot_position_similarity(sim), out / "pos_embed_similarity", fmts, arrays={"similarity": sim},
                        meta={**meta, "grid": list(sim.shape[:2])})
            written.append("position-embedding similarity")
        else:
            typer.echo("this model has no absolute position embedding; only the filters are drawn")
        f = patch_embedding_filters(model, filters, filter_mode)
        save_figure(plot_patch_filters(f, title=f"patch-embedding filters ({filter_mode})"), out / "patch_filters",
                    fmts, arrays={"filters": f}, meta={**meta, "mode": filter_mode})
        written.append("patch-embedding filters")
        typer.echo(f"wrote {' and '.join(written)} to {out}")
