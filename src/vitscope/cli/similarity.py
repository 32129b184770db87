"""`vitscope cka`, `vitscope rsa`, `vitscope cluster`: thin adapters over the ``evaluate`` of
:mod:`vitscope.analysis.similarity.cka`, :mod:`~vitscope.analysis.similarity.rsa` and :mod:`vitscope.analysis.cluster`.

Inputs are models (registry names, timm/..., hf:..., local folders) run over ``--data``, or feature stores
written by `vitscope extract` (``--store DIR``, optionally ``--store2 DIR``). Every figure is saved with its
numbers (.npy, .json, .csv) under ``--out``, beside the tidy table (``cka.csv`` / ``rsa.csv`` / ``cluster.csv``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import DEVICE_HELP, FORMATS_HELP, LIMIT_HELP, SEED_HELP, cli_options

MODELS_HELP = "Models: registry names, timm/NAME, hf:REPO or local folders."
DATA_HELP = "Images for models: folder, list, shards, hf:NAME, synthetic:n=256 ..."
SITES_HELP = "Block sites for models, comma-separated: resid_post (default), resid_pre, resid_mid, ln1, ln2, " \
             "attn_out, mlp_out."


def _inputs(names: list[str], store: Optional[Path], store2: Optional[Path], random: bool, with_random: bool,
            seed: int, device: Optional[str], data: Optional[str], quiet: bool):
    """(models or stores, data) for an evaluate: the stores given, or the models loaded with their data."""
    from vitscope.cli.common import default_data, load_models

    if store2 is not None and store is None:
        raise ValueError("--store2 needs --store")
    if store is not None and names:
        raise ValueError("give either models (with --data) or --store, not both")
    if store is None and not names:
        raise ValueError("nothing to compare: give one or more MODELS with --data, or --store DIR")
    if store is not None:
        return [store] + ([store2] if store2 is not None else []), None
    return (load_models(names, random, device, seed=seed, with_random=with_random),
            default_data(names, data, quiet))


def _finish(result, out: Path, formats: str, quiet: bool) -> None:
    """Notes to stderr, the table and the figures (with their numbers) to ``out``, the written figures listed."""
    from vitscope.cli.common import parse_formats

    fmts = parse_formats(formats)
    for note in result.meta.get("notes", []):
        if not quiet:
            typer.echo(f"note: {note}", err=True)
    written = result.save(out, fmts)
    if not quiet:
        for p in written:
            if str(p).endswith(tuple(f".{f}" for f in fmts)):
                typer.echo(f"wrote {p}")
        typer.echo(result.summary)


# ----------------------------------------------------------------------------- cka
def cka_command(
    models: List[str] = typer.Argument(None, help=MODELS_HELP + " One: layer x layer; two: model A x model B; "
                                                  "--last-layer: last layer across all of them."),
    model_opt: Optional[List[str]] = typer.Option(None, "--model", "-m", help="A model (repeatable), as an argument."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    random: bool = typer.Option(False, "--random", help="Random-init weights (no download); for baselines and tests."),
    with_random: bool = typer.Option(False, "--with-random", help="Add a random-init copy of every model (vilas2023's "
                                                                  "baseline)."),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help="Feature store written by `vitscope extract`."),
    store2: Optional[Path] = typer.Option(None, "--store2", help="Second feature store (same images): store x store2."),
    out: Path = typer.Option(Path("runs/similarity"), "--out", "-o", help="Output folder."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset: default, ciernik2025 (L2-normalised, full "
                                                                "data) or walmer2023 (minibatch, min-max kernels, "
                                                                "all tokens, ln1/ln2)."),
    sites: Optional[str] = typer.Option(None, "--sites", "-s", help=SITES_HELP),
    tokens: Optional[str] = typer.Option(None, "--tokens", "-t", help="Token mode: cls (default; all with "
                                                                      "--residual), mean, all, patches."),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="linear (default) or rbf."),
    sigma: Optional[float] = typer.Option(None, "--sigma", help="Fixed RBF bandwidth; default: one per input and "
                                                                "batch from its distances (--bandwidth)."),
    rbf_threshold: float = typer.Option(1.0, "--rbf-threshold", help="RBF: the data bandwidth times this (Kornblith "
                                                                    "et al.'s threshold)."),
    bandwidth: str = typer.Option("kornblith", "--bandwidth", help="RBF bandwidth rule: kornblith (threshold x "
                                                                   "sqrt(median squared distance), Kornblith et al. "
                                                                   "2019) or ciernik2025 (median of the non-zero "
                                                                   "distances)."),
    biased: bool = typer.Option(False, "--biased", help="Biased HSIC (default: unbiased); full-data CKA only."),
    minmax: Optional[bool] = typer.Option(None, "--minmax/--no-minmax", help="walmer2023's kernel quirk (scale each "
                                                                             "Gram matrix to [0, 1], zero diagonal)."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="L2-normalise each sample's "
                                                                                      "features first (ciernik2025)."),
    full: Optional[bool] = typer.Option(None, "--full/--minibatch", help="Models: collect every feature and compute "
                                                                         "exact CKA (--full) or stream minibatch "
                                                                         "CKA (default, memory independent of N)."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Images per batch (the minibatch size of "
                                                                   "minibatch CKA)."),
    limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
    last_layer: bool = typer.Option(False, "--last-layer", help="Compare the last block of every model (or store)."),
    residual: bool = typer.Option(False, "--residual", help="Residual CKA: skip input vs attention / MLP branch "
                                                            "output of every block, with norm ratios."),
    mlp_skip: str = typer.Option("resid_mid", "--mlp-skip", help="Residual CKA: skip input of the MLP branch, "
                                                                 "resid_mid (walmer2023, default) or resid_pre."),
    grid: bool = typer.Option(False, "--grid", help="With several models: one layer x layer map per model pair, "
                                                    "drawn as a grid."),
    clusters: Optional[int] = typer.Option(None, "--clusters", help="Spectral clustering of the layers into K groups "
                                                                   "by the CKA matrix (one model or store)."),
    site: str = typer.Option("resid_post", "--site", help="Store site to read (--store)."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    fmt: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """CKA between layers, models or the residual branches; heat maps with their numbers."""
    from vitscope.analysis.similarity.cka import CKAOptions, evaluate

    comparison = "residual" if residual else "last_layer" if last_layer else "grid" if grid else "layers"
    opts = cli_options(CKAOptions.from_preset, preset, comparison=comparison, tokens=tokens, kernel=kernel,
                       unbiased=False if biased else None, normalize=normalize, minmax=minmax,
                       minibatch=None if full is None else not full, sigma=sigma, rbf_threshold=rbf_threshold,
                       bandwidth=bandwidth, mlp_skip=mlp_skip, sites=sites, site=site, clusters=clusters,
                       batch_size=batch_size, limit=limit, device=device, progress=not quiet)
    inputs, images = _inputs(list(models or []) + list(model_opt or []), store, store2, random, with_random, seed,
                             device, data, quiet)
    _finish(evaluate(inputs, images, opts), out, fmt, quiet)


# ----------------------------------------------------------------------------- rsa
def rsa_command(
    models: List[str] = typer.Argument(None, help="One model (layer x layer RSA); registry name or local folder."),
    model_opt: Optional[List[str]] = typer.Option(None, "--model", "-m", help="A model (repeatable), as an argument."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    random: bool = typer.Option(False, "--random", help="Random-init weights (no download)."),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help="Feature store written by `vitscope extract`."),
    store2: Optional[Path] = typer.Option(None, "--store2", help="Second store (same images): store x store2 layers."),
    out: Path = typer.Option(Path("runs/similarity"), "--out", "-o", help="Output folder."),
    rdm_method: str = typer.Option("correlation", "--rdm", help="RDM: correlation (default), cosine or euclidean."),
    compare: str = typer.Option("spearman", "--compare", help="RDM comparison: spearman (default) or pearson."),
    tokens: str = typer.Option("cls", "--tokens", "-t", help="Token mode: cls (default), mean, all, patches."),
    sites: str = typer.Option("resid_post", "--sites", "-s", help=SITES_HELP),
    site: str = typer.Option("resid_post", "--site", help="Store site to read (--store)."),
    clusters: Optional[int] = typer.Option(None, "--clusters", help="Spectral clustering of the layers into K groups."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP + " (RDMs are N x N)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    fmt: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """RSA between layers (correlation RDMs compared by Spearman, ciernik2025), optional spectral clustering."""
    from vitscope.analysis.similarity.rsa import RSAOptions, evaluate

    opts = cli_options(RSAOptions, rdm=rdm_method, compare=compare, tokens=tokens, sites=sites, site=site,
                       clusters=clusters, batch_size=batch_size, limit=limit, device=device, progress=not quiet)
    inputs, images = _inputs(list(models or []) + list(model_opt or []), store, store2, random, False, seed, device,
                             data, quiet)
    _finish(evaluate(inputs, images, opts), out, fmt, quiet)


# ----------------------------------------------------------------------------- cluster
def _dense_task_data(coco: Optional[Path], partimagenet: Optional[Path], image_root: Optional[Path],
                     dense: Optional[str], data: Optional[str]):
    """The images of a COCO / PartImageNet structure (their masks travel with them), or None."""
    if coco is None and partimagenet is None:
        return None
    if data:
        raise ValueError("give one of --coco, --partimagenet or --data")
    if not dense:
        raise ValueError("--coco / --partimagenet are for --dense object|part clustering")
    from vitscope.data.tasks import load_segmentation

    return load_segmentation(coco, partimagenet, image_root).image_dataset()


def cluster_command(
    models: List[str] = typer.Argument(None, help="Models to score, one curve each (registry names, folders)."),
    model_opt: Optional[List[str]] = typer.Option(None, "--model", "-m", help="A model (repeatable), as an argument."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Labelled images (class folders, list with labels, "
                                                            "synthetic:n=256 ...)."),
    random: bool = typer.Option(False, "--random", help="Random-init weights (no download)."),
    with_random: bool = typer.Option(False, "--with-random", help="Add a random-init copy of every model."),
    store: Optional[List[Path]] = typer.Option(None, "--store", help="Feature store(s) with labels; repeat for "
                                                                     "several models."),
    out: Path = typer.Option(Path("runs/similarity"), "--out", "-o", help="Output folder."),
    tokens: str = typer.Option("cls", "--tokens", "-t", help="cls (default) or mean (mean-pooled patch tokens)."),
    k: Optional[int] = typer.Option(None, "--clusters", "--k", help="Clusters of k-means (its k); default 50 (images) "
                                                                    "or 80 (--dense), as walmer2023."),
    seed: int = typer.Option(0, "--seed", help="Seed of k-means (its random_state; walmer2023: 0) and of the "
                                               "random-weight twins."),
    n_init: int = typer.Option(10, "--n-init", help="k-means restarts (scikit-learn's old default, used by walmer2023)."),
    dense: Optional[str] = typer.Option(None, "--dense", help="object or part: cluster mask-pooled patch features of "
                                                              "every ground-truth object / part."),
    coco: Optional[Path] = typer.Option(None, "--coco", help="--dense object on COCO: the instances json (with "
                                                             "--image-root); labels are the categories."),
    partimagenet: Optional[Path] = typer.Option(None, "--partimagenet",
                                                help="--dense object|part on PartImageNet: the annotation json (with "
                                                     "--image-root); objects labelled by super-category, parts by part."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Image folder of --coco / --partimagenet."),
    sites: str = typer.Option("resid_post", "--sites", "-s", help=SITES_HELP),
    site: str = typer.Option("resid_post", "--site", help="Store site to read (--store)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    fmt: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """k-means on CLS / mean-pooled tokens (or object / part features) per block: NMI, ARI, purity curves."""
    from vitscope.analysis.cluster import ClusterOptions, evaluate
    from vitscope.cli.common import default_data, load_models, warn_near_chance

    opts = cli_options(ClusterOptions, tokens=tokens, k=k, seed=seed, n_init=n_init, dense=dense, sites=sites,
                       site=site, batch_size=batch_size, limit=limit, device=device, progress=not quiet)
    names, stores = list(models or []) + list(model_opt or []), list(store or [])
    if stores and names:
        raise ValueError("give either models (with --data) or --store, not both")
    if not stores and not names:
        raise ValueError("nothing to cluster: give MODELS with --data, or --store DIR")
    if stores:
        result = evaluate(stores, None, opts)
    else:
        mods = load_models(names, random, device, seed=seed, with_random=with_random)
        images = _dense_task_data(coco, partimagenet, image_root, dense, data) or default_data(names, data, quiet)
        result = evaluate(mods, images, opts)
    _finish(result, out, fmt, quiet)
    if not quiet:
        best = result.meta["best"]
        for name, (block, nmi) in best.items():
            twin = best.get(f"{name} (random)")
            if twin is not None and nmi <= twin[1]:
                warn_near_chance(f"{name} clusters no better than its random-weight twin (best NMI {nmi:.3f} vs "
                                 f"{twin[1]:.3f})", data)
            typer.echo(f"{name}: best NMI {nmi:.3f} at block {block}")


def register(app: typer.Typer) -> None:
    app.command("cka")(cka_command)
    app.command("rsa")(rsa_command)
    app.command("cluster")(cluster_command)
