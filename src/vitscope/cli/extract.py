"""`vitscope extract`: features of a model over a dataset into a resumable feature store (also under torchrun)."""
from __future__ import annotations

from typing import Optional

import typer


def run_extract(model: str, data: str, out: str, layers: str = "all", sites: str = "resid_post",
                tokens: str = "cls,mean", random: bool = False, seed: int = 0, weights: Optional[str] = None,
                batch_size: int = 64, dtype: str = "float32", workers: Optional[int] = None,
                device: Optional[str] = None, compile: bool = False, autocast: Optional[str] = None,
                resume: bool = True, quiet: bool = False, limit: Optional[int] = None):
    """What the command does, callable from Python: load the model, open the data with its preprocessing, extract."""
    import vitscope
    from vitscope.features import extract_features
    from vitscope.models.preprocess import PreprocessConfig, Preprocessor

    if random and weights:
        raise ValueError("--random and --weights exclude each other")
    # random init is seeded so that every rank (and a resumed run) builds the very same weights
    m = vitscope.load_model(model, pretrained=not random, weights=weights, seed=seed if random else None)
    pp = m.preprocess_cfg or PreprocessConfig(input_size=m.cfg.img_size)
    from vitscope.data import open_dataset

    ds = open_dataset(data, transform=Preprocessor(pp), on_error="skip")
    if limit is not None and limit < len(ds):
        ds = ds.subset(range(limit))
    return extract_features(m, ds, out, layers=layers, sites=sites, tokens=tokens, batch_size=batch_size,
                            dtype=dtype, num_workers=workers, device=device, compile=compile, autocast=autocast,
                            resume=resume, progress=not quiet)


def register(app: typer.Typer) -> None:
    @app.command("extract")
    def extract_cmd(
        model: str = typer.Option(..., "--model", "-m", help="Registry name, timm/<name>, hf:<repo>, or a local "
                                                          "model folder / file (see `vitscope models`)."),
        data: str = typer.Option(..., "--data", "-d", help="Dataset spec: folder, list file, shards, hf:NAME, "
                                                        "video, or synthetic[:n=...] (see docs/data.md)."),
        out: str = typer.Option(..., "--out", "-o", help="Store folder (one per model, weights, preprocessing, "
                                                       "dataset and split). Re-running resumes it."),
        layers: str = typer.Option("all", "--blocks", "--layers", "-l",
                                   help="Blocks: all, a comma list (0,3,11; -1 = last) or a range a:b."),
        sites: str = typer.Option("resid_post", "--sites", "-s", help="Comma list of sites: resid_pre, resid_mid, "
                                  "resid_post, ln1, ln2, attn_out, mlp_out, ln_final, embed, clip_proj (CLIP: final "
                                  "norm + projection on every token), or hook names (blocks.{i}.mlp.hook_pre)."),
        tokens: str = typer.Option("cls,mean", "--tokens", "-t", help="Comma list of token reductions: cls, mean, "
                                   "cls+mean, registers, patches, all, dist."),
        random: bool = typer.Option(False, "--random", help="Random weights (pretrained=False), seeded by --seed."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random init with --random."),
        weights: Optional[str] = typer.Option(None, "--weights", help="Local checkpoint to load into the "
                                                                     "architecture --model names."),
        batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per batch (per rank)."),
        dtype: str = typer.Option("float32", "--dtype", help="Stored precision: float32, float16, or bfloat16 "
                                                            "(rounded to bfloat16, stored as float16)."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", help="DataLoader worker processes "
                                              "(default: half the CPUs on GPU, 0 on small CPU machines)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: the GPU of "
                                                                   "this rank when there is one)."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the hooked forward (GPU)."),
        autocast: Optional[str] = typer.Option(None, "--autocast", help="Mixed precision: bf16 or fp16 (GPU)."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted store (default); "
                                    "--no-resume deletes an existing store first."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N images of --data."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary line."),
    ) -> None:
        """Extract features (sites x layers x token reductions) into a resumable on-disk feature store.

        Under `torchrun --nproc_per_node=K -m vitscope extract ...` the samples are split between the ranks.
        """
        from vitscope.cli.common import check_range, refuse_weights_with_random

        refuse_weights_with_random(weights, random)
        check_range(batch_size, "--batch-size", 1)
        check_range(workers, "--workers", 0)
        check_range(limit, "--limit", 1)
        run_extract(model, data, out, layers=layers, sites=sites, tokens=tokens, random=random, seed=seed,
                    weights=weights, batch_size=batch_size, dtype=dtype, workers=workers, device=device,
                    compile=compile, autocast=autocast, resume=resume, quiet=quiet, limit=limit)
