"""Image retrieval on Revisited Oxford 5k / Paris 6k (and the synthetic benchmark's Revisited-style set).

Scoring is revisitop's ``compute_map`` (the one DINO and walmer2023 copy):

- protocols (positives / ignored): easy: easy / junk + hard; medium: easy + hard / junk; hard: hard / junk + easy;
- per query, each positive's position p in the ranking drops by the number of ignored items ranked strictly
  before it (its rank r once ignored items are removed); AP = sum_i [(p0_i + p1_i) / 2] / n over the retrieved
  positives in rank order, p0_i = i / r_i (1 when r_i = 0), p1_i = (i + 1) / (r_i + 1), n = number of positives;
- mP@k is not standard precision: with 1-based ranks R_i and k' = min(k, max_i R_i), P@k = #{R_i <= k'} / k'
  (positives at ranks 1 and 2 only give P@5 = P@10 = 1);
- queries without positives under the protocol are skipped (NaN per query) in both means.

Differences from revisitop, each for inputs it does not handle: a query that retrieves none of its positives (a
truncated ranking) gets P@k = 0 where revisitop raises; when no query has a positive the means are NaN.

Descriptors (:func:`image_descriptors`): the CLS token of each block, the image thumbnailed to ``imsize``
(longer side, aspect kept, never enlarged, Lanczos) as DINO does, or the model's own resize + centre crop as
walmer2023 does (``preprocess="model"``); optionally the mean over the scales 1, 1/sqrt 2, 1/2 (DINO's
``multi_scale``: bilinear ``interpolate``, ``align_corners=False``). Queries are cropped to their box by
default (the protocol, revisitop's example); DINO and walmer2023 do not crop (``crop=False``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitscope.analysis.api import Options, OptionError, Result, tidy_table
from vitscope.data.tasks.revisited import crop_to_box  # noqa: F401  (queries cropped to their box)
from vitscope.features.access import TOKENS

PROTOCOLS = ("easy", "medium", "hard")
KAPPAS = (1, 5, 10)
SCALES = (1.0, 1 / math.sqrt(2), 0.5)
PREPROCESS = ("thumbnail", "model")


# ----------------------------------------------------------------------------- ground truth
def _ids(v) -> np.ndarray:
    if v is None:
        return np.zeros(0, np.int64)
    a = np.asarray(v)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(a == np.round(a)):
            raise ValueError(f"ground-truth indices must be integers, got {a.dtype}")
    return a.astype(np.int64).reshape(-1)


def protocol_sets(query: Any, protocol: str = "medium") -> tuple[np.ndarray, np.ndarray]:
    """(positives, ignored) database indices of one query under ``protocol``.

    ``query``: a dict with ``easy`` / ``hard`` / ``junk`` (a ``gnd`` entry), a dict with ``ok`` / ``junk``
    (revisitop's per-protocol form, used as given), or a :class:`~vitscope.data.tasks.RevisitedQuery`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    get = query.get if isinstance(query, Mapping) else (lambda k, d=None: getattr(query, k, d))
    if isinstance(query, Mapping) and "ok" in query:
        return _ids(query["ok"]), _ids(query.get("junk"))
    easy, hard, junk = _ids(get("easy")), _ids(get("hard")), _ids(get("junk"))
    if protocol == "easy":
        return easy, np.concatenate([junk, hard])
    if protocol == "medium":
        return np.concatenate([easy, hard]), junk
    return hard, np.concatenate([junk, easy])


# ----------------------------------------------------------------------------- scores
def average_precision(positions: np.ndarray, n_positives: int) -> float:
    """Trapezoidal AP of positives found at 0-based ``positions`` (ignored items already removed, ascending)."""
    r = np.asarray(positions, dtype=np.float64)
    i = np.arange(len(r), dtype=np.float64)
    p0 = np.where(r == 0, 1.0, i / np.where(r == 0, 1.0, r))
    p1 = (i + 1) / (r + 1)
    return float(np.sum((p0 + p1) / 2.0) / n_positives)


def _check_ranks(ranks, n_queries: int) -> np.ndarray:
    r = np.asarray(ranks.cpu() if hasattr(ranks, "cpu") else ranks)
    if r.ndim != 2:
        raise ValueError(f"ranks must be (n_db, n_queries), got shape {r.shape}")
    if r.shape[1] != n_queries:
        raise ValueError(f"ranks has {r.shape[1]} columns (queries) but gnd has {n_queries} entries; ranks is "
                         f"(n_db, n_queries), e.g. rank_database(db, queries)")
    if r.size and not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"ranks must hold integer database indices, got {r.dtype}")
    return r


