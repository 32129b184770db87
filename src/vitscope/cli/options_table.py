"""The command line's option names: one meaning per name, whatever the command.

``OPTIONS`` lists every option that more than one command takes, every option with a short flag and every option
that was renamed, with the one thing it means. Old spellings stay accepted but are hidden from ``--help``
(:class:`vitscope.cli.common.Command` hides them). An old spelling may be a current name elsewhere (``-b`` is
``--batch-size``, but ``attention -b 3`` still means ``--block 3``): it keeps its old meaning only in the commands
that had it, where it names nothing else.

``tests/unit/test_cli_conventions.py`` walks every command against this table, and
``scripts/make_options_table.py`` writes ``docs/options.md`` from it. An option of a single command with no short
flag and no old spelling is not listed here: its command's ``--help`` describes it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str                   # the long name shown in --help
    meaning: str                # what it means in every command that takes it
    short: str = ""             # its short flag, the same wherever it has one
    negation: str = ""          # the "off" spelling of an on/off pair (--without-random)
    old: tuple[str, ...] = ()   # old spellings, still accepted, hidden from --help


OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------------ what runs, on what
    Option("--model", "Model: a registry name, `timm/<name>`, `hf:<repo>`, or a local folder / file (see "
                      "`vitscope models`); repeat it where a command compares models.", short="-m"),
    Option("--random", "Random weights (no download): the architecture only, as a baseline; applies to every "
                       "--model (seeded by --seed)."),
    Option("--with-random", "Also run a random-weight twin of every model, seeded by --seed (dashed in the "
                            "figures).", negation="--without-random",
           old=("--random-baseline", "--no-random-baseline")),
    Option("--weights", "A local checkpoint loaded into the architecture --model names.", old=("-w",)),
    Option("--data", "Images: a dataset spec (folder, list file, shards, hf:NAME, video, synthetic:...; "
                     "docs/data.md).", short="-d"),
    Option("--train-data", "Labelled images (a dataset spec) that the command fits on: the k-NN memory, the "
                           "per-token probes, the probe order of the removal curves.", old=("--train", "--probe-data")),
    Option("--test-data", "Labelled images (a dataset spec) that the command scores on, when --data is the "
                          "training set or --train-data is given.", old=("--test",)),
    Option("--test-fraction", "Share of the data held out as test when no separate test set is given."),
    Option("--num-classes", "Number of classes (default: from the labels)."),
    Option("--store", "A feature store written by `vitscope extract`.", old=("-s",)),
    Option("--store2", "A second feature store of the same images, compared with --store."),
    Option("--test-store", "The feature store of the test images, paired with the training store."),
    Option("--limit", "Use at most this many items: the first N images (davis: sequences; check-data: images "
                      "decoded)."),
    Option("--train-limit", "Use only the first N images of --train-data.", old=("--probe-limit",)),
    Option("--per-class", "Keep the first N images of each class."),
    Option("--imagenet-s", "ImageNet-S root folder (images with per-category masks)."),
    Option("--coco", "A COCO instances json (with --image-root)."),
    Option("--partimagenet", "A PartImageNet annotation json (with --image-root)."),
    Option("--image-root", "The image folder of --coco / --partimagenet."),
    Option("--split", "Which split of a task folder is read (davis: ImageSets list, keypoints: pair split)."),
    # ------------------------------------------------------------------ where in the model
    Option("--blocks", "Blocks: all, '0,3,-1' or '4:8' (end excluded; negative numbers count from the end).",
           old=("--layers", "-l", "--block")),
    Option("--block", "One block (negative numbers count from the end).", old=("-b",)),
    Option("--site", "One site of a block (resid_post, ln2, ...) that the command reads or patches."),
    Option("--sites", "Sites, comma-separated (resid_post, ln2, attn_out, mlp_out, ...; logit-lens: resid, "
                      "attn, mlp).", short="-s"),
    Option("--tokens", "The tokens a feature is taken from: cls, mean (of the patch tokens), patches, all "
                       "(extract: a comma list of these reductions).", short="-t"),
    Option("--query", "The query token whose attention is read: cls, `reg<k>`, mean, centre, 'row,col', ..."),
    Option("--layer-set", "Probe inputs: last, middle, quarterly, all, tokens, or a list 'ln2.3.cls,ln_final.ap'; "
                          "repeat for several.", short="-l", old=("--experiments",)),
    Option("--reductions", "Token reductions read from a store for every layer: cls, ap (patch mean), ap_all.",
           short="-r"),
    Option("--counted-tokens", "Tokens counted in the identifiable-token rates: patches, or all (CLS "
                               "included, vilas2023).", old=("--tokens",)),
    # ------------------------------------------------------------------ how it is computed
    Option("--batch-size", "Items per forward pass or optimiser step (images, frames, tokens: the command's "
                           "--help says which).", short="-b"),
    Option("--device", "Device: cpu, cuda, cuda:1, ... (default: cuda when available)."),
    Option("--threads", "CPU threads of torch and of the BLAS / OpenMP pools (default: torch's)."),
    Option("--workers", "Data-loading worker processes.", short="-w", old=("--num-workers",)),
    Option("--seed", "Seed of the command's randomness: random-weight twins, splits, sampling, initialisation "
                     "(the command's --help says which).", old=("--model-seed",)),
    Option("--resume", "Continue an interrupted run (or store) in --out.", negation="--no-resume"),
    Option("--method", "The variant of the command's method (values in its --help)."),
    Option("--target", "The class explained (default: the predicted class)."),
    Option("--temperature", "Softmax temperature of the similarities."),
    Option("--topk", "How many of the largest values are kept per token."),
    Option("--step", "A stride: use every STEP-th frame (video) or number of removed tokens (removal)."),
    Option("--short-side", "Short side of the frames in pixels."),
    Option("--size", "Image side in pixels."),
    Option("--mask-rule", "How an object mask becomes a token-grid mask."),
    Option("--permutations", "Permutations of the permutation test."),
    Option("--clusters", "Number of clusters (k-means of the images in cluster, spectral clustering of the "
                         "layers in cka / rsa).", old=("--k",)),
    Option("--normalize", "L2-normalise each sample's features first.", negation="--no-normalize"),
    # ------------------------------------------------------------------ training
    Option("--epochs", "Passes over the training set."),
    Option("--steps", "Training steps (optimiser steps or batches)."),
    Option("--min-steps", "Minimum number of optimiser steps."),
    Option("--lr", "Learning rate."),
    Option("--weight-decay", "Weight decay."),
    Option("--num-heads", "Attention heads of what the command trains (the attentive probe, the ViT).",
           old=("--heads",)),
    Option("--model-name", "The model's label in the results table."),
    Option("--dataset-name", "The dataset's label in the results table.", old=("--dataset",)),
    # ------------------------------------------------------------------ class embedding space (vilas2023)
    Option("--class-embeddings", "Class embeddings for a model without a classifier: a (classes, width) .npy "
                                 "matrix."),
    Option("--class-names", "With --class-embeddings: the class names, one per line."),
    Option("--class-index", "With --imagenet-s: the head's classes, one wnid per line."),
    Option("--head", "A linear head fitted on the last layer (a `vitscope probe` output folder), as class "
                     "embeddings."),
    Option("--top-memories", "Memories per class and key coefficients per token (vilas2023's k).", old=("--k",)),
    Option("--ridge-alpha", "Ridge penalty of the per-token probes.", old=("--alpha",)),
    Option("--n-random", "Number of random token orders.", old=("--random-orders",)),
    # ------------------------------------------------------------------ explanations
    Option("--samples", "SmoothGrad / VarGrad: noisy copies per image."),
    Option("--stdev", "SmoothGrad / VarGrad: noise standard deviation (normalised input units)."),
    Option("--ig-steps", "Integrated Gradients: quadrature steps.", old=("--steps",)),
    Option("--ig-baseline", "Integrated Gradients: the baseline image (black, zeros, blur, noise).",
           old=("--baseline",)),
    # ------------------------------------------------------------------ probes statistics
    Option("--comparisons", "Probe runs compared, 'a>b' pairs, comma-separated.", old=("--pairs",)),
    Option("--significance", "Significance level of the tests.", old=("--alpha",)),
    Option("--probe", "Probe kinds: linear, attentive or both.", short="-p", old=("--probes",)),
    # ------------------------------------------------------------------ sparse autoencoders
    Option("--active-latents", "Active latents per token of TopK-style SAEs (their k); a grid.", old=("--k",)),
    # ------------------------------------------------------------------ figures and output
    Option("--out", "Output folder (video: the output file).", short="-o"),
    Option("--formats", "Figure formats, comma-separated: png, pdf, svg."),
    Option("--quiet", "No progress bars or messages, only the summary line.", short="-q"),
    Option("--json", "Print JSON instead of text."),
    Option("--cmap", "Matplotlib colour map."),
    Option("--opacity", "Opacity of a map over its image (0-1).", old=("--alpha",)),
    Option("--head-fusion", "How the heads' maps are fused: mean, max, min (or sum).", old=("--fusion",)),
    Option("--map-scaling", "How a relevance map is scaled for drawing: max, minmax or none.",
           old=("--normalize",)),
    Option("--token-grid", "Token grid 'rows,cols' (default: the model's).", old=("--grid",)),
    Option("--parts", "Parts of the synthetic benchmark written, comma-separated.", old=("--formats",)),
    # ------------------------------------------------------------------ one command each, with a short flag
    Option("--family", "Only the models of this family.", short="-f"),
    Option("--jobs", "Cells run at once (local launcher).", short="-j"),
)

# commands that do no torch work: they get no --threads
NO_THREADS = frozenset({"models", "synth", "check-data", "results", "probe-stats", "run"})


def lookup(name: str) -> Option | None:
    """The table entry whose name or negation is ``name`` (None: an option of one command, not in the table)."""
    return _BY_NAME.get(name)


def canonical(param) -> str:
    """The long name an option is shown and documented under: its first ``--`` spelling."""
    return next((o for o in [*param.opts, *param.secondary_opts] if o.startswith("--")), param.opts[0])


def old_spellings(param) -> list[str]:
    """The spellings of ``param`` (a click option) that the table lists as old: accepted, hidden from help."""
    entry = lookup(canonical(param))
    if entry is None:
        return []
    return [o for o in [*param.opts, *param.secondary_opts] if o in entry.old]


def commands(app):
    """Every leaf command of the typer ``app`` as (command path, click command), in help order."""
    import typer.main

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, (*path, name))
        else:
            yield " ".join(path), cmd

    return list(walk(typer.main.get_command(app), ()))


def options_of(cmd) -> list:
    """The options (not arguments) of a click command, the --help option excepted."""
    return [p for p in cmd.params if getattr(p, "param_type_name", "") == "option" and p.name != "help"]


def markdown(app) -> str:
    """``docs/options.md``: the table of ``OPTIONS`` with the commands that take each option and where its old
    spellings are still accepted (``scripts/make_options_table.py`` writes it)."""
    cmds = commands(app)
    takes: dict[str, list[str]] = {o.name: [] for o in OPTIONS}
    old_in: dict[tuple[str, str], list[str]] = {}
    for name, cmd in cmds:
        for p in options_of(cmd):
            entry = lookup(canonical(p))
            if entry is None:
                continue
            if name not in takes[entry.name]:
                takes[entry.name].append(name)
            for o in old_spellings(p):
                old_in.setdefault((entry.name, o), []).append(name)
    every = [n for n, _ in cmds]

    def which(names: list[str]) -> str:
        rest = [n for n in every if n not in names]
        if len(names) > 2 * len(every) // 3:
            return "all but " + ", ".join(rest) if rest else "all"
        return ", ".join(names)

    def code(*names: str) -> str:
        return " / ".join(f"`{n}`" for n in names if n)

    rows = []
    for o in OPTIONS:
        old = "; ".join(f"`{s}` ({', '.join(old_in[(o.name, s)])})" for s in o.old if (o.name, s) in old_in)
        rows.append(f"| {code(o.name, o.negation)} | {code(o.short)} | {o.meaning} | {which(takes[o.name])} | {old} |")
    return "\n".join([
        "# Command-line options",
        "",
        "One meaning per option name, whatever the command: the table lists every option that several commands take,",
        "every short flag and every renamed option. Old spellings still work but are left out of `--help`; an old",
        "spelling keeps its old meaning only in the commands listed beside it (`vitscope attention -b 3` is still",
        "`--block 3`, while `-b` is `--batch-size` everywhere else). An option of a single command is described by",
        "that command's `--help`. Most messages about a renamed option name it the way you typed it.",
        "",
        "This page is written by `python scripts/make_options_table.py` from `src/vitscope/cli/options_table.py`;",
        "`tests/unit/test_cli_conventions.py` checks every command against the table and this page against both.",
        "",
        "| option | short | meaning | commands | old spellings (still accepted in) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Units of the tables: accuracies are percentages in `knn`, `retrieval`, `keypoints`, `memories` and `ablate`",
        "(as DINO, revisitop, SPair and vilas2023 print them) and fractions (0-1) in `probe`, `probe-e2e`,",
        "`probe-tokens`, `removal`, `logit-lens` and `perturb`, whose summary lines print them in percent; each",
        "command's `--help` says which.",
        "",
    ])


_BY_NAME = {n: o for o in OPTIONS for n in (o.name, o.negation) if n}
