"""Weighted k-NN classification of frozen features (the DINO protocol, walmer2023 per block).

For each test row q (rows L2-normalised): similarities s_j = q . x_j to every training row, the k largest
(ties between equal similarities broken by the implementation), and each class c gets the vote
``sum_{j in top-k, y_j = c} exp(s_j / T)`` (T = 0.07, no normalisation). Classes are ranked by decreasing vote,
equal votes by increasing class index, classes without a vote after every voted class. Top-1: the first class is
the label; top-5: the label is among the first ``min(5, k)`` classes.

Differences from the public DINO code (``eval_knn.knn_classifier``), each deliberate:

- any number of test rows (DINO cuts the test set into ``N // 100``-row chunks, which fails for N < 100); chunks
  here are sized by memory (``max_chunk_bytes``) and never change the result;
- every k of a list from one top-max(k) pass (the k nearest are the first k of the max(k) nearest);
- ``k`` larger than the training set is a ValueError (DINO fails inside ``topk``);
- votes are computed as ``exp((s - s_max) / T)`` (the same ranking, scaled per row), so they cannot overflow when
  rows are not unit vectors (``normalize=False``);
- top-5 counts only classes that received a vote. When fewer than ``min(5, k)`` classes are voted, DINO fills the
  remaining slots with zero-vote classes in whatever order its sort leaves ties and counts a hit there;
  ``count_unvoted=True`` reproduces that, with the zero-vote classes in increasing index order (what a stable
  sort gives).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitscope.analysis.api import Options, Result, data_label, tidy_table
from vitscope.features.access import TOKENS

KS = (10, 20, 100, 200)            # DINO --nb_knn
TEMPERATURE = 0.07                 # DINO --temperature
MAX_CHUNK_BYTES = 128 * 2**20      # similarity block (test rows x training rows, float32) held at once


# ----------------------------------------------------------------------------- inputs
def _features(x: Any, name: str, device=None):
    import torch

    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = np.ascontiguousarray(np.asarray(x))
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, features), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return t


def _labels(y: Any, n: int, name: str, device=None):
    import torch

    t = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y).copy())
    t = t.reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries for {n} feature rows")
    if t.dtype.is_floating_point:
        if not bool((t == t.round()).all()):
            raise ValueError(f"{name} must hold integer class indices")
    t = t.long()
    if n and int(t.min()) < 0:
        raise ValueError(f"{name} holds negative labels (-1 marks an unlabelled sample); k-NN needs a class index "
                         f"for every row")
    return t.to(device) if device is not None else t


def _check_ks(ks: Iterable[int], n_train: int) -> list[int]:
    out = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if k > n_train:
            raise ValueError(f"k={k} is larger than the {n_train} training rows; use k <= {n_train} (or more "
                             f"training data)")
        out.append(k)
    if not out:
        raise ValueError("no k given")
    return sorted(set(out))


def _num_classes(num_classes: int | None, *labels) -> int:
    seen = max(int(y.max()) + 1 for y in labels if y.numel())
    if num_classes is None:
        return seen
    if int(num_classes) < seen:
        raise ValueError(f"num_classes={num_classes} but the labels go up to {seen - 1}")
    return int(num_classes)


def _chunk_rows(n_train: int, max_chunk_bytes: int) -> int:
    return max(1, int(max_chunk_bytes) // (4 * max(n_train, 1)))       # + 2x that for the CPU selection indices


# ----------------------------------------------------------------------------- the one pass
def neighbours(train_feats, test_feats, kmax: int, normalize: bool = True, device=None,
               max_chunk_bytes: int = MAX_CHUNK_BYTES):
    """Yield ``(start, sims (n, kmax), idx (n, kmax))``: the ``kmax`` most similar training rows of each test row,
    most similar first, chunk by chunk over the test rows (memory ~ ``max_chunk_bytes``)."""
    x = _features(train_feats, "train_feats", device)
    q_all = _features(test_feats, "test_feats", x.device)
    return _neighbours(x, q_all, kmax, normalize, max_chunk_bytes)


def _neighbours(x, q_all, kmax: int, normalize: bool, max_chunk_bytes: int):
    """:func:`neighbours` on float32 tensors already checked by ``_features`` (on one device)."""
    import torch
    import torch.nn.functional as F

    if q_all.shape[1] != x.shape[1]:
        raise ValueError(f"train_feats have {x.shape[1]} features per row but test_feats {q_all.shape[1]}")
    _check_ks([kmax], x.shape[0])
    if normalize:
        x = F.normalize(x, dim=1)
    xt = x.T.contiguous()                                                                # D, n_train
    step = _chunk_rows(x.shape[0], max_chunk_bytes)
    with torch.inference_mode():
        for s in range(0, q_all.shape[0], step):
            q = q_all[s:s + step]
            if normalize:
                q = F.normalize(q, dim=1)
            sims, idx = _top(torch.mm(q, xt), kmax)                                     # n, kmax
            yield s, sims, idx


def _top(sims, kmax: int):
    """The ``kmax`` largest of each row, largest first: (values, indices). On the CPU NumPy's introselect
    (``argpartition``) then a sort of the ``kmax`` kept is about 2.5x faster than ``torch.topk``."""
    import torch

    if sims.device.type != "cpu":
        return sims.topk(kmax, dim=1, largest=True, sorted=True)
    a = sims.numpy()
    n = a.shape[1]
    idx = np.argpartition(a, n - kmax, axis=1)[:, n - kmax:] if kmax < n else np.broadcast_to(
        np.arange(n), a.shape).copy()
    val = np.take_along_axis(a, idx, 1)
    order = np.argsort(-val, axis=1, kind="stable")
    return (torch.from_numpy(np.take_along_axis(val, order, 1)),
            torch.from_numpy(np.take_along_axis(idx, order, 1)))


def _votes(sims, nb_labels, ks: Sequence[int], temperature: float, C: int, with_count: bool = True):
    """Yield ``(k, votes (n, C), counts (n, C) or None)`` for increasing ``ks``, each k adding its neighbours to
    the last."""
    import torch

    n = sims.shape[0]
    w = torch.exp((sims - sims[:, :1]) / temperature)                                   # n, kmax (row max first)
    votes = torch.zeros(n, C, dtype=w.dtype, device=w.device)
    count = torch.zeros(n, C, dtype=torch.int32, device=w.device) if with_count else None
    done = 0
    for k in ks:
        lab = nb_labels[:, done:k]
        votes.scatter_add_(1, lab, w[:, done:k])
        if count is not None:
            count.scatter_add_(1, lab, torch.ones_like(lab, dtype=torch.int32))
        done = k
        yield k, votes, count


def _ranking(votes, count, width: int):
    """Classes by decreasing vote, equal votes by lower index, unvoted after voted: (n, width)."""
    import torch

    v = torch.where(count > 0, votes, torch.full_like(votes, -1.0))
    return torch.sort(v, dim=1, descending=True, stable=True).indices[:, :width]


def _first_seen(nb_labels, C: int):
    """(n, kmax) bool: the neighbour at position j is the first of its class among positions 0..j (so, for every
    k, the first k columns mark each voted class exactly once)."""
    import torch

    n, K = nb_labels.shape
    pos = torch.arange(K, device=nb_labels.device)
    first = torch.full((n, C), K, dtype=torch.long, device=nb_labels.device)
    first.scatter_reduce_(1, nb_labels, pos.expand(n, K), reduce="amin")
    return first.gather(1, nb_labels) == pos


def _label_rank(votes, nb_labels, first, k: int, target):
    """0-based place of each row's ``target`` class in :func:`_ranking`'s order, and whether it was voted, from
    the k neighbours' classes only (at most k voted classes per row, not all C)."""
    lab = nb_labels[:, :k]
    fk = first[:, :k]
    t = target[:, None]
    voted = (lab == t).any(dim=1)
    vt = votes.gather(1, t)                                                             # n, 1
    vj = votes.gather(1, lab)                                                           # n, k (voted classes)
    ahead = fk & ((vj > vt) | ((vj == vt) & (lab < t)))
    place = ahead.sum(dim=1)
    # an unvoted target comes after every voted class and after the unvoted classes of lower index
    below = (fk & (lab < t)).sum(dim=1)
    unvoted_place = fk.sum(dim=1) + target - below
    return place.where(voted, unvoted_place), voted


