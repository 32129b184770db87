"""Named rollout options against transcriptions of the public code: vit-explain's discard rules (attention
rollout spares CLS->CLS among the k lowest, gradient rollout does not), one set of method names with aliases,
one return shape, min-max normalisation."""
import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention import relevance as RV
from vitscope.analysis.attention import rollout as RO
from vitscope.models.layout import TokenLayout


def vit_explain_rollout(mats, ratio, spare_cls=True):
    """vit-explain's loop for one image (CLS at index 0), with the rows (not the columns) renormalised.

    ``mats``: list of fused (T, T) matrices. Discard: the ``int(T*T*ratio)`` lowest flat indices, index 0
    removed from them when ``spare_cls`` (attention rollout; its gradient rollout has that line commented out).
    """
    T = mats[0].shape[-1]
    result = torch.eye(T, dtype=torch.float64)
    for a in mats:
        a = a.clone().double()
        flat = a.view(1, -1)
        _, indices = flat.topk(int(flat.size(-1) * ratio), -1, False)
        if spare_cls:
            indices = indices[indices != 0]
        flat[0, indices] = 0
        a = (a + torch.eye(T, dtype=torch.float64)) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result


def rand_patterns(B=3, H=2, T=7, L=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {b: (torch.randn(B, H, T, T, generator=g, dtype=torch.float64) * 2).softmax(-1) for b in range(L)}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=5)).eval()


def test_discard_rules_one_matrix():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 5, 5, generator=g, dtype=torch.float64)
    a[:2, 0, 0] = -1.0                       # CLS->CLS among the lowest in samples 0, 1; not in 2, 3
    k = int(0.4 * 25)
    for s in range(4):
        ref = a[s].clone()
        f = ref.view(1, -1)
        _, idx = f.topk(k, -1, False)
        f[0, idx[idx != 0]] = 0
        got = RO.discard_lowest(a, 0.4, keep=0, rule="vit-explain")[s]
        assert torch.equal(got, ref)
        assert torch.equal(RO.discard_lowest(a, 0.4, keep=0, rule="spare-cls")[s], ref)
        n_zero = int((got == 0).sum())
        assert n_zero == (k - 1 if s < 2 else k)
        every = a[s].clone().view(-1)
        every[every.topk(k, largest=False).indices] = 0
        assert torch.equal(RO.discard_lowest(a, 0.4, keep=0, rule="all")[s].view(-1), every)
        excl = RO.discard_lowest(a, 0.4, keep=0)[s]                        # default: k others, CLS->CLS kept
        assert int((excl == 0).sum()) == k and excl[0, 0] == a[s, 0, 0]
    with pytest.raises(ValueError, match="discard rule"):
        RO.discard_lowest(a, 0.4, keep=0, rule="vitexplain")


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_rollout_vit_explain_rule_matches_transcription(fusion):
    pats = rand_patterns()
    for b in pats:                                            # make CLS->CLS the smallest entry in some blocks
        pats[b][:, :, 0, 0] = 1e-6 if b != 1 else pats[b][:, :, 0, 0]
    lays = {b: TokenLayout(b, 7, 0, None, (), slice(1, 7), (2, 3)) for b in range(3)}
    J = RO.attention_rollout(pats, lays, fusion, 0.5, discard_rule="vit-explain")
    J0 = RO.attention_rollout(pats, lays, fusion, 0.5)
    for s in range(3):
        mats = [getattr(pats[b][s], "mean" if fusion == "mean" else "amax")(0) for b in range(3)]
        np.testing.assert_allclose(J[s].numpy(), vit_explain_rollout(mats, 0.5, True).numpy(), rtol=1e-5, atol=1e-6)  # vitscope fuses in float32
    assert not torch.allclose(J, J0)                          # the two rules differ on these patterns


def test_grad_rollout_vit_explain_rule_does_not_spare_cls():
    pats = rand_patterns(seed=2)
    g = torch.Generator().manual_seed(3)
    grads = {b: torch.randn(p.shape, generator=g, dtype=torch.float64) for b, p in pats.items()}
    lays = {b: TokenLayout(b, 7, 0, None, (), slice(1, 7), (2, 3)) for b in range(3)}
    J = RV.gradient_rollout(pats, grads, lays, 0.6, discard_rule="vit-explain")
    for s in range(3):
        mats = [(pats[b][s] * grads[b][s]).mean(0).clamp(min=0) for b in range(3)]
        np.testing.assert_allclose(J[s].numpy(), vit_explain_rollout(mats, 0.6, spare_cls=False).numpy(),
                                   rtol=1e-5, atol=1e-6)  # vitscope fuses in float32
    Jall = RV.gradient_rollout(pats, grads, lays, 0.6, discard_rule="all")
    assert torch.equal(J, Jall)


def test_method_names_and_aliases():
    for alias, name in [("grad", "grad-rollout"), ("grad_rollout", "grad-rollout"), ("chefer", "chefer2021-generic"),
                        ("transformer-attribution", "chefer2021-lrp"), ("Chefer2021_LRP", "chefer2021-lrp"),
                        ("rollout", "rollout")]:
        assert RV.resolve_method(alias) == name
    with pytest.raises(ValueError, match="chefer2021-generic"):
        RV.resolve_method("lrp-x")


def test_same_return_shape_and_aliases_agree(model):
    x = torch.randn(2, 3, 16, 16)
    r = RO.rollout_from_model(model, x)
    maps, J, t = r
    assert t is None and maps.shape == (2, 2, 2) and J.shape == (2, 5, 5)
    a = RV.relevance_from_model(model, x, target=1, method="grad_rollout")
    b = RV.relevance_from_model(model, x, target=1, method="grad-rollout")
    c = RV.relevance_from_model(model, x, target=1, method="grad")
    assert type(a) is type(r) and torch.equal(a.maps, b.maps) and torch.equal(a.maps, c.maps)
    d = RV.relevance_from_model(model, x, target=1, method="chefer")
    e = RV.relevance_from_model(model, x, target=1, method="chefer2021-generic", normalize="minmax")
    m = d.matrix[:, 0, 1:]
    lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
    np.testing.assert_allclose(e.maps.reshape(2, -1).numpy(), ((m - lo) / (hi - lo)).numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(e.targets, torch.tensor([1, 1]))
