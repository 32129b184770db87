"""`vitscope retrieval`: Revisited Oxford / Paris retrieval (mAP, mP@1/5/10; easy, medium, hard) of every block.

Descriptors: the CLS token of each block, images thumbnailed to ``--imsize`` (DINO) or the model's own resize
and crop (``--preprocess model``, walmer2023), optionally multi-scale; queries cropped to their box unless
``--no-crop`` (DINO, walmer2023). Or read from feature stores of the database and query images. Writes
``retrieval.csv`` / ``retrieval.parquet`` (percent) and the per-block figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP, locks_out  # noqa: E501


def parse_protocols(text: str) -> list[str]:
    from vitscope.analysis.retrieval import PROTOCOLS

    ps = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in ps if p not in PROTOCOLS]
    if bad or not ps:
        raise ValueError(f"--protocols takes easy, medium, hard (comma-separated), got {text!r}")
    return ps


def revisited_loaders(gt, crop: bool) -> tuple[list, list]:
    """Zero-argument image loaders of the database and of the queries: :meth:`Revisited.image_loaders`."""
    return gt.image_loaders(crop)


def register(app: typer.Typer) -> None:
    @app.command("retrieval")
    @locks_out("vitscope retrieval")
    def retrieval_cmd(
        model_names: Optional[List[str]] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeatable."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
        with_random: bool = typer.Option(False, "--with-random", help="Also run a random-weight twin of every model."),
        root: Path = typer.Option(..., "--root", help="Revisited dataset folder: gnd_<name>.pkl and jpg/ (roxford5k, "
                                                      "rparis6k, or `vitscope synth`'s revisited/rsynth)."),
        name: Optional[str] = typer.Option(None, "--name", help="Which gnd_<name>.pkl when the folder has several."),
        db_store: Optional[List[Path]] = typer.Option(None, "--db-store", help="Feature store of the database images "
                                                                              "(in gnd order); repeat, one per model."),
        query_store: Optional[List[Path]] = typer.Option(None, "--query-store", help="Feature store of the query "
                                                                                    "images, paired with --db-store."),
        site: str = typer.Option("resid_post", "--site", help="Store site to read."),
        blocks: str = typer.Option("all", "--blocks", help="Blocks: all, '0,3,-1' or '4:8'."),
        tokens: str = typer.Option("cls", "--tokens", help="cls (the protocol) or mean (of the patch tokens)."),
        protocols: str = typer.Option("easy,medium,hard", "--protocols", help="Protocols, comma-separated."),
        imsize: Optional[int] = typer.Option(None, "--imsize", help="Longer side of the thumbnail (DINO: 224 Oxford, "
                                                                    "512 Paris; default: the model's input size)."),
        preprocess: str = typer.Option("thumbnail", "--preprocess", help="thumbnail (DINO: aspect kept, no crop) or "
                                                                         "model (walmer2023: the model's resize + "
                                                                         "centre crop)."),
        multiscale: bool = typer.Option(False, "--multiscale", help="Mean descriptor over scales 1, 1/sqrt 2, 1/2."),
        no_crop: bool = typer.Option(False, "--no-crop", help="Do not crop queries to their box (DINO, walmer2023)."),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass (equal sizes batched)."),
        seed: int = typer.Option(0, "--seed", help="Seed of random weights."),
        out: Path = typer.Option(Path("runs/retrieval"), "--out", "-o", help=OUT_HELP),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
    ) -> None:
        """Retrieval mAP and mP@k of every block on Revisited Oxford / Paris, one line per model."""
        import numpy as np
        from tqdm.auto import tqdm

        from vitscope.analysis.block_features import parse_blocks, resolve_blocks
        from vitscope.analysis.retrieval import image_descriptors, retrieval_per_block
        from vitscope.cli.common import load_models, parse_formats, resolve_device, save_tidy
        from vitscope.data.tasks import load_revisited
        from vitscope.viz.per_block import save_metric_per_block

        fmts = parse_formats(formats)
        protos = parse_protocols(protocols)
        gt = load_revisited(root, name)
        gnd = gt.queries
        names = list(model_names or [])
        dbs, qss = list(db_store or []), list(query_store or [])
        crop = not no_crop
        options = dict(tokens=tokens, crop=crop, multiscale=multiscale, preprocess=preprocess, imsize=imsize)
        rows = []
        if dbs or qss:
            from vitscope.analysis.similarity.compare import store_features, store_name
            from vitscope.features import open_store

            if names:
                raise ValueError("give either --db-store/--query-store or models, not both")
            if len(dbs) != len(qss):
                raise ValueError(f"--db-store and --query-store come in pairs; got {len(dbs)} and {len(qss)}")
            for a, b in zip(dbs, qss):
                sa, sb = open_store(a), open_store(b)
                if sa.n != len(gt.imlist) or sb.n != len(gnd):
                    raise ValueError(f"the stores hold {sa.n} database and {sb.n} query rows; {gt.description} has "
                                     f"{len(gt.imlist)} and {len(gnd)} (extract them in gnd order)")
                if not (sa.valid.all() and sb.valid.all()):
                    raise ValueError("the stores have skipped images; retrieval needs a descriptor for every image")
                layers = sa.layers if blocks.strip().lower() == "all" else [
                    b if b >= 0 else b + int(sa.model.get("config", {}).get("depth") or max(sa.layers) + 1)
                    for b in parse_blocks(blocks, max(sa.layers) + 1)]
                fa = {int(k): v for k, v in store_features(sa, site, tokens, layers).items()}
                fb = {int(k): v for k, v in store_features(sb, site, tokens, layers).items()}
                opts = {k: v for k, v in options.items() if k == "tokens"}
                rows += retrieval_per_block(fa, fb, gnd, store_name(sa), protos, **opts)
        else:
            if not names:
                raise ValueError("nothing to evaluate: give --model, or --db-store and --query-store")
            dev = resolve_device(device)
            mods = load_models(names, random, dev, seed=seed, with_random=with_random)
            want = {n: resolve_blocks(m, None if blocks.strip().lower() == "all" else parse_blocks(blocks,
                                      m.cfg.depth), tokens) for n, m in mods.items()}
            size = {n: imsize or int(np.max(m.cfg.img_size)) for n, m in mods.items()}
            db_imgs, q_imgs = revisited_loaders(gt, crop)
            bar = (lambda what: (lambda it: tqdm(it, desc=f"{what} images", unit="batch", leave=False,
                                                disable=quiet)))
            kw = dict(imsize=size, preprocess=preprocess, multiscale=multiscale, tokens=tokens,
                      batch_size=batch_size)
            fdb = image_descriptors(mods, db_imgs, want, progress=bar("database"), **kw)
            fq = image_descriptors(mods, q_imgs, want, progress=bar("query"), **kw)
            for n in mods:
                rows += retrieval_per_block(fdb[n], fq[n], gnd, n, protos, **{**options, "imsize": size[n]})
        out = Path(out)
        save_tidy(rows, out / "retrieval")
        for p in protos:
            save_metric_per_block(rows, out / f"retrieval_mAP_{p}", metric=f"mAP_{p}", formats=fmts,
                                  title=f"{gt.name}: mAP, {p} ({'cropped' if crop else 'full'} queries)",
                                  ylabel="mAP (%)")
        main = "medium" if "medium" in protos else protos[0]
        cand = [r for r in rows if r["metric"] == f"mAP_{main}" and np.isfinite(r["value"])]
        best = max(cand, key=lambda r: r["value"]) if cand else None
        n_models = len({r["model"] for r in rows})
        tail = (f"best mAP ({main}) {best['value']:.1f}% ({best['model']}, block {best['block']})" if best else
                f"no query has a positive under {main}")
        typer.echo(f"retrieval of {n_models} model(s) on {gt.description}: {tail} -> {out / 'retrieval.csv'}")
