"""`vitscope logit-lens`, `vitscope memories`, `vitscope perturb`, `vitscope attribution`: vilas2023's class embedding
space and the per-head direct logit attribution, thin wrappers over ``vitscope.analysis.class_embedding``. Models
without a classifier take class embeddings: ``--class-embeddings FILE.npy`` or ``--head DIR`` (a linear probe on the
last layer, saved by ``vitscope probe``). Every figure is saved with its numbers and a tidy table
(``model, block, task, metric, value`` + option columns) as CSV and parquet."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import save_tidy
from vitscope.cli.common import (
    DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP, bundled_data, finish_skips, locks_out,
    parse_formats, slug,
)

LIMIT_HELP = "Use only the first N images."
IMAGENET_S_HELP = "ImageNet-S root (vilas2023's images; masks of each image's own category)."
CLASS_INDEX_HELP = ("With --imagenet-s: the head's classes, one wnid per line (line k = class k); default: the "
                    "model's class names.")
PER_CLASS_HELP = "Keep the first N images of each class (vilas2023: 5)."
MASK_RULE_HELP = "Object mask to token grid: majority (at least half of the cell), any, bicubic."
EMB_HELP = ("Class embeddings for a model without a classifier: a (classes, width) .npy matrix, read after the "
            "final norm (width = the model's) or after the CLIP projection (width = the projection's; e.g. CLIP text "
            "embeddings of class prompts). Row k = class k of the data.")
NAMES_HELP = "With --class-embeddings: the class names, one per line (line k = row k); checked against the data."
HEAD_HELP = ("A linear head fitted on the last layer, as class embeddings: a `vitscope probe` output folder (its "
             "heads/linear_last_cls), a heads/ folder or a .safetensors head saved by save_linear_head.")


# ----------------------------------------------------------------------------- shared helpers
def _open(data: Optional[str], imagenet_s: Optional[Path] = None, class_index: Optional[Path] = None,
          per_class: Optional[int] = None, model=None):
    """The labelled images: --data SPEC, or --imagenet-s ROOT labelled by the head's classes."""
    if imagenet_s is not None:
        if data:
            raise ValueError("give either --data or --imagenet-s, not both")
        from vitscope.analysis.class_embedding.images import imagenet_s_dataset

        if class_index is not None:
            classes = [ln.strip() for ln in Path(class_index).read_text().splitlines() if ln.strip()]
        else:
            classes = list((model.cfg.meta or {}).get("classes") or [])
            if not classes:
                raise ValueError("--imagenet-s needs the head's classes: pass --class-index FILE (one wnid per line, "
                                 "line k = head class k; ImageNet-1k: the 1000 wnids in sorted order)")
        return imagenet_s_dataset(imagenet_s, classes, per_class=per_class)
    if not data and model is not None:
        data = bundled_data(model)
    if not data:
        raise ValueError("no images: pass --data SPEC with class labels (a folder with one sub-folder per class, a "
                         "list file with labels, or synthetic:...) or --imagenet-s ROOT")
    from vitscope.data import open_dataset

    ds = open_dataset(data)
    if len(ds) == 0:
        raise ValueError(f"the dataset {data!r} has no images")
    if not len(ds.classes) or (ds.labels < 0).any():
        raise ValueError(f"the dataset {data!r} has no class labels; vilas2023's analyses need labelled images (a "
                         "folder with one sub-folder per class, a list file with labels, or synthetic:...)")
    if per_class is not None:
        counts: dict[int, int] = {}
        keep = []
        for i, y in enumerate(ds.labels.tolist()):
            counts[y] = counts.get(y, 0) + 1
            if counts[y] <= per_class:
                keep.append(i)
        ds = ds.subset(keep)
    return ds


