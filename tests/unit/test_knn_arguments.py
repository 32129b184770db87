"""Weighted k-NN with every argument away from its default: the vote temperature against a hand-worked case, the
rest against the slow loop of ``test_knn`` (written from the definition)."""
import math

import numpy as np
import pytest

from test_knn import slow_knn  # noqa: E402  (the loop reference, one copy)
from vitscope.analysis.knn import knn_accuracy, knn_evaluate, knn_per_block, knn_predict, neighbours


def three_neighbours():
    """Query (1, 0); one class-0 row at cosine 0.9, two class-1 rows at cosine 0.8 (k = 3 takes all three).

    Votes exp(s / T): at T = 0.07 class 0 gets e^12.86 against class 1's 2 e^11.43 (ratio e^1.43 / 2 = 2.1, class 0
    wins); at T = 1 class 0 gets e^0.9 = 2.46 against 2 e^0.8 = 4.45 (class 1 wins)."""
    a, b = math.acos(0.9), math.acos(0.8)
    xtr = np.array([[math.cos(a), math.sin(a)], [math.cos(b), math.sin(b)], [math.cos(b), -math.sin(b)]])
    return xtr, np.array([0, 1, 1]), np.array([[1.0, 0.0]])


def test_temperature_decides_the_vote_hand_worked():
    xtr, ytr, q = three_neighbours()
    assert knn_predict(xtr, ytr, q, 3)[0, 0] == 0                               # DINO's T = 0.07
    assert knn_predict(xtr, ytr, q, 3, temperature=1.0)[0, 0] == 1
    assert knn_predict(xtr, ytr, q, 3, temperature=0.07)[0, 0] == 0
    assert knn_accuracy(xtr, ytr, q, [1], 3, temperature=1.0) == (100.0, 100.0)
    assert knn_accuracy(xtr, ytr, q, [1], 3) == (0.0, 100.0)
    r = knn_evaluate(xtr, ytr, q, [1], ks=(1, 3), temperature=1.0, return_predictions=True)
    assert r[1]["top1"] == 0.0 and r[3]["top1"] == 100.0                        # k = 1: the single nearest (class 0)
    assert r[3]["predictions"][0].tolist() == [1, 0]
    rows = knn_per_block({0: xtr}, ytr, {0: q}, [1], ks=(3,), temperature=1.0)
    top1 = next(x for x in rows if x["metric"] == "top1_k3")
    assert top1["value"] == 100.0 and top1["temperature"] == 1.0


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    C, D = 6, 5
    centres = 2 * rng.normal(size=(C, D))
    ytr = rng.integers(0, C, 90)
    yte = rng.integers(0, C, 23)
    xtr = (centres[ytr] + rng.normal(size=(90, D))).astype(np.float32)
    xte = (centres[yte] + rng.normal(size=(23, D))).astype(np.float32)
    return xtr, ytr, xte, yte


def slow_scores(xtr, ytr, xte, yte, k, T, C, normalize, count_unvoted):
    rank, voted = slow_knn(xtr, ytr, xte, k, T=T, C=C, normalize=normalize)
    top1 = np.mean([r[0] == y for r, y in zip(rank, yte)])
    top5 = np.mean([y in r[: min(5, k)] and (count_unvoted or y in v) for r, v, y in zip(rank, voted, yte)])
    return 100 * top1, 100 * top5, np.array(rank)


@pytest.mark.parametrize("normalize", [True, False])
def test_every_argument_of_knn_evaluate_against_the_loop(data, normalize):
    xtr, ytr, xte, yte = data
    T, C = 0.5, 9                                       # three classes nobody has: unvoted slots of the ranking
    got = knn_evaluate(xtr, ytr, xte, yte, ks=(7, 3), temperature=T, num_classes=C, normalize=normalize,
                       count_unvoted=True, return_predictions=True, device="cpu", max_chunk_bytes=4 * 90 * 2)
    assert sorted(got) == [3, 7]
    for k in (3, 7):
        top1, top5, rank = slow_scores(xtr, ytr, xte, yte, k, T, C, normalize, True)
        assert got[k]["top1"] == pytest.approx(top1) and got[k]["top5"] == pytest.approx(top5)
        np.testing.assert_array_equal(got[k]["predictions"], rank)
        assert knn_accuracy(xtr, ytr, xte, yte, k, T, C, normalize, count_unvoted=False) == pytest.approx(
            slow_scores(xtr, ytr, xte, yte, k, T, C, normalize, False)[:2])
        np.testing.assert_array_equal(knn_predict(xtr, ytr, xte, k, T, C, normalize), rank)


def test_neighbours_with_every_argument(data):
    xtr, _, xte, _ = data
    chunks = list(neighbours(xtr, xte, 4, normalize=False, device="cpu", max_chunk_bytes=4 * 90 * 5))
    assert [s for s, _, _ in chunks] == list(range(0, 23, 5))                   # 5 test rows per chunk
    sims = np.concatenate([s.numpy() for _, s, _ in chunks])
    idx = np.concatenate([i.numpy() for _, _, i in chunks])
    for r, q in enumerate(xte.astype(np.float64)):
        dots = [float(q @ x) for x in xtr.astype(np.float64)]               # raw dot products: no normalisation
        best = sorted(range(90), key=lambda j: -dots[j])[:4]
        assert idx[r].tolist() == best
        np.testing.assert_allclose(sims[r], [dots[j] for j in best], rtol=1e-5)


def test_knn_per_block_with_every_argument(data):
    xtr, ytr, xte, yte = data
    seen = []

    def progress(blocks):
        seen.extend(blocks)
        return blocks

    rows = knn_per_block({"3": xtr, "5": lambda: -xtr}, ytr, {"3": xte, "5": lambda: -xte}, yte, ks=(4,),
                         model="m", temperature=0.3, num_classes=8, normalize=False, count_unvoted=True,
                         device="cpu", max_chunk_bytes=64, progress=progress)
    assert seen == ["3", "5"]
    assert {(r["block"], r["metric"]) for r in rows} == {(b, m) for b in (3, 5) for m in ("top1_k4", "top5_k4")}
    top1, top5, _ = slow_scores(xtr, ytr, xte, yte, 4, 0.3, 8, False, True)
    for r in rows:                                      # negating both sides keeps every dot product
        assert r["value"] == pytest.approx(top1 if r["metric"] == "top1_k4" else top5)
        assert (r["model"], r["temperature"], r["k"], r["n_train"], r["n_test"]) == ("m", 0.3, 4, 90, 23)
