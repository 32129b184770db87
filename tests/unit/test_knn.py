"""Weighted k-NN (DINO protocol) against a slow loop written from the definition, scikit-learn and hand-made cases."""
import math

import numpy as np
import pytest
import torch

from vitscope.analysis.knn import knn_accuracy, knn_evaluate, knn_per_block, knn_predict


def slow_knn(train, train_labels, test, k, T=0.07, C=None, normalize=True):
    """From the definition: cosine similarity to every training row, the k largest vote exp(s / T) for their
    class; classes by decreasing vote, equal votes by class index, unvoted classes after, by index.
    Returns (ranking (n, min(5, C)) list of lists, voted classes per row)."""
    C = C or int(max(train_labels)) + 1
    out, voted_sets = [], []
    for q in test:
        q = np.asarray(q, np.float64)
        sims = []
        for j, x in enumerate(train):
            x = np.asarray(x, np.float64)
            if normalize:
                s = float(q @ x) / (math.sqrt(q @ q) * math.sqrt(x @ x))
            else:
                s = float(q @ x)
            sims.append((s, j))
        sims.sort(key=lambda t: -t[0])
        votes = {}
        for s, j in sims[:k]:
            c = int(train_labels[j])
            votes[c] = votes.get(c, 0.0) + math.exp(s / T)
        voted = sorted(votes, key=lambda c: (-votes[c], c))
        rest = [c for c in range(C) if c not in votes]
        out.append((voted + rest)[: min(5, C)])
        voted_sets.append(set(votes))
    return out, voted_sets


def slow_accuracy(train, train_labels, test, test_labels, k, count_unvoted=False, C=None):
    rank, voted = slow_knn(train, train_labels, test, k, C=C)
    top1 = sum(r[0] == y for r, y in zip(rank, test_labels))
    top5 = 0
    for r, v, y in zip(rank, voted, test_labels):
        cands = r[: min(5, k)]
        if y in cands and (count_unvoted or y in v):
            top5 += 1
    return 100 * top1 / len(test_labels), 100 * top5 / len(test_labels)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    C, D = 9, 12
    centres = rng.normal(size=(C, D))
    ytr = rng.integers(0, C, 240)
    yte = rng.integers(0, C, 37)                                        # fewer than 100 test rows
    xtr = (centres[ytr] + 1.2 * rng.normal(size=(240, D))).astype(np.float32)
    xte = (centres[yte] + 1.2 * rng.normal(size=(37, D))).astype(np.float32)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("k", [1, 4, 10, 50])
def test_predict_matches_slow_loop(data, k):
    xtr, ytr, xte, _ = data
    got = knn_predict(xtr, ytr, xte, k)
    ref, _ = slow_knn(xtr, ytr, xte, k)
    assert got.dtype == np.int64 and got.shape == (len(xte), 5)
    np.testing.assert_array_equal(got, np.array(ref))


@pytest.mark.parametrize("count_unvoted", [False, True])
def test_accuracy_matches_slow_loop(data, count_unvoted):
    xtr, ytr, xte, yte = data
    for k in (2, 7, 20):
        got = knn_accuracy(xtr, ytr, xte, yte, k, count_unvoted=count_unvoted)
        ref = slow_accuracy(xtr, ytr, xte, yte, k, count_unvoted)
        assert got == pytest.approx(ref)


def test_all_k_in_one_pass_equals_separate_calls_and_chunking_is_invisible(data):
    xtr, ytr, xte, yte = data
    ks = (1, 5, 20, 200)
    one = knn_evaluate(xtr, ytr, xte, yte, ks, return_predictions=True, max_chunk_bytes=4 * len(xtr) * 3)
    for k in ks:
        assert (one[k]["top1"], one[k]["top5"]) == knn_accuracy(xtr, ytr, xte, yte, k)
        np.testing.assert_array_equal(one[k]["predictions"], knn_predict(xtr, ytr, xte, k))


def test_top1_matches_scikit_learn(data):
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr, xte, _ = data
    T = 0.07
    for k in (5, 20):
        clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine",
                                   weights=lambda d: np.exp((1.0 - d) / T)).fit(xtr.astype(np.float64), ytr)
        np.testing.assert_array_equal(knn_predict(xtr, ytr, xte, k)[:, 0], clf.predict(xte.astype(np.float64)))


def test_fewer_voted_classes_than_five_hand_made():
    # 6 classes on a circle; the query sits between class 2 (closest) and class 4
    ang = np.deg2rad([0, 60, 120, 180, 240, 300, 118, 130])
    xtr = np.stack([np.cos(ang), np.sin(ang)], 1)
    ytr = np.array([0, 1, 2, 3, 4, 5, 2, 4])
    q = np.array([[np.cos(np.deg2rad(121)), np.sin(np.deg2rad(121))]])
    # k = 3: neighbours 120 (2), 118 (2), 130 (4) -> voted 2 > 4, then unvoted 0, 1, 3
    np.testing.assert_array_equal(knn_predict(xtr, ytr, q, 3), [[2, 4, 0, 1, 3]])
    # label 0 sits in an unvoted slot within min(5, k) = 3: counted only with count_unvoted
    assert knn_accuracy(xtr, ytr, q, [0], 3) == (0.0, 0.0)
    assert knn_accuracy(xtr, ytr, q, [0], 3, count_unvoted=True) == (0.0, 100.0)
    # label 1 is in slot 4 > min(5, k): never a hit
    assert knn_accuracy(xtr, ytr, q, [1], 3, count_unvoted=True) == (0.0, 0.0)
    assert knn_accuracy(xtr, ytr, q, [4], 3) == (0.0, 100.0)
    # two classes only: the ranking is min(5, C) = 2 wide
    assert knn_predict(xtr[:2], [1, 0], q, 1).shape == (1, 2)


