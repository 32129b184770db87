"""Minibatch CKA with the RBF kernel over several batches: every batch's kernel takes its bandwidth from that
batch's own distances (Nguyen et al. 2021 build each minibatch's Gram matrices independently).

The reference is a plain loop: pairwise squared distances, the bandwidth, the Gram matrix, the unbiased HSIC
of Song et al. (2012, eq. 5, with ones vectors) per batch, averaged over batches. The bandwidth rule itself is
the one single-input RBF CKA uses (``gram_rbf``, tested on its own in test_cka.py), so that this file tests
only what streaming adds: which batch a bandwidth comes from.
"""
import numpy as np
import pytest

from vitscope.analysis.similarity import MinibatchCKA
from vitscope.analysis.similarity.cka import gram_rbf


def sq_dists(x):
    n = len(x)
    return np.array([[sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1])) for j in range(n)] for i in range(n)])


def own_bandwidth_gram(x):
    """RBF Gram matrix of one batch with a bandwidth from that batch alone (the single-input rule)."""
    d = sq_dists(x)
    sigma = own_sigma(x)
    n = len(x)
    return np.array([[np.exp(-d[i, j] / (2 * sigma ** 2)) for j in range(n)] for i in range(n)])


def own_sigma(x):
    """The bandwidth single-input RBF CKA uses for ``x``, read back from its Gram matrix (a kernel
    exp(-d / (2 sigma^2)) gives sigma from one off-diagonal entry, whatever rule chose sigma)."""
    k = gram_rbf(x).double().numpy()
    d = sq_dists(x)
    off = ~np.eye(len(x), dtype=bool)
    i, j = np.unravel_index(np.argmin(np.where(off, np.abs(k - 0.5), np.inf)), d.shape)   # a well-conditioned entry
    return float(np.sqrt(-d[i, j] / (2 * np.log(k[i, j]))))


def hsic_unbiased(K, L):
    n = len(K)
    Kt = [[0.0 if i == j else K[i][j] for j in range(n)] for i in range(n)]
    Lt = [[0.0 if i == j else L[i][j] for j in range(n)] for i in range(n)]
    tr = sum(Kt[i][j] * Lt[j][i] for i in range(n) for j in range(n))
    sk = sum(map(sum, Kt))
    sl = sum(map(sum, Lt))
    kl = sum(Kt[i][j] * sum(Lt[j][m] for m in range(n)) for i in range(n) for j in range(n))    # 1' K L 1
    return (tr + sk * sl / ((n - 1) * (n - 2)) - 2 * kl / (n - 2)) / (n * (n - 3))


def ref_minibatch_rbf(batches):
    """batches[b][i]: (b, d) features of layer i in batch b -> (L, L) minibatch CKA."""
    L = len(batches[0])
    xy = np.zeros((L, L))
    for bt in batches:
        ks = [own_bandwidth_gram(x) for x in bt]
        for i in range(L):
            for j in range(L):
                xy[i, j] += hsic_unbiased(ks[i], ks[j])
    diag = np.diag(xy).copy()
    return xy / np.sqrt(diag[:, None] * diag[None, :])


@pytest.fixture
def batches():
    """Three batches of 10 samples, three layers; the batches differ in scale (x1, x4, x0.3) so that one
    bandwidth for all of them would be far off for two."""
    rng = np.random.default_rng(0)
    out = []
    for scale in (1.0, 4.0, 0.3):
        base = rng.normal(size=(10, 4)) * scale
        layers = [base @ rng.normal(size=(4, d)) + 0.3 * scale * rng.normal(size=(10, d)) for d in (3, 5, 6)]
        layers[2] = np.tanh(layers[2])                                   # one layer not a linear map of the input
        out.append(layers)
    return out


def test_rbf_bandwidth_is_per_batch(batches):
    mb = MinibatchCKA(kernel="rbf")
    for bt in batches:
        mb.update(bt)
    np.testing.assert_allclose(mb.compute(), ref_minibatch_rbf(batches), rtol=1e-8, atol=1e-10)


def test_paired_rbf_is_per_batch_on_both_sides(batches):
    mb = MinibatchCKA(kernel="rbf")
    for bt in batches:
        mb.update(bt[:2], bt[2:])
    full = ref_minibatch_rbf(batches)
    np.testing.assert_allclose(mb.compute(), full[:2, 2:], rtol=1e-8, atol=1e-10)


def test_scaling_one_batch_changes_nothing(batches):
    """With bandwidths from each batch, multiplying one batch by a constant leaves every kernel unchanged."""
    a, b = MinibatchCKA(kernel="rbf"), MinibatchCKA(kernel="rbf")
    for k, bt in enumerate(batches):
        a.update(bt)
        b.update([x * 25.0 for x in bt] if k == 1 else bt)
    np.testing.assert_allclose(a.compute(), b.compute(), rtol=1e-9)
