"""Metrics of the class embedding space (vilas2023, reference sections 12-15).

- rank of the true class = number of classes with a **strictly** larger logit (ties count in the true class's
  favour); identifiability score = 1 - rank / C (best 1, worst 1/C); a token is "identifiable" at rank 0;
- token rate (per image, the share of patch tokens with rank 0, averaged over images) and image rate (share of
  images with at least one rank-0 patch token);
- evolution over blocks for CLS and patch tokens against the random-weight model (one-sided Wilcoxon);
- block and branch change rates, residual match (computed as the batches pass, see ``projection.LogitLens``);
- class- against context-labelled tokens with a seeded permutation test (300 permutations by default).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


# ----------------------------------------------------------------------------- ranks and scores
def class_rank(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank of ``target`` in each row of ``logits`` (..., C): the number of classes with a strictly larger logit."""
    logits = torch.as_tensor(logits)
    target = torch.as_tensor(target, device=logits.device).long()
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits (..., C) and target (...) must agree: got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    C = logits.shape[-1]
    if target.numel() and (target.min() < 0 or target.max() >= C):
        raise ValueError(f"target classes must be in [0, {C - 1}]")
    true = logits.gather(-1, target[..., None])                                   # ..., 1
    return (logits > true).sum(-1)


def identifiability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class identifiability score 1 - rank / C per row of ``logits`` (..., C) (rank: strictly larger logits)."""
    logits = torch.as_tensor(logits)
    return 1.0 - class_rank(logits, target).double() / logits.shape[-1]


def token_rate(ranks: np.ndarray) -> float:
    """Per image (row), the share of tokens (columns) with rank 0, averaged over images."""
    r = np.asarray(ranks)
    return float((r == 0).mean(axis=1).mean())


def image_rate(ranks: np.ndarray) -> float:
    """Share of images (rows) with at least one token of rank 0."""
    return float((np.asarray(ranks) == 0).any(axis=1).mean())


# ----------------------------------------------------------------------------- change rates and match (arrays)
def block_change_rate(true_prev: np.ndarray, true_cur: np.ndarray) -> float:
    """Share of (image, token) pairs whose true-class logit is strictly larger than at the previous block."""
    return float((np.asarray(true_cur) > np.asarray(true_prev)).mean())


def branch_change_rate(true_branch: np.ndarray, true_prev: np.ndarray) -> float:
    """Share with ``logit_true(branch of block b) - logit_true(block b-1 output) > 0`` (vilas2023)."""
    return float((np.asarray(true_branch) - np.asarray(true_prev) > 0).mean())


COUNT_ALIASES = {"composition_seed001": "composition_vilas2023"}      # old names: the same numbers, not in rows()


def residual_match(top_out, top_attn, top_mlp, top_prev) -> dict[str, float]:
    """Shares of tokens whose top-1 class of the block output equals that of the attention output, the MLP
    output, the previous block; "composition": differs from all three; "composition_vilas2023": differs from the
    previous block and the attention output (vilas2023's code; also under its old name, :data:`COUNT_ALIASES`)."""
    o, a, m, p = (np.asarray(t) for t in (top_out, top_attn, top_mlp, top_prev))
    vilas = float(((o != p) & (o != a)).mean())
    out = {"match_attn": float((o == a).mean()), "match_mlp": float((o == m).mean()),
           "match_prev": float((o == p).mean()),
           "composition": float(((o != p) & (o != a) & (o != m)).mean()), "composition_vilas2023": vilas}
    return {**out, **{old: out[new] for old, new in COUNT_ALIASES.items()}}


# ----------------------------------------------------------------------------- tests
def wilcoxon_greater(x: np.ndarray, y: np.ndarray) -> float:
    """One-sided Wilcoxon signed-rank p-value for ``x > y`` (paired); 1.0 when every difference is zero."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same size, got {x.size} and {y.size}")
    if not np.any(x != y):
        return 1.0
    return float(wilcoxon(x, y, alternative="greater").pvalue)


def permutation_test(values: np.ndarray, is_class: np.ndarray, n_permutations: int = 300,
                     seed: int = 0) -> tuple[float, float, np.ndarray]:
    """diff = mean(class) - mean(context); null by shuffling the pooled values ``n_permutations`` times (seeded)
    and splitting at the context count; p = share of permuted differences strictly greater (one-sided, no +1).

    Returns (diff, p, null differences)."""
    v = np.asarray(values, np.float64).ravel()
    c = np.asarray(is_class, bool).ravel()
    if v.shape != c.shape:
        raise ValueError(f"values and labels must have the same size, got {v.size} and {c.size}")
    if c.all() or not c.any():
        raise ValueError("the permutation test needs both class- and context-labelled tokens")
    n_ctx = int((~c).sum())
    diff = float(v[c].mean() - v[~c].mean())
    pooled = np.concatenate([v[~c], v[c]])                                        # context first, then class
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        s = rng.permutation(pooled)
        null[i] = s[n_ctx:].mean() - s[:n_ctx].mean()
    return diff, float((null > diff).sum() / n_permutations), null


# ----------------------------------------------------------------------------- over a LensResult
def evolution_rows(result, random_result=None, site: str = "resid", model: str = "model",
                   alpha: float = 0.05) -> list[dict]:
    """Mean identifiability per block for CLS and patch tokens; with ``random_result`` (the random-weight model on
    the same images, recorded), the random model's mean and a one-sided Wilcoxon p-value (trained > random, paired
    by image and token). Tidy rows: model, block, task, metric, value, token, site, random, p_value, significant."""
    rows = []
    for b in range(result.depth):
        kinds = result.token_kinds(b)
        for kind, pos in kinds.items():
            val = float(result.mean_score(site, b)[pos].mean())
            row = dict(model=model, block=b, task="logit_lens", metric="identifiability", value=val,
                       token=kind, site=site)
            if random_result is not None:
                rk = random_result.token_kinds(b)
                if kind in rk:
                    x = result.scores(site, b)[:, pos]
                    y = random_result.scores(site, b)[:, rk[kind]]
                    p = wilcoxon_greater(x, y)
                    row.update(random=float(random_result.mean_score(site, b)[rk[kind]].mean()), p_value=p,
                               significant=bool(p < alpha))
            rows.append(row)
    return rows


def rate_rows(result, model: str = "model", site: str = "resid", block: int = -1) -> list[dict]:
    """vilas2023's rates at one block (default: the last): token rate and image rate over patch tokens, accuracy."""
    b = block % result.depth
    out = [dict(model=model, block=b, task="logit_lens", metric="token_rate", value=result.token_rate(site, b),
                site=site, token="patches"),
           dict(model=model, block=b, task="logit_lens", metric="image_rate", value=result.image_rate(site, b),
                site=site, token="patches")]
    # the model's own logits, or the given class embeddings on the pooled last-block vector (CLS or patch mean)
    own = result.meta.get("own_head", True)
    out.append(dict(model=model, block=b, task="logit_lens", metric="accuracy", value=result.accuracy,
                    site="logits" if own else "class_embeddings", token="pooled"))
    return out