def test_equal_votes_go_to_the_lower_class_index():
    t = 0.3
    xtr = np.array([[np.cos(t), np.sin(t)], [np.cos(t), -np.sin(t)]])
    q = np.array([[1.0, 0.0]])
    np.testing.assert_array_equal(knn_predict(xtr, [3, 1], q, 2, num_classes=5), [[1, 3, 0, 2, 4]])


def test_accuracy_breaks_equal_votes_by_the_lower_class_index():
    t = 0.3
    xtr = np.array([[np.cos(t), np.sin(t)], [np.cos(t), -np.sin(t)]])
    q = np.array([[1.0, 0.0]] * 4)
    # equal votes for classes 3 and 1: class 1 ranks first, 3 second; unvoted 0 third, 2 fourth
    assert knn_accuracy(xtr, [3, 1], q[:1], [1], 2, num_classes=5) == (100.0, 100.0)
    assert knn_accuracy(xtr, [3, 1], q[:1], [3], 2, num_classes=5) == (0.0, 100.0)
    assert knn_accuracy(xtr, [3, 1], q, [0, 2, 4, 4], 2, num_classes=5) == (0.0, 0.0)
    # top-5 slots are min(5, k) = 2: unvoted classes never reach them here, even when counted
    assert knn_accuracy(xtr, [3, 1], q, [0, 2, 4, 4], 2, num_classes=5, count_unvoted=True) == (0.0, 0.0)


@pytest.mark.parametrize("count_unvoted", [False, True])
def test_many_classes_few_voted_match_slow_loop(count_unvoted):
    """40 classes, 6 neighbours: most classes unvoted, the test label often unvoted (its place among the unvoted
    depends on its index)."""
    rng = np.random.default_rng(3)
    C, D = 40, 6
    ytr = rng.choice([0, 2, 3, 7, 30], 120)                 # few voted classes per row, some of low index
    xtr = rng.normal(size=(120, D)).astype(np.float32)
    xte = rng.normal(size=(60, D)).astype(np.float32)
    yte = np.concatenate([rng.integers(0, 9, 40), rng.integers(0, C, 20)])    # low indices reach unvoted top-5 slots
    for k in (1, 3, 6):
        got = knn_accuracy(xtr, ytr, xte, yte, k, num_classes=C, count_unvoted=count_unvoted)
        ref = slow_accuracy(xtr, ytr, xte, yte, k, count_unvoted, C=C)
        assert got == pytest.approx(ref)


def test_unnormalised_rows_do_not_overflow():
    rng = np.random.default_rng(1)
    xtr = 50 * rng.normal(size=(30, 4))
    ytr = rng.integers(0, 3, 30)
    xte = 50 * rng.normal(size=(5, 4))
    got = knn_predict(xtr, ytr, xte, 5, normalize=False)
    # reference: the same ranking in float64 with the vote scaled per row (exp(s/T) itself overflows)
    for i, q in enumerate(xte):
        s = xtr @ q
        nb = np.argsort(-s, kind="stable")[:5]
        votes = np.zeros(3)
        for j in nb:
            votes[ytr[j]] += np.exp((s[j] - s[nb[0]]) / 0.07)
        voted = [c for c in sorted(range(3), key=lambda c: (-votes[c], c)) if votes[c] > 0]
        assert list(got[i][: len(voted)]) == voted


def test_bad_input():
    x = np.zeros((4, 3), np.float32) + np.eye(4, 3)
    with pytest.raises(ValueError, match="larger than the 4 training rows"):
        knn_predict(x, [0, 1, 0, 1], x, 5)
    with pytest.raises(ValueError, match="negative labels"):
        knn_predict(x, [0, -1, 0, 1], x, 2)
    with pytest.raises(ValueError, match="4 entries for 3"):
        knn_accuracy(x, [0, 1, 0, 1], x[:3], [0, 1, 0, 1], 2)
    with pytest.raises(ValueError, match="features per row"):
        knn_predict(x, [0, 1, 0, 1], np.zeros((2, 5)), 2)
    with pytest.raises(ValueError, match="positive integer"):
        knn_predict(x, [0, 1, 0, 1], x, 0)
    with pytest.raises(ValueError, match="NaN"):
        knn_predict(x, [0, 1, 0, 1], np.full((1, 3), np.nan), 2)


def test_per_block_rows_and_lazy_blocks(data):
    xtr, ytr, xte, yte = data
    train = {0: xtr, 1: lambda: xtr[:, ::-1].copy()}
    test = {0: xte, 1: lambda: xte[:, ::-1].copy()}
    rows = knn_per_block(train, ytr, test, yte, ks=(5, 10), model="m")
    assert {(r["block"], r["metric"]) for r in rows} == {(b, f"{m}_k{k}") for b in (0, 1) for m in ("top1", "top5")
                                                         for k in (5, 10)}
    r = next(r for r in rows if r["block"] == 1 and r["metric"] == "top1_k10")
    assert r["value"] == pytest.approx(slow_accuracy(xtr, ytr, xte, yte, 10)[0])    # a permutation keeps cosines
    assert {r["task"] for r in rows} == {"knn"} and {r["model"] for r in rows} == {"m"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu(data):
    xtr, ytr, xte, yte = data
    cpu = knn_evaluate(xtr, ytr, xte, yte, (1, 10, 50), return_predictions=True)
    gpu = knn_evaluate(torch.from_numpy(xtr).cuda(), ytr, xte, yte, (1, 10, 50), return_predictions=True)
    for k in cpu:
        np.testing.assert_array_equal(cpu[k]["predictions"], gpu[k]["predictions"])
        assert cpu[k]["top1"] == gpu[k]["top1"] and cpu[k]["top5"] == gpu[k]["top5"]