def knn_evaluate(train_feats, train_labels, test_feats, test_labels=None, ks: Sequence[int] = KS,
                 temperature: float = TEMPERATURE, num_classes: int | None = None, normalize: bool = True,
                 count_unvoted: bool = False, return_predictions: bool = False, device=None,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES) -> dict[int, dict[str, Any]]:
    """Every k of ``ks`` from one top-max(k) pass, chunked over the test rows.

    Returns ``{k: {"top1": %, "top5": %}}`` (without ``test_labels``: no scores) and, with
    ``return_predictions=True``, ``"predictions"``: int64 (N_test, min(5, C)) as :func:`knn_predict`.
    """
    import torch

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    x = _features(train_feats, "train_feats", device)
    y = _labels(train_labels, x.shape[0], "train_labels", x.device)
    q = _features(test_feats, "test_feats", x.device)
    n_test = q.shape[0]
    yt = None if test_labels is None else _labels(test_labels, n_test, "test_labels", x.device)
    ks = _check_ks(ks, x.shape[0])
    C = _num_classes(num_classes, y, *([yt] if yt is not None else []))
    width = min(5, C)
    hits = {k: [0, 0] for k in ks}
    preds = {k: [] for k in ks} if return_predictions else None
    for s, sims, idx in _neighbours(x, q, max(ks), normalize, max_chunk_bytes):
        nb = y[idx]                                                                     # n, kmax
        t = None if yt is None else yt[s:s + nb.shape[0]]
        first = None if t is None else _first_seen(nb, C)
        for k, votes, count in _votes(sims, nb, ks, temperature, C, with_count=preds is not None):
            if preds is not None:
                preds[k].append(_ranking(votes, count, width).cpu())
            if t is None:
                continue
            place, voted = _label_rank(votes, nb, first, k, t)
            hit5 = place < min(5, k)
            if not count_unvoted:
                hit5 &= voted
            hits[k][0] += int((place == 0).sum())
            hits[k][1] += int(hit5.sum())
    out: dict[int, dict[str, Any]] = {}
    for k in ks:
        r: dict[str, Any] = {}
        if yt is not None:
            r["top1"] = 100.0 * hits[k][0] / n_test
            r["top5"] = 100.0 * hits[k][1] / n_test
        if preds is not None:
            r["predictions"] = torch.cat(preds[k]).numpy().astype(np.int64)
        out[k] = r
    return out


