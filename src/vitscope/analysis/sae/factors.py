"""SAE latents against the synthetic benchmark's generating factors: did the SAE find monosemantic features?

Every patch token of an image of the synthetic benchmark gets ground truth from the generator (``sample(i)``):

* ``object``     the patch is at least half covered by the object
* ``shape=<c>``  an object patch of a shape of class c
* ``part=<p>``   an object patch whose pixels are mostly of part p (right, top, left, bottom)
* ``colour=<r|g|b>`` an object patch whose object's mean colour is mostly red, green or blue
* ``texture=<k>`` a background patch (no object pixel) on a background of kind k (gradient, stripes, noise,
  checker)
* ``position=<q>`` an object patch of an object centred in image quadrant q (top-left, ...)

Each concept is a binary label over patches. For a basis of units (the SAE's latents, the raw neurons of the
stream, or as many random unit directions of the SAE's input as the SAE has latents; for an SAE of centred patch
tokens also the neurons of that input) we report the **best unit's AUROC** and the
**number of units needed to reach AUROC 0.9** with a linear probe (shrinkage LDA) on the units ranked best on a
train half (by their AUROC there), measured on the other half (1, 2, 4, ... 64; NaN when 64 do not reach it). SAE
latents are non-negative, so their AUROC is taken as is (a latent detects a concept by firing); raw neurons and
random directions have no sign, so each gets max(AUROC, 1 - AUROC), the benefit of the doubt.

Each basis also gets the **probe's AUROC on its 64 best units** (all of them when it has fewer), on the held-out half.
For the raw neurons of a stream of width <= 64 this is the stream's **linear ceiling**: a ReLU or JumpReLU latent is
a non-decreasing function of one direction of the stream, so its AUROC is at most that direction's, and a concept no
linear probe reads well (below 0.9) cannot have such a latent at 0.9 either. (TopK latents also depend on which
other latents win the selection, so they can in principle exceed it.)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

FACTORS = ("shape", "colour", "texture", "object", "part", "position")
PART_NAMES = ("right", "top", "left", "bottom")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
SIZES = (1, 2, 4, 8, 16, 32, 64)


def background_kind(cfg, split: str, i: int) -> str:
    """The background pattern of synthetic image ``i``: the generator's first two draws replayed
    (``render.background`` draws the base colour, then the kind)."""
    from vitscope.data.synthetic.config import SPLITS
    from vitscope.data.synthetic.render import BACKGROUNDS

    rng = cfg.rng(SPLITS[split], i)
    rng.uniform(0.2, 0.8, size=3)
    return BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]


def _pool(a: np.ndarray, g: int) -> np.ndarray:
    """(S, S[, c]) -> (g, g[, c]) block means (S resampled to a multiple of g by nearest neighbour first)."""
    s = a.shape[0]
    if s % g:
        idx = (np.arange(g * (s // g + 1)) * s // (g * (s // g + 1)))
        a = a[idx][:, idx]
        s = a.shape[0]
    f = s // g
    return a.reshape(g, f, g, f, *a.shape[2:]).mean((1, 3))


def patch_concepts(source, indices: Sequence[int], grid: int) -> dict[str, tuple[str, np.ndarray]]:
    """``{concept: (factor, bool (len(indices) * grid * grid,))}`` for the patches of synthetic images, row-major
    over each image's ``grid`` x ``grid`` patches (the store's ``patches`` order)."""
    from vitscope.data.synthetic.render import BACKGROUNDS

    cols = {}
    n = len(indices) * grid * grid
    lab = {f"shape={c}": ("shape", np.zeros(n, bool)) for c in source.classes}
    lab.update({f"part={p}": ("part", np.zeros(n, bool)) for p in PART_NAMES})
    lab.update({f"colour={c}": ("colour", np.zeros(n, bool)) for c in ("red", "green", "blue")})
    lab.update({f"texture={k}": ("texture", np.zeros(n, bool)) for k in BACKGROUNDS})
    lab.update({f"position={q}": ("position", np.zeros(n, bool)) for q in QUADRANTS})
    lab["object"] = ("object", np.zeros(n, bool))
    for j, i in enumerate(indices):
        s = source.sample(int(i))
        sl = slice(j * grid * grid, (j + 1) * grid * grid)
        cover = _pool(s.mask.astype(float), grid).ravel()
        obj = cover >= 0.5
        bg = cover == 0
        lab["object"][1][sl] = obj
        lab[f"shape={source.classes[s.label]}"][1][sl] = obj
        parts = np.stack([_pool((s.parts == p).astype(float), grid).ravel() for p in range(4)], 1)
        best = parts.argmax(1)
        for p, name in enumerate(PART_NAMES):
            lab[f"part={name}"][1][sl] = obj & (best == p)
        colour = s.image[s.mask].astype(float).mean(0) if s.mask.any() else np.zeros(3)
        lab[f"colour={('red', 'green', 'blue')[int(colour.argmax())]}"][1][sl] = obj
        lab[f"texture={background_kind(source.cfg, source.split, int(i))}"][1][sl] = bg
        size = s.mask.shape[0]
        q = 2 * int(s.pose.cy >= size / 2) + int(s.pose.cx >= size / 2)
        lab[f"position={QUADRANTS[q]}"][1][sl] = obj
    for k, (f, v) in lab.items():
        if 0 < v.sum() < n:
            cols[k] = (f, v)
    return cols


def auroc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores`` (N, U) for binary labels ``y`` (N,): the Mann-Whitney statistic with
    average ranks for ties."""
    from scipy.stats import rankdata

    return auroc_from_ranks(rankdata(scores, axis=0), y)


