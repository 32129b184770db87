"""Token importance, removal curves and their AUCs against slow references written from the definitions.

- the seed's gradient importance against central finite differences of each block's loss in the attention
  probabilities (no autograd), on float64 models;
- Chefer relevance against a per-image loop;
- removal curves against re-running the model per image and per number of removed tokens, with removed
  tokens masked out of every attention instead of dropped (an independent mechanism: a token no query can
  attend to cannot change any other token);
- the AUCs against their formulas and scikit-learn / NumPy trapezoids.
"""
import numpy as np
import pytest
import torch
from sklearn.metrics import auc as sk_auc

from vitscope.analysis.class_embedding.importance import (
    chefer_importance, importance_order, random_orders, seed_gradient_importance,
)
from vitscope.analysis.class_embedding.removal import (
    auc_seed, auc_trapezoid, correct_after_removal, removal_curves, removal_mask, removal_steps,
)
from vitscope.models import HookedViT, ViTConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)                       # tiny models: threads only add overhead on a busy machine
    yield
    torch.set_num_threads(before)

BASE = dict(img_size=16, patch_size=4, embed_dim=16, num_heads=2, num_classes=5)
LATE = dict(depth=3, num_registers=2, register_location="end", register_block=1, cls_block=1)


def _model(**kw):
    torch.manual_seed(0)
    return HookedViT(ViTConfig(**{**BASE, "depth": 2, **kw})).eval()


def _data(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


# ----------------------------------------------------------------------------- importance
@pytest.mark.parametrize("kw", [{}, LATE], ids=["cls_from_block0", "late_cls_and_registers"])
def test_seed_gradient_importance_equals_finite_differences(kw):
    m = _model(**kw).double()
    x, y = _data()
    x = x.double()
    got = seed_gradient_importance(m, x, y).double()
    eps, N, B = 1e-6, 16, 3
    # the sum over heads of the partial derivatives = the derivative along all heads' entries at once; the 16
    # patches are bumped in 16 copies of the batch (copy j bumps patch j), one forward per block and sign
    xr = x.repeat(N, 1, 1, 1)                                           # N * B, 3, H, W (copy j = rows j*B..)
    yr = y.repeat(N)
    j_of_row = torch.arange(N).repeat_interleave(B)
    ref = torch.zeros(B, N, dtype=torch.float64)
    for b in range(m.cfg.depth):
        lay = m.token_layout(b)
        if lay.cls is None:                                    # the seed's loss reads CLS: no CLS, no term
            continue

        def loss(sign, b=b, lay=lay):
            def bump(p, hook):
                p = p.clone()
                p[torch.arange(N * B), :, lay.cls, lay.patches.start + j_of_row] += sign * eps
                return p
            with torch.no_grad(), m.hooks([(f"blocks.{b}.attn.hook_pattern", bump)]):
                _, cache = m.run_with_cache(xr, names_filter=f"blocks.{b}.hook_attn_out", stop_at=b + 1)
            logits = m.project_to_logits(cache[f"blocks.{b}.hook_attn_out"][:, lay.cls])
            p = logits.softmax(-1)
            return -(p.log_softmax(-1)[torch.arange(N * B), yr])  # CrossEntropyLoss on the probabilities

        ref -= ((loss(1) - loss(-1)) / (2 * eps)).reshape(N, B).T
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)


def test_chefer_importance_equals_a_per_image_loop():
    m = _model()
    x, y = _data()
    got = chefer_importance(m, x, y)
    for i in range(3):
        pats = {}
        with torch.enable_grad():
            xi = x[i:i + 1].clone().requires_grad_(True)
            with m.hooks([("blocks.*.attn.hook_pattern", lambda t, hook: pats.__setitem__(hook.name, t))]):
                logit = m(xi)[0, y[i]]
            names = [f"blocks.{b}.attn.hook_pattern" for b in range(m.cfg.depth)]
            grads = torch.autograd.grad(logit, [pats[n] for n in names])
        R = torch.eye(17)
        for n, g in zip(names, grads):
            A = pats[n][0].detach()
            cam = torch.zeros(17, 17)
            for h in range(A.shape[0]):
                cam += (g[0, h] * A[h]).clamp(min=0) / A.shape[0]
            R = R + cam @ R
        torch.testing.assert_close(got[i], R[0, 1:], rtol=1e-5, atol=1e-7)


