"""`vitscope knn`: weighted k-NN classification (DINO protocol) of every block's features, per model.

Features come from models run over ``--train`` / ``--test`` (or one ``--data`` split in two), each image once per
model, or from feature stores written by `vitscope extract` (``--train-store`` / ``--test-store``, one pair per
model). Writes ``knn.csv`` / ``knn.parquet`` (model, block, task, metric, value, k, ...) and the per-block figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP,
                                 locks_out)


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--k takes comma-separated integers, e.g. 10,20,100,200; got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"--k takes positive integers, got {text!r}")
    return ks


def split_dataset(ds, test_fraction: float, seed: int):
    """A seeded random split of one dataset into (train, test) subsets."""
    import numpy as np

    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    n = len(ds)
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"--test-fraction {test_fraction} of {n} images leaves an empty train or test part")
    return ds.subset(sorted(perm[n_test:].tolist())), ds.subset(sorted(perm[:n_test].tolist()))


def _store_blocks(train_store, test_store, site: str, tokens: str, blocks: Optional[str]):
    from vitscope.analysis.block_features import parse_blocks
    from vitscope.analysis.similarity.compare import store_features

    layers = train_store.layers
    if blocks and blocks.strip().lower() != "all":
        depth = int(train_store.model.get("config", {}).get("depth") or (max(layers) + 1))
        want = [b + depth if b < 0 else b for b in parse_blocks(blocks, depth)]
        missing = [b for b in want if b not in layers]
        if missing:
            raise ValueError(f"the store holds layers {layers}, not {missing}; extract them with --layers")
        layers = want
    if tokens not in train_store.reductions or tokens not in test_store.reductions:
        raise ValueError(f"the stores must hold the {tokens!r} reduction; extract with --tokens {tokens}")
    tr = store_features(train_store, site, tokens, layers)
    te = store_features(test_store, site, tokens, layers)
    ytr = train_store.labels[train_store.valid]
    yte = test_store.labels[test_store.valid]
    return tr, ytr, te, yte


def register(app: typer.Typer) -> None:
    @app.command("knn")
    @locks_out("vitscope knn")
    def knn_cmd(
        model_names: Optional[List[str]] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeatable."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP + " Applies to every --model."),
        with_random: bool = typer.Option(False, "--with-random", help="Also run a random-weight twin of every model "
                                                                      "(dashed in the figure)."),
        train: Optional[str] = typer.Option(None, "--train", help="Training images (dataset spec, labelled)."),
        test: Optional[str] = typer.Option(None, "--test", help="Test images (dataset spec, labelled)."),
        data: Optional[str] = typer.Option(None, "--data", "-d",
                                           help=DATA_HELP + " Split into train / test by --test-fraction (instead of "
                                                            "--train/--test)."),
        test_fraction: float = typer.Option(0.2, "--test-fraction", help="With --data: share held out as test."),
        train_store: Optional[List[Path]] = typer.Option(None, "--train-store", help="Feature store of the training "
                                                                                    "images (`vitscope extract`); "
                                                                                    "repeat, one per model."),
        test_store: Optional[List[Path]] = typer.Option(None, "--test-store", help="Feature store of the test images, "
                                                                                  "paired with --train-store."),
        site: str = typer.Option("resid_post", "--site", help="Store site to read (--train-store)."),
        blocks: str = typer.Option("all", "--blocks", help="Blocks: all, '0,3,-1' or '4:8'."),
        tokens: str = typer.Option("cls", "--tokens", help="cls (DINO, walmer2023) or mean (of the patch tokens)."),
        ks: str = typer.Option("10,20,100,200", "--k", help="Neighbour counts, comma-separated (DINO's)."),
        temperature: float = typer.Option(0.07, "--temperature", help="Vote weight exp(similarity / T)."),
        count_unvoted: bool = typer.Option(False, "--count-unvoted", help="Top-5 also counts hits on classes "
                                                                          "without a vote (DINO's code)."),
        num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Number of classes (default: from "
                                                                              "the labels)."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many train and test images."),
        seed: int = typer.Option(0, "--seed", help="Seed of the --data split and of random weights."),
        out: Path = typer.Option(Path("runs/knn"), "--out", "-o", help=OUT_HELP),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages."),
    ) -> None:
        """Weighted k-NN accuracy (top-1 / top-5, k = 10, 20, 100, 200) of every block, one line per model."""
        from tqdm.auto import tqdm

        from vitscope.analysis.block_features import collect_block_features, parse_blocks, resolve_blocks
        from vitscope.analysis.knn import knn_per_block
        from vitscope.cli.common import default_data, load_models, parse_formats, resolve_device, save_tidy
        from vitscope.viz.per_block import save_metric_per_block

        fmts = parse_formats(formats)
        kk = parse_ks(ks)
        names = list(model_names or [])
        stores = list(train_store or []), list(test_store or [])
        if stores[0] or stores[1]:
            if names or data or train or test:
                raise ValueError("give either --train-store/--test-store or models with data, not both")
            if len(stores[0]) != len(stores[1]):
                raise ValueError(f"--train-store and --test-store come in pairs; got {len(stores[0])} and "
                                 f"{len(stores[1])}")
        elif not names:
            raise ValueError("nothing to evaluate: give --model (with --train/--test or --data) or --train-store "
                             "and --test-store")
        dev = resolve_device(device)
        bar = (lambda it, desc: tqdm(it, desc=desc, unit="block", leave=False, disable=quiet))
        rows = []
        n_train = n_test = 0
        if stores[0]:
            from vitscope.analysis.similarity.compare import store_name
            from vitscope.features import open_store

            for a, b in zip(*stores):
                sa, sb = open_store(a), open_store(b)
                tr, ytr, te, yte = _store_blocks(sa, sb, site, tokens, blocks)
                name = store_name(sa)
                rows += knn_per_block(tr, ytr, te, yte, kk, name, temperature, num_classes,
                                      count_unvoted=count_unvoted, device=dev,
                                      progress=lambda it: bar(it, f"k-NN {name}"))
                n_train, n_test = len(ytr), len(yte)
        else:
            from vitscope.data import open_dataset

            if data and (train or test):
                raise ValueError("give either --data (split by --test-fraction) or --train and --test")
            if not (train or test):
                data = default_data(model_names, data, quiet)
            if data:
                ds_train, ds_test = split_dataset(open_dataset(data), test_fraction, seed)
            elif train and test:
                ds_train, ds_test = open_dataset(train), open_dataset(test)
            else:
                raise ValueError("models need images: --train SPEC --test SPEC (labelled), or --data SPEC")
            mods = load_models(names, random, dev, seed=seed, with_random=with_random)
            want = {n: resolve_blocks(m, None if blocks.strip().lower() == "all" else parse_blocks(blocks,
                                      m.cfg.depth), tokens) for n, m in mods.items()}
            ftr, ytr = collect_block_features(mods, ds_train, want, tokens, batch_size, limit, progress=not quiet)
            fte, yte = collect_block_features(mods, ds_test, want, tokens, batch_size, limit, progress=not quiet)
            for n in mods:
                rows += knn_per_block(ftr[n], ytr, fte[n], yte, kk, n, temperature, num_classes,
                                      count_unvoted=count_unvoted, device=dev, progress=lambda it: bar(it, f"k-NN {n}"))
            n_train, n_test = len(ytr), len(yte)
        for r in rows:
            r.update(tokens=tokens, count_unvoted=count_unvoted)
        out = Path(out)
        written = save_tidy(rows, out / "knn")
        fk = 20 if 20 in kk else kk[0]
        for m in ("top1", "top5"):
            written += save_metric_per_block(rows, out / f"knn_{m}_k{fk}", metric=f"{m}_k{fk}", formats=fmts,
                                             title=f"k-NN {m.replace('top', 'top-')}, k={fk} ({n_train} train / "
                                                   f"{n_test} test)", ylabel=f"{m.replace('top', 'top-')} accuracy (%)")
        best = max((r for r in rows if r["metric"] == f"top1_k{fk}"), key=lambda r: r["value"])
        n_models = len({r["model"] for r in rows})
        typer.echo(f"k-NN of {n_models} model(s) on {n_train} train / {n_test} test images, k={','.join(map(str, kk))}"
                   f": best top-1 (k={fk}) {best['value']:.1f}% ({best['model']}, block {best['block']}) -> "
                   f"{out / 'knn.csv'}")
