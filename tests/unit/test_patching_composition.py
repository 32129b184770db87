"""Head composition scores against the definition with full D x D matrices (a plain loop here), unchanged by
fold_ln."""
import numpy as np
import pytest
import torch

from vitscope.analysis.patching.composition import composition_scores, evaluate
from vitscope.models import HookedViT, ViTConfig
from vitscope.models.processing import fold_layer_norm


def _model(tiny_cfg_kwargs, **kw):
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, "depth": 3, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def _reference(m):
    """Full matrices from the definition: W_Q, W_K, W_V read ln1's output (its weight included), W_O writes
    (LayerScale included); OV = W_V W_O, QK = W_Q W_K^T."""
    D, H, Dh, L = 32, 4, 8, m.cfg.depth
    mats = []
    for blk in m.blocks:
        w = blk.ln1.weight.detach().double().numpy()
        W = blk.attn.qkv.weight.detach().double().numpy()
        P = blk.attn.proj.weight.detach().double().numpy()
        g = blk.ls1.gamma.detach().double().numpy() if hasattr(blk.ls1, "gamma") else np.ones(D)
        heads = []
        for h in range(H):
            sl = slice(h * Dh, (h + 1) * Dh)
            Wq, Wk, Wv = (np.diag(w) @ W[i * D:(i + 1) * D][sl].T for i in range(3))  # D, Dh
            Wo = P[:, sl].T * g[None, :]                                               # Dh, D
            heads.append((Wq @ Wk.T, Wv @ Wo))
        mats.append(heads)
    fro = np.linalg.norm
    want = {k: np.full((L, H, L, H), np.nan) for k in "QKV"}
    for a in range(L):
        for b in range(a + 1, L):
            for h in range(H):
                for g in range(H):
                    ov, (qk, ov2) = mats[a][h][1], mats[b][g]
                    want["Q"][a, h, b, g] = fro(ov @ qk) / (fro(ov) * fro(qk))
                    want["K"][a, h, b, g] = fro(ov @ qk.T) / (fro(ov) * fro(qk))
                    want["V"][a, h, b, g] = fro(ov @ ov2) / (fro(ov) * fro(ov2))
    return want


@pytest.mark.parametrize("kw", [dict(), dict(layer_scale_init=0.3)])
def test_scores_equal_the_definition(kw, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, **kw)
    got, want = composition_scores(m), _reference(m)
    for k in "QKV":
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12)
        assert np.isnan(got[k][1, :, 0]).all() and np.isnan(got[k][1, :, 1]).all()


def test_fold_ln_does_not_change_the_scores(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    before = composition_scores(m)
    fold_layer_norm(m)
    after = composition_scores(m)
    for k in "QKV":
        np.testing.assert_allclose(after[k], before[k], rtol=1e-6)


def test_evaluate_rows(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    r = evaluate(m, modes="v,q")
    assert set(r.table["metric"]) == {"v_composition", "q_composition"}
    assert len(r.table) == 2 * (16 + 16 + 16)                                       # 3 block pairs x 4 x 4
    assert set(r.figures()) == {"composition"} and "strongest" in r.summary