def test_importance_order_most_important_first_ties_by_index():
    imp = torch.tensor([[0.1, 0.5, 0.5, -1.0], [3.0, 2.0, 1.0, 0.0]])
    assert importance_order(imp).tolist() == [[1, 2, 0, 3], [0, 1, 2, 3]]


def test_random_orders_are_the_seeded_permutations_and_leave_the_global_state_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    orders = random_orders(49, n=10, seed=0)
    assert torch.equal(torch.rand(1), before)                      # global generator untouched
    for i in range(10):
        torch.manual_seed(i)
        assert torch.equal(orders[i], torch.randperm(49))          # the seed's torch.randperm(49) after seed i
    assert torch.equal(random_orders(49, 10, 0), orders)
    assert torch.equal(random_orders(49, 3, 5), orders[5:8])
    assert not torch.equal(random_orders(49, 1, 1)[0], orders[0])


# ----------------------------------------------------------------------------- curves
def _masked_logits(m, x, removed):
    """Reference: run the model with the removed patches ((B, N) bool) masked out as keys in every block."""
    def mask(scores, hook):                                         # B, H, T, T
        b = int(hook.name.split(".")[1])
        lay = m.token_layout(b)
        s = scores.clone()
        for i in range(s.shape[0]):
            for j in removed[i].nonzero().flatten().tolist():
                s[i, :, :, lay.patches.start + j] = float("-inf")
        return s
    with torch.no_grad(), m.hooks([("blocks.*.attn.hook_attn_scores", mask)]):
        return m(x)


def _gone(order, k, direction):
    """(B, N) bool: the k patches removed from each row of ``order`` (most important first)."""
    mask = torch.zeros(order.shape, dtype=torch.bool)
    for i in range(order.shape[0]):
        for j in (order[i, order.shape[1] - k:] if direction == "negative" else order[i, :k]).tolist():
            mask[i, j] = True
    return mask


@pytest.mark.parametrize("kw", [{}, LATE], ids=["cls_from_block0", "late_cls_and_registers"])
def test_correct_after_removal_equals_removing_tokens_one_at_a_time(kw):
    m = _model(**kw)
    x, _ = _data(4, seed=1)
    with torch.no_grad():
        y = m(x).argmax(-1)                                        # labels = unperturbed predictions
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    removed = [0, 1, 5, 15]
    for direction in ("negative", "positive"):
        got = correct_after_removal(m, x, y, order, removed, direction)
        for kk, k in enumerate(removed):
            # negative: the least important (the end of the order) go first; positive: the most important
            want = _masked_logits(m, x, _gone(order, k, direction)).argmax(-1) == y
            assert torch.equal(got[kk], want), (direction, k)


def test_removal_mask_and_steps():
    order = torch.tensor([2, 0, 3, 1])
    assert removal_mask(order, 1, "negative").tolist() == [False, True, False, False]
    assert removal_mask(order, 1, "positive").tolist() == [False, False, True, False]
    assert removal_mask(order, 3, "negative").tolist() == [True, True, False, True]
    assert removal_steps(49).tolist() == list(range(49))
    assert removal_steps(64, 8).tolist() == [0, 8, 16, 24, 32, 40, 48, 56, 63]
    with pytest.raises(ValueError, match="direction"):
        removal_mask(order, 1, "sideways")