# ----------------------------------------------------------------------------- the contract
def knn_predict(train_feats, train_labels, test_feats, k, temperature=0.07, num_classes=None, normalize=True):
    """Classes ranked by weighted vote of the ``k`` nearest training rows: int64 (N_test, min(5, C)).

    ``C`` = ``num_classes`` or the largest training label + 1. Ties between equal votes go to the lower class
    index; classes without a vote follow every voted class in increasing index order.
    """
    return knn_evaluate(train_feats, train_labels, test_feats, None, [k], temperature, num_classes, normalize,
                        return_predictions=True)[int(k)]["predictions"]


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k, temperature=0.07, num_classes=None,
                 normalize=True, count_unvoted=False):
    """(top-1 %, top-5 %) of weighted k-NN; ``count_unvoted=True`` also counts top-5 hits on zero-vote classes
    (the DINO code's behaviour when fewer than min(5, k) classes are voted)."""
    r = knn_evaluate(train_feats, train_labels, test_feats, test_labels, [k], temperature, num_classes, normalize,
                     count_unvoted=count_unvoted)[int(k)]
    return r["top1"], r["top5"]


# ----------------------------------------------------------------------------- per block
def knn_per_block(train: Mapping[Any, Any], train_labels, test: Mapping[Any, Any], test_labels,
                  ks: Sequence[int] = KS, model: str = "model", temperature: float = TEMPERATURE,
                  num_classes: int | None = None, normalize: bool = True, count_unvoted: bool = False,
                  device=None, max_chunk_bytes: int = MAX_CHUNK_BYTES,
                  progress: Callable[[Iterable], Iterable] | None = None) -> list[dict[str, Any]]:
    """k-NN scores of every block: tidy rows ``model, block, task, metric, value, k, temperature, n_train,
    n_test``; ``metric`` is ``top1_k<k>`` / ``top5_k<k>``.

    ``train`` / ``test``: ``{block: (N, D) features}``, the same blocks in both. Values may be lazy (a feature
    store's memmap, ``LazyRows``, or a zero-argument callable); each block is read when it is scored, so memory
    holds one block at a time.
    """
    missing = [b for b in train if b not in test]
    if missing or len(test) != len(train):
        raise ValueError(f"train and test must hold the same blocks; train {list(train)}, test {list(test)}")
    rows = []
    blocks = list(train)
    for b in (progress(blocks) if progress else blocks):
        xtr = _features(_load(train[b]), f"train features of block {b}", device)
        xte = _features(_load(test[b]), f"test features of block {b}", xtr.device)
        res = knn_evaluate(xtr, train_labels, xte, test_labels, ks, temperature, num_classes, normalize,
                           count_unvoted, device=device, max_chunk_bytes=max_chunk_bytes)
        for k, r in res.items():
            for m in ("top1", "top5"):
                rows.append({"model": model, "block": _block(b), "task": "knn", "metric": f"{m}_k{k}",
                             "value": float(r[m]), "k": k, "temperature": float(temperature),
                             "n_train": int(xtr.shape[0]), "n_test": int(xte.shape[0])})
    return rows


