"""ClassEmbeddings: the model's head, a fitted linear head or a user matrix, projected as the logit lens does."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings, resolve_class_embeddings
from vitscope.models import HookedViT, ViTConfig


def _model(tiny_cfg_kwargs, **kw) -> HookedViT:
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _final_stream(m, x):
    with torch.no_grad():
        logits, cache = m.run_with_cache(x, names_filter=f"blocks.{m.cfg.depth - 1}.hook_resid_post")
    return logits, cache[f"blocks.{m.cfg.depth - 1}.hook_resid_post"]


def test_headless_model_with_a_matrix(tmp_path, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, head="none", num_classes=0)
    W = np.random.default_rng(0).normal(size=(7, 32)).astype(np.float32)
    np.save(tmp_path / "classes.npy", W)
    emb = ClassEmbeddings.from_npy(tmp_path / "classes.npy")
    _, h = _final_stream(m, torch.randn(2, 3, 32, 32))
    ln = m.ln_final
    want = F.layer_norm(h, (32,), ln.weight, ln.bias, ln.eps) @ torch.from_numpy(W).T
    with torch.no_grad():
        torch.testing.assert_close(emb.project(m, h, block=-1), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(emb.project(m, h[:, 3], block=2), want[:, 3], atol=1e-5, rtol=0)
    raw = ClassEmbeddings.from_npy(tmp_path / "classes.npy", apply_norm=False)
    with torch.no_grad():
        torch.testing.assert_close(raw.project(m, h), h @ torch.from_numpy(W).T, atol=1e-5, rtol=0)


def test_headless_model_without_embeddings_is_one_clear_error(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, head="none", num_classes=0)
    for call in (lambda: resolve_class_embeddings(m), lambda: ClassEmbeddings.from_model(m)):
        with pytest.raises(ValueError, match="no classification head") as err:
            call()
        assert "from_linear_head" in str(err.value) and "--class-embeddings" in str(err.value)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw", [dict(), dict(class_token=False, global_pool="avg", fc_norm=True, final_norm=False)])
def test_own_head_reproduces_the_model_output(kw, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, **kw)
    x = torch.randn(3, 3, 32, 32)
    logits, h = _final_stream(m, x)
    emb = resolve_class_embeddings(m)
    pooled = h[:, 0] if m.cfg.global_pool == "token" else h[:, m.token_layout(m.cfg.depth).patches].mean(1)
    with torch.no_grad():
        torch.testing.assert_close(emb.project(m, pooled, block=m.cfg.depth), logits, atol=1e-5, rtol=0)


def test_distilled_heads_are_averaged(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, distill_token=True, head="distilled")
    _, h = _final_stream(m, torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(ClassEmbeddings.from_model(m).project(m, h), m.project_to_logits(h),
                                   atol=1e-5, rtol=0)


def test_clip_text_embeddings_after_the_projection(tmp_path, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, pre_norm=True, act="quick_gelu", head="clip_proj", num_classes=16, patch_bias=False)
    text = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    np.save(tmp_path / "text.npy", text)
    emb = ClassEmbeddings.from_npy(tmp_path / "text.npy", normalize=True)
    _, h = _final_stream(m, torch.randn(2, 3, 32, 32))
    ln = m.ln_final
    t = torch.from_numpy(text / np.linalg.norm(text, axis=1, keepdims=True))
    want = F.layer_norm(h, (32,), ln.weight, ln.bias, ln.eps) @ m.head.weight.T @ t.T
    with torch.no_grad():
        torch.testing.assert_close(emb.project(m, h), want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="CLIP projection, not a classifier"):
        ClassEmbeddings.from_model(m)
    np.save(tmp_path / "bad.npy", text[:, :10])
    with pytest.raises(ValueError, match="width 10 fit neither the model width 32 nor its CLIP projection width 16"):
        ClassEmbeddings.from_npy(tmp_path / "bad.npy").project(m, h)


def test_linear_head_fitted_on_the_last_layer(tiny_cfg_kwargs):
    """A logistic regression (scikit-learn) on the final-norm CLS: the lens at the last block is its decision."""
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression
    m = _model(tiny_cfg_kwargs, head="none", num_classes=0)
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cache = m.run_with_cache(x, names_filter=["ln_final.hook_normalized",
                                                     f"blocks.{m.cfg.depth - 1}.hook_resid_post"])
    feats = cache["ln_final.hook_normalized"][:, 0].numpy()
    y = np.arange(40) % 4
    clf = LogisticRegression(max_iter=2000).fit(feats, y)
    emb = ClassEmbeddings.from_linear_head({"weight": torch.from_numpy(clf.coef_).float(),
                                            "bias": torch.from_numpy(clf.intercept_).float()})
    with torch.no_grad():
        got = emb.project(m, cache[f"blocks.{m.cfg.depth - 1}.hook_resid_post"][:, 0], block=-1)
    np.testing.assert_allclose(got.numpy(), clf.decision_function(feats), atol=1e-4)
    lin = torch.nn.Linear(32, 4)
    assert torch.equal(ClassEmbeddings.from_linear_head(lin).weight, lin.weight.detach())


def test_bad_matrices(tmp_path, tiny_cfg_kwargs):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        ClassEmbeddings.from_npy(tmp_path / "obj.npy")
    np.save(tmp_path / "vec.npy", np.ones(5, dtype=np.float32))
    with pytest.raises(ValueError, match="2-d matrix"):
        ClassEmbeddings.from_npy(tmp_path / "vec.npy")
    with pytest.raises(FileNotFoundError):
        ClassEmbeddings.from_npy(tmp_path / "absent.npy")
    with pytest.raises(ValueError, match="bias must have shape"):
        ClassEmbeddings(torch.ones(3, 4), torch.ones(2))
    m = _model(tiny_cfg_kwargs, head="none", num_classes=0)
    with pytest.raises(ValueError, match="block must be in"):
        ClassEmbeddings(torch.ones(3, 32)).project(m, torch.randn(2, 32), block=9)


def test_head_saved_by_the_probe(tmp_path, tiny_cfg_kwargs):
    """``from_head``: a head saved by save_linear_head on the final norm's L2-normalised CLS projects as
    W . unit(LN(h)) + b; a head on the CLIP projection's output applies after it; folders resolve to the head."""
    from vitscope.analysis.probes.linear import save_linear_head

    m = _model(tiny_cfg_kwargs, head="none", num_classes=0)
    g = torch.Generator().manual_seed(4)
    W, b = torch.randn(5, 32, generator=g), torch.randn(5, generator=g)
    meta = {"normalize": "l2 per sample and input", "classes": list("abcde"),
            "inputs": [{"site": "ln_final", "layer": None, "reduction": "cls"}]}
    save_linear_head(tmp_path / "run" / "heads" / "linear_last_cls", W, b, meta)
    _, h = _final_stream(m, torch.randn(2, 3, 32, 32))
    ln = m.ln_final
    z = F.layer_norm(h, (32,), ln.weight, ln.bias, ln.eps)
    want = z / z.norm(dim=-1, keepdim=True) @ W.T + b
    for where in ("run", "run/heads", "run/heads/linear_last_cls.safetensors", "run/heads/linear_last_cls"):
        emb = ClassEmbeddings.from_head(tmp_path / where)
        assert emb.classes == list("abcde") and emb.l2_normalize
        with torch.no_grad():
            torch.testing.assert_close(emb.project(m, h), want, atol=1e-5, rtol=0)
    c = _model(tiny_cfg_kwargs, pre_norm=True, act="quick_gelu", head="clip_proj", num_classes=16, patch_bias=False)
    Wc = torch.randn(5, 16, generator=g)
    save_linear_head(tmp_path / "clip", Wc, None, {"inputs": [{"site": "clip_proj", "layer": None,
                                                               "reduction": "cls"}]})
    _, hc = _final_stream(c, torch.randn(2, 3, 32, 32))
    zc = F.layer_norm(hc, (32,), c.ln_final.weight, c.ln_final.bias, c.ln_final.eps) @ c.head.weight.T
    with torch.no_grad():
        torch.testing.assert_close(ClassEmbeddings.from_head(tmp_path / "clip").project(c, hc), zc @ Wc.T,
                                   atol=1e-5, rtol=0)
    save_linear_head(tmp_path / "mid", W, b, {"inputs": [{"site": "ln2", "layer": 2, "reduction": "cls"},
                                                         {"site": "ln_final", "layer": None, "reduction": "cls"}]})
    with pytest.raises(ValueError, match="reads ln2.2.cls, ln_final.cls; the logit lens needs a linear head on the "
                                         "last layer alone"):
        ClassEmbeddings.from_head(tmp_path / "mid")
    with pytest.raises(FileNotFoundError, match="no linear head"):
        ClassEmbeddings.from_head(tmp_path / "run" / "heads" / "absent")


