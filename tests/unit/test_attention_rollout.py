"""Rollout, gradient rollout and Chefer relevance against plain-loop references written from the definitions."""
import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention import relevance as RV
from vitscope.analysis.attention import rollout as RO

CONFIGS = {
    "plain": dict(),
    "registers": dict(num_registers=2),
    "late": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
}


def make_model(kind, seed=0):
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=10, **CONFIGS[kind])
    return HookedViT(cfg).eval()


def random_patterns(model, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {b: (torch.randn(B, 4, model.token_layout(b).n_tokens, model.token_layout(b).n_tokens, generator=g) * 2)
            .softmax(-1) for b in range(model.cfg.depth)}


# ----------------------------------------------------------------------------- loop references
def names(layout):
    n = {}
    if layout.cls is not None:
        n[layout.cls] = "cls"
    for k, i in enumerate(layout.registers):
        n[i] = f"reg{k}"
    for j in range(layout.patches.stop - layout.patches.start):
        n[layout.patches.start + j] = f"p{j}"
    return [n[i] for i in range(layout.n_tokens)]


def matmul(A, B):
    n, m, p = len(A), len(B), len(B[0])
    return [[sum(A[i][k] * B[k][j] for k in range(m)) for j in range(p)] for i in range(n)]


def eye(n):
    return [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]


def embed(J, old, new):
    """Identity for tokens new at this block; old tokens keep their entries (found by name)."""
    on, nn = names(old), names(new)
    out = eye(len(nn))
    for i, a in enumerate(on):
        for j, b in enumerate(on):
            out[nn.index(a)][nn.index(b)] = J[i][j]
    return out


def ref_discard_add_identity(f, cls, ratio):
    """Zero the ``ratio`` share of smallest entries (never CLS -> CLS), add the identity, renormalise rows."""
    T = len(f)
    k = int(ratio * T * T)
    cand = sorted(((f[i][j], i, j) for i in range(T) for j in range(T) if not (cls is not None and i == j == cls)))
    for _, i, j in cand[:k]:
        f[i][j] = 0.0
    for i in range(T):
        f[i][i] += 1.0
        rs = sum(f[i])
        f[i] = [v / rs for v in f[i]]
    return f


def ref_chain(mats_per_sample, layouts, blocks, residual):
    J = None
    prev = None
    for b in blocks:
        A = mats_per_sample[b]
        if J is None:
            J = eye(len(A))
        else:
            J = embed(J, prev, layouts[b])
        AJ = matmul(A, J)
        J = AJ if residual == "identity" else [[J[i][j] + AJ[i][j] for j in range(len(J))] for i in range(len(J))]
        prev = layouts[b]
    return np.array(J)


def ref_rollout_sample(P, layouts, blocks, fusion, ratio, s):
    mats = {}
    for b in blocks:
        a = P[b][s].double().numpy()                                   # H, T, T
        H, T, _ = a.shape
        f = [[{"mean": sum, "max": max, "min": min}[fusion](a[h, i, j] for h in range(H)) / (H if fusion == "mean" else 1)
              for j in range(T)] for i in range(T)]
        mats[b] = ref_discard_add_identity(f, layouts[b].cls, ratio)
    return ref_chain(mats, layouts, blocks, "identity")


def cls_map(J, layout):
    row = np.array([J[layout.cls][layout.patches.start + j] for j in range(layout.n_patches)])
    return (row / row.max()).reshape(layout.grid)


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("fusion,ratio,start", [("mean", 0.0, 0), ("max", 0.3, 0), ("min", 0.9, 1), ("mean", 0.5, 2)])
def test_rollout_matches_reference(kind, B, fusion, ratio, start):
    model = make_model(kind)
    P = random_patterns(model, B, seed=B)
    lays = {b: model.token_layout(b) for b in range(4)}
    J = RO.attention_rollout(P, lays, fusion, ratio, start_block=start)
    for s in range(B):
        want = ref_rollout_sample(P, lays, range(start, 4), fusion, ratio, s)
        np.testing.assert_allclose(J[s].double().numpy(), want, atol=1e-5)
    np.testing.assert_allclose(J.sum(-1).numpy(), 1.0, atol=1e-5)        # rows, not columns, are normalised
    maps = RO.rollout_map(J, lays[3])
    np.testing.assert_allclose(maps[0].numpy(), cls_map(J[0].numpy(), lays[3]), atol=1e-6)


def test_rollout_batch_equals_per_sample():
    """vit-explain discards in the first sample only; here each sample gets its own discard."""
    model = make_model("registers")
    P = random_patterns(model, 4, seed=3)
    lays = {b: model.token_layout(b) for b in range(4)}
    J = RO.attention_rollout(P, lays, "max", 0.7)
    for s in range(4):
        Js = RO.attention_rollout({b: p[s:s + 1] for b, p in P.items()}, lays, "max", 0.7)
        torch.testing.assert_close(J[s:s + 1], Js)


def test_rollout_known_answers():
    model = make_model("plain")
    lays = {b: model.token_layout(b) for b in range(4)}
    T = lays[0].n_tokens
    # attention to self only: rollout is the identity, the CLS row has no mass on patches
    P = {b: torch.eye(T).expand(2, 4, T, T) for b in range(4)}
    J = RO.attention_rollout(P, lays)
    torch.testing.assert_close(J, torch.eye(T).expand(2, T, T))
    # uniform attention: ((U + I)/2)^n = I/2^n + (1 - 1/2^n) U
    P = {b: torch.full((2, 4, T, T), 1.0 / T) for b in range(4)}
    for start in range(4):
        n = 4 - start
        J = RO.attention_rollout(P, lays, start_block=start)
        want = torch.eye(T) / 2 ** n + (1 - 1 / 2 ** n) / T
        torch.testing.assert_close(J[0], want)


def test_discard_never_removes_cls_to_cls():
    T = 5
    a = torch.rand(3, T, T) + 0.1
    a[:, 2, 2] = 0.001                                                   # CLS at index 2 is the smallest entry
    out = RO.discard_lowest(a, 0.96, keep=2)
    assert (out[:, 2, 2] == a[:, 2, 2]).all()
    assert int((out == 0).sum()) == 3 * int(0.96 * T * T)
    for s in range(3):                                                   # the smallest entries of every sample go
        kept = out[s][out[s] > 0]
        assert kept.numel() == T * T - int(0.96 * T * T)


def test_rollout_map_from_model_with_late_cls():
    model = make_model("late")
    x = torch.randn(2, 3, 32, 32)
    maps, J, _ = RO.rollout_from_model(model, x, head_fusion="min", discard_ratio=0.2, start_block=0)
    _, cache = model.run_with_cache(x, names_filter="blocks.*.attn.hook_pattern")
    P = {b: cache[f"blocks.{b}.attn.hook_pattern"] for b in range(4)}
    lays = {b: model.token_layout(b) for b in range(4)}
    for s in range(2):
        want = ref_rollout_sample(P, lays, range(4), "min", 0.2, s)
        np.testing.assert_allclose(J[s].double().numpy(), want, atol=1e-5)
        np.testing.assert_allclose(maps[s].numpy(), cls_map(want, lays[3]), atol=1e-5)
    with pytest.raises(ValueError, match="before block 2"):
        RO.rollout_from_model(model, x, end_block=1)


# ----------------------------------------------------------------------------- gradients
def ref_gradients(model, x, target):
    """d score / d pattern via an additive zero perturbation hooked into each block on its own."""
    grads = {}
    for b in range(model.cfg.depth):
        E = {}

        def add(t, hook):
            E["e"] = torch.zeros_like(t, requires_grad=True)
            return t + E["e"]

        logits = model.run_with_hooks(x, fwd_hooks=[(f"blocks.{b}.attn.hook_pattern", add)])
        score = sum(logits[s, target[s]] for s in range(x.shape[0]))
        (g,) = torch.autograd.grad(score, [E["e"]])
        grads[b] = g
    return grads


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_gradients_are_paired_with_their_blocks(kind):
    model = make_model(kind, seed=1)
    x = torch.randn(3, 3, 32, 32)
    pats, grads, logits, targets = RV.attention_with_gradients(model, x, target=[1, 4, 7])
    assert targets.tolist() == [1, 4, 7]
    want = ref_gradients(model, x, [1, 4, 7])
    for b in range(4):
        torch.testing.assert_close(grads[b], want[b], atol=1e-6, rtol=1e-4)
        assert grads[b].shape == pats[b].shape
    assert all(p.grad is None for p in model.parameters())              # parameters untouched
    # predicted class by default
    _, _, logits, t = RV.attention_with_gradients(model, x)
    assert t.tolist() == logits.argmax(-1).tolist()


def ref_grad_rollout_sample(P, G, layouts, blocks, ratio, s):
    mats = {}
    for b in blocks:
        a, g = P[b][s].double().numpy(), G[b][s].double().numpy()
        H, T, _ = a.shape
        f = [[max(0.0, sum(a[h, i, j] * g[h, i, j] for h in range(H)) / H) for j in range(T)] for i in range(T)]
        mats[b] = ref_discard_add_identity(f, layouts[b].cls, ratio)
    return ref_chain(mats, layouts, blocks, "identity")


def ref_chefer_sample(P, G, layouts, blocks, s):
    mats = {}
    for b in blocks:
        a, g = P[b][s].double().numpy(), G[b][s].double().numpy()
        H, T, _ = a.shape
        mats[b] = [[sum(max(0.0, a[h, i, j] * g[h, i, j]) for h in range(H)) / H for j in range(T)] for i in range(T)]
    return ref_chain(mats, layouts, blocks, "add")


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 2])
def test_grad_rollout_and_chefer_match_reference(kind, B):
    model = make_model(kind, seed=2)
    P = random_patterns(model, B, seed=5)
    g = torch.Generator().manual_seed(9)
    G = {b: torch.randn(p.shape, generator=g) for b, p in P.items()}
    lays = {b: model.token_layout(b) for b in range(4)}
    for start in (0, 2):
        Jg = RV.gradient_rollout(P, G, lays, discard_ratio=0.3, start_block=start)
        R = RV.chefer_relevance(P, G, lays, start_block=start)
        for s in range(B):
            np.testing.assert_allclose(Jg[s].double().numpy(),
                                       ref_grad_rollout_sample(P, G, lays, range(start, 4), 0.3, s), atol=1e-5)
            np.testing.assert_allclose(R[s].double().numpy(), ref_chefer_sample(P, G, lays, range(start, 4), s),
                                       atol=1e-5)