def _load(v):
    return v() if callable(v) else v


def _block(b):
    try:
        return int(b)
    except (TypeError, ValueError):
        return b


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class KNNOptions(Options):
    """Options of :func:`evaluate` (``vitscope knn``, the study analysis ``knn``)."""

    k: tuple[int, ...] = KS                  # neighbour counts (DINO's --nb_knn)
    temperature: float = TEMPERATURE         # vote weight exp(similarity / T)
    tokens: str = "cls"                      # cls (DINO, walmer2023) or mean (of the patch tokens)
    blocks: str = "all"                      # all, "0,3,-1" or "4:8"
    normalize: bool = True                   # cosine similarity (L2-normalised features)
    count_unvoted: bool = False              # top-5 also counts classes without a vote (DINO's code)
    num_classes: int | None = None           # default: from the labels
    test_fraction: float = 0.2               # one dataset split in two: share held out as test
    seed: int = 0                            # seed of that split
    site: str = "resid_post"                 # feature-store site read
    batch_size: int = 64
    limit: int | None = None                 # at most this many train and test images
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self.check_ints("k")
        self.check_number("temperature", low=0, low_open=True)
        self.check_choice("tokens", TOKENS)
        self.check_blocks("blocks")
        self.check_int("num_classes", minimum=2, optional=True)
        self.check_number("test_fraction", 0, 1, low_open=True, high_open=True)
        self.check_int("batch_size")
        self.check_int("limit", optional=True)


def _as_pairs(models_or_stores) -> tuple[str, dict]:
    """("models", {label: model}), ("stores", {label: (train_store, test_store)}) or ("features",
    {label: FeatureSplit})."""
    from vitscope.features.access import FeatureSplit, open_store_any, store_name

    items = models_or_stores
    if not isinstance(items, Mapping):
        items = list(items) if isinstance(items, (list, tuple)) and not _is_pair(items) else [items]
        items = {(_store_label(x, store_name, open_store_any) if _is_pair(x) else _model_label(x)): x
                 for x in items}
    kinds = {"stores" if _is_pair(v) else "features" if isinstance(v, FeatureSplit) else "models"
             for v in items.values()}
    if len(kinds) != 1:
        raise ValueError("give one kind of input: models, (train store, test store) pairs or FeatureSplits")
    kind = kinds.pop()
    if kind == "stores":
        items = {k: (open_store_any(a), open_store_any(b)) for k, (a, b) in items.items()}
    return kind, dict(items)


