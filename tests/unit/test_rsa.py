"""RSA against references written here (numpy corrcoef, explicit loops, ranks) and spectral clustering of layers."""
import numpy as np
import pytest
from scipy.stats import rankdata

from vitscope.analysis.similarity import (
    compare_rdms,
    mean_cosine_similarity,
    rdm,
    rsa,
    rsa_matrix,
    spectral_cluster_layers,
)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(15, 6))
    return x, np.tanh(x @ rng.normal(size=(6, 4))) + 0.2 * rng.normal(size=(15, 4))


def ref_triu(m):
    n = m.shape[0]
    return np.array([m[i, j] for i in range(n) for j in range(i + 1, n)])


def test_rdms_match_definitions(feats):
    x, _ = feats
    np.testing.assert_allclose(rdm(x, "correlation"), 1 - np.corrcoef(x), atol=1e-12)
    n = x.shape[0]
    cos = np.array([[1 - x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for j in range(n)]
                    for i in range(n)])
    np.fill_diagonal(cos, 0)
    np.testing.assert_allclose(rdm(x, "cosine"), cos, atol=1e-12)
    euc = np.array([[np.sqrt(np.sum((x[i] - x[j]) ** 2)) for j in range(n)] for i in range(n)])
    np.testing.assert_allclose(rdm(x, "euclidean"), euc, atol=1e-12)


def test_compare_rdms_spearman_and_pearson(feats):
    x, y = feats
    a, b = rdm(x), rdm(y)
    va, vb = ref_triu(a), ref_triu(b)
    assert compare_rdms(a, b, "pearson") == pytest.approx(np.corrcoef(va, vb)[0, 1], rel=1e-10)
    assert compare_rdms(a, b, "spearman") == pytest.approx(np.corrcoef(rankdata(va), rankdata(vb))[0, 1],
                                                           rel=1e-10)
    assert rsa(x, y) == pytest.approx(compare_rdms(a, b, "spearman"))
    assert rsa(x, x, "euclidean", "pearson") == pytest.approx(1.0)


def test_rsa_matrix(feats):
    x, y = feats
    m = rsa_matrix({"x": x, "y": y, "x2": 3 * x})
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert m[0, 1] == pytest.approx(rsa(x, y))
    assert m[0, 2] == pytest.approx(1.0)
    cross = rsa_matrix([x], [y, x], compare="pearson")
    assert cross.shape == (1, 2) and cross[0, 1] == pytest.approx(1.0)


def test_mean_cosine(feats):
    x, _ = feats
    assert mean_cosine_similarity(x, 2 * x) == pytest.approx(1.0)
    assert mean_cosine_similarity(x, -x) == pytest.approx(-1.0)


def test_spectral_clustering_recovers_blocks():
    rng = np.random.default_rng(1)
    sizes = [3, 4, 2]
    lab = np.repeat(np.arange(3), sizes)
    s = np.where(lab[:, None] == lab[None, :], 0.9, 0.05) + 0.02 * rng.random((9, 9))
    s = (s + s.T) / 2
    perm = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8])
    got = spectral_cluster_layers(s[perm][:, perm], 3, seed=0)
    np.testing.assert_array_equal(got, lab)                                           # renumbered by first occurrence
    # negative similarities are used by magnitude (ciernik2025), as in |S|
    np.testing.assert_array_equal(spectral_cluster_layers(-s, 3), lab)
    assert spectral_cluster_layers(s, 1).tolist() == [0] * 9


def test_errors_never_nan(feats):
    x, y = feats
    const_row = x.copy()
    const_row[3] = 5.0
    with pytest.raises(ValueError, match="zero variance"):
        rdm(const_row, "correlation")
    zero_row = x.copy()
    zero_row[2] = 0.0
    with pytest.raises(ValueError, match="zero vector"):
        rdm(zero_row, "cosine")
    with pytest.raises(ValueError, match="constant"):
        compare_rdms(np.ones((5, 5)), rdm(x[:5]))
    with pytest.raises(ValueError, match="samples"):
        rsa(x, y[:10])
    with pytest.raises(ValueError, match="method"):
        rdm(x, "manhattan")
    bad = np.eye(4)
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        spectral_cluster_layers(bad, 2)
    with pytest.raises(ValueError, match="n_clusters"):
        spectral_cluster_layers(np.eye(4), 5)