def auroc_from_ranks(ranks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`auroc` from the columns' average ranks (``scipy.stats.rankdata(scores, axis=0)``), which do not depend
    on the labels: rank once, score every concept."""
    y = np.asarray(y, bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        raise ValueError("AUROC needs positive and negative samples")
    return (ranks[y].sum(0) - npos * (npos + 1) / 2) / (npos * nneg)


def halves(n: int, seed: int = 0, max_rows: int = 8000) -> tuple[np.ndarray, np.ndarray]:
    """The probe's seeded half / half split of ``n`` patches: (train rows, held-out rows), at most ``max_rows`` each."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm[: n // 2][:max_rows], perm[n // 2:][:max_rows]


def _probe_rows(scores: np.ndarray, y: np.ndarray, order: np.ndarray, seed: int, n: int, max_rows: int):
    """(train x, held-out x, train y, held-out y) over the ``n`` best-ranked units, or None when the train half holds
    fewer than two patches of a class (no class covariance to fit) or the held-out half one class only."""
    tr, te = halves(len(y), seed, max_rows)
    if min(int(y[tr].sum()), int((~y[tr]).sum())) < 2 or y[te].all() or not y[te].any():
        return None
    top = order[:n]
    return (scores[tr][:, top].astype(np.float64), scores[te][:, top].astype(np.float64), y[tr], y[te])


def _probe_auroc(xtr, xte, ytr, yte, n: int) -> float:
    """Held-out AUROC of Fisher's linear discriminant with Ledoit-Wolf shrinkage on the first ``n`` columns."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import roc_auc_score

    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(xtr[:, :n], ytr)
    return float(roc_auc_score(yte, lda.decision_function(xte[:, :n])))


def probe_scores(scores: np.ndarray, y: np.ndarray, order: np.ndarray, seed: int = 0, target: float = 0.9,
                 sizes: Sequence[int] = SIZES, max_rows: int = 8000) -> tuple[float, float]:
    """(units needed, probe AUROC on the most units): the fewest of the best-ranked units (``order``) whose linear
    probe reaches ``target`` AUROC on held-out patches (a seeded half / half split, at most ``max_rows`` each; NaN
    when none does), and the held-out AUROC of the probe on the ``max(sizes)`` best units, all of them when there
    are fewer (NaN when a half is too small: :func:`_probe_rows`). Each size is fitted once.

    The probe is Fisher's linear discriminant with Ledoit-Wolf shrinkage (scikit-learn's
    ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``): closed form, so every prefix of every concept
    costs one small solve instead of an iterative fit."""
    top = min(max(sizes), scores.shape[1])
    rows = _probe_rows(scores, y, order, seed, top, max_rows)
    if rows is None:
        return float("nan"), float("nan")
    needed, got = float("nan"), {}
    for n in sizes:
        if n > scores.shape[1]:
            break
        got[n] = _probe_auroc(*rows, n)
        if got[n] >= target:
            needed = float(n)
            break
    return needed, got[top] if top in got else _probe_auroc(*rows, top)


def units_needed(scores: np.ndarray, y: np.ndarray, order: np.ndarray, seed: int = 0, target: float = 0.9,
                 sizes: Sequence[int] = SIZES, max_rows: int = 8000) -> float:
    """The first half of :func:`probe_scores`: the fewest best-ranked units whose probe reaches ``target``."""
    return probe_scores(scores, y, order, seed, target, sizes, max_rows)[0]


def probe_auroc(scores: np.ndarray, y: np.ndarray, order: np.ndarray, seed: int = 0, units: int = max(SIZES),
                max_rows: int = 8000) -> float:
    """Held-out AUROC of the linear probe of :func:`probe_scores` on the ``units`` best-ranked units (all of them
    when there are fewer); NaN when a half is too small (:func:`_probe_rows`). On the raw neurons of a stream no
    wider than ``units`` it is the stream's linear ceiling for the concept."""
    return probe_scores(scores, y, order, seed, target=float("inf"), sizes=(units,), max_rows=max_rows)[1]