def _is_pair(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2 and not hasattr(x[0], "token_layout")


def _store_label(pair, store_name, open_store_any) -> str:
    return store_name(open_store_any(pair[0]))


def _model_label(m) -> str:
    return str((getattr(m, "meta", None) or {}).get("name") or "model")


def evaluate(models_or_stores, data=None, options: KNNOptions | None = None, **overrides) -> Result:
    """Weighted k-NN accuracy (top-1 / top-5 for every k) of every block: DINO's protocol, as walmer2023 runs it.

    Args:
        models_or_stores: ``{label: HookedViT}`` (or one model / a list), ``{label: (train_store, test_store)}``
            (stores written by ``vitscope extract``; paths or opened stores), or ``{label: FeatureSplit}``
            (features in memory).
        data: with models, a dataset (``ImageDataset`` or a spec string) split by ``options.test_fraction``, or a
            ``(train, test)`` pair of datasets / specs; unused with stores.
        options: :class:`KNNOptions` (keyword overrides are applied on top).

    Returns a :class:`~vitscope.analysis.api.Result` whose table has one row per model x block x k x metric
    (``top1_k<k>`` / ``top5_k<k>``, in %), with ``k``, ``temperature``, ``n_train``, ``n_test``, ``tokens`` and
    ``count_unvoted`` columns; ``figures()`` draws top-1 and top-5 per block at k = 20 (or the first k).
    """
    from vitscope.features.access import (collect_block_features, open_dataset_any, resolve_blocks,
                                          split_dataset, store_features, store_labels, store_layers)

    opts = (options or KNNOptions()).replace(**overrides) if overrides else (options or KNNOptions())
    kind, items = _as_pairs(models_or_stores)
    ks = sorted(set(opts.k))
    rows: list[dict] = []
    dataset, data_name, classes = None, None, {}
    if kind == "stores":
        for label, (tr_store, te_store) in items.items():
            layers = store_layers(tr_store, opts.blocks)
            for st in (tr_store, te_store):
                if opts.tokens not in st.reductions:
                    raise ValueError(f"the stores must hold the {opts.tokens!r} reduction; extract with --tokens "
                                     f"{opts.tokens}")
            ytr, yte = store_labels(tr_store), store_labels(te_store)
            if (ytr < 0).any() or (yte < 0).any():
                raise ValueError("k-NN needs labels on both splits (class folders, a list with labels, or "
                                 "synthetic)")
            nc = opts.num_classes or max(len(getattr(tr_store, "classes", []) or []), int(ytr.max()) + 1,
                                         int(yte.max()) + 1)
            classes[label] = nc
            data_name = data_name or (tr_store.manifest.get("dataset") or {}).get("description")
            rows += knn_per_block(store_features(tr_store, opts.site, opts.tokens, layers), ytr,
                                  store_features(te_store, opts.site, opts.tokens, layers), yte, ks, label,
                                  opts.temperature, nc, normalize=opts.normalize, count_unvoted=opts.count_unvoted,
                                  device=opts.device, progress=_bar(opts, label))
    elif kind == "features":
        for label, f in items.items():
            classes[label] = _classes_of(opts, f.train_labels, f.test_labels)
            rows += knn_per_block(f.train, f.train_labels, f.test, f.test_labels, ks, label, opts.temperature,
                                  opts.num_classes, normalize=opts.normalize, count_unvoted=opts.count_unvoted,
                                  device=opts.device, progress=_bar(opts, label))
    else:
        if data is None:
            raise ValueError("models need images: a labelled dataset (split by test_fraction) or a (train, test) "
                             "pair")
        if isinstance(data, (tuple, list)):
            ds_train, ds_test = (open_dataset_any(d) for d in data)
            names = [data_label(d) or data_label(o) for d, o in zip(data, (ds_train, ds_test))]
            data_name = " / ".join(n or "?" for n in names) if any(names) else None
        else:
            ds = open_dataset_any(data)
            dataset = getattr(ds, "description", None)
            data_name = data_label(data) or dataset
            ds_train, ds_test = split_dataset(ds, opts.test_fraction, opts.seed)
        want = {n: resolve_blocks(m, opts.blocks, opts.tokens) for n, m in items.items()}
        ftr, ytr = collect_block_features(items, ds_train, want, opts.tokens, opts.batch_size, opts.limit,
                                          progress=opts.progress)
        fte, yte = collect_block_features(items, ds_test, want, opts.tokens, opts.batch_size, opts.limit,
                                          progress=opts.progress)
        for n in items:
            classes[n] = _classes_of(opts, ytr, yte, getattr(ds_train, "classes", None))
            rows += knn_per_block(ftr[n], ytr, fte[n], yte, ks, n, opts.temperature, opts.num_classes,
                                  normalize=opts.normalize, count_unvoted=opts.count_unvoted, device=opts.device,
                                  progress=_bar(opts, n))
    for r in rows:
        r.update(tokens=opts.tokens, count_unvoted=opts.count_unvoted)
    table = tidy_table(rows, "knn", opts, dataset=dataset)
    fk = 20 if 20 in ks else ks[0]
    n_train, n_test = (int(rows[-1]["n_train"]), int(rows[-1]["n_test"])) if rows else (0, 0)
    best = max((r for r in rows if r["metric"] == f"top1_k{fk}"), key=lambda r: r["value"])
    summary = (f"k-NN of {len(items)} model(s) on {n_train} train / {n_test} test images, k={','.join(map(str, ks))}"
               f": best top-1 (k={fk}) {best['value']:.1f}% ({best['model']}, block {best['block']})")
    counts = {r["model"]: int(r["n_train"]) + int(r["n_test"]) for r in rows}
    return Result("knn", table, summary, opts, draw=_draw,
                  meta={"k_shown": fk, "n_train": n_train, "n_test": n_test, "num_classes": classes,
                        "context": {"data": data_name, "n_images": counts, "tokens": opts.tokens}})


def _classes_of(opts: KNNOptions, train_labels, test_labels, classes=None) -> int:
    """The number of classes of the data (its class list, else the labels), for the chance level of the figures:
    ``num_classes`` when given, else the most of the data's class list and the largest label + 1."""
    if opts.num_classes:
        return int(opts.num_classes)
    seen = [int(np.max(np.asarray(y))) + 1 for y in (train_labels, test_labels) if np.asarray(y).size]
    return max([len(classes or ()), *seen])


def chance_percent(num_classes: int | None, top: int = 1) -> float | None:
    """Top-``top`` accuracy (%) of a guess among ``num_classes`` equally likely classes: 100 min(top, C) / C."""
    if not num_classes:
        return None
    return 100.0 * min(int(top), int(num_classes)) / int(num_classes)


def _bar(opts: KNNOptions, name: str):
    if not opts.progress:
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=f"k-NN {name}", unit="block", leave=False)


def _draw(result: Result) -> dict:
    """Top-1 and top-5 accuracy per block at the k shown (dashed: random twins), each with the rows it shows."""
    from vitscope.viz.per_block import plot_metric_per_block

    fk, n_train, n_test = (result.meta[k] for k in ("k_shown", "n_train", "n_test"))
    shown = {result.meta.get("num_classes", {}).get(m) for m in dict.fromkeys(result.table["model"])}
    classes = shown.pop() if len(shown) == 1 else None           # models on other class sets: no single chance
    figs = {}
    for m in ("top1", "top5"):
        name = m.replace("top", "top-")
        fig = plot_metric_per_block(result.table, metric=f"{m}_k{fk}", ylabel=f"{name} accuracy (%)",
                                    title=f"k-NN {name}, k={fk} ({n_train} train / {n_test} test)",
                                    chance=chance_percent(classes, int(m[3:])), **result.context())
        figs[f"knn_{m}_k{fk}"] = (fig, result.table[result.table["metric"] == f"{m}_k{fk}"])
    return figs