def _class_embeddings(model, label: str, class_embeddings: Optional[Path], class_names: Optional[Path],
                      head: Optional[Path]):
    """The class embeddings the options give (None: the model's own head); one line when there are none."""
    from vitscope.analysis.class_embedding import ClassEmbeddings

    if class_embeddings is not None and head is not None:
        raise ValueError("give either --class-embeddings or --head, not both")
    if class_names is not None and class_embeddings is None:
        raise ValueError("--class-names names the rows of --class-embeddings; pass --class-embeddings FILE.npy too "
                         "(a --head carries its class names)")
    if class_embeddings is not None:
        names = None
        if class_names is not None:
            if not Path(class_names).is_file():
                raise FileNotFoundError(f"class-names file {class_names} does not exist; expected one name per line")
            names = [ln.strip() for ln in Path(class_names).read_text().splitlines() if ln.strip()]
        emb = ClassEmbeddings.from_npy(class_embeddings, classes=names)
    elif head is not None:
        emb = ClassEmbeddings.from_head(head)
    elif model.cfg.head not in ("linear", "distilled"):
        raise ValueError(f"{label} has no classifier (head={model.cfg.head!r}) to project onto: pass "
                         "--class-embeddings FILE.npy (a (classes, width) matrix, e.g. CLIP text embeddings of class "
                         "prompts) or --head DIR (a linear probe on the last layer: `vitscope extract ... -s ln_final "
                         "-t cls` then `vitscope probe -l last`)")
    else:
        return None
    import torch

    with torch.no_grad():                                      # width errors here, before any image is read
        emb.features(model, torch.zeros(1, model.cfg.embed_dim, device=model.device, dtype=model.dtype))
    return emb


def _load(name: str, random: bool, device: Optional[str], seed: int = 0):
    from vitscope.models.loading import load_model

    m = load_model(name, pretrained=not random, device=device, seed=seed).eval()
    label = str((getattr(m, "meta", None) or {}).get("name") or Path(name).name or name)
    return m, label + (" (random)" if random else "")


def _check_classes(model, ds, names_given: bool = False, emb=None) -> None:
    from vitscope.analysis.class_embedding.embeddings import check_classes

    check_classes(model, ds, names_given, emb)


def _has_masks(ds, model, pcfg, rule: str) -> bool:
    from vitscope.analysis.class_embedding import class_token_masks

    try:
        class_token_masks(ds, [0], model.cfg.grid, pcfg, rule)
        return True
    except (ValueError, FileNotFoundError, KeyError):
        return False


def _batches(models: list, ds, batch_size: int, limit: Optional[int], masks_rule: Optional[str], quiet: bool):
    """(list of per-model images, labels, dataset indices, class masks or None) per batch, decoded once."""
    from vitscope.analysis.class_embedding import class_token_masks
    from vitscope.features.access import image_batches, preprocess_config

    pcfg = preprocess_config(models[0])
    for images, labels, idx in image_batches(models, ds, batch_size, limit, progress=not quiet, min_size=1):
        masks = None
        if masks_rule is not None:
            import torch

            masks = torch.from_numpy(class_token_masks(ds, idx.tolist(), models[0].cfg.grid, pcfg, masks_rule))
        yield list(images), labels, idx, masks


def _save(fig, stem: Path, formats, rows, quiet: bool) -> None:
    from vitscope.viz.save import save_figure

    paths = save_figure(fig, stem, formats)
    save_tidy(rows, stem)
    if not quiet:
        typer.echo(f"wrote {paths[0]}")