def factor_scores(bases: dict[str, tuple[np.ndarray, bool]], concepts: dict[str, tuple[str, np.ndarray]],
                  seed: int = 0, sizes: Sequence[int] = SIZES) -> list[dict]:
    """Rows ``{basis, factor, concept, best_auroc, best_unit, units_to_0.9, probe_auroc, positives}`` for every basis
    ``{name: (scores (N, U), signed)}`` and concept; ``signed`` False takes max(AUROC, 1 - AUROC)."""
    rows = []
    for basis, (scores, signed) in bases.items():
        from scipy.stats import rankdata

        scores = np.asarray(scores, dtype=np.float32)
        ranks = rankdata(scores, axis=0)
        tr, _ = halves(len(scores), seed)
        ranks_tr = rankdata(scores[tr], axis=0)
        for concept, (factor, y) in concepts.items():
            a, a_tr = (_orient(auroc_from_ranks(r, yy), signed) if yy.any() and not yy.all()
                       else np.full(scores.shape[1], 0.5) for r, yy in ((ranks, y), (ranks_tr, y[tr])))
            best = int(np.argmax(a))
            order = np.argsort(-a_tr, kind="stable")      # the probe's units: ranked on its train half only
            rows.append({"basis": basis, "factor": factor, "concept": concept, "best_auroc": float(a[best]),
                         "best_unit": best, "positives": int(y.sum()),
                         **dict(zip(("units_to_0.9", "probe_auroc"), probe_scores(scores, y, order, seed,
                                                                                   sizes=sizes)))})
    return rows


def _orient(a: np.ndarray, signed: bool) -> np.ndarray:
    """AUROCs as scored: as they are for non-negative units, max(AUROC, 1 - AUROC) for unsigned ones."""
    a = np.nan_to_num(a, nan=0.5)
    return a if signed else np.maximum(a, 1 - a)


@torch.no_grad()
def factor_bases(model, sae, images: torch.Tensor, block: int, seed: int = 0, batch_size: int = 64
                 ) -> dict[str, tuple[np.ndarray, bool]]:
    """The patch activations of ``images`` at the SAE's site in ``block`` (``blocks.{block}.hook_resid_post``, ...) in
    three bases: the SAE's latents, the raw neurons, and random unit directions of the SAE's input (as many as the SAE
    has latents). An SAE of centred patch tokens (``centre="image"``) adds a fourth, ``centred_neurons``: the neurons
    of its input (each patch less its image's mean), so that a latent is compared with the neurons it reads too."""
    from vitscope.analysis.sae.hooks import block_token_acts, check_width, input_tokens, site_hook

    check_width(sae, model)
    centred = input_tokens(sae) == "centred"
    acts = block_token_acts(model, images, block, ("patches", "centred") if centred else ("patches",), batch_size,
                            site_hook(sae, block))
    x = acts["patches"]
    xin = acts["centred"] if centred else x
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(x.shape[1], sae.cfg.width, generator=gen)
    r /= r.norm(dim=0, keepdim=True)
    out = {"sae": (sae.encode(xin).numpy(), True), "neurons": (x.numpy(), False),
           "random": ((xin @ r).numpy(), False)}
    if centred:
        out["centred_neurons"] = (xin.numpy(), False)
    return out


def concept_split(scores: np.ndarray, concepts: dict[str, tuple[str, np.ndarray]], concept: str, top: int = 6,
                  by: Sequence[str] = ("shape", "colour")):
    """How the best units of ``concept`` share it out, to tell a split feature from a missing one.

    For the ``top`` units by AUROC (``scores`` (N, U): SAE latents, scored as they are), a tidy frame with one row per
    unit and group: ``group`` is ``positives`` or ``negatives`` of the concept, or ``<concept of a factor in by>``
    for the positives that also carry it (``shape=circle``, ...), and ``fires`` the fraction of that group's patches
    on which the unit is active (score > 0). Columns: ``concept``, ``unit``, ``rank``, ``auroc``, ``group``,
    ``patches``, ``fires``. A latent firing on nearly every patch (positives and negatives) ranks by its magnitude,
    as a dense neuron does; latents each firing on one shape's or colour's share of the positives are the concept
    split into conjunctions."""
    import pandas as pd

    if concept not in concepts:
        raise ValueError(f"unknown concept {concept!r}; the data has: {', '.join(sorted(concepts))}")
    y = concepts[concept][1]
    scores = np.asarray(scores)
    if len(y) != len(scores):
        raise ValueError(f"{len(scores)} rows of scores for {len(y)} patches of the concepts")
    a = np.nan_to_num(auroc(scores, y), nan=0.5)
    groups = {"positives": y, "negatives": ~y}
    groups.update({c: y & v for c, (f, v) in concepts.items() if f in by and c != concept and (y & v).any()})
    rows = []
    for rank, u in enumerate(np.argsort(-a, kind="stable")[:top]):
        active = scores[:, u] > 0
        for g, m in groups.items():
            rows.append({"concept": concept, "unit": int(u), "rank": rank, "auroc": float(a[u]), "group": g,
                         "patches": int(m.sum()), "fires": float(active[m].mean())})
    return pd.DataFrame(rows)