def test_removal_curves_count_like_a_slow_loop():
    m = _model(**LATE)
    x, _ = _data(5, seed=2)
    with torch.no_grad():
        y = m(x).argmax(-1)
    y[0] = (y[0] + 1) % 5                                           # one image wrong from the start
    imps = {}
    res = removal_curves(m, [(x[:3], y[:3]), (x[3:], y[3:])], orders="grads,random", n_random=2, seed=7,
                         step=4, importances=imps)
    assert res.n_images == 5 and res.removed.tolist() == [0, 4, 8, 12, 15]
    assert res.seeds == [7, 8]
    perms = [random_orders(16, 1, 7 + r)[0] for r in range(2)]
    grads_order = importance_order(imps["grads"])
    assert imps["grads"].shape == (5, 16)
    for kk, k in enumerate(res.removed.tolist()):
        for r in range(2):
            gone = _gone(perms[r].expand(5, 16), k, "negative")
            assert res.random_correct[r, kk] == int((_masked_logits(m, x, gone).argmax(-1) == y).sum())
        for d in ("negative", "positive"):
            gone = _gone(grads_order, k, d)
            assert res.correct[("grads", d)][kk] == int((_masked_logits(m, x, gone).argmax(-1) == y).sum())
    assert res.accuracy("grads", "negative")[0] == 4 / 5
    np.testing.assert_allclose(res.accuracy("random"), res.random_correct.mean(0) / 5)
    rows = res.curve_rows("tiny")
    assert {r["order"] for r in rows} == {"grads", "random"}
    assert len([r for r in rows if r["seed"] is not None]) == 2 * 5
    aucs = {(r["order"], r["direction"], r["metric"]) for r in res.auc_rows("tiny")}
    assert ("random", "both", "auc_seed") in aucs and ("grads", "positive", "auc_trapezoid") in aucs


# ----------------------------------------------------------------------------- AUCs
def test_auc_seed_is_the_seeds_sum_over_max_times_n():
    rng = np.random.default_rng(0)
    N = 49
    acc = np.r_[0.9, rng.uniform(0.1, 0.8, N - 1)]                  # k = 0 .. 48; k = 0 is not part of it
    seed_points = acc[1:][::-1]                                    # the seed stores them by tokens kept, 1..48
    want = sum(seed_points) / (max(seed_points) * 49)
    assert auc_seed(acc, np.arange(N), N) == pytest.approx(want, rel=1e-12)
    assert auc_seed(np.ones(N), np.arange(N), N) == pytest.approx(48 / 49)


def test_auc_trapezoid_matches_sklearn_and_numpy():
    rng = np.random.default_rng(1)
    removed = removal_steps(64, 5)
    acc = rng.uniform(0, 1, len(removed))
    x = removed / 64
    assert auc_trapezoid(acc, removed, 64) == pytest.approx(sk_auc(x, acc), rel=1e-12)
    assert auc_trapezoid(acc, removed, 64) == pytest.approx(float(np.trapezoid(acc, x)), rel=1e-12)
    assert auc_trapezoid(np.ones(64), np.arange(64), 64) == pytest.approx(63 / 64)


def test_bad_input_is_one_clear_line():
    m = _model()
    x, y = _data()
    with pytest.raises(ValueError, match="need the true class"):
        seed_gradient_importance(m, x, None)
    with pytest.raises(ValueError, match="no label"):
        removal_curves(m, [(x, torch.tensor([0, -1, 1]))], orders="random", n_random=1)
    with pytest.raises(ValueError, match=r"classes of the model's head \(0..4\)"):
        chefer_importance(m, x, torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError, match="needs fitted per-token ridge probes"):
        removal_curves(m, [(x, y)], orders="probe")
    with pytest.raises(ValueError, match="unknown order"):
        removal_curves(m, [(x, y)], orders="grads,saliency")
    headless = _model(head="none")
    with pytest.raises(ValueError, match="no classification head"):
        removal_curves(headless, [(x, y)], orders="random", n_random=1)
    nocls = _model(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="has none"):
        seed_gradient_importance(nocls, x, y)