def register(app: typer.Typer) -> None:  # noqa: C901 - one function that declares the group's commands
    # ------------------------------------------------------------------ logit lens
    @app.command("logit-lens")
    @locks_out("vitscope logit-lens")
    def logit_lens_cmd(
        model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        imagenet_s: Optional[Path] = typer.Option(None, "--imagenet-s", help=IMAGENET_S_HELP),
        class_index: Optional[Path] = typer.Option(None, "--class-index", help=CLASS_INDEX_HELP),
        per_class: Optional[int] = typer.Option(None, "--per-class", help=PER_CLASS_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        class_embeddings: Optional[Path] = typer.Option(None, "--class-embeddings", help=EMB_HELP),
        class_names: Optional[Path] = typer.Option(None, "--class-names", help=NAMES_HELP),
        head: Optional[Path] = typer.Option(None, "--head", help=HEAD_HELP),
        baseline: bool = typer.Option(True, "--random-baseline/--no-random-baseline",
                                      help="Compare with the same architecture at random weights (seed 0)."),
        out: Path = typer.Option(Path("runs/logit-lens"), "--out", "-o", help=OUT_HELP),
        sites: str = typer.Option("resid,attn,mlp", "--sites",
                                  help="What to project: resid (block output), attn, mlp (branch outputs)."),
        topk: int = typer.Option(5, "--topk", help="Top classes recorded per token."),
        prescale: bool = typer.Option(False, "--prescale", help="Project the branches before LayerScale (vilas2023 "
                                                                "reads attn.proj / mlp.fc2); default: as added to "
                                                                "the stream."),
        mask_rule: str = typer.Option("majority", "--mask-rule", help=MASK_RULE_HELP),
        permutations: int = typer.Option(300, "--permutations", help="Permutations of the class-vs-context test."),
        seed: int = typer.Option(0, "--seed", help="Seed of the permutations and the random-weight model."),
        limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Logit lens: every block, token and branch projected on the class embeddings; identifiability over
        blocks against random weights, change rates, residual match, class- vs context-labelled tokens."""
        from vitscope.analysis import class_embedding as ce
        from vitscope.features.access import preprocess_config
        from vitscope.viz import class_embedding as V

        fmts = parse_formats(formats)
        site_list = tuple(s.strip() for s in sites.split(",") if s.strip())
        out.mkdir(parents=True, exist_ok=True)
        all_rows, summary = [], []
        for name in model_names:
            model, label = _load(name, random, device, seed)
            emb = _class_embeddings(model, label, class_embeddings, class_names, head)
            ds = _open(data, imagenet_s, class_index, per_class, model)
            _check_classes(model, ds, class_index is not None, emb)
            models = [model] + ([_load(name, True, device, seed)[0]] if baseline and not random else [])
            pcfg = preprocess_config(model)
            rule = mask_rule if _has_masks(ds, model, pcfg, mask_rule) else None
            if rule is None and not quiet:
                typer.echo("note: the images have no object masks; the class- vs context-labelled test is left out")
            sub = out / slug(label)
            lenses = [ce.LogitLens(m, emb, sites=site_list, topk=topk, prescale=prescale,
                                   record=sub / ("records" if i == 0 else "records_random"))
                      for i, m in enumerate(models)]
            for images, labels, idx, masks in _batches(models, ds, batch_size, limit, rule, quiet):
                for lens, x in zip(lenses, images):
                    lens.update(x, labels, masks=masks, indices=idx)
            res = lenses[0].result()
            rres = lenses[1].result() if len(lenses) > 1 else None
            evo = ce.evolution_rows(res, rres, site="resid" if "resid" in site_list else site_list[0], model=label)
            rows = evo + ce.rate_rows(res, label, site=evo[0]["site"]) + [
                r for r in res.rows(label) if r["metric"] != "identifiability" or r["site"] != evo[0]["site"]]
            if rres is not None:
                rows += ce.rate_rows(rres, label + " (random)", site=evo[0]["site"])
            _save(V.plot_identifiability_evolution(evo, res.num_classes, title=f"{label}: class identifiability"),
                  sub / "identifiability_evolution", fmts, evo, quiet)
            if "resid" in site_list:
                change = [r for r in rows if r["metric"] in ("block_change", "attn_change", "mlp_change")]
                _save(V.plot_change_rates(change, title=f"{label}: change rates"), sub / "change_rates", fmts,
                      change, quiet)
                match = [r for r in rows if r["metric"].startswith(("match_", "composition"))]
                if match:
                    _save(V.plot_residual_match(match, title=f"{label}: residual match"), sub / "residual_match",
                          fmts, match, quiet)
            if rule is not None:
                ctx = ce.class_context_rows(res, "score", evo[0]["site"], permutations, seed, label)
                if "attn" in site_list and "resid" in site_list:
                    ctx += ce.class_context_rows(res, "attn_change", "resid", permutations, seed, label)
                rows += ctx
                _save(V.plot_class_context(ctx, title=f"{label}: class- vs context-labelled tokens"),
                      sub / "class_context", fmts, ctx, quiet)
            all_rows += rows
            random_note = (f" (random weights: {100 * rres.token_rate():.1f}%)" if rres is not None else "")
            summary.append(f"{label}: {100 * res.token_rate():.1f}% identifiable patch tokens at the last block"
                           f"{random_note}, image rate {100 * res.image_rate():.1f}%, accuracy "
                           f"{'' if emb is None else 'of the class embeddings '}{100 * res.accuracy:.1f}% over "
                           f"{res.n_images} images")
        save_tidy(all_rows, out / "logit_lens")
        if not quiet:
            finish_skips(ds, out)
        typer.echo("; ".join(summary) + f"; written to {out}")

    # ------------------------------------------------------------------ memories
    @app.command("memories")
    @locks_out("vitscope memories")
    def memories_cmd(
        model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        imagenet_s: Optional[Path] = typer.Option(None, "--imagenet-s", help=IMAGENET_S_HELP),
        class_index: Optional[Path] = typer.Option(None, "--class-index", help=CLASS_INDEX_HELP),
        per_class: Optional[int] = typer.Option(None, "--per-class", help=PER_CLASS_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        class_embeddings: Optional[Path] = typer.Option(None, "--class-embeddings", help=EMB_HELP),
        class_names: Optional[Path] = typer.Option(None, "--class-names", help=NAMES_HELP),
        head: Optional[Path] = typer.Option(None, "--head", help=HEAD_HELP),
        out: Path = typer.Option(Path("runs/memories"), "--out", "-o", help=OUT_HELP),
        k: int = typer.Option(5, "--k", help="Memories per class and key coefficients per token (vilas2023: 5)."),
        permutations: int = typer.Option(300, "--permutations", help="Permutations of the correct-vs-wrong test."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random-class baseline, the permutations and the "
                                                   "random-weight model."),
        limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Memories: attention and MLP value vectors in class space; class-value agreement against random weights,
        key-value agreement against a random class, compositionality, correctly vs wrongly classified images."""
        from vitscope.analysis import class_embedding as ce
        from vitscope.viz import class_embedding as V

        fmts = parse_formats(formats)
        out.mkdir(parents=True, exist_ok=True)
        all_rows, summary = [], []
        for name in model_names:
            model, label = _load(name, random, device, seed)
            emb = _class_embeddings(model, label, class_embeddings, class_names, head)
            ds = _open(data, imagenet_s, class_index, per_class, model)
            _check_classes(model, ds, class_index is not None, emb)
            rand = _load(name, True, device, seed)[0]
            rows = ce.class_value_rows(model, rand, emb, emb, model_name=label)
            acc = ce.MemoryAgreement(model, emb, k=k, seed=seed)
            for images, labels, _, _ in _batches([model], ds, batch_size, limit, None, quiet):
                acc.update(images[0], labels)
            rows += acc.result().rows(label, permutations, seed)
            _save(V.plot_memories(rows, title=f"{label}: memories"), out / slug(label) / "memories", fmts, rows, quiet)
            all_rows += rows
            last = [r for r in rows if r["metric"] == "class_value_agreement" and r["block"] == model.cfg.depth - 1]
            summary.append(f"{label}: last-block class-value agreement " + ", ".join(
                f"{r['kind']} {r['value']:.2f} (random {r.get('random', float('nan')):.2f})" for r in last))
        save_tidy(all_rows, out / "memories")
        typer.echo("; ".join(summary) + f"; written to {out}")

    # ------------------------------------------------------------------ perturbations
    @app.command("perturb")
    @locks_out("vitscope perturb")
    def perturb_cmd(
        model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        imagenet_s: Optional[Path] = typer.Option(None, "--imagenet-s", help=IMAGENET_S_HELP),
        class_index: Optional[Path] = typer.Option(None, "--class-index", help=CLASS_INDEX_HELP),
        per_class: Optional[int] = typer.Option(None, "--per-class", help=PER_CLASS_HELP),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        class_embeddings: Optional[Path] = typer.Option(None, "--class-embeddings", help=EMB_HELP),
        class_names: Optional[Path] = typer.Option(None, "--class-names", help=NAMES_HELP),
        head: Optional[Path] = typer.Option(None, "--head", help=HEAD_HELP),
        out: Path = typer.Option(Path("runs/perturb"), "--out", "-o", help=OUT_HELP),
        kinds: str = typer.Option("self_only,no_cls", "--attention",
                                  help="Attention perturbations in every block: self_only, no_cls."),
        tokens_drop: bool = typer.Option(True, "--token-drop/--no-token-drop",
                                         help="Also drop context or object tokens (needs object masks)."),
        tokens: str = typer.Option("patches", "--tokens",
                                   help="Tokens counted: patches (default) or all (CLS included, vilas2023)."),
        blocks: Optional[str] = typer.Option(None, "--blocks", help="Perturbed blocks, comma-separated (default all)."),
        mask_rule: str = typer.Option("majority", "--mask-rule", help=MASK_RULE_HELP),
        limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Perturbations: identifiable tokens at the last block under self_only / no_cls attention and with context
        or object tokens dropped, against the unperturbed model (vilas2023's tables)."""
        from vitscope.analysis import class_embedding as ce
        from vitscope.features.access import preprocess_config
        from vitscope.viz import class_embedding as V

        fmts = parse_formats(formats)
        ks = ["none"] + [s.strip() for s in kinds.split(",") if s.strip()]
        blk = None if not blocks else [int(b) for b in blocks.split(",") if b.strip()]
        out.mkdir(parents=True, exist_ok=True)
        all_rows, summary = [], []
        for name in model_names:
            model, label = _load(name, random, device)
            emb = _class_embeddings(model, label, class_embeddings, class_names, head)
            ds = _open(data, imagenet_s, class_index, per_class, model)
            _check_classes(model, ds, class_index is not None, emb)
            rule = mask_rule if tokens_drop and _has_masks(ds, model, preprocess_config(model), mask_rule) else None
            if tokens_drop and rule is None and not quiet:
                typer.echo("note: the dataset has no object masks; token dropping is left out")
            rows = ce.attention_perturbation_rows(
                model, ((b[0][0], b[1]) for b in _batches([model], ds, batch_size, limit, None, quiet)), ks,
                projection=emb, blocks=blk, tokens=tokens, model_name=label)
            if rule is not None:
                rows += ce.token_drop_rows(
                    model, ((b[0][0], b[1], b[3]) for b in _batches([model], ds, batch_size, limit, rule, quiet)),
                    projection=emb, tokens=tokens, model_name=label)
            _save(V.plot_perturbation(rows, title=f"{label}: identifiable tokens ({tokens})"),
                  out / slug(label) / "perturbation", fmts, rows, quiet)
            all_rows += rows
            rate = {r["perturbation"]: r["value"] for r in rows if r["metric"] == "identifiable_rate"}
            summary.append(f"{label}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rate.items()))
        save_tidy(all_rows, out / "perturbation")
        typer.echo("identifiable tokens at the last block: " + "; ".join(summary) + f"; written to {out}")

    # ------------------------------------------------------------------ per-head direct logit attribution
    @app.command("attribution")
    @locks_out("vitscope attribution")
    def attribution_cmd(
        model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        per_class: Optional[int] = typer.Option(None, "--per-class", help="Keep the first N images of each class."),
        random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
        class_embeddings: Optional[Path] = typer.Option(None, "--class-embeddings", help=EMB_HELP),
        class_names: Optional[Path] = typer.Option(None, "--class-names", help=NAMES_HELP),
        head: Optional[Path] = typer.Option(None, "--head", help=HEAD_HELP),
        out: Path = typer.Option(Path("runs/attribution"), "--out", "-o", help=OUT_HELP),
        blocks: Optional[str] = typer.Option(None, "--blocks",
                                             help="Blocks, comma-separated (default all; -1 = last)."),
        limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
        formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Per-head direct logit attribution: each attention head's direct share of the true-class logit, per block
        and token group (CLS, patches, registers), averaged over the images; a block x head map and a tidy table."""
        from vitscope.analysis.class_embedding.attribution import AttributionMeans, head_logit_attribution
        from vitscope.viz.logit_attribution import plot_head_attribution

        fmts = parse_formats(formats)
        try:
            blk = None if not blocks else [int(b) for b in blocks.split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"--blocks takes comma-separated block indices, got {blocks!r}") from None
        out.mkdir(parents=True, exist_ok=True)
        all_rows, summary = [], []
        for name in model_names:
            model, label = _load(name, random, device)
            emb = _class_embeddings(model, label, class_embeddings, class_names, head)
            ds = _open(data, per_class=per_class, model=model)
            _check_classes(model, ds, emb=emb)
            acc = AttributionMeans(model, blk)
            for images, labels, _, _ in _batches([model], ds, batch_size, limit, None, quiet):
                acc.update(head_logit_attribution(model, images[0], labels, embeddings=emb, blocks=blk))
            if not acc.n_images:
                raise ValueError(f"no images were read from {data!r}")
            rows = [dict(model=r["model"], block=r["block"], task="attribution", metric=r["metric"], value=r["value"],
                         head=r["head"], tokens=r["tokens"], n_images=acc.n_images) for r in acc.rows(label)]
            _save(plot_head_attribution(rows, tokens="all", title=f"{label}: direct true-class logit per head"),
                  out / slug(label) / "head_attribution", fmts, rows, quiet)
            all_rows += rows
            group = "cls" if any(r["tokens"] == "cls" for r in rows) else "patches"
            top = max((r for r in rows if r["tokens"] == group and r["value"] == r["value"]),
                      key=lambda r: r["value"])
            summary.append(f"{label}: largest direct share block {top['block']} head {top['head']} "
                           f"({top['value']:.3f} at {top['tokens']}) over {acc.n_images} images")
        save_tidy(all_rows, out / "attribution")
        typer.echo("; ".join(summary) + f"; written to {out}")
