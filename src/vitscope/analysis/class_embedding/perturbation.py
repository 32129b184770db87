"""Attention and token perturbations measured in class space (vilas2023, reference sections 17-18).

- ``self_only`` / ``no_cls`` in every block (``vitscope.hooks.attention_perturbation``): the share of tokens of the
  last block output whose true class is rank 0, against the unperturbed model;
- token dropping (``vitscope.hooks.drop_patches``): keep only the class-labelled patches ("no_context") or only the
  context patches ("no_class"); the share of the remaining tokens with rank 0, against the unperturbed share of the
  same kind of patches (pooled).

Rates count patch tokens (decision 3); ``tokens="all"`` counts CLS and the other prefix tokens too, as vilas2023's
perturbed numbers do.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vitscope.analysis.api import OptionError, Result, data_label, tidy_table
from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings
from vitscope.analysis.class_embedding.inputs import MASK_RULES, ClassSpaceOptions
from vitscope.analysis.class_embedding.metrics import class_rank
from vitscope.analysis.class_embedding.projection import ClassProjection, resolve_projection

ATTENTION_KINDS = ("none", "self_only", "no_cls")
TOKEN_KINDS = ("no_context", "no_class")
TOKEN_SETS = ("patches", "all")
KEEP_RULES = ("mixed", "vilas2023")


def last_block_ranks(model, images: torch.Tensor, labels: torch.Tensor, projection: ClassProjection,
                     hooks: Sequence = ()) -> torch.Tensor:
    """(B, T) rank of the true class at every token of the last block output, with ``hooks`` applied."""
    got: dict[str, torch.Tensor] = {}

    def fn(act: torch.Tensor, hook) -> None:                                          # B, T, D
        logits = projection(act)
        got["rank"] = class_rank(logits, labels[:, None].to(logits.device).expand(logits.shape[:2]))

    name = f"blocks.{model.cfg.depth - 1}.hook_resid_post"
    with torch.inference_mode():
        model.run_with_hooks(images.to(model.device, model.dtype), fwd_hooks=list(hooks) + [(name, fn)])
    return got["rank"].cpu()


def _token_index(model, T: int, tokens: str) -> torch.Tensor:
    """Positions of the patch tokens (``tokens="patches"``) or of every token, at the output of a model whose
    sequence has ``T`` tokens there (fewer patches after dropping)."""
    lay = model.token_layout(model.cfg.depth)
    if tokens == "all":
        return torch.arange(T)
    n_patch = T - (lay.n_tokens - lay.n_patches)
    return torch.arange(lay.patches.start, lay.patches.start + n_patch)


def _check(model, labels, C: int, tokens: str) -> torch.Tensor:
    if tokens not in TOKEN_SETS:
        raise ValueError(f"tokens must be one of {TOKEN_SETS}, got {tokens!r}")
    labels = torch.as_tensor(labels).long().flatten()
    if (labels < 0).any():
        raise ValueError("the images have no class labels; perturbations are measured on labelled images")
    if (labels >= C).any():
        raise ValueError(f"label {int(labels.max())} is outside the head's {C} classes (0..{C - 1})")
    return labels


def attention_perturbation_rows(model, batches: Iterable, kinds: Sequence[str] = ATTENTION_KINDS,
                                projection: ClassProjection | ClassEmbeddings | None = None,
                                blocks: Sequence[int] | None = None,
                                tokens: str = "patches", model_name: str = "model",
                                progress: bool = False) -> list[dict]:
    """Share of tokens of the last block whose true class is rank 0, unperturbed ("none") and under each attention
    perturbation in ``blocks`` (default: every block). Per image the share of ``tokens``, averaged over images;
    also the model's accuracy under each perturbation. ``batches``: ``(images, labels, ...)`` tuples."""
    from vitscope.hooks import attention_perturbation

    proj = resolve_projection(model, projection)
    bad = [k for k in kinds if k not in ATTENTION_KINDS]
    if bad:
        raise ValueError(f"unknown perturbation {bad}; expected among {ATTENTION_KINDS}")
    hooks = {k: ([] if k == "none" else attention_perturbation(model, k, blocks)) for k in kinds}
    share = {k: 0.0 for k in kinds}
    correct = {k: 0 for k in kinds}
    n = 0
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="attention perturbations", unit="batch")
    own_head = proj.own_head
    for batch in it:
        x, y = batch[0], _check(model, batch[1], proj.num_classes, tokens)
        n += len(y)
        for k in kinds:
            logits_out: dict = {}
            hk = list(hooks[k])
            if own_head:
                hk.append(("hook_logits", lambda t, hook, d=logits_out: d.__setitem__("l", t)))
            r = last_block_ranks(model, x, y, proj, hk)
            idx = _token_index(model, r.shape[1], tokens)
            share[k] += float((r[:, idx] == 0).double().mean(1).sum())
            if own_head:
                correct[k] += int((logits_out["l"].argmax(-1).cpu() == y).sum())
    if n == 0:
        raise ValueError("no images to perturb")
    blk = "all" if blocks is None else ",".join(str(b) for b in blocks)
    rows = []
    for k in kinds:
        rows.append(dict(model=model_name, block=model.cfg.depth - 1, task="perturbation", metric="identifiable_rate",
                         value=share[k] / n, perturbation=k, tokens=tokens, blocks=blk, n_images=n))
        if own_head:
            rows.append(dict(model=model_name, block=model.cfg.depth - 1, task="perturbation", metric="accuracy",
                             value=correct[k] / n, perturbation=k, tokens="pooled", blocks=blk, n_images=n))
    return rows


