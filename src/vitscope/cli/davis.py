"""`vitscope davis`: DAVIS-2017 video object segmentation by label propagation, per block, with the built-in
DAVIS-2017 scorer; a thin adapter over :func:`vitscope.analysis.video_segmentation.evaluate`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (BLOCKS_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP,
                                 SEED_HELP, WITH_RANDOM_HELP, cli_options, locks_out)


@locks_out("vitscope davis")
def davis_cmd(
    model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
    root: str = typer.Option(..., "--davis", help="DAVIS-2017 folder (JPEGImages/, Annotations/, ImageSets/), or "
                                                  "synthetic[:videos=N,frames=T,...] (written into --out/data)."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
    with_random: bool = typer.Option(False, "--with-random", help=WITH_RANDOM_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    blocks: str = typer.Option("all", "--blocks", help=BLOCKS_HELP),
    split: str = typer.Option("val", "--split", help="Sequence list ImageSets/2017/<split>.txt."),
    sequences: Optional[str] = typer.Option(None, "--sequences", help="Only these sequences, comma-separated."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N sequences."),
    resolution: str = typer.Option("dino", "--resolution",
                                   help="dino (short side --short-side, long side to a multiple of 64), squash "
                                        "(walmer2023: frames squashed to --tile px) or dense (walmer2023's --dense: "
                                        "short side 2 x --tile, cut into --tile tiles)."),
    short_side: int = typer.Option(480, "--short-side", help="Short side of the frames (dino resolution); smaller "
                                                             "frames keep their size unless --upscale."),
    upscale: bool = typer.Option(False, "--upscale", help="dino resolution: also enlarge frames smaller than "
                                                          "--short-side (DINO's code resizes every frame)."),
    tile: Optional[int] = typer.Option(None, "--tile", help="squash / dense size (default: the model's input "
                                                            "size, 224 for walmer2023's models)."),
    n_last: int = typer.Option(7, "--n-last", help="Previous frames in the context (besides the first)."),
    radius: int = typer.Option(12, "--radius", help="Neighbourhood radius in tokens (0: none)."),
    topk: int = typer.Option(5, "--topk", help="Affinities kept per token, over all context frames."),
    temperature: float = typer.Option(0.1, "--temperature", help="Affinity temperature."),
    out: Path = typer.Option(Path("runs/davis"), "--out", "-o", help=OUT_HELP),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Frames per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """J&F of label propagation from every block's patch tokens (DINO's protocol, DAVIS-2017 scorer)."""
    import pandas as pd

    from vitscope.analysis.video_segmentation import DavisOptions, davis_sequences, evaluate
    from vitscope.cli.common import load_models, parse_formats
    from vitscope.data.tasks.synthetic import task_root
    from vitscope.viz.save import save_json

    fmts = parse_formats(formats)
    opts = cli_options(DavisOptions, blocks=blocks, split=split, sequences=sequences, limit=limit,
                       resolution=resolution, short_side=short_side, upscale=upscale, tile=tile, n_last=n_last,
                       radius=radius, topk=topk, temperature=temperature, batch_size=batch_size, device=device,
                       progress=not quiet)
    folder = task_root(root, "davis", Path(out) / "data")
    davis_sequences(folder, opts)                                   # a bad folder or selection fails before loading
    models = load_models(model_names, random, device, seed=seed, with_random=with_random)
    result = evaluate(models, folder, opts)
    result.save(out, fmts)
    pd.DataFrame(result.arrays["objects"]).to_csv(Path(out) / "davis_objects.csv", index=False)
    save_json({"root": str(root), "sequences": result.meta["sequences"], **opts.to_dict()}, Path(out) / "davis.json")
    typer.echo(f"{result.summary}; wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("davis")(davis_cmd)
