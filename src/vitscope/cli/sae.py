"""`vitscope sae train | eval | browse`: sparse autoencoders on a feature store, measured and browsed.

Thin adapters over :mod:`vitscope.analysis.sae`: ``train`` reads a store written by `vitscope extract` and trains a
grid of SAEs in one pass; ``eval`` measures SAE folders on images (``SAEOptions`` / ``evaluate``); ``browse`` writes
a static HTML page of an SAE's latents.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, cli_options, flag

app = typer.Typer(help="Sparse autoencoders on ViT activations: train a grid from a feature store, measure, browse.",
                  no_args_is_help=True)


@app.command("train")
def train_cmd(
    store: Path = typer.Option(..., "--store", "-s", help="Feature store (`vitscope extract ... --tokens patches`)."),
    out: Path = typer.Option(Path("runs/sae"), "--out", "-o", help="Folder for the SAEs (one sub-folder each), "
                                                                   "checkpoints and training_log.csv."),
    site: str = typer.Option("resid_post", "--site", help="Store site to read (resid_post, mlp_out, attn_out, "
                                                          "resid_mid, ... or blocks.{i}.mlp.hook_post). The SAE "
                                                          "remembers it: eval, browse and splicing use the same."),
    block: str = typer.Option("-2", "--blocks", "--block", help="Block(s): '8', '4,8', '-2' (from the end). "
                                                                "Several blocks train in the same pass."),
    tokens: str = typer.Option("patches", "--tokens", "-t", help="patches, cls, mean or all (the store's reduction)."),
    centre: str = typer.Option("none", "--centre", help="none, or image: the SAE reads each patch token less its "
                                                        "image's mean patch token (and splices that mean back), "
                                                        "so its latents go to what is local to a patch rather than "
                                                        "to what every patch of the image shares (--tokens "
                                                        "patches only; docs/sae.md)."),
    arch: str = typer.Option("topk", "--arch", help="relu, topk, batchtopk, jumprelu or matryoshka."),
    width: str = typer.Option("512", "--width", help="Latents; comma-separated for a grid."),
    k: str = typer.Option("32", "--active-latents", "--k",
                          help="Active latents per token (the k of topk, batchtopk, matryoshka); a grid."),
    l1: str = typer.Option("1.0", "--l1", help="Sparsity coefficient (relu: L1, jumprelu: L0); a grid."),
    lr: str = typer.Option("4e-4", "--lr", help="Learning rate(s); a grid."),
    steps: int = typer.Option(2000, "--steps", help="Training steps (batches)."),
    batch_size: int = typer.Option(1024, "--batch-size", "-b", help="Tokens per step."),
    chunk_images: int = typer.Option(256, "--chunk-images", help="Images per chunk read from the store: the "
                                                                 "memory bound."),
    warmup: int = typer.Option(100, "--warmup", help="LR warm-up steps."),
    resample_every: int = typer.Option(0, "--resample-every", help="relu: resample dead latents every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order and the initialisation."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many images of the store."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted run in --out."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a grid of SAEs (width x k or L1 x learning rate x block) on a feature store in one pass."""
    from vitscope.analysis.sae.train import Trainer, TrainOptions
    from vitscope.features import open_store

    opts = cli_options(TrainOptions, flags={"blocks": flag("block")}, site=site, blocks=block, tokens=tokens,
                       centre=centre, arch=arch, width=width, k=k, l1=l1, lr=lr, steps=steps, batch_size=batch_size,
                       chunk_images=chunk_images, warmup=min(warmup, steps), resample_every=resample_every, seed=seed,
                       limit=limit, device=device, progress=not quiet)
    st = open_store(store)
    tr = Trainer(st, opts, out)                # every check of the store happens here, before anything is written
    with tr.writing():                         # one writer per --out: a second `sae train` is refused in one line
        if resume:
            tr.try_resume()
        saes = tr.run()
    log = tr.training_log()
    last = log.groupby("sae").tail(1).set_index("sae") if len(log) else None
    for name in saes:
        extra = f"  (last batch: FVU {last.loc[name, 'fvu']:.3f}, L0 {last.loc[name, 'l0']:.1f})" \
            if last is not None and name in last.index else ""
        typer.echo(f"{name}{extra}")
    typer.echo(f"trained {len(saes)} SAE(s) in one pass of {opts.steps} steps -> {out}")