def token_drop_rows(model, batches: Iterable, projection: ClassProjection | ClassEmbeddings | None = None,
                    tokens: str = "patches", model_name: str = "model", progress: bool = False,
                    keep: str = "mixed") -> list[dict]:
    """vilas2023's token perturbations. ``batches``: ``(images, labels, masks)`` with ``masks`` (B, N_patch) bool
    marking the class-labelled patches (see ``metrics.class_token_masks``).

    Rows: "no_context" (only class-labelled patches kept) with its baseline, the unperturbed rank-0 share of the
    class-labelled patches (pooled); "no_class" (only context patches kept) against the unperturbed context
    patches. ``n_images`` says how many images count in each row.

    ``keep``: which images count. "mixed" (default): those with both class-labelled and context patches; an image
    whose mask marks every patch (or none) is left out of both rows and both baselines, since one of its two
    perturbations would remove every patch and the other none. "vilas2023": every image, as vilas2023's code: a
    perturbation that removes every patch runs on the prefix tokens (CLS) alone, one that removes none is the
    unperturbed model, and the baselines pool the patches of all images. With ``tokens="patches"`` an image left
    without a patch token has nothing to count and stays out of that row's mean (``tokens="all"`` counts its CLS,
    as vilas2023's rates do).
    """
    from vitscope.hooks import drop_patches

    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be one of {KEEP_RULES}, got {keep!r}")
    proj = resolve_projection(model, projection)
    lay = model.token_layout(model.cfg.depth)
    lay0 = model.token_layout(0)
    prefix_at_input = lay0.n_tokens - lay0.n_patches                  # tokens left when every patch is dropped
    acc = {k: [0.0, 0] for k in TOKEN_KINDS}                # sum of per-image shares, images
    base = {"no_context": [0, 0], "no_class": [0, 0]}         # pooled rank-0 tokens, tokens
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="token perturbations", unit="batch")
    for batch in it:
        if len(batch) < 3:
            raise ValueError("token perturbations need object masks with the images: (images, labels, masks)")
        x, y = batch[0], _check(model, batch[1], proj.num_classes, tokens)
        m = torch.as_tensor(np.asarray(batch[2]) if not isinstance(batch[2], torch.Tensor) else batch[2]).bool()
        m = m.reshape(len(y), -1)
        if m.shape[1] != lay.n_patches:
            raise ValueError(f"masks have {m.shape[1]} cells per image but the model sees {lay.n_patches} patch "
                             f"tokens ({lay.grid[0]}x{lay.grid[1]}); resize the masks to the token grid")
        ok = m.any(1) & (~m).any(1) if keep == "mixed" else torch.ones(len(m), dtype=torch.bool)
        if not ok.any():
            continue
        x, y, m = x[ok], y[ok], m[ok]
        r = last_block_ranks(model, x, y, proj)                                      # B, T
        pr = r[:, lay.patches]
        base["no_context"][0] += int((pr[m] == 0).sum())
        base["no_context"][1] += int(m.sum())
        base["no_class"][0] += int((pr[~m] == 0).sum())
        base["no_class"][1] += int((~m).sum())
        for kind, drop in (("no_context", ~m), ("no_class", m)):
            n_keep = (~drop).sum(1)
            for kept in n_keep.unique().tolist():                                   # same count -> one batch
                if kept == 0 and (tokens == "patches" or prefix_at_input == 0):
                    continue                                                        # no token left to count
                sel = n_keep == kept
                rr = last_block_ranks(model, x[sel], y[sel], proj, drop_patches(model, drop[sel]))
                idx = _token_index(model, rr.shape[1], tokens)
                acc[kind][0] += float((rr[:, idx] == 0).double().mean(1).sum())
                acc[kind][1] += int(sel.sum())
    rows = []
    for kind in TOKEN_KINDS:
        s, n = acc[kind]
        bs, bn = base[kind]
        rows.append(dict(model=model_name, block=model.cfg.depth - 1, task="perturbation",
                         metric="identifiable_rate", value=s / n if n else float("nan"), perturbation=kind,
                         tokens=tokens, baseline=bs / bn if bn else float("nan"),
                         baseline_tokens="class" if kind == "no_context" else "context", n_images=n))
    return rows


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class PerturbationOptions(ClassSpaceOptions):
    """Options of :func:`evaluate` (``vitscope perturb``, the report's ``perturbation`` section)."""

    attention: tuple[str, ...] = ("self_only", "no_cls")   # attention perturbations in every block of `blocks`
    token_drop: bool = True                # also drop context or object tokens (needs object masks)
    tokens: str = "patches"                # tokens counted: patches, or all (CLS included, vilas2023)
    blocks: str | None = None              # perturbed blocks: None (all), "0,3,-1" or "2:4"
    mask_rule: str = "majority"            # object masks to the token grid

    def validate(self) -> None:
        super().validate()
        v = self.attention
        items = [s.strip() for s in v.split(",")] if isinstance(v, str) else list(v or ())
        items = [s for s in items if s and s != "none"]
        bad = [s for s in items if s not in ATTENTION_KINDS]
        if bad:
            raise OptionError("attention", f"`attention` takes {', '.join(ATTENTION_KINDS[1:])}, got {v!r}")
        self.attention = tuple(dict.fromkeys(items))
        self.check_choice("tokens", TOKEN_SETS)
        self.check_choice("mask_rule", MASK_RULES)
        if isinstance(self.blocks, (list, tuple)):
            self.blocks = ",".join(str(int(b)) for b in self.blocks)
        self.check_blocks("blocks")


