"""`vitscope keypoints`: SPair-71k keypoint correspondence per block, PCK as walmer2023 computes it; a thin adapter
over :func:`vitscope.analysis.correspondence.evaluate`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (BLOCKS_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP,
                                 SEED_HELP, WITH_RANDOM_HELP, cli_options, locks_out)


@locks_out("vitscope keypoints")
def keypoints_cmd(
    model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
    root: str = typer.Option(..., "--spair", help="SPair-71k folder (JPEGImages/, PairAnnotation/, Layout/), or "
                                                  "synthetic[:pairs=N,...] (written into --out/data)."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
    with_random: bool = typer.Option(False, "--with-random", help=WITH_RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", "--model-seed", help=SEED_HELP),
    blocks: str = typer.Option("all", "--blocks", help=BLOCKS_HELP),
    split: str = typer.Option("test", "--split", help="Pair split: test, val or trn."),
    pairs_per_category: int = typer.Option(20, "--pairs-per-category", help="Pairs drawn per category (0: every "
                                                                            "pair)."),
    pair_seed: int = typer.Option(42, "--pair-seed", help="Seed of the pair sample (each category draws from "
                                                          "(this seed, its name); the study option `seed`)."),
    with_replacement: bool = typer.Option(False, "--with-replacement",
                                          help="Draw the pairs with replacement (walmer2023's sample)."),
    size: Optional[int] = typer.Option(None, "--size", help="Letterbox side, a multiple of the patch size "
                                                            "(default: the model's input size, 224 for walmer2023's "
                                                            "models)."),
    out: Path = typer.Option(Path("runs/keypoints"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """PCK@{0.1, 0.05, 0.01} of nearest-neighbour keypoint transfer from every block's patch tokens. The table
    holds percentages."""
    import pandas as pd

    from vitscope.analysis.correspondence import KeypointsOptions, evaluate, spair_sample
    from vitscope.cli.common import load_models, parse_formats
    from vitscope.data.tasks.synthetic import task_root
    from vitscope.viz.save import save_json

    fmts = parse_formats(formats)
    opts = cli_options(KeypointsOptions, blocks=blocks, split=split, pairs_per_category=pairs_per_category,
                       seed=pair_seed, with_replacement=with_replacement, size=size, batch_size=batch_size, device=device,
                       progress=not quiet, flags={"seed": "--pair-seed"})
    folder = task_root(root, "spair", Path(out) / "data")
    spair_sample(folder, opts)                                      # a bad folder or split fails before loading
    models = load_models(model_names, random, device, seed=seed, with_random=with_random)
    result = evaluate(models, folder, opts)
    result.save(out, fmts)
    pd.DataFrame(result.arrays["categories"]).to_csv(Path(out) / "keypoints_categories.csv", index=False)
    save_json({"root": str(root), "split": split, "pairs": result.meta["pairs"], "pair_seed": pair_seed,
               "with_replacement": with_replacement}, Path(out) / "keypoints.json")
    typer.echo(f"{result.summary}; wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("keypoints")(keypoints_cmd)
