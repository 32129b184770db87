"""`vitscope davis`: DAVIS-2017 video object segmentation by label propagation, per block, with the built-in
DAVIS-2017 scorer (``vitscope.analysis.video_segmentation``)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP, locks_out


def register(app: typer.Typer) -> None:
    @app.command("davis")
    @locks_out("vitscope davis")
    def davis_cmd(
        model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
        root: Path = typer.Option(..., "--davis", help="DAVIS-2017 folder (JPEGImages/, Annotations/, ImageSets/)."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
        with_random: bool = typer.Option(False, "--with-random", help="Add a random-weight copy of every model."),
        blocks: str = typer.Option("all", "--blocks", help="Blocks: all, or comma-separated indices (-1 = last)."),
        split: str = typer.Option("val", "--split", help="Sequence list ImageSets/2017/<split>.txt."),
        sequences: Optional[str] = typer.Option(None, "--sequences", help="Only these sequences, comma-separated."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N sequences."),
        resolution: str = typer.Option("dino", "--resolution",
                                       help="dino (short side --short-side, long side to a multiple of 64), "
                                            "squash (walmer2023: frames squashed to --tile px) or dense (walmer2023's "
                                            "--dense: short side 2 x --tile, cut into --tile tiles)."),
        short_side: int = typer.Option(480, "--short-side", help="Short side of the frames (dino resolution)."),
        tile: Optional[int] = typer.Option(None, "--tile", help="squash / dense size (default: the model's input "
                                                                "size, 224 for the seed's models)."),
        n_last: int = typer.Option(7, "--n-last", help="Previous frames in the context (besides the first)."),
        radius: int = typer.Option(12, "--radius", help="Neighbourhood radius in tokens (0: none)."),
        topk: int = typer.Option(5, "--topk", help="Affinities kept per token, over all context frames."),
        temperature: float = typer.Option(0.1, "--temperature", help="Affinity temperature."),
        out: Path = typer.Option(Path("runs/davis"), "--out", "-o", help=OUT_HELP),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        batch_size: int = typer.Option(8, "--batch-size", help="Frames per forward pass."),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """J&F of label propagation from every block's patch tokens (DINO's protocol, DAVIS-2017 scorer)."""
        import pandas as pd

        from vitscope.analysis.video_segmentation import RESOLUTIONS, davis_rows, evaluate_davis
        from vitscope.cli.common import load_models, parse_formats, slug
        from vitscope.data.tasks import load_davis
        from vitscope.viz.downstream_dense import plot_propagation
        from vitscope.viz.per_block import save_metric_per_block
        from vitscope.viz.save import save_figure, save_json

        if resolution not in RESOLUTIONS:
            raise ValueError(f"--resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        fmts = parse_formats(formats)
        names = [s.strip() for s in sequences.split(",")] if sequences else None
        ds = load_davis(root, split=split, sequences=names)
        seqs = list(ds)[:limit] if limit else list(ds)
        if not seqs:
            raise ValueError(f"no DAVIS sequence to evaluate in {root}")
        models = load_models(model_names, random, device, with_random=with_random)
        out.mkdir(parents=True, exist_ok=True)
        opts = dict(resolution=resolution, short_side=short_side, n_last=n_last, radius=radius, topk=topk,
                    temperature=temperature)
        rows, objects = [], []
        for label, model in models.items():
            if not quiet:
                typer.echo(f"{label}: {len(seqs)} sequence(s)")
            res = evaluate_davis(model, seqs, blocks, tile=tile, batch_size=batch_size, progress=not quiet,
                                 keep_predictions=True, **opts)
            used_tile = int(tile or model.cfg.img_size[0])
            rows += davis_rows(res, label, **opts, tile=used_tile)
            objects += [{"model": label, "block": b, **r} for b, rs in res["objects"].items() for r in rs]
            last = max(res["global"])
            seq = seqs[0]
            fig = plot_propagation(seq.frames(), res["predictions"][last][seq.name], seq.masks(),
                                   title=f"{label}, block {last}: {seq.name}")
            save_figure(fig, out / f"propagation_{slug(label)}_{slug(seq.name)}", fmts,
                        meta={"model": label, "block": last, "sequence": seq.name, **opts})
        table = pd.DataFrame(rows)
        table.to_csv(out / "davis.csv", index=False)
        table.to_parquet(out / "davis.parquet", index=False)
        pd.DataFrame(objects).to_csv(out / "davis_objects.csv", index=False)
        for metric in ("J&F-Mean", "J-Mean", "F-Mean"):
            save_metric_per_block(table, out / f"davis_{slug(metric)}", metric=metric, formats=fmts,
                                  title=f"DAVIS label propagation ({resolution}), {len(seqs)} sequence(s)")
        save_json({"root": str(root), "split": split, "sequences": [s.name for s in seqs], **opts}, out / "davis.json")
        best = table[table["metric"] == "J&F-Mean"].sort_values("value").iloc[-1]
        typer.echo(f"DAVIS J&F of {len(models)} model(s) on {len(seqs)} sequence(s): best {best['value']:.3f} "
                   f"({best['model']}, block {best['block']}); wrote {out}")
