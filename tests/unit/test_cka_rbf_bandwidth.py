"""RBF CKA bandwidth against a numpy transcription of Kornblith et al.'s reference code (``gram_rbf``,
``center_gram``, ``cka`` of "Similarity of Neural Network Representations Revisited", 2019)."""
import numpy as np
import pytest

from vitscope.analysis.similarity import MinibatchCKA, cka, cka_matrix, gram_rbf
from vitscope.analysis.similarity.compare import layer_cka


# ----------------------------------------------------------------------------- the reference, transcribed
def k_gram_rbf(x, threshold=1.0):
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold ** 2 * sq_median_distance))


def k_center_gram(gram, unbiased=False):
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def k_cka(gram_x, gram_y, debiased=False):
    gram_x = k_center_gram(gram_x, unbiased=debiased)
    gram_y = k_center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    return scaled_hsic / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12))
    y = np.tanh(x @ rng.normal(size=(12, 7))) * 3 + 0.3 * rng.normal(size=(n, 7))        # another scale than x
    return x, y


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("n", [40, 41])                     # even and odd counts: numpy's median of n*n entries
@pytest.mark.parametrize("threshold", [1.0, 0.5])
@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_default_is_kornblith(n, threshold, debiased):
    x, y = data(n)
    want = k_cka(k_gram_rbf(x, threshold), k_gram_rbf(y, threshold), debiased=debiased)
    got = cka(x, y, kernel="rbf", unbiased=debiased, threshold=threshold)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(gram_rbf(x, threshold=threshold).numpy(), k_gram_rbf(x, threshold), atol=1e-12)


def test_each_input_takes_its_own_bandwidth_and_the_old_rule_is_named():
    x, y = data()
    old = cka(x, y, kernel="rbf", bandwidth="seed000")
    new = cka(x, y, kernel="rbf")
    assert abs(old - new) > 1e-6                            # the two rules differ on the same data
    want = k_cka(k_gram_rbf(x), k_gram_rbf(y), debiased=True)
    np.testing.assert_allclose(new, want, rtol=1e-10)
    one_sigma = k_cka(k_gram_rbf(x), k_gram_rbf(y * 1e3), debiased=True)          # scale-free per input
    np.testing.assert_allclose(cka(x, y * 1e3, kernel="rbf"), one_sigma, rtol=1e-10)
    np.testing.assert_allclose(cka_matrix([x], [y * 1e3], kernel="rbf")[0, 0], one_sigma, rtol=1e-10)
    with pytest.raises(ValueError, match="bandwidth"):
        cka(x, y, kernel="rbf", bandwidth="median")
    with pytest.raises(ValueError, match="threshold"):
        cka(x, y, kernel="rbf", threshold=0.0)


def test_minibatch_rbf_takes_each_batch_bandwidth():
    """Nguyen et al.'s minibatch CKA with each batch's Gram matrices built by Kornblith's gram_rbf."""
    x, y = data(48, seed=3)
    mb = MinibatchCKA(kernel="rbf", threshold=0.7)
    xy = xx = yy = 0.0
    for s in (slice(0, 16), slice(16, 32), slice(32, 48)):
        mb.update([x[s]], [y[s]])
        kx = k_center_gram(k_gram_rbf(x[s], 0.7), unbiased=True)
        ky = k_center_gram(k_gram_rbf(y[s], 0.7), unbiased=True)
        xy, xx, yy = xy + (kx * ky).sum(), xx + (kx * kx).sum(), yy + (ky * ky).sum()
    np.testing.assert_allclose(mb.compute()[0, 0], xy / np.sqrt(xx * yy), rtol=1e-10)


def test_layer_cka_records_the_rule():
    x, y = data()
    res = layer_cka([x, y], kernel="rbf", threshold=0.5)
    assert res.meta["rbf_bandwidth"] == "kornblith" and res.meta["rbf_threshold"] == 0.5
    np.testing.assert_allclose(res.matrix[0, 1], k_cka(k_gram_rbf(x, 0.5), k_gram_rbf(y, 0.5), True), rtol=1e-10)