def class_context_rows(result, value: str = "score", site: str = "resid", n_permutations: int = 300,
                       seed: int = 0, model: str = "model") -> list[dict]:
    """Class- vs context-labelled patch tokens per block with the permutation test (needs recorded masks).

    ``value``: "score" (identifiability, vilas2023's ``identifiability.compute_context_diff``) or "attn_change" /
    "mlp_change" (the branch change d of block b against block b-1's output, ``mech_interp.compute_context_diff``,
    blocks 1..L-1). Each block's permutations use ``seed + block``.
    """
    masks = result.masks
    if masks is None:
        raise ValueError("class- vs context-labelled tokens need object masks: give masks to the logit lens "
                         "(the synthetic benchmark, ImageNet-S, COCO or PartImageNet have them)")
    if value not in ("score", "attn_change", "mlp_change"):
        raise ValueError(f"value must be 'score', 'attn_change' or 'mlp_change', got {value!r}")
    rows = []
    for b in range(result.depth):
        lay = result.layouts[b]
        pt = np.arange(lay.patches.start, lay.patches.stop)
        if value == "score":
            v = result.scores(site, b)[:, pt]
        else:
            if b == 0:
                continue
            br = value.split("_")[0]
            prev = result.layouts[b - 1]
            v = (result.true_logits(br, b)[:, pt]
                 - result.true_logits("resid", b - 1)[:, np.arange(prev.patches.start, prev.patches.stop)])
        c = masks
        if c.all() or not c.any():
            raise ValueError("the masks mark every token (or none) as class-labelled; the test needs both kinds")
        diff, p, _ = permutation_test(v, c, n_permutations, seed + b)
        rows.append(dict(model=model, block=b, task="logit_lens", metric=f"class_minus_context_{value}",
                         value=diff, p_value=p, class_mean=float(v[c].mean()), context_mean=float(v[~c].mean()),
                         n_class=int(c.sum()), n_context=int((~c).sum()), site=site, permutations=n_permutations,
                         seed=seed))
    return rows


