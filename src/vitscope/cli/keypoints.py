"""`vitscope keypoints`: SPair-71k keypoint correspondence per block, PCK as walmer2023 computes it
(``vitscope.analysis.correspondence``)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP, locks_out


def register(app: typer.Typer) -> None:
    @app.command("keypoints")
    @locks_out("vitscope keypoints")
    def keypoints_cmd(
        model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
        root: Path = typer.Option(..., "--spair", help="SPair-71k folder (JPEGImages/, PairAnnotation/, Layout/)."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
        with_random: bool = typer.Option(False, "--with-random", help="Add a random-weight copy of every model."),
        blocks: str = typer.Option("all", "--blocks", help="Blocks: all, or comma-separated indices (-1 = last)."),
        split: str = typer.Option("test", "--split", help="Pair split: test, val or trn."),
        pairs_per_category: int = typer.Option(20, "--pairs-per-category",
                                               help="Pairs drawn per category (0: every pair)."),
        seed: int = typer.Option(42, "--seed", help="Seed of the pair sample."),
        with_replacement: bool = typer.Option(False, "--with-replacement",
                                              help="Draw the pairs with replacement (walmer2023's sample)."),
        size: Optional[int] = typer.Option(None, "--size", help="Letterbox side (default: the model's input size, "
                                                                "224 for the seed's models)."),
        out: Path = typer.Option(Path("runs/keypoints"), "--out", "-o", help=OUT_HELP),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """PCK@{0.1, 0.05, 0.01} of nearest-neighbour keypoint transfer from every block's patch tokens."""
        import pandas as pd

        from vitscope.analysis.correspondence import evaluate_spair, sample_pairs, spair_rows
        from vitscope.cli.common import load_models, parse_formats, slug
        from vitscope.data.tasks import load_spair
        from vitscope.viz.downstream_dense import plot_keypoint_matches
        from vitscope.viz.per_block import save_metric_per_block
        from vitscope.viz.save import save_figure, save_json

        fmts = parse_formats(formats)
        pairs = sample_pairs(load_spair(root, split=split), pairs_per_category or None, seed, with_replacement)
        models = load_models(model_names, random, device, with_random=with_random)
        out.mkdir(parents=True, exist_ok=True)
        rows, cats = [], []
        for label, model in models.items():
            if not quiet:
                typer.echo(f"{label}: {len(pairs)} pair(s)")
            res = evaluate_spair(model, pairs, blocks, size=size, batch_size=batch_size, progress=not quiet,
                                 keep_matches=4)
            opts = dict(size=res["size"], pairs=len(pairs), seed=seed, with_replacement=with_replacement)
            rows += spair_rows(res, label, **opts)
            cats += [{"model": label, "block": b, "category": c, "metric": f"pck@{a:g}", "value": v}
                     for b, d in res["per_category"].items() for c, av in d.items() for a, v in av.items()]
            fig = plot_keypoint_matches(res["matches"], title=f"{label}, block {max(res['pck'])}")
            save_figure(fig, out / f"matches_{slug(label)}", fmts,
                        meta={"model": label, "block": max(res["pck"]), "n_outside": res["n_outside"]})
        table = pd.DataFrame(rows)
        table.to_csv(out / "keypoints.csv", index=False)
        table.to_parquet(out / "keypoints.parquet", index=False)
        pd.DataFrame(cats).to_csv(out / "keypoints_categories.csv", index=False)
        for metric in sorted(set(table["metric"])):
            save_metric_per_block(table, out / f"keypoints_{slug(metric)}", metric=metric, formats=fmts,
                                  title=f"SPair keypoint transfer, {len(pairs)} pairs", ylabel=f"PCK ({metric}, %)")
        save_json({"root": str(root), "split": split, "pairs": [p.name for p in pairs], "seed": seed,
                   "with_replacement": with_replacement}, out / "keypoints.json")
        best = table[table["metric"] == "pck@0.1"].sort_values("value").iloc[-1]
        typer.echo(f"SPair PCK@0.1 of {len(models)} model(s) on {len(pairs)} pair(s): best {best['value']:.1f}% "
                   f"({best['model']}, block {best['block']}); wrote {out}")
