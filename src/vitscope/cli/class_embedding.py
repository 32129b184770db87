"""`vitscope logit-lens`, `memories`, `perturb`, `attribution`: vilas2023's class embedding space and the per-head
direct logit attribution, thin adapters over the ``evaluate`` of ``vitscope.analysis.class_embedding.projection``
(the logit lens), ``.memories``, ``.perturbation`` and ``.attribution``. Models without a classifier take class
embeddings: ``--class-embeddings FILE.npy`` or ``--head DIR`` (a linear probe on the last layer, saved by
``vitscope probe``). Every figure is saved with its numbers and a tidy table (``model, block, metric, value`` +
option columns) as CSV and parquet."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import (DATA_HELP, DEVICE_HELP, FORMATS_HELP, MODEL_HELP, OUT_HELP, RANDOM_HELP,
                                 WITH_RANDOM_HELP, cli_options, locks_out, parse_formats)

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
SEED_HELP = "Seed of the random-weight model (--random)."
QUIET_HELP = "No progress output."


def _models(names, random: bool, device, seed: int, with_random: bool = False):
    from vitscope.cli.common import load_models

    return load_models(list(names), random, device, seed=seed, with_random=with_random)


def _data(models: dict, data: Optional[str], imagenet_s: Optional[Path] = None):
    """``--data``, or the bundled demo data when every model is a bundled demo model (with a note)."""
    from vitscope.cli.common import bundled_data
    from vitscope.models.bundled import is_bundled

    if data or imagenet_s is not None or not all(is_bundled(m) for m in models.values()):
        return data
    return bundled_data(next(iter(models.values())))


def _space(imagenet_s=None, class_index=None, per_class=None, class_embeddings=None, class_names=None, head=None,
           limit=None, batch_size=64, device=None, quiet=False) -> dict:
    """The options every class-embedding command shares (``ClassSpaceOptions``), from the command line."""
    return dict(imagenet_s=None if imagenet_s is None else str(imagenet_s),
                class_index=None if class_index is None else str(class_index), per_class=per_class,
                class_embeddings=None if class_embeddings is None else str(class_embeddings),
                class_names=None if class_names is None else str(class_names),
                head=None if head is None else str(head), limit=limit, batch_size=batch_size, device=device,
                progress=not quiet)


def _finish(result, out: Path, formats, quiet: bool, lead: str = "", skips: bool = False) -> None:
    """Save the table and figures, print the notes, the figures written and the one-line summary."""
    from vitscope.cli.common import finish_skips, save_tidy
    from vitscope.data.datasets import ImageDataset

    t = result.table                           # the commands' tables lead with model, block, task, metric, value
    first = [c for c in ("model", "block", "task", "metric", "value") if c in t.columns]
    save_tidy(t[first + [c for c in t.columns if c not in first]], out / result.analysis)
    written = result.save(out, formats, table=False)
    if not quiet:
        for note in result.meta.get("notes", []):
            typer.echo(f"note: {note}")
        for p in written:
            if p.suffix == f".{formats[0]}":
                typer.echo(f"wrote {p}")
        ds = result.meta.get("dataset")
        if skips and isinstance(ds, ImageDataset):
            finish_skips(ds, out)
    typer.echo(f"{lead}{result.summary}; written to {out}")


# ----------------------------------------------------------------------------- logit lens
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
    baseline: bool = typer.Option(True, "--with-random/--without-random", "--random-baseline/--no-random-baseline",
                                  help="Compare with the same architecture at random weights (seeded by --seed)."),
    out: Path = typer.Option(Path("runs/logit-lens"), "--out", "-o", help=OUT_HELP),
    sites: str = typer.Option("resid,attn,mlp", "--sites", "-s",
                              help="What to project: resid (block output), attn, mlp (branch outputs)."),
    topk: int = typer.Option(5, "--topk", help="Top classes recorded per token (1 .. number of classes)."),
    prescale: bool = typer.Option(False, "--prescale", help="Project the branches before LayerScale (vilas2023 "
                                                            "reads attn.proj / mlp.fc2); default: as added to the "
                                                            "stream."),
    mask_rule: str = typer.Option("majority", "--mask-rule", help=MASK_RULE_HELP),
    permutations: int = typer.Option(300, "--permutations", help="Permutations of the class-vs-context test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutations and the random-weight model."),
    limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Logit lens: every block, token and branch projected on the class embeddings; identifiability over
    blocks against random weights, change rates, residual match, class- vs context-labelled tokens. The table
    holds rates as fractions (0-1); the summary line prints percent."""
    from vitscope.analysis.class_embedding.projection import LogitLensOptions, evaluate

    fmts = parse_formats(formats)
    opts = LogitLensOptions(sites=sites, topk=topk, prescale=prescale, random_baseline=baseline and not random,
                            seed=seed, mask_rule=mask_rule, permutations=permutations, record_dir=str(out),
                            **_space(imagenet_s, class_index, per_class, class_embeddings, class_names, head, limit,
                                     batch_size, device, quiet))
    models = _models(model_names, random, device, seed)
    _finish(evaluate(models, _data(models, data, imagenet_s), opts), out, fmts, quiet, skips=True)


