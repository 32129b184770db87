"""MinibatchCKA against the loop reference of Nguyen et al. 2021 eq. 3 in test_cka.py (ones vectors, zeroed diagonals,
per-batch HSIC averaged over batches), including walmer2023's min-max kernel quirk."""
import numpy as np
import pytest
import torch

from test_cka import ref_hsic_unbiased_song as eq3_hsic  # noqa: E402  (the loop reference, one copy)

from vitscope.analysis.similarity import MinibatchCKA, cka, cka_matrix


def seed002_quirk(k):
    k = k - k.min()
    k = k / k.max()
    np.fill_diagonal(k, 0)
    return k


def ref_minibatch_cka(xs_batches, ys_batches, quirk=False):
    """xs_batches[b][i]: (b, d) features of layer i in batch b. Returns the (Lx, Ly) matrix."""
    lx, ly = len(xs_batches[0]), len(ys_batches[0])
    xy, xx, yy = np.zeros((lx, ly)), np.zeros(lx), np.zeros(ly)
    nb = len(xs_batches)
    for bx, by in zip(xs_batches, ys_batches):
        ks = [x @ x.T for x in bx]
        ls = [y @ y.T for y in by]
        if quirk:
            ks, ls = [seed002_quirk(k) for k in ks], [seed002_quirk(l) for l in ls]
        for i in range(lx):
            xx[i] += eq3_hsic(ks[i], ks[i]) / nb
            for j in range(ly):
                xy[i, j] += eq3_hsic(ks[i], ls[j]) / nb
        for j in range(ly):
            yy[j] += eq3_hsic(ls[j], ls[j]) / nb
    return xy / np.sqrt(xx[:, None] * yy[None, :])


@pytest.fixture
def layers():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(48, 8))
    return [np.tanh(base @ rng.normal(size=(8, d))) + 0.2 * rng.normal(size=(48, d)) for d in (5, 8, 13)]


def split(layers, bs):
    n = layers[0].shape[0]
    return [[x[s:s + bs] for x in layers] for s in range(0, n, bs)]


@pytest.mark.parametrize("kernel,sigma", [("linear", None), ("rbf", 2.0), ("rbf", None)])
def test_one_batch_with_all_data_equals_full_unbiased_cka(layers, kernel, sigma):
    mb = MinibatchCKA(kernel=kernel, sigma=sigma).update(layers)
    full = cka_matrix(layers, kernel=kernel, sigma=sigma, unbiased=True)
    np.testing.assert_allclose(mb.compute(), full, rtol=1e-9)
    # and the quirk is invisible with a single batch
    mbq = MinibatchCKA(kernel=kernel, sigma=sigma, minmax=True).update(layers)
    np.testing.assert_allclose(mbq.compute(), full, rtol=1e-8)


@pytest.mark.parametrize("quirk", [False, True])
def test_several_batches_match_the_eq3_reference(layers, quirk):
    batches = split(layers, 12)
    mb = MinibatchCKA(minmax=quirk)
    for b in batches:
        mb.update(b)
    ref = ref_minibatch_cka(batches, batches, quirk)
    np.testing.assert_allclose(mb.compute(), ref, rtol=1e-9)
    assert mb.n_batches == 4 and mb.n_samples == 48


def test_quirk_changes_multi_batch_results(layers):
    batches = split(layers, 12)
    a, b = MinibatchCKA(), MinibatchCKA(minmax=True)
    for bt in batches:
        a.update(bt)
        b.update(bt)
    assert np.abs(a.compute() - b.compute()).max() > 1e-4


def test_paired_two_models_and_dict_inputs(layers):
    rng = np.random.default_rng(1)
    other = [layers[0] @ rng.normal(size=(5, 4)), rng.normal(size=(48, 6))]
    bx, by = split(layers, 16), split(other, 16)
    mb = MinibatchCKA()
    for x, y in zip(bx, by):
        mb.update({f"a{i}": v for i, v in enumerate(x)}, {f"b{i}": v for i, v in enumerate(y)})
    out = mb.compute()
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, ref_minibatch_cka(bx, by), rtol=1e-9)
    assert mb.names_x == ["a0", "a1", "a2"] and mb.names_y == ["b0", "b1"]


def test_merge_equals_one_accumulator(layers):
    batches = split(layers, 8)
    whole, p1, p2 = MinibatchCKA(), MinibatchCKA(), MinibatchCKA()
    for i, b in enumerate(batches):
        whole.update(b)
        (p1 if i % 2 else p2).update(b)
    np.testing.assert_allclose(p1.merge(p2).compute(), whole.compute(), rtol=1e-12)
    restored = MinibatchCKA().load_state_dict(whole.state_dict())
    np.testing.assert_allclose(restored.compute(), whole.compute())
    with pytest.raises(ValueError, match="missing"):
        MinibatchCKA().load_state_dict({"hsic_xy": None})


def test_tensor_and_token_inputs(layers):
    t = [torch.tensor(x, dtype=torch.float32).reshape(48, 1, -1) for x in layers]    # (b, T, D) flattened
    a = MinibatchCKA().update(t).compute()
    b = MinibatchCKA().update(layers).compute()
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_unbiased_minibatch_of_independent_features_is_near_zero():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(512, 300)), rng.normal(size=(512, 300))
    mb = MinibatchCKA()
    for s in range(0, 512, 64):
        mb.update([x[s:s + 64]], [y[s:s + 64]])
    assert abs(mb.compute()[0, 0]) < 0.05
    assert cka(x, y, unbiased=False) > 0.3


def test_errors_never_nan(layers):
    with pytest.raises(ValueError, match="at least 4 samples"):
        MinibatchCKA().update([x[:3] for x in layers])
    with pytest.raises(ValueError, match="same samples"):
        MinibatchCKA().update([layers[0][:8], layers[1][:9]])
    with pytest.raises(ValueError, match="before any update"):
        MinibatchCKA().compute()
    mb = MinibatchCKA().update(split(layers, 8)[0])
    with pytest.raises(ValueError, match="second list"):
        mb.update(split(layers, 8)[1], split(layers, 8)[1])
    with pytest.raises(ValueError, match="representations"):
        mb.update(split(layers, 8)[1][:2])
    const = MinibatchCKA(minmax=True)
    for b in split(layers, 8):
        const.update([b[0], np.ones((8, 3))])
    with pytest.raises(ValueError, match="constant"):
        const.compute()
    rbf_const = MinibatchCKA(kernel="rbf").update([layers[0][:8], np.zeros((8, 3))])
    with pytest.raises(ValueError, match="constant"):
        rbf_const.compute()


def test_non_finite_features_are_an_error(layers):
    bad = layers[1][:8].copy()
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        MinibatchCKA().update([layers[0][:8], bad])
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"xs\[1\]"):
        MinibatchCKA(kernel="rbf", sigma=1.0).update([layers[0][:8], bad])
