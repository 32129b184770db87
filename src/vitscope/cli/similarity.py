"""`vitscope cka`, `vitscope rsa`, `vitscope cluster`: thin wrappers over vitscope.analysis.similarity / cluster.

Inputs are models (registry names, timm/..., hf:..., local folders) run over ``--data``, or feature stores
written by `vitscope extract` (``--store DIR``, optionally ``--store2 DIR``). Every figure is saved with its
numbers (.npy, .json, .csv) under ``--out``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

SITE_HOOKS = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "ln1": "ln1.hook_normalized", "ln2": "ln2.hook_normalized", "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
SITE_NAMES = {v: k for k, v in SITE_HOOKS.items()}


# ----------------------------------------------------------------------------- shared helpers
from vitscope.cli.common import bundled_data, warn_near_chance  # noqa: E402,F401
from vitscope.cli.common import check_limit, check_range, cls_block_hooks  # noqa: E402
from vitscope.cli.common import load_models as _load_models  # noqa: E402
from vitscope.cli.common import parse_formats as _formats  # noqa: E402
from vitscope.cli.common import slug as _slug  # noqa: E402


def _site_hooks(sites: str) -> list[str]:
    out = []
    for s in (x.strip() for x in sites.split(",") if x.strip()):
        if s in SITE_HOOKS:
            out.append(SITE_HOOKS[s])
        elif s in SITE_NAMES:
            out.append(s)
        else:
            raise ValueError(f"unknown site {s!r}; choose among {', '.join(SITE_HOOKS)}")
    if not out:
        raise ValueError("--sites is empty")
    return out


def _open_data(data: Optional[str], what: str, models: Optional[dict] = None):
    from vitscope.models.bundled import is_bundled

    trained = [m for m in (models or {}).values() if is_bundled(m)]
    if not data and trained and all(is_bundled(m) or not (getattr(m, "meta", None) or {}).get("weights_path")
                                    for m in models.values()):
        data = bundled_data(trained[0])               # bundled models (and random twins) meet no --data
    if not data:
        raise ValueError(f"{what} from models needs images: pass --data SPEC (a folder, a list, shards, hf:NAME "
                         f"or synthetic:n=256)")
    from vitscope.data import open_dataset

    return open_dataset(data)


def _context(res=None, ds=None, data: Optional[str] = None, store=None, limit: Optional[int] = None,
             tokens: Optional[str] = None) -> dict:
    """What a figure title says it was measured on: the data (spec or store), the image count, the token mode."""
    import numpy as np

    n = (getattr(res, "meta", None) or {}).get("n_images")
    if n is None and ds is not None and hasattr(ds, "__len__"):
        n = len(ds) if limit is None else min(limit, len(ds))
    if n is None and store is not None:
        try:
            from vitscope.analysis.similarity.compare import open_store_any

            n = int(np.asarray(open_store_any(store).valid).sum())
        except (OSError, ValueError, AttributeError):
            n = None
    where = data or (f"store {Path(store).name}" if store is not None else getattr(ds, "description", None))
    return {"data": where, "n_images": n, "tokens": tokens}


def _check_inputs(models: list[str], store: Optional[Path], store2: Optional[Path]) -> None:
    if store2 is not None and store is None:
        raise ValueError("--store2 needs --store")
    if store is not None and models:
        raise ValueError("give either models (with --data) or --store, not both")
    if store is None and not models:
        raise ValueError("nothing to compare: give one or more MODELS with --data, or --store DIR")


def _echo_written(paths, quiet: bool) -> None:
    if not quiet:
        figs = [p for p in paths if str(p).endswith((".png", ".pdf", ".svg", ".jpg"))]
        for p in figs:
            typer.echo(f"wrote {p}")


# ----------------------------------------------------------------------------- cka
def cka_command(
    models: List[str] = typer.Argument(None, help="Models: registry names, timm/NAME, hf:REPO or local folders. "
                                                  "One: layer x layer; two: model A x model B; --last-layer: "
                                                  "last layer across all of them."),
    model_opt: Optional[List[str]] = typer.Option(None, "--model", "-m", help="A model (repeatable), as an argument."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Images for models: folder, list, shards, hf:NAME, "
                                                            "synthetic:n=256 ..."),
    random: bool = typer.Option(False, "--random", help="Random-init weights (no download); for baselines and tests."),
    with_random: bool = typer.Option(False, "--with-random", help="Add a random-init copy of every model (vilas2023's "
                                                                  "baseline)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Feature store written by `vitscope extract`."),
    store2: Optional[Path] = typer.Option(None, "--store2", help="Second feature store (same images): store x store2."),
    out: Path = typer.Option(Path("runs/similarity"), "--out", "-o", help="Output folder."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset: default, ciernik2025 (L2-normalised, full "
                                                                "data) or walmer2023 (minibatch, min-max kernels, "
                                                                "all tokens, ln1/ln2)."),
    sites: Optional[str] = typer.Option(None, "--sites", help="Block sites, comma-separated: resid_post (default), "
                                                              "resid_pre, resid_mid, ln1, ln2, attn_out, mlp_out."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Token mode: cls (default; all with --residual), "
                                                                "mean, all, patches."),
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
    batch_size: int = typer.Option(256, "--batch-size", help="Images per batch (the minibatch size of minibatch CKA)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images."),
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
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CPU)."),
    fmt: str = typer.Option("png", "--formats", help="Figure formats, comma-separated (png, pdf, svg)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """CKA between layers, models or the residual branches; heat maps with their numbers."""
    from vitscope.analysis.similarity import compare as C
    from vitscope.analysis.similarity.rsa import spectral_cluster_layers
    from vitscope.viz.similarity import save_cka_grid, save_residual, save_similarity

    models = list(models or []) + list(model_opt or [])
    _check_inputs(models, store, store2)
    o = C.preset_options(preset or "default", kernel=kernel, minmax=minmax, normalize=normalize,
                         token_mode=tokens, minibatch=None if full is None else not full)
    if residual and tokens is None and preset is None:
        o["token_mode"] = "all"                                                        # walmer2023's residual CKA
    if sites:
        o["sites"] = tuple(_site_hooks(sites))
    if o["token_mode"] not in C.TOKEN_MODES:
        raise ValueError(f"--tokens must be one of {', '.join(C.TOKEN_MODES)}, got {o['token_mode']!r}")
    formats = _formats(fmt)
    if preset is None and full is None:
        o["minibatch"] = True                                                          # models stream by default
    unbiased = not biased
    if biased and o["minibatch"] and store is None:
        raise ValueError("minibatch CKA uses unbiased HSIC only; add --full for biased CKA")
    from vitscope.analysis.similarity.cka import _check_kernel

    try:
        _check_kernel(o["kernel"], sigma, bandwidth, rbf_threshold)
    except ValueError as e:
        raise ValueError(f"{e} (options --kernel, --sigma, --bandwidth, --rbf-threshold)") from None
    rbf = dict(threshold=rbf_threshold, bandwidth=bandwidth)
    kw = dict(kernel=o["kernel"], sigma=sigma, minmax=o["minmax"], normalize=o["normalize"], **rbf)
    progress = not quiet
    out = Path(out)
    written = []

    if store is not None:
        if residual:
            res = C.store_residual_cka(store, token_mode=o["token_mode"], unbiased=unbiased, kernel=o["kernel"],
                                       sigma=sigma, minmax=o["minmax"], mlp_skip=mlp_skip, **rbf)
            name = C.store_name(C.open_store_any(store))
            written += save_residual(res, out / f"residual_{_slug(name)}", formats, title=f"{name}: residual CKA",
                                     **_context(res, store=store, tokens=o["token_mode"]))
        elif last_layer:
            if store2 is None:
                raise ValueError("--last-layer with stores needs --store and --store2")
            res = C.store_cross_model_cka([store, store2], site=site, reduction=o["token_mode"], unbiased=unbiased,
                                          **kw)
            written += save_similarity(res, out / "cka_last_layer", formats, title="last-layer CKA",
                                       **_context(res, store=store, tokens=o["token_mode"]))
        else:
            res = C.store_layer_cka(store, store2, site=site, reduction=o["token_mode"], unbiased=unbiased,
                                    progress=progress, **kw)
            names = res.meta["models"]
            cl = _clusters(res, clusters, store2 is None, spectral_cluster_layers)
            stem = out / ("cka_" + "_x_".join(_slug(n) for n in names))
            written += save_similarity(res, stem, formats, title=" x ".join(names) + " (CKA)", clusters=cl,
                                       xlabel=f"{names[-1]} layer", ylabel=f"{names[0]} layer",
                                       **_context(res, store=store, tokens=o["token_mode"]))
        _echo_written(written, quiet)
        return

    mods = _load_models(models, random, device, with_random=with_random)
    ds = _open_data(data, "CKA", mods)
    names = list(mods)
    common = dict(token_mode=o["token_mode"], batch_size=batch_size, limit=limit, progress=progress)
    if residual:
        for n, m in mods.items():
            res = C.stream_residual_cka(m, ds, kernel=o["kernel"], sigma=sigma, minmax=o["minmax"],
                                        mlp_skip=mlp_skip, **common, **rbf)
            written += save_residual(res, out / f"residual_{_slug(n)}", formats, title=f"{n}: residual CKA",
                                     **_context(res, ds, data, limit=limit, tokens=o["token_mode"]))
    elif last_layer:
        if len(mods) < 2:
            raise ValueError("--last-layer compares at least two models")
        if o["minibatch"]:
            res = C.stream_cross_model_cka(mods, ds, **common, **kw)
        else:
            feats = {}
            for n, m in mods.items():
                h = f"blocks.{m.cfg.depth - 1}.{C.DEFAULT_SITE}"
                f, _ = C.collect_features(m, ds, [h], o["token_mode"], batch_size, limit, progress)
                feats[n] = f[h]
            res = C.cross_model_cka(feats, unbiased=unbiased, **kw)
            res.meta.update(token_mode=o["token_mode"])
        written += save_similarity(res, out / "cka_last_layer", formats, title="last-layer CKA",
                                   **_context(res, ds, data, limit=limit, tokens=o["token_mode"]))
    else:
        if len(mods) > 2 and not grid:
            raise ValueError("layer x layer CKA takes one or two models; add --grid for every pair, or "
                             "--last-layer to compare the last layers")
        pairs = [(names[0], names[0])] if len(names) == 1 else (
            [(a, b) for a in names for b in names] if grid else [(names[0], names[1])])
        results = {}
        for a, b in pairs:
            ma, mb = mods[a], mods[b]
            ha = cls_block_hooks(ma, o["token_mode"], o["sites"], quiet)
            hb = cls_block_hooks(mb, o["token_mode"], o["sites"], quiet)
            if o["minibatch"]:
                res = C.stream_layer_cka(ma, ds, None if a == b else mb, ha, hb, names=(a, b), **common, **kw)
            else:
                fa, _ = C.collect_features(ma, ds, ha, o["token_mode"], batch_size, limit, progress)
                fb = fa if a == b else C.collect_features(mb, ds, hb, o["token_mode"], batch_size, limit,
                                                          progress)[0]
                res = C.layer_cka({C.short_name(h): v for h, v in fa.items()},
                                  None if a == b else {C.short_name(h): v for h, v in fb.items()},
                                  unbiased=unbiased, **kw)
                res.meta.update(token_mode=o["token_mode"], models=[a, b])
            results[(a, b)] = res
        if grid and len(names) > 1:
            written += save_cka_grid(results, out / "cka_grid", formats, title="CKA",
                                     **_context(next(iter(results.values())), ds, data, limit=limit,
                                                tokens=o["token_mode"]))
        else:
            (a, b), res = next(iter(results.items()))
            cl = _clusters(res, clusters, a == b, spectral_cluster_layers)
            stem = out / (f"cka_{_slug(a)}" if a == b else f"cka_{_slug(a)}_x_{_slug(b)}")
            written += save_similarity(res, stem, formats, title=f"{a} x {b} (CKA)", clusters=cl,
                                       xlabel=f"{b} layer", ylabel=f"{a} layer",
                                       **_context(res, ds, data, limit=limit, tokens=o["token_mode"]))
    _echo_written(written, quiet)


def _clusters(res, k: Optional[int], square: bool, fn):
    if k is None:
        return None
    if not square:
        raise ValueError("--clusters groups the layers of one model (a square layer x layer matrix)")
    return fn(res.matrix, k)


# ----------------------------------------------------------------------------- rsa
def rsa_command(
    models: List[str] = typer.Argument(None, help="One model (layer x layer RSA); registry name or local folder."),
    model_opt: Optional[List[str]] = typer.Option(None, "--model", "-m", help="A model (repeatable), as an argument."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Images for the model (folder, list, synthetic:n=256)."),
    random: bool = typer.Option(False, "--random", help="Random-init weights (no download)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Feature store written by `vitscope extract`."),
    store2: Optional[Path] = typer.Option(None, "--store2", help="Second store (same images): store x store2 layers."),
    out: Path = typer.Option(Path("runs/similarity"), "--out", "-o", help="Output folder."),
    rdm_method: str = typer.Option("correlation", "--rdm", help="RDM: correlation (default), cosine or euclidean."),
    compare: str = typer.Option("spearman", "--compare", help="RDM comparison: spearman (default) or pearson."),
    tokens: str = typer.Option("cls", "--tokens", help="Token mode: cls (default), mean, all, patches."),
    sites: str = typer.Option("resid_post", "--sites", help="Block sites for models, comma-separated."),
    site: str = typer.Option("resid_post", "--site", help="Store site to read (--store)."),
    clusters: Optional[int] = typer.Option(None, "--clusters", help="Spectral clustering of the layers into K groups."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images (RDMs are N x N)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ... (default: CPU)."),
    fmt: str = typer.Option("png", "--formats", help="Figure formats, comma-separated."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """RSA between layers (correlation RDMs compared by Spearman, ciernik2025), optional spectral clustering."""
    from vitscope.analysis.similarity import compare as C
    from vitscope.analysis.similarity.rsa import spectral_cluster_layers
    from vitscope.viz.similarity import save_similarity

    models = list(models or []) + list(model_opt or [])
    _check_inputs(models, store, store2)
    formats = _formats(fmt)
    if store is not None:
        s1 = C.open_store_any(store)
        if store2 is None:
            res = C.store_layer_rsa(s1, site, tokens, rdm_method=rdm_method, compare=compare)
        else:
            s2 = C.open_store_any(store2)
            valid = C.common_valid([s1, s2])
            res = C.layer_rsa(C.store_features(s1, site, tokens, None, valid),
                              C.store_features(s2, site, tokens, None, valid), rdm_method, compare)
            res.meta.update(models=[C.store_name(s1), C.store_name(s2)])
        names = res.meta.get("models", ["store"])
        ctx = _context(res, store=store, tokens=tokens)
    else:
        if len(models) != 1:
            raise ValueError("rsa from models takes one model (layer x layer); use stores for two")
        (name, m), = _load_models(models, random, device).items()
        ds = _open_data(data, "RSA", {name: m})
        hooks = cls_block_hooks(m, tokens, _site_hooks(sites), quiet)
        res = C.stream_layer_rsa(m, ds, hooks, tokens, rdm_method, compare, batch_size, limit, progress=not quiet)
        names = [name]
        ctx = _context(res, ds, data, limit=limit, tokens=tokens)
    cl = _clusters(res, clusters, len(names) == 1, spectral_cluster_layers)
    stem = Path(out) / ("rsa_" + "_x_".join(_slug(n) for n in names))
    written = save_similarity(res, stem, formats, title=f"{' x '.join(names)} (RSA: {rdm_method}, {compare})",
                              clusters=cl, vmin=None, vmax=1.0, cmap="viridis",
                              xlabel=f"{names[-1]} block", ylabel=f"{names[0]} block", **ctx)
    _echo_written(written, quiet)


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
    tokens: str = typer.Option("cls", "--tokens", help="cls (default) or mean (mean-pooled patch tokens)."),
    k: Optional[int] = typer.Option(None, "--k", help="Clusters; default 50 (images) or 80 (--dense), as walmer2023."),
    seed: int = typer.Option(0, "--seed", help="k-means random_state (walmer2023: 0)."),
    n_init: int = typer.Option(10, "--n-init", help="k-means restarts (scikit-learn's old default, used by walmer2023)."),
    dense: Optional[str] = typer.Option(None, "--dense", help="object or part: cluster mask-pooled patch features of "
                                                              "every ground-truth object / part."),
    coco: Optional[Path] = typer.Option(None, "--coco", help="--dense object on COCO: the instances json (with "
                                                             "--image-root); labels are the categories."),
    partimagenet: Optional[Path] = typer.Option(None, "--partimagenet",
                                                help="--dense object|part on PartImageNet: the annotation json (with "
                                                     "--image-root); objects labelled by super-category, parts by part."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Image folder of --coco / --partimagenet."),
    sites: str = typer.Option("resid_post", "--sites", help="Block sites for models, comma-separated."),
    site: str = typer.Option("resid_post", "--site", help="Store site to read (--store)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ... (default: CPU)."),
    fmt: str = typer.Option("png", "--formats", help="Figure formats, comma-separated."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """k-means on CLS / mean-pooled tokens (or object / part features) per block: NMI, ARI, purity curves."""
    from vitscope.analysis import cluster as K
    from vitscope.analysis.similarity import compare as C
    from vitscope.viz.similarity import save_cluster_curves

    models = list(models or []) + list(model_opt or [])
    stores = list(store or [])
    if stores and models:
        raise ValueError("give either models (with --data) or --store, not both")
    if not stores and not models:
        raise ValueError("nothing to cluster: give MODELS with --data, or --store DIR")
    if dense is not None and dense not in ("object", "part"):
        raise ValueError(f"--dense must be 'object' or 'part', got {dense!r}")
    formats = _formats(fmt)
    kk = k if k is not None else (K.DEFAULT_DENSE_K if dense else K.DEFAULT_K)
    check_range(kk, "--k", 1)
    check_range(batch_size, "--batch-size", 1)
    check_limit(limit)
    scores, blocks = {}, {}
    progress = not quiet
    if stores:
        if dense:
            raise ValueError("--dense needs the images and their masks: run it on models with --data")
        for s in stores:
            st = C.open_store_any(s)
            sc, layers = K.store_cluster_scores(st, site, tokens, None, kk, seed, n_init, progress)
            name = C.store_name(st)
            while name in scores:
                name += "'"
            scores[name], blocks[name] = sc, layers
    else:
        mods = _load_models(models, random, device, with_random=with_random)
        ds = _dense_task_data(coco, partimagenet, image_root, dense, data) or _open_data(data, "clustering", mods)
        for name, m in mods.items():
            hooks = (C.block_hooks(m.cfg.depth, _site_hooks(sites)) if dense
                     else cls_block_hooks(m, tokens, _site_hooks(sites), quiet))
            if dense:
                sc, _ = K.model_dense_cluster_scores(m, ds, dense, hooks, kk, seed, n_init, batch_size=batch_size,
                                                     limit=limit, progress=progress)
            else:
                sc, _ = K.model_cluster_scores(m, ds, tokens, hooks, kk, seed, n_init, batch_size, limit, progress)
            scores[name] = sc
            idx = [int(h.split(".")[1]) for h in hooks if h.startswith("blocks.")]
            if len(idx) == len(hooks) == len(set(idx)):
                blocks[name] = idx
    what = f"{dense} clustering" if dense else f"{tokens} clustering"
    stem = Path(out) / f"cluster_{dense or tokens}"
    ctx = (_context(store=stores[0], tokens=None if dense else tokens) if stores else
           _context(ds=ds, data=data, limit=limit, tokens=None if dense else tokens))
    written = save_cluster_curves(scores, stem, formats, title=f"{what} (k={kk})",
                                  meta=dict(k=kk, seed=seed, n_init=n_init, tokens=tokens, dense=dense),
                                  blocks=blocks or None, **ctx)
    if not quiet:
        for name, sc in scores.items():
            best = int(sc["nmi"].argmax())
            twin = scores.get(f"{name} (random)")
            if twin is not None and float(sc["nmi"].max()) <= float(twin["nmi"].max()):
                warn_near_chance(f"{name} clusters no better than its random-weight twin (best NMI "
                                 f"{sc['nmi'].max():.3f} vs {twin['nmi'].max():.3f})", data)
            typer.echo(f"{name}: best NMI {sc['nmi'][best]:.3f} at block {blocks.get(name, range(best + 1))[best]}")
    _echo_written(written, quiet)


def register(app: typer.Typer) -> None:
    app.command("cka")(cka_command)
    app.command("rsa")(rsa_command)
    app.command("cluster")(cluster_command)