def class_token_masks(dataset, indices: Sequence[int], grid: tuple[int, int], preprocess_cfg=None,
                      rule: str = "majority") -> np.ndarray:
    """(n, rows * cols) bool: the patch tokens of each image that show its class.

    The synthetic benchmark: the object (of the image's class); ImageNet-S: pixels whose id is the image's own
    category (other classes and ignore pixels count as context, vilas2023); COCO / PartImageNet: every annotated
    object. Masks follow the image's resize and crop, then go to the token grid by ``rule`` ("majority": at
    least half of the cell; "any"; "bicubic", see ``mask_to_token_grid``)."""
    from vitscope.analysis.attention.saliency import mask_to_token_grid

    source = getattr(dataset, "source", dataset)
    out = []
    for i in indices:
        m = _class_mask(source, int(i))
        out.append(mask_to_token_grid(m, grid, preprocess_cfg=preprocess_cfg, rule=rule).reshape(-1))
    return np.stack(out) if out else np.zeros((0, grid[0] * grid[1]), bool)


def _base(source, i: int):
    while hasattr(source, "base") and hasattr(source, "indices"):                  # a subset
        i, source = source.indices[i], source.base
    return source, i


def mask_kind(dataset) -> str | None:
    """Where ``dataset``'s class masks come from: "synthetic", "imagenet_s", "objects" (COCO, PartImageNet), or
    None when it has none."""
    source, _ = _base(getattr(dataset, "source", dataset), 0)
    if hasattr(source, "sample"):
        return "synthetic"
    task = getattr(source, "task", None)
    if task is not None and hasattr(task, "categories") and hasattr(task, "class_id"):
        return "imagenet_s"
    if task is not None and hasattr(task, "masks"):
        return "objects"
    return None


def _class_mask(source, i: int) -> np.ndarray:
    kind = mask_kind(source)
    source, i = _base(source, i)
    if kind == "synthetic":                                                       # synthetic shapes
        return np.asarray(source.sample(i).mask, bool)
    task = getattr(source, "task", None)
    if kind == "imagenet_s":                                                      # ImageNet-S
        s = task[i]
        if not task.categories:
            raise ValueError("ImageNet-S class masks need the categories file (ImageNetS_categories_im*.txt)")
        return s.mask() == task.class_id(s.wnid)
    if kind == "objects":                                                         # COCO, PartImageNet
        masks, _ = task.masks(i, "object")
        if not masks:
            return np.zeros((1, 1), bool)
        return np.any(np.stack([np.asarray(m, bool) for m in masks]), axis=0)
    raise ValueError(f"the dataset ({getattr(source, 'description', type(source).__name__)}) has no object masks; "
                     "use synthetic:..., ImageNet-S, COCO or PartImageNet for class- vs context-labelled tokens")
