"""Full-data CKA against references written here from the formulas (explicit Gram matrices, explicit
centring matrix H, explicit U-statistic loops), plus the known cases and the error cases."""
import itertools

import numpy as np
import pytest
import torch

from vitscope.analysis.similarity import cka, cka_from_grams, cka_matrix, gram_linear, gram_rbf, hsic, median_sigma
from vitscope.analysis.similarity.cka import _choose_method, center_gram


# ----------------------------------------------------------------------------- references (numpy, from the definitions)
def ref_linear_gram(x):
    return x @ x.T


def ref_rbf_gram(x, sigma):
    n = x.shape[0]
    k = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            k[i, j] = np.exp(-np.sum((x[i] - x[j]) ** 2) / (2 * sigma ** 2))
    return k


def ref_median_sigma(x):
    """ciernik2025: sqrt(torch.median(non-zero squared distances)); torch's median is the lower middle value."""
    n = x.shape[0]
    vals = sorted(np.sum((x[i] - x[j]) ** 2) for i in range(n) for j in range(i + 1, n))
    vals = [v for v in vals if v != 0]
    return np.sqrt(vals[(len(vals) - 1) // 2])


def ref_hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_hsic_unbiased_song(k, l):
    """Song et al. 2012 / Nguyen et al. 2021 eq. 3 with ones vectors and zeroed diagonals."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones((n, 1))
    val = (np.trace(kt @ lt) + (one.T @ kt @ one).item() * (one.T @ lt @ one).item() / ((n - 1) * (n - 2))
           - 2.0 / (n - 2) * (one.T @ kt @ lt @ one).item())
    return val / (n * (n - 3))


def ref_hsic_unbiased_loops(k, l):
    """The U-statistic over distinct index 4-tuples: E[k_ij l_ij] + E[k_ij l_qr] - 2 E[k_ij l_iq]."""
    n = k.shape[0]
    tot, cnt = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        tot += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        cnt += 1
    return tot / cnt


def ref_cka(k, l, unbiased):
    f = ref_hsic_unbiased_song if unbiased else ref_hsic_biased
    return f(k, l) / np.sqrt(f(k, k) * f(l, l))


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    y = x @ rng.normal(size=(12, 7)) + 0.5 * rng.normal(size=(40, 7)) + 3.0
    return x, y


# ----------------------------------------------------------------------------- HSIC
def test_unbiased_hsic_equals_explicit_u_statistic_loops():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 5))
    for k, l in ((ref_linear_gram(x), ref_linear_gram(y)), (ref_rbf_gram(x, 1.3), ref_rbf_gram(y, 2.0))):
        loops = ref_hsic_unbiased_loops(k, l)
        assert ref_hsic_unbiased_song(k, l) == pytest.approx(loops, rel=1e-10, abs=1e-12)
        assert hsic(k, l, unbiased=True) == pytest.approx(loops, rel=1e-10, abs=1e-12)


def test_biased_hsic_equals_explicit_centring_matrix(xy):
    x, y = xy
    k, l = ref_linear_gram(x), ref_linear_gram(y)
    assert hsic(k, l, unbiased=False) == pytest.approx(ref_hsic_biased(k, l), rel=1e-10)
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    np.testing.assert_allclose(center_gram(torch.tensor(k), unbiased=False).numpy(), h @ k @ h, atol=1e-9)


def test_grams_match_definitions(xy):
    x, _ = xy
    np.testing.assert_allclose(gram_linear(x).numpy(), ref_linear_gram(x), rtol=1e-12)
    np.testing.assert_allclose(gram_rbf(x, sigma=2.5).numpy(), ref_rbf_gram(x, 2.5), rtol=1e-10, atol=1e-14)
    assert median_sigma(x) == pytest.approx(ref_median_sigma(x), rel=1e-10)
    np.testing.assert_allclose(gram_rbf(x, bandwidth="seed000").numpy(), ref_rbf_gram(x, ref_median_sigma(x)),
                               rtol=1e-9, atol=1e-14)


# ----------------------------------------------------------------------------- CKA against the references
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("method", ["auto", "gram", "features"])
def test_linear_cka_matches_reference(xy, unbiased, method):
    x, y = xy
    ref = ref_cka(ref_linear_gram(x), ref_linear_gram(y), unbiased)
    assert cka(x, y, unbiased=unbiased, method=method) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("sigma", [None, 3.0])
def test_rbf_cka_matches_reference(xy, unbiased, sigma):
    x, y = xy
    sx = ref_median_sigma(x) if sigma is None else sigma
    sy = ref_median_sigma(y) if sigma is None else sigma
    ref = ref_cka(ref_rbf_gram(x, sx), ref_rbf_gram(y, sy), unbiased)
    assert cka(x, y, kernel="rbf", sigma=sigma, unbiased=unbiased, bandwidth="seed000") == pytest.approx(ref, rel=1e-9)
    assert cka_from_grams(ref_rbf_gram(x, sx), ref_rbf_gram(y, sy), unbiased) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("n,d", [(30, 5), (12, 200)])
@pytest.mark.parametrize("unbiased", [True, False])
def test_feature_space_form_equals_gram_form(n, d, unbiased):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, d)) + 10.0                                                 # a large offset too
    y = np.tanh(x[:, : max(1, d // 2)] * 0.1) + 0.1 * rng.normal(size=(n, max(1, d // 2)))
    a = cka(x, y, unbiased=unbiased, method="features")
    b = cka(x, y, unbiased=unbiased, method="gram")
    assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- known cases
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_of_x_with_itself_is_one(xy, kernel, unbiased):
    x, _ = xy
    assert cka(x, x, kernel=kernel, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_invariance_to_orthogonal_transform_and_isotropic_scaling(xy, kernel, unbiased):
    x, y = xy
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(12, 12)))
    base = cka(x, y, kernel=kernel, unbiased=unbiased)
    assert cka(x @ q, y, kernel=kernel, unbiased=unbiased) == pytest.approx(base, rel=1e-9)
    assert cka(4.7 * x, y, kernel=kernel, unbiased=unbiased) == pytest.approx(base, rel=1e-9)
    assert cka(0.3 * (x @ q), 2.0 * y, kernel=kernel, unbiased=unbiased) == pytest.approx(base, rel=1e-9)


def test_unbiased_near_zero_for_independent_features_where_biased_is_not():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(100, 1000)), rng.normal(size=(100, 1000))
    unb = cka(x, y, unbiased=True)
    bia = cka(x, y, unbiased=False)
    assert abs(unb) < 0.05
    assert bia > 0.5


def test_inputs_torch_float32_and_numpy_agree(xy):
    x, y = xy
    a = cka(x, y)
    b = cka(torch.tensor(x, dtype=torch.float64), torch.tensor(y))
    assert a == pytest.approx(b, rel=1e-12)
    c = cka(x.astype(np.float32), y.astype(np.float32))
    assert c == pytest.approx(a, rel=1e-5)
    # (n, T, D) inputs are flattened per sample, as walmer2023 does for "all tokens"
    x3 = x.reshape(40, 3, 4)
    assert cka(x3, y) == pytest.approx(a, rel=1e-12)


def test_minmax_quirk_is_a_no_op_for_one_full_unbiased_batch(xy):
    x, y = xy
    k, l = ref_linear_gram(x), ref_linear_gram(y)

    def quirk(m):                                                                      # walmer2023's code, verbatim logic
        m = m - m.min()
        m = m / m.max()
        np.fill_diagonal(m, 0)
        return m

    ref = ref_cka(quirk(k), quirk(l), True)
    assert cka(x, y, minmax=True) == pytest.approx(ref, rel=1e-10)
    assert cka(x, y, minmax=True) == pytest.approx(cka(x, y), rel=1e-9)


# ----------------------------------------------------------------------------- matrices
def test_cka_matrix_equals_pairwise_and_is_symmetric():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(25, 6))
    layers = [base @ rng.normal(size=(6, d)) + 0.3 * rng.normal(size=(25, d)) for d in (4, 9, 16)]
    m = cka_matrix(layers)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m, m.T)
    for i, j in itertools.product(range(3), range(3)):
        ref = ref_cka(ref_linear_gram(layers[i]), ref_linear_gram(layers[j]), True)
        assert m[i, j] == pytest.approx(ref, rel=1e-9)
    cross = cka_matrix({"a": layers[0], "b": layers[1]}, {"c": layers[2]}, kernel="rbf", unbiased=False)
    assert cross.shape == (2, 1)
    assert cross[1, 0] == pytest.approx(cka(layers[1], layers[2], kernel="rbf", unbiased=False), rel=1e-12)
    # forcing the Gram path with a tiny cache budget recomputes instead of caching, same numbers
    m2 = cka_matrix(layers, method="gram", max_cache_bytes=0)
    np.testing.assert_allclose(m2, m, rtol=1e-9)


def test_auto_method_choice():
    assert _choose_method("auto", "linear", False, 10000, [384] * 12, None) == "features"
    assert _choose_method("auto", "linear", False, 100, [197 * 384] * 12, None) == "gram"
    assert _choose_method("auto", "rbf", False, 10000, [384], None) == "gram"
    assert _choose_method("auto", "linear", True, 10000, [384], None) == "gram"
    with pytest.raises(ValueError, match="linear kernel"):
        _choose_method("features", "rbf", False, 10, [3], None)


# ----------------------------------------------------------------------------- errors, never NaN
def test_fewer_than_four_samples_with_unbiased_hsic_is_an_error():
    x = np.random.default_rng(6).normal(size=(3, 5))
    with pytest.raises(ValueError, match="at least 4 samples"):
        cka(x, x)
    assert cka(x, x, unbiased=False) == pytest.approx(1.0)                             # biased is defined at n = 3
    with pytest.raises(ValueError, match="at least 2 samples"):
        cka(x[:1], x[:1], unbiased=False)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_constant_features_are_an_error(kernel, unbiased):
    x = np.random.default_rng(7).normal(size=(10, 4))
    const = np.tile(np.array([[1.0, 2.0, 3.0]]), (10, 1))
    with pytest.raises(ValueError, match="constant"):
        cka(x, const, kernel=kernel, unbiased=unbiased)
    with pytest.raises(ValueError, match="constant"):
        cka_matrix([x, const], kernel=kernel, unbiased=unbiased)


def test_degenerate_unbiased_structure_is_an_error_not_nan():
    # mutually orthogonal samples: K~ = 0 off the diagonal, so unbiased HSIC(X, X) = 0
    x = np.eye(6)
    y = np.random.default_rng(8).normal(size=(6, 3))
    with pytest.raises(ValueError, match="HSIC"):
        cka(x, y, method="gram")


def test_mismatched_n_and_bad_values_are_errors():
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="samples"):
        cka(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)))
    with pytest.raises(ValueError, match="same samples"):
        cka_matrix([rng.normal(size=(10, 3)), rng.normal(size=(9, 3))])
    bad = rng.normal(size=(10, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cka(bad, bad)
    with pytest.raises(ValueError, match="kernel"):
        cka(bad, bad, kernel="poly")
    with pytest.raises(ValueError, match="sigma"):
        cka(rng.normal(size=(10, 3)), rng.normal(size=(10, 3)), kernel="rbf", sigma=-1.0)
    with pytest.raises(ValueError, match="single array"):
        cka_matrix(rng.normal(size=(10, 3)))
