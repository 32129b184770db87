"""Per-token ridge probes (vilas2023) against scikit-learn's Ridge and plain loops written from the definition."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from vitscope.analysis.probes.ridge import (
    RidgeAccumulator, evaluate_token_probes, fit_token_probes, pm1_targets, probe_rank_sum, resolve_sites,
    ridge_fit, true_class_rank,
)
from vitscope.models import HookedViT, ViTConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)                       # tiny models: threads only add overhead on a busy machine
    yield
    torch.set_num_threads(before)


def _sk(X, Y, alpha=1.0, fit_intercept=True):
    r = Ridge(alpha=alpha, fit_intercept=fit_intercept, solver="cholesky").fit(X, Y)
    return r.coef_.T, np.broadcast_to(r.intercept_, (Y.shape[1],))


@pytest.mark.parametrize("n,d", [(40, 6), (12, 30)])                  # more rows than features, and fewer
def test_ridge_fit_matches_sklearn_at_every_position(n, d):
    rng = np.random.default_rng(0)
    P, C = 4, 5
    X = rng.normal(size=(P, n, d)) * rng.uniform(0.5, 3, size=(P, 1, d)) + rng.normal(size=(P, 1, d))
    labels = rng.integers(0, C, size=n)
    Y = pm1_targets(torch.from_numpy(labels), C).numpy()
    fit = ridge_fit(torch.from_numpy(X), torch.from_numpy(Y), alpha=1.0)
    for p in range(P):                                              # one sklearn fit per position
        W, b = _sk(X[p], Y)
        np.testing.assert_allclose(fit.weight[p].numpy(), W, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(fit.bias[p].numpy(), b, rtol=1e-6, atol=1e-8)
    pred = fit.predict(torch.from_numpy(X).transpose(0, 1))             # n, P, C
    for p in range(P):
        np.testing.assert_allclose(pred[:, p].numpy(), Ridge(alpha=1.0).fit(X[p], Y).predict(X[p]),
                                   rtol=1e-6, atol=1e-8)


def test_ridge_without_intercept_and_other_alpha():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(30, 5)), rng.normal(size=(30, 3))
    fit = ridge_fit(torch.from_numpy(X), torch.from_numpy(Y), alpha=0.3, fit_intercept=False)
    W, _ = _sk(X, Y, alpha=0.3, fit_intercept=False)
    np.testing.assert_allclose(fit.weight.numpy(), W, rtol=1e-6, atol=1e-9)
    assert torch.all(fit.bias == 0)
    with pytest.raises(ValueError, match="alpha"):
        ridge_fit(torch.from_numpy(X), torch.from_numpy(Y), alpha=0)


def test_streamed_statistics_equal_the_one_shot_fit_and_sklearn():
    rng = np.random.default_rng(2)
    n, P, D, C = 50, 3, 7, 4
    X = rng.normal(size=(n, P, D)).astype(np.float32) + 2.0
    labels = rng.integers(0, C, size=n)
    acc = RidgeAccumulator(P, D, C, alpha=1.0)
    for s in (slice(0, 13), slice(13, 14), slice(14, 50)):            # uneven batches
        acc.update(torch.from_numpy(X[s]), torch.from_numpy(labels[s]))
    fit = acc.solve()
    Y = np.where(np.arange(C)[None] == labels[:, None], 1.0, -1.0)
    for p in range(P):
        W, b = _sk(X[:, p].astype(np.float64), Y)
        np.testing.assert_allclose(fit.weight[p].numpy(), W, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fit.bias[p].numpy(), b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="labels must be in"):
        acc.update(torch.from_numpy(X[:2]), torch.tensor([0, C]))
    with pytest.raises(ValueError, match="expected features of shape"):
        acc.update(torch.zeros(2, P + 1, D), torch.tensor([0, 1]))


def test_true_class_rank_counts_strictly_larger_scores():
    scores = torch.tensor([[[3.0, 1.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                           [[1.0, 2.0, 3.0, 4.0], [5.0, 1.0, 1.0, 1.0]]])       # B=2, P=2, C=4
    labels = torch.tensor([2, 0])
    got = true_class_rank(scores, labels)
    want = torch.zeros(2, 2, dtype=torch.long)
    for b in range(2):
        for p in range(2):
            want[b, p] = sum(int(scores[b, p, c] > scores[b, p, labels[b]]) for c in range(4))
    assert torch.equal(got, want)
    assert got.tolist() == [[0, 0], [3, 0]]                          # ties count as not larger


def test_resolve_sites_accepts_seed_names():
    assert resolve_sites("hs,attn,mlp") == ["resid_post", "attn_out", "mlp_out"]
    assert resolve_sites(["resid_post", "hs"]) == ["resid_post"]
    with pytest.raises(ValueError, match="unknown probe site"):
        resolve_sites("ln2")


@pytest.fixture(scope="module")
def late_model():
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=16, patch_size=4, embed_dim=12, depth=3, num_heads=2, num_classes=3,
                    num_registers=2, register_location="end", register_block=1, cls_block=2)
    return HookedViT(cfg).eval()


def test_token_probes_on_a_model_with_late_tokens(late_model):
    m = late_model
    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.randn(30, 3, 16, 16, generator=g), torch.randint(0, 3, (30,), generator=g)
    xte, yte = torch.randn(9, 3, 16, 16, generator=g), torch.randint(0, 3, (9,), generator=g)
    probes = fit_token_probes(m, [(xtr[:17], ytr[:17]), (xtr[17:], ytr[17:])], 3, sites="hs,mlp")
    res = evaluate_token_probes(m, probes, [(xte, yte)])
    hooks = {("resid_post", b): f"blocks.{b}.hook_resid_post" for b in range(3)}
    hooks.update({("mlp_out", b): f"blocks.{b}.hook_mlp_out" for b in range(3)})
    with torch.no_grad():
        _, ctr = m.run_with_cache(xtr)
        _, cte = m.run_with_cache(xte)
    Ytr = np.where(np.arange(3)[None] == ytr.numpy()[:, None], 1.0, -1.0)
    expected_tokens = {0: 16, 1: 18, 2: 19}                            # registers at block 1, CLS at block 2
    for (site, b), h in hooks.items():
        T = ctr[h].shape[1]
        assert T == expected_tokens[b] == res.ranks[(site, b)].shape[1]
        for p in range(T):                                           # one sklearn probe per position
            r = Ridge(alpha=1.0).fit(ctr[h][:, p].double().numpy(), Ytr)
            s = r.predict(cte[h][:, p].double().numpy())
            ranks = [(s[i] > s[i, yte[i]]).sum() for i in range(9)]
            assert res.ranks[(site, b)][:, p].tolist() == ranks
            assert res.correct[(site, b)][:, p].tolist() == [s[i].argmax() == yte[i] for i in range(9)]
    # the "linear probe" order: ranks of the patch tokens summed over the residual blocks
    total = np.zeros((9, 16), np.int64)
    for b in range(3):
        lay = m.token_layout(b)
        for j in range(16):
            total[:, j] += res.ranks[("resid_post", b)][:, lay.patches.start + j]
    np.testing.assert_array_equal(res.rank_sum("resid_post"), total)
    np.testing.assert_array_equal(probe_rank_sum(m, probes, xte, yte).numpy(), total)
    rows = res.rows("tiny")
    acc = [r for r in rows if r["metric"] == "accuracy" and r["site"] == "resid_post" and r["block"] == 2]
    assert [r["token"] for r in acc][:2] == ["cls", "patch0"] and acc[-1]["token"] == "reg1"


def test_token_probes_bad_labels(late_model):
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ValueError, match="need class labels"):
        fit_token_probes(late_model, [(x, torch.tensor([0, -1, 1, 2]))], 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        fit_token_probes(late_model, [(x, torch.tensor([0, 5, 1, 2]))], 3)