def test_one_projection_path_for_both_names(tiny_cfg_kwargs):
    """ClassProjection is ClassEmbeddings bound to a model: the same logits, the stream-width embeddings pulled
    back through the CLIP projection, and the lens accepts either."""
    from vitscope.analysis import class_embedding as ce

    c = _model(tiny_cfg_kwargs, pre_norm=True, act="quick_gelu", head="clip_proj", num_classes=16, patch_bias=False)
    text = torch.randn(5, 16, generator=torch.Generator().manual_seed(5))
    emb = ClassEmbeddings.from_linear_head(text)
    proj = emb.to_projection(c)
    h = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(proj(h), emb.project(c, h))
        # the pull-back: E (C, D) such that E . LN(h) equals the projection's logits (no bias here)
        torch.testing.assert_close(c.ln_final(h) @ proj.class_embeddings.T, proj(h), atol=1e-5, rtol=0)
    assert not proj.own_head and ce.ClassProjection.from_model(_model(tiny_cfg_kwargs)).own_head
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 4])
    a = ce.logit_lens(c, [(x, y)], emb, sites=("resid",), record=True)
    b = ce.logit_lens(c, [(x, y)], proj, sites=("resid",), record=True)
    assert np.array_equal(a.ranks("resid", 3), b.ranks("resid", 3))