def test_chefer_known_answer_positive_unit_gradients():
    """With ∂s/∂A = 1 everywhere and uniform A: Ā = U, R = (I + U)^n = I + (2^n - 1) U."""
    model = make_model("plain")
    T = model.token_layout(0).n_tokens
    lays = {b: model.token_layout(b) for b in range(3)}
    P = {b: torch.full((1, 4, T, T), 1.0 / T) for b in range(3)}
    G = {b: torch.ones(1, 4, T, T) for b in range(3)}
    R = RV.chefer_relevance(P, G, lays)
    torch.testing.assert_close(R[0], torch.eye(T) + (2 ** 3 - 1) / T * torch.ones(T, T))


def test_relevance_model_level():
    model = make_model("late", seed=3)
    x = torch.randn(2, 3, 32, 32)
    for method in ("chefer", "grad_rollout"):
        maps, R, t = RV.relevance_from_model(model, x, target=3, method=method)
        assert maps.shape == (2, 4, 4) and R.shape == (2, 19, 19) and t.tolist() == [3, 3]
        # the values themselves: test_attention_model_paths.py checks them against the published rule
    with pytest.raises(ValueError, match="target classes must be in"):
        RV.relevance_from_model(model, x, target=99)
    with pytest.raises(ValueError, match="method must be"):
        RV.relevance_from_model(model, x, method="lrp")


def test_headless_model_needs_a_score_and_uses_it():
    torch.manual_seed(4)
    model = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, head="none")).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="no classification head"):
        RV.relevance_from_model(model, x)
    score = lambda out: out[:, :5].sum(-1)                              # noqa: E731 - any (B,) score
    _, grads, _, _ = RV.attention_with_gradients(model, x, score_fn=score)
    for b in range(2):
        E = {}

        def add(t, hook):
            E["e"] = torch.zeros_like(t, requires_grad=True)
            return t + E["e"]

        out = model.run_with_hooks(x, fwd_hooks=[(f"blocks.{b}.attn.hook_pattern", add)])
        (g,) = torch.autograd.grad(score(out).sum(), [E["e"]])
        torch.testing.assert_close(grads[b], g, atol=1e-6, rtol=1e-4)
    maps, _, _ = RV.relevance_from_model(model, x, score_fn=score)
    assert maps.shape == (2, 4, 4)
