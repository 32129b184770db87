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
from typing import Any

import numpy as np

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