def evaluate(models, data=None, options: PerturbationOptions | None = None, **overrides) -> Result:
    """vilas2023's perturbation tables: identifiable tokens at the last block unperturbed, with ``self_only`` /
    ``no_cls`` attention in the chosen blocks, and with the context or the object tokens dropped (when the images
    have object masks). Rows: ``model, block, metric (identifiable_rate, accuracy), value`` with ``perturbation``,
    ``tokens``, ``baseline``, ``n_images``; ``figures()`` draws the bars per model."""
    from vitscope.analysis.class_embedding import inputs as I
    from vitscope.features.access import resolve_blocks

    opts = I.options_of(PerturbationOptions, options, overrides)
    kinds = ["none", *opts.attention]
    rows, summary, notes, ds, classes = [], [], [], None, {}
    for label, model in I.as_models(models).items():
        emb = I.class_embeddings(model, label, opts)
        classes[label] = emb.num_classes if emb is not None else model.cfg.num_classes
        ds = I.labelled_dataset(data, model, opts)
        I.check_classes(model, ds, emb, names_given=opts.class_index is not None)
        blk = None if opts.blocks is None else resolve_blocks(model, opts.blocks, "mean")
        rule = opts.mask_rule if opts.token_drop and I.has_class_masks(ds) else None
        if opts.token_drop and rule is None and not notes:
            notes.append("the dataset has no object masks; token dropping is left out")
        mine = attention_perturbation_rows(
            model, ((b[0][0], b[1]) for b in I.labelled_batches([model], ds, opts)), kinds, projection=emb,
            blocks=blk, tokens=opts.tokens, model_name=label)
        if rule is not None:
            mine += token_drop_rows(
                model, ((b[0][0], b[1], b[3]) for b in I.labelled_batches([model], ds, opts, rule)),
                projection=emb, tokens=opts.tokens, model_name=label)
        rows += mine
        rate = {r["perturbation"]: r["value"] for r in mine if r["metric"] == "identifiable_rate"}
        summary.append(f"{label}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rate.items()))
    table = tidy_table(rows, "perturbation", opts, dataset=getattr(ds, "description", None))
    counts = {r["model"]: r["n_images"] for r in rows if r.get("perturbation") == "none"}
    return Result("perturbation", table, "identifiable tokens at the last block: " + "; ".join(summary), opts,
                  meta={"dataset": ds, "notes": notes, "num_classes": classes,
                        "context": {"data": data_label(data) or data_label(ds), "n_images": counts}}, draw=_draw)


def _draw(result: Result) -> dict:
    from vitscope.runtime import slug
    from vitscope.viz.class_embedding import plot_perturbation

    tokens, classes = result.options.tokens, result.meta.get("num_classes", {})
    return {f"{slug(label)}/perturbation": (plot_perturbation(
        part, title=result.titled(f"{label}: identifiable tokens ({tokens})", label),
        chance=100 / classes[label] if classes.get(label) else None), part)
            for label, part in result.table.groupby("model", sort=False)}