def revisited_per_query(ranks, gnd: Sequence[Any], protocol: str = "medium",
                        kappas: Sequence[int] = KAPPAS) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP (n_q,) and mP@k (n_q, len(kappas)); NaN rows for queries without positives."""
    r = _check_ranks(ranks, len(gnd))
    kappas = [int(k) for k in kappas]
    if any(k < 1 for k in kappas):
        raise ValueError(f"kappas must be positive, got {kappas}")
    aps = np.full(len(gnd), np.nan)
    prs = np.full((len(gnd), len(kappas)), np.nan)
    for i, q in enumerate(gnd):
        pos_ids, ign_ids = protocol_sets(q, protocol)
        if len(pos_ids) == 0:
            continue
        col = r[:, i]
        pos = np.flatnonzero(np.isin(col, pos_ids))                                      # 0-based, ascending
        ign = np.flatnonzero(np.isin(col, ign_ids))
        pos = pos - np.searchsorted(ign, pos, side="left")                               # ignored strictly before
        aps[i] = average_precision(pos, len(pos_ids))
        R = pos + 1
        for j, k in enumerate(kappas):
            if len(R) == 0:
                prs[i, j] = 0.0
                continue
            kq = min(int(R.max()), k)
            prs[i, j] = np.count_nonzero(R <= kq) / kq
    return aps, prs


def revisited_map(ranks, gnd, protocol="medium"):
    """(mAP, {1: mP@1, 5: mP@5, 10: mP@10}) as fractions, as revisitop's ``compute_map`` computes them.

    ``ranks``: (n_db, n_queries) database indices, most similar first; ``gnd``: one entry per query (see
    :func:`protocol_sets`). Queries without positives under ``protocol`` are skipped.
    """
    aps, prs = revisited_per_query(ranks, gnd, protocol, KAPPAS)
    keep = ~np.isnan(aps)
    if not keep.any():
        return float("nan"), {k: float("nan") for k in KAPPAS}
    return float(aps[keep].mean()), {k: float(prs[keep, j].mean()) for j, k in enumerate(KAPPAS)}


# ----------------------------------------------------------------------------- ranking
def rank_database(db_feats, query_feats, normalize: bool = True, device=None):
    """Database indices by decreasing cosine similarity to each query: int64 (n_db, n_queries); equal
    similarities keep the lower database index first."""
    import torch
    import torch.nn.functional as F

    from vitscope.analysis.knn import _features

    db = _features(db_feats, "db_feats", device)
    q = _features(query_feats, "query_feats", db.device)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"db_feats have {db.shape[1]} features per row but query_feats {q.shape[1]}")
    if normalize:
        db, q = F.normalize(db, dim=1), F.normalize(q, dim=1)
    with torch.inference_mode():
        order = torch.sort(q @ db.T, dim=1, descending=True, stable=True).indices           # n_q, n_db
    return order.T.cpu().numpy().astype(np.int64)


def retrieval_scores(db_feats, query_feats, gnd, protocols: Sequence[str] = PROTOCOLS,
                     kappas: Sequence[int] = KAPPAS, db_ids: Sequence[int] | None = None
                     ) -> dict[str, dict[str, float]]:
    """``{protocol: {"mAP": %, "mP@1": %, ...}}`` (percent, as DINO and revisitop print them).

    ``db_ids``: the database index (in ``gnd``'s numbering) of each row of ``db_feats`` when some database images
    are left out (unreadable files): a positive that is left out counts as never retrieved."""
    ranks = rank_database(db_feats, query_feats)
    if db_ids is not None:
        ranks = np.asarray(db_ids, dtype=np.int64)[ranks]
    out = {}
    for p in protocols:
        aps, prs = revisited_per_query(ranks, gnd, p, kappas)
        keep = ~np.isnan(aps)
        res = {"mAP": 100 * float(aps[keep].mean()) if keep.any() else float("nan")}
        for j, k in enumerate(kappas):
            res[f"mP@{k}"] = 100 * float(prs[keep, j].mean()) if keep.any() else float("nan")
        res["n_queries"] = int(keep.sum())
        out[p] = res
    return out


def retrieval_per_block(db: Mapping[Any, Any], queries: Mapping[Any, Any], gnd, model: str = "model",
                        protocols: Sequence[str] = PROTOCOLS, kappas: Sequence[int] = KAPPAS,
                        db_ids: Sequence[int] | None = None, **options) -> list[dict[str, Any]]:
    """Tidy rows ``model, block, task, metric, value (percent), protocol`` + ``options`` for every block;
    ``metric`` is ``mAP_<protocol>`` or ``mP@<k>_<protocol>``. ``db_ids``: see :func:`retrieval_scores`."""
    if set(db) != set(queries):
        raise ValueError(f"db and queries must hold the same blocks; db {list(db)}, queries {list(queries)}")
    rows = []
    for b in db:
        res = retrieval_scores(db[b], queries[b], gnd, protocols, kappas, db_ids)
        for p, r in res.items():
            for m, v in r.items():
                if m == "n_queries":
                    continue
                rows.append({"model": model, "block": int(b), "task": "retrieval", "metric": f"{m}_{p}",
                             "value": v, "protocol": p, "n_queries": r["n_queries"], "n_db": int(np.shape(db[b])[0]),
                             **options})
    return rows


# ----------------------------------------------------------------------------- descriptors
def prepare_image(img, pcfg, patch: int, imsize: int | None = None, preprocess: str = "thumbnail"):
    """PIL image -> (3, H, W) tensor for retrieval.

    ``thumbnail`` (DINO): longer side shrunk to ``imsize`` (aspect kept, never enlarged, Lanczos), normalised
    with the model's mean / std, no crop; right and bottom pixels beyond a multiple of the patch are dropped
    (what DINO's strided patch convolution ignores). ``model`` (walmer2023): thumbnail to ``imsize`` first when
    given, then the model's resize + centre crop.
    """
    from PIL import Image

    from vitscope.models.preprocess import Preprocessor, to_tensor

    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    img = img.convert("RGB") if img.mode != "RGB" else img
    if imsize is not None:
        img = img.copy()
        img.thumbnail((int(imsize), int(imsize)), Image.LANCZOS)
    if preprocess == "model":
        return Preprocessor(pcfg)(img)
    x = to_tensor(img, pcfg)
    return _fit_patches(x[None], patch)[0]


def _fit_patches(x, patch: int):
    """Drop right / bottom pixels beyond a multiple of the patch; an image smaller than one patch is enlarged
    (bilinear) to one patch on that side first."""
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    if H < patch or W < patch:
        x = F.interpolate(x, size=(max(H, patch), max(W, patch)), mode="bilinear", align_corners=False)
        H, W = x.shape[-2:]
    return x[..., : H - H % patch, : W - W % patch]


def _scaled(x, s: float, patch: int):
    import torch.nn.functional as F

    if s == 1:
        return x
    return _fit_patches(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False), patch)


def image_descriptors(models: Mapping[str, Any], images: Sequence[Any], blocks: Mapping[str, Sequence[int]],
                      imsize: Mapping[str, int | None] | int | None = None, preprocess: str = "thumbnail",
                      multiscale: bool = False, tokens: str = "cls", batch_size: int = 32,
                      progress: Callable[[Iterable], Iterable] | None = None,
                      skipped: list | None = None) -> dict[str, dict[int, np.ndarray]]:
    """``{model: {block: (n, D) float32}}`` descriptors of ``images`` (PIL images or zero-argument callables
    returning one), each image decoded once and run once per model and scale. Images of equal size after
    preprocessing share a batch. With ``multiscale`` the descriptor is the mean of the raw descriptors at the
    scales 1, 1/sqrt 2 and 1/2 (ranking L2-normalises it).

    ``skipped``: a list to collect the images that cannot be read (:class:`~vitscope.data.skip.SkipRecord`); their
    rows are left out of the result (the others keep their order). Without it an unreadable image is an error."""
    import torch

    from vitscope.features.access import forward_block_features, preprocess_config

    names = list(models)
    sizes = {n: imsize.get(n) if isinstance(imsize, Mapping) else imsize for n in names}
    parts: dict[str, dict[int, list]] = {n: {b: [None] * len(images) for b in blocks[n]} for n in names}
    starts = range(0, len(images), batch_size)
    kept: list[int] = []
    for s in (progress(starts) if progress else starts):
        decoded = _decode(images, s, batch_size, skipped)
        where, pil = [i for i, _ in decoded], [im for _, im in decoded]
        kept += where
        for n in names:
            m = models[n]
            p = m.cfg.patch_size
            xs = [prepare_image(im, preprocess_config(m), p, sizes[n], preprocess) for im in pil]
            groups: dict[tuple, list[int]] = {}
            for j, x in enumerate(xs):
                groups.setdefault(tuple(x.shape), []).append(j)
            for idx in groups.values():
                x = torch.stack([xs[j] for j in idx])
                acc = None
                for sc in (SCALES if multiscale else (1.0,)):
                    f = forward_block_features(m, _scaled(x, sc, p), blocks[n], tokens)
                    acc = f if acc is None else {b: acc[b] + f[b] for b in f}
                k = len(SCALES) if multiscale else 1
                for b, f in acc.items():
                    for r, j in enumerate(idx):
                        parts[n][b][where[j]] = (f[r] / k).numpy()
    if not kept:
        raise ValueError(f"no usable image: all {len(images)} image(s) were skipped as unreadable")
    return {n: {b: np.stack([v[i] for i in kept]) for b, v in parts[n].items()} for n in names}


def _decode(images: Sequence[Any], start: int, batch_size: int, skipped: list | None) -> list[tuple[int, Any]]:
    """``(index, PIL image)`` of ``images[start:start + batch_size]``; unreadable ones recorded in ``skipped``."""
    from vitscope.data.decode import ImageDecodeError
    from vitscope.data.skip import SkipRecord

    out = []
    for i, im in enumerate(images[start:start + batch_size], start):
        try:
            out.append((i, im() if callable(im) else im))
        except (ImageDecodeError, FileNotFoundError) as e:
            if skipped is None:
                raise
            skipped.append(SkipRecord(i, str(getattr(im, "id", i)), str(e), getattr(e, "kind", "missing")))
    return out


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class RetrievalOptions(Options):
    """Options of :func:`evaluate` (``vitscope retrieval``, the study analysis ``retrieval``)."""

    tokens: str = "cls"                      # cls (the protocol) or mean (of the patch tokens)
    protocols: tuple[str, ...] = PROTOCOLS   # easy, medium, hard
    imsize: int | None = None                # longer side of the thumbnail; default: the model's input size
    preprocess: str = "thumbnail"            # thumbnail (DINO: aspect kept, no crop) or model (walmer2023)
    multiscale: bool = False                 # mean descriptor over the scales 1, 1/sqrt 2, 1/2 (DINO)
    crop: bool = True                        # queries cropped to their box (the protocol; DINO, walmer2023: no)
    blocks: str = "all"                      # all, "0,3,-1" or "4:8"
    batch_size: int = 32
    name: str | None = None                  # which gnd_<name>.pkl when the folder holds several
    site: str = "resid_post"                 # feature-store site read (stores)
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self.check_choice("tokens", TOKENS)
        ps = self.protocols
        ps = tuple(p.strip().lower() for p in ps.split(",") if p.strip()) if isinstance(ps, str) else tuple(ps or ())
        if not ps or any(p not in PROTOCOLS for p in ps):
            raise OptionError("protocols", f"`protocols` takes {', '.join(PROTOCOLS)}, got {self.protocols!r}")
        self.protocols = tuple(dict.fromkeys(ps))
        self.check_int("imsize", minimum=8, optional=True)
        self.check_choice("preprocess", PREPROCESS)
        self.check_blocks("blocks")
        self.check_int("batch_size")


def open_revisited(data, name: str | None = None):
    """``data`` as a Revisited ground truth: a folder or ``gnd_*.pkl`` path, ``synthetic[:options]`` (written once
    into the task cache), a loaded :class:`~vitscope.data.tasks.Revisited` or the synthetic benchmark's in-memory
    retrieval set (returned as they are)."""
    from pathlib import Path

    from vitscope.data.tasks.revisited import gnd_choice_message, load_revisited

    if hasattr(data, "queries") or hasattr(data, "db_images"):
        return data
    if data is None:
        raise ValueError("retrieval needs a Revisited dataset: a folder with gnd_<name>.pkl and jpg/ (roxford5k, "
                         "rparis6k) or synthetic[:landmarks=N]")
    from vitscope.data.tasks.synthetic import default_cache, task_root

    root = task_root(data, "revisited", default_cache())
    if name is None and Path(root).is_dir():
        found = sorted(Path(root).glob("gnd_*.pkl"))
        if len(found) != 1:
            raise OptionError("name", gnd_choice_message(Path(root), found, "`name`"))
    return load_revisited(root, name)


def evaluate(models_or_stores, data, options: RetrievalOptions | None = None, **overrides) -> Result:
    """Revisited Oxford / Paris retrieval (mAP and mP@1/5/10 under the easy, medium and hard protocols, in %) of
    every block: revisitop's scorer, DINO's descriptors (the CLS token of each block).

    Args:
        models_or_stores: ``{label: HookedViT}`` (or one model / a list), or ``{label: (db_store, query_store)}``
            (stores of the database and query images in ground-truth order, written by ``vitscope extract``).
        data: the Revisited set (see :func:`open_revisited`).
        options: :class:`RetrievalOptions` (keyword overrides are applied on top).

    Unreadable images are skipped (``result.meta["skipped"]``): a database image left out counts as never
    retrieved, a query left out is not scored. The table has one row per model x block x protocol x metric.
    """
    from vitscope.analysis.knn import _as_pairs
    from vitscope.data.tasks.revisited import revisited_description, revisited_loaders, revisited_queries
    from vitscope.features.access import resolve_blocks, store_features, store_layers

    opts = (options or RetrievalOptions()).replace(**overrides) if overrides else (options or RetrievalOptions())
    gt = open_revisited(data, opts.name)
    gnd, desc = revisited_queries(gt), revisited_description(gt)
    kind, items = _as_pairs(models_or_stores)
    protos = list(opts.protocols)
    rows: list[dict] = []
    skipped: dict[str, list] = {"database": [], "queries": []}
    if kind == "features":
        raise ValueError("retrieval takes models or (database store, query store) pairs")
    if kind == "stores":
        for label, (sa, sb) in items.items():
            n_db = len(gt.imlist) if hasattr(gt, "imlist") else len(gt.db_images)
            if sa.n != n_db or sb.n != len(gnd):
                raise ValueError(f"the stores hold {sa.n} database and {sb.n} query rows; {desc} has {n_db} and "
                                 f"{len(gnd)} (extract them in ground-truth order)")
            if not (np.asarray(sa.valid).all() and np.asarray(sb.valid).all()):
                raise ValueError("the stores have skipped images; retrieval needs a descriptor for every image")
            layers = store_layers(sa, opts.blocks)
            fa = {int(k): v for k, v in store_features(sa, opts.site, opts.tokens, layers).items()}
            fb = {int(k): v for k, v in store_features(sb, opts.site, opts.tokens, layers).items()}
            rows += retrieval_per_block(fa, fb, gnd, label, protos, tokens=opts.tokens)
    else:
        want = {n: resolve_blocks(m, opts.blocks, opts.tokens) for n, m in items.items()}
        size = {n: opts.imsize or int(np.max(m.cfg.img_size)) for n, m in items.items()}
        db_imgs, q_imgs = revisited_loaders(gt, opts.crop)
        kw = dict(imsize=size, preprocess=opts.preprocess, multiscale=opts.multiscale, tokens=opts.tokens,
                  batch_size=opts.batch_size)
        fdb = image_descriptors(items, db_imgs, want, progress=_bar(opts, "database"),
                                skipped=skipped["database"], **kw)
        fq = image_descriptors(items, q_imgs, want, progress=_bar(opts, "query"), skipped=skipped["queries"], **kw)
        left = {r.index for r in skipped["database"]}
        db_ids = [i for i in range(len(db_imgs)) if i not in left] if left else None
        q_left = {r.index for r in skipped["queries"]}
        q_gnd = [g for i, g in enumerate(gnd) if i not in q_left]
        options = dict(tokens=opts.tokens, crop=opts.crop, multiscale=opts.multiscale, preprocess=opts.preprocess)
        for n in items:
            rows += retrieval_per_block(fdb[n], fq[n], q_gnd, n, protos, db_ids=db_ids,
                                        **{**options, "imsize": size[n]})
    table = tidy_table(rows, "retrieval", opts, dataset=desc)
    main = "medium" if "medium" in protos else protos[0]
    cand = [r for r in rows if r["metric"] == f"mAP_{main}" and np.isfinite(r["value"])]
    best = max(cand, key=lambda r: r["value"]) if cand else None
    tail = (f"best mAP ({main}) {best['value']:.1f}% ({best['model']}, block {best['block']})" if best else
            f"no query has a positive under {main}")
    n_skip = sum(len(v) for v in skipped.values())
    note = f"; skipped {n_skip} unreadable image(s)" if n_skip else ""
    summary = f"retrieval of {len(items)} model(s) on {desc}: {tail}{note}"
    name = getattr(gt, "name", "synthetic")
    n_db = len(gt.imlist) if hasattr(gt, "imlist") else len(gt.db_images)
    return Result("retrieval", table, summary, opts, draw=_draw,
                  meta={"protocols": protos, "name": name, "crop": opts.crop,
                        "skipped": skipped["database"] + skipped["queries"], "skipped_by_part": skipped,
                        "n_queries": len(gnd) - len(skipped["queries"]),
                        "context": {"data": name, "n_images": n_db - len(skipped["database"]),
                                    "tokens": opts.tokens}})


def _bar(opts: RetrievalOptions, what: str):
    if not opts.progress:
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=f"{what} images", unit="batch", leave=False)


def _draw(result: Result) -> dict:
    """mAP per block for every protocol (dashed: random twins), each with the rows it shows; the context line counts
    the database images searched. mAP has no simple chance level (it depends on how many positives each query has
    and where the junk images are), so no chance line is drawn."""
    from vitscope.viz.per_block import plot_metric_per_block

    out = {}
    crop = "cropped" if result.meta["crop"] else "full"
    nq = result.meta.get("n_queries")
    queries = f"{nq} {crop} queries" if nq is not None else f"{crop} queries"
    for p in result.meta["protocols"]:
        shown = result.table[result.table["metric"] == f"mAP_{p}"]
        fig = plot_metric_per_block(shown, title=f"{result.meta['name']}: mAP, {p} ({queries})",
                                    ylabel="mAP (%)", **result.context())
        out[f"retrieval_mAP_{p}"] = (fig, shown)
    return out