# ----------------------------------------------------------------------------- memories
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
    k: int = typer.Option(5, "--top-memories", "--k",
                          help="Memories per class and key coefficients per token (vilas2023's k: 5)."),
    permutations: int = typer.Option(300, "--permutations", help="Permutations of the correct-vs-wrong test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random-class baseline, the permutations and the "
                                               "random-weight model."),
    limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Memories: attention and MLP value vectors in class space; class-value agreement against random weights,
    key-value agreement against a random class, compositionality, correctly vs wrongly classified images. The
    table holds percentages."""
    from vitscope.analysis.class_embedding.memories import MemoriesOptions, evaluate

    fmts = parse_formats(formats)
    opts = cli_options(MemoriesOptions, k=k, permutations=permutations, seed=seed,
                       **_space(imagenet_s, class_index, per_class, class_embeddings, class_names, head, limit,
                                batch_size, device, quiet))
    models = _models(model_names, random, device, seed)
    _finish(evaluate(models, _data(models, data, imagenet_s), opts), out, fmts, quiet)


# ----------------------------------------------------------------------------- perturbations
@locks_out("vitscope perturb")
def perturb_cmd(
    model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    imagenet_s: Optional[Path] = typer.Option(None, "--imagenet-s", help=IMAGENET_S_HELP),
    class_index: Optional[Path] = typer.Option(None, "--class-index", help=CLASS_INDEX_HELP),
    per_class: Optional[int] = typer.Option(None, "--per-class", help=PER_CLASS_HELP),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    with_random: bool = typer.Option(False, "--with-random", help=WITH_RANDOM_HELP),
    class_embeddings: Optional[Path] = typer.Option(None, "--class-embeddings", help=EMB_HELP),
    class_names: Optional[Path] = typer.Option(None, "--class-names", help=NAMES_HELP),
    head: Optional[Path] = typer.Option(None, "--head", help=HEAD_HELP),
    out: Path = typer.Option(Path("runs/perturb"), "--out", "-o", help=OUT_HELP),
    kinds: str = typer.Option("self_only,no_cls", "--attention",
                              help="Attention perturbations in every block: self_only, no_cls."),
    tokens_drop: bool = typer.Option(True, "--token-drop/--no-token-drop",
                                     help="Also drop context or object tokens (needs object masks)."),
    tokens: str = typer.Option("patches", "--counted-tokens", "--tokens",
                               help="Tokens counted in the rates: patches (default) or all (CLS included, vilas2023)."),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Perturbed blocks: '0,3,-1' or '2:4' (default all)."),
    mask_rule: str = typer.Option("majority", "--mask-rule", help=MASK_RULE_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Perturbations: identifiable tokens at the last block under self_only / no_cls attention and with context
    or object tokens dropped, against the unperturbed model (vilas2023's tables). The table holds rates as
    fractions (0-1); the summary line prints percent."""
    from vitscope.analysis.class_embedding.perturbation import PerturbationOptions, evaluate

    fmts = parse_formats(formats)
    opts = cli_options(PerturbationOptions, attention=kinds, token_drop=tokens_drop, tokens=tokens, blocks=blocks,
                       mask_rule=mask_rule, **_space(imagenet_s, class_index, per_class, class_embeddings,
                                                     class_names, head, limit, batch_size, device, quiet))
    models = _models(model_names, random, device, seed, with_random)
    _finish(evaluate(models, _data(models, data, imagenet_s), opts), out, fmts, quiet)


# ----------------------------------------------------------------------------- per-head direct logit attribution
@locks_out("vitscope attribution")
def attribution_cmd(
    model_names: List[str] = typer.Option(..., "--model", "-m", help=MODEL_HELP + " Repeatable."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="Keep the first N images of each class."),
    random: bool = typer.Option(False, "--random", help=RANDOM_HELP),
    with_random: bool = typer.Option(False, "--with-random", help=WITH_RANDOM_HELP),
    class_embeddings: Optional[Path] = typer.Option(None, "--class-embeddings", help=EMB_HELP),
    class_names: Optional[Path] = typer.Option(None, "--class-names", help=NAMES_HELP),
    head: Optional[Path] = typer.Option(None, "--head", help=HEAD_HELP),
    out: Path = typer.Option(Path("runs/attribution"), "--out", "-o", help=OUT_HELP),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Blocks: '0,3,-1' or '2:4' (default all)."),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help=LIMIT_HELP),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
    formats: str = typer.Option("png", "--formats", help=FORMATS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Per-head direct logit attribution: each attention head's direct share of the true-class logit, per block
    and token group (CLS, patches, registers), averaged over the images; a block x head map and a tidy table."""
    from vitscope.analysis.class_embedding.attribution import AttributionOptions, evaluate

    fmts = parse_formats(formats)
    opts = AttributionOptions(blocks=blocks, **_space(None, None, per_class, class_embeddings, class_names, head,
                                                      limit, batch_size, device, quiet))
    models = _models(model_names, random, device, seed, with_random)
    _finish(evaluate(models, _data(models, data), opts), out, fmts, quiet)


def register(app: typer.Typer) -> None:
    app.command("logit-lens")(logit_lens_cmd)
    app.command("memories")(memories_cmd)
    app.command("perturb")(perturb_cmd)
    app.command("attribution")(attribution_cmd)