@app.command("eval")
def eval_cmd(
    saes: List[Path] = typer.Argument(..., help="SAE folders (vitscope or SAELens) or saev .pt files."),
    model_name: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Default: the model the "
                                                                                     "SAE was trained on."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Default for the bundled demo "
                                                                             "models: builtin:demo."),
    limit: int = typer.Option(512, "--limit", help="Images used."),
    factors: bool = typer.Option(True, "--factors/--no-factors", help="Features against the synthetic "
                                                                      "benchmark's generating factors."),
    splice: bool = typer.Option(True, "--splice/--no-splice", help="The model with the SAE spliced in."),
    out: Path = typer.Option(Path("runs/sae-eval"), "--out", "-o", help="Output folder (created)."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the k-NN split and the random directions."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Measure SAEs: L0, FVU, cosine, dead / dense latents; the model with the SAE spliced in (top-1 agreement, KL,
    k-NN; zero- and mean-ablation bounds); features against the generating factors (synthetic data)."""
    from vitscope.analysis.sae.evaluation import SAEOptions, _as_saes, evaluate
    from vitscope.analysis.sae.hooks import check_width
    from vitscope.cli.common import default_data, parse_formats
    from vitscope.outlock import output_lock

    fmts = parse_formats(formats)
    opts = SAEOptions(limit=limit, factors=factors, splice=splice, seed=seed, device=device, progress=not quiet)
    items = _as_saes(saes)
    name = model_name or next(iter(items.values())).cfg.meta.get("model")
    if not name:
        raise ValueError("the SAE does not name its model; give --model")
    from vitscope.runtime import load_model

    model = load_model(name, device=device)
    for s in items.values():
        check_width(s, model)                  # before anything is written
    data = default_data([name], data, quiet)
    result = evaluate(items, data, opts, model=model)
    with output_lock(out, "vitscope sae eval"):            # one writer per folder; taken after the checks above
        result.save(out, fmts)
    typer.echo(f"{result.summary} -> {Path(out) / 'sae.csv'}")


@app.command("browse")
def browse_cmd(
    sae_dir: Path = typer.Argument(..., help="An SAE folder (vitscope or SAELens) or a saev .pt file."),
    out: Path = typer.Option(Path("runs/sae-browse"), "--out", "-o", help="Folder of the static page (created)."),
    model_name: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Default: the SAE's model."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Default for the bundled demo "
                                                                             "models: builtin:demo."),
    limit: int = typer.Option(256, "--limit", help="Images searched for each latent's top activations."),
    latents: int = typer.Option(64, "--latents", help="Latents shown (the most often active first)."),
    top: int = typer.Option(8, "--top", help="Top-activating images per latent."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """A static HTML page: per latent its top images with a heat map over patches, activation histogram, logit
    effect and nearest latents by decoder cosine."""
    from vitscope.analysis.sae.browse import BrowseOptions, write_browser
    from vitscope.analysis.sae.hooks import check_width
    from vitscope.analysis.sae.io import load_sae
    from vitscope.cli.common import default_data
    from vitscope.runtime import load_model

    opts = BrowseOptions(limit=limit, latents=latents, top=top)
    sae = load_sae(sae_dir)
    name = model_name or sae.cfg.meta.get("model")
    if not name:
        raise ValueError("the SAE does not name its model; give --model")
    model = load_model(name, device=device)
    check_width(sae, model)
    data = default_data([name], data, quiet)
    page = write_browser(sae, model, data, out, opts, title=sae_dir.name)     # holds the folder's lock as it writes
    typer.echo(f"the most often active latents of {sae_dir.name} (at most {opts.latents}) -> {page}")


def register(main: typer.Typer) -> None:
    main.add_typer(app, name="sae")
