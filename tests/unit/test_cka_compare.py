"""Comparisons: token modes from the layout, streamed (minibatch) CKA from models against features collected by
hand, residual CKA and norm ratios against per-image loops, store inputs (a duck-typed store), figures."""
import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.similarity import MinibatchCKA, cka_matrix
from vitscope.analysis.similarity import compare as C


def tiny(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    base = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10)
    base.update(kw)
    return HookedViT(ViTConfig(**base)).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 3, 32, 32, generator=g)


def manual_features(model, x, hooks, mode):
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=hooks)
    out = {}
    for h in hooks:
        i = int(h.split(".")[1])
        lay = model.token_layout(i)
        a = cache[h]
        if mode == "cls":
            out[h] = a[:, lay.cls]
        elif mode == "mean":
            out[h] = a[:, lay.patches.start:lay.patches.stop].mean(1)
        elif mode == "patches":
            out[h] = a[:, lay.patches.start:lay.patches.stop].reshape(a.shape[0], -1)
        else:
            out[h] = a.reshape(a.shape[0], -1)
    return out


def test_names_and_token_modes_follow_the_layout():
    assert C.block_hooks(2, ("ln1.hook_normalized", "ln2.hook_normalized")) == [
        "blocks.0.ln1.hook_normalized", "blocks.0.ln2.hook_normalized",
        "blocks.1.ln1.hook_normalized", "blocks.1.ln2.hook_normalized"]
    assert C.short_name("blocks.3.hook_resid_post") == "3"
    assert C.short_name("blocks.3.ln1.hook_normalized") == "3.ln1"
    with pytest.raises(ValueError, match="does not exist"):
        C.block_hooks(2, blocks=[5])
    m = tiny(num_registers=2, register_location="end", cls_block=1)
    lay0, lay1 = m.token_layout(0), m.token_layout(1)
    t = torch.randn(2, lay1.n_tokens, 4)
    assert torch.equal(C.reduce_tokens(t, lay1, "cls"), t[:, 0])
    assert torch.allclose(C.reduce_tokens(t, lay1, "mean"), t[:, 1:17].mean(1))       # registers at the end excluded
    assert C.reduce_tokens(t, lay1, "patches").shape == (2, 16 * 4)
    assert C.reduce_tokens(t, lay1, "all").shape == (2, lay1.n_tokens * 4)
    with pytest.raises(ValueError, match="no CLS"):
        C.reduce_tokens(torch.randn(2, lay0.n_tokens, 4), lay0, "cls")               # CLS enters before block 1
    with pytest.raises(ValueError, match="token mode"):
        C.reduce_tokens(t, lay1, "spatial")


@pytest.mark.parametrize("mode", ["cls", "mean", "all", "patches"])
def test_model_features_match_a_manual_cache(images, mode):
    m = tiny(num_registers=1)
    hooks = C.block_hooks(3)
    got = C.model_features(m, images[:4], hooks, mode)
    ref = manual_features(m, images[:4], hooks, mode)
    for h in hooks:
        torch.testing.assert_close(got[h], ref[h])


def test_streamed_layer_cka_equals_minibatch_of_hand_collected_features(images):
    m = tiny()
    hooks = C.block_hooks(3)
    res = C.stream_layer_cka(m, images, hooks=hooks, token_mode="mean", batch_size=8)
    # 20 images in batches of 8: 8, 8, 4 -> the reference feeds the same batches by hand
    ref = MinibatchCKA()
    for s in (0, 8, 16):
        ref.update(manual_features(m, images[s:s + 8], hooks, "mean"))
    np.testing.assert_allclose(res.matrix, ref.compute(), rtol=1e-10)
    assert res.rows == ["0", "1", "2"] and res.meta["n_images"] == 20 and res.meta["minibatch"]
    # one batch with every image = full unbiased CKA on all the features
    one = C.stream_layer_cka(m, images, hooks=hooks, token_mode="mean", batch_size=64)
    full = cka_matrix(list(manual_features(m, images, hooks, "mean").values()))
    np.testing.assert_allclose(one.matrix, full, rtol=1e-9)


def test_short_tail_batch_is_merged_not_an_error(images):
    m = tiny()
    res = C.stream_layer_cka(m, images[:10], batch_size=4)                              # 4, 4, 2 -> 4, 6
    assert res.meta["n_images"] == 10
    batches = list(C.image_batches([m], images[:10], batch_size=4))
    assert [len(b[2]) for b in batches] == [4, 6]


def test_two_models_with_their_own_preprocessing():
    from vitscope.data import open_dataset

    a, b = tiny(), tiny(img_size=48, seed=1)
    ds = open_dataset("synthetic:n=8,size=32")
    res = C.stream_layer_cka(a, ds, b, batch_size=8, token_mode="cls")
    assert res.matrix.shape == (3, 3)
    batches = list(C.image_batches([a, b], ds, batch_size=8))
    assert batches[0][0][0].shape[-1] == 32 and batches[0][0][1].shape[-1] == 48
    fa = manual_features(a, batches[0][0][0], C.block_hooks(3), "cls")
    fb = manual_features(b, batches[0][0][1], C.block_hooks(3), "cls")
    np.testing.assert_allclose(res.matrix, cka_matrix(list(fa.values()), list(fb.values())), rtol=1e-9)


def test_cross_model_last_layer(images):
    ms = {"a": tiny(seed=0), "b": tiny(seed=1, depth=2), "c": tiny(seed=2)}
    res = C.stream_cross_model_cka(ms, images, token_mode="cls", batch_size=20)
    feats = [manual_features(m, images, [f"blocks.{m.cfg.depth - 1}.hook_resid_post"], "cls")
             for m in ms.values()]
    ref = cka_matrix([next(iter(f.values())) for f in feats])
    np.testing.assert_allclose(res.matrix, ref, rtol=1e-9)
    assert res.rows == ["a", "b", "c"]
    with pytest.raises(ValueError, match="at least two"):
        C.stream_cross_model_cka({"a": ms["a"]}, images)


def test_residual_cka_and_norm_ratios(images):
    m = tiny()
    res = C.stream_residual_cka(m, images, token_mode="all", batch_size=20)
    hooks = [f"blocks.{i}.{h}" for i in range(3) for h in
             ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out")]
    with torch.no_grad():
        _, cache = m.run_with_cache(images, names_filter=hooks)
    skip = [cache[f"blocks.{i}.hook_resid_pre"].reshape(20, -1) for i in range(3)]
    attn = [cache[f"blocks.{i}.hook_attn_out"].reshape(20, -1) for i in range(3)]
    mid = [cache[f"blocks.{i}.hook_resid_mid"].reshape(20, -1) for i in range(3)]
    mlp = [cache[f"blocks.{i}.hook_mlp_out"].reshape(20, -1) for i in range(3)]
    np.testing.assert_allclose(res.attn.matrix, cka_matrix(skip, attn), rtol=1e-8)
    np.testing.assert_allclose(res.mlp.matrix, cka_matrix(mid, mlp), rtol=1e-8)
    # norm ratios: per image, then averaged (loops)
    for i in range(3):
        s, o = cache[f"blocks.{i}.hook_resid_pre"].double(), cache[f"blocks.{i}.hook_attn_out"].double()
        r_all = np.mean([float(s[n].norm() / o[n].norm()) for n in range(20)])
        r_cls = np.mean([float(s[n, 0].norm() / o[n, 0].norm()) for n in range(20)])
        r_pat = np.mean([float(s[n, 1:].norm() / o[n, 1:].norm()) for n in range(20)])
        assert res.norm_ratios["attn"]["all"][i] == pytest.approx(r_all, rel=1e-9)
        assert res.norm_ratios["attn"]["cls"][i] == pytest.approx(r_cls, rel=1e-9)
        assert res.norm_ratios["attn"]["patches"][i] == pytest.approx(r_pat, rel=1e-9)
    # the array form (e.g. from a store) gives the same numbers
    acts = {h: [cache[f"blocks.{i}.{h}"].numpy() for i in range(3)]
            for h in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out")}
    arr = C.residual_cka(acts, [m.token_layout(i) for i in range(3)], token_mode="all")
    np.testing.assert_allclose(arr.attn.matrix, res.attn.matrix, rtol=1e-8)
    for b in ("attn", "mlp"):
        for k in ("all", "cls", "patches"):
            np.testing.assert_allclose(arr.norm_ratios[b][k], res.norm_ratios[b][k], rtol=1e-9)
    assert res.diagonal("mlp").shape == (3,)
    # the named alternative: the MLP output against the block input
    alt = C.stream_residual_cka(m, images, token_mode="all", batch_size=20, mlp_skip="resid_pre")
    np.testing.assert_allclose(alt.mlp.matrix, cka_matrix(skip, mlp), rtol=1e-8)
    np.testing.assert_allclose(alt.attn.matrix, res.attn.matrix, rtol=1e-12)
    with pytest.raises(ValueError, match="mlp_skip"):
        C.residual_hooks("resid_post")


def test_cls_at_the_first_block_is_constant_so_residual_cls_cka_is_an_error(images):
    with pytest.raises(ValueError, match="constant"):
        C.stream_residual_cka(tiny(), images[:8], token_mode="cls", batch_size=8)


class FakeStore:
    """The feature-store reading API (vitscope.features.FeatureStore), in memory."""

    def __init__(self, arrays, labels, valid=None, ids=None, name="fake"):
        self.arrays = arrays
        self.n = len(labels)
        self.labels = np.asarray(labels)
        self.valid = np.ones(self.n, bool) if valid is None else valid
        self.ids = ids
        self.layers = sorted({k[1] for k in arrays})
        self.sites = sorted({k[0] for k in arrays})
        self.reductions = sorted({k[2] for k in arrays})
        self.model = {"name": name}
        self.path = name

    def __getitem__(self, key):
        return self.arrays[key]


def test_store_inputs_drop_invalid_rows_lazily():
    rng = np.random.default_rng(0)
    a = {("resid_post", i, "cls"): rng.normal(size=(12, 6)) for i in range(3)}
    b = {("resid_post", i, "cls"): rng.normal(size=(12, 5)) for i in range(2)}
    valid = np.ones(12, bool)
    valid[[2, 7]] = False
    s1 = FakeStore(a, np.arange(12) % 3, valid, name="A")
    s2 = FakeStore(b, np.arange(12) % 3, name="B")
    res = C.store_layer_cka(s1, s2)
    ref = cka_matrix([a[("resid_post", i, "cls")][valid] for i in range(3)],
                     [b[("resid_post", i, "cls")][valid] for i in range(2)])
    np.testing.assert_allclose(res.matrix, ref, rtol=1e-12)
    assert res.meta["models"] == ["A", "B"] and res.meta["n_images"] == 10
    one = C.store_layer_cka(s1)
    np.testing.assert_allclose(one.matrix, cka_matrix([a[("resid_post", i, "cls")][valid] for i in range(3)]))
    last = C.store_cross_model_cka([s1, s2])
    assert last.matrix.shape == (2, 2) and last.rows == ["A", "B"]
    with pytest.raises(ValueError, match="reductions"):
        C.store_layer_cka(s1, reduction="mean")
    with pytest.raises(ValueError, match="different numbers"):
        C.store_layer_cka(s1, FakeStore({("resid_post", 0, "cls"): np.zeros((5, 2))}, np.zeros(5)))
    s3 = FakeStore(a, np.zeros(12), ids=[str(i) for i in range(12)])
    s4 = FakeStore(b, np.zeros(12), ids=[str(i + 1) for i in range(12)])
    with pytest.raises(ValueError, match="ids differ"):
        C.store_layer_cka(s3, s4)
    rsa = C.store_layer_rsa(s1)
    assert rsa.matrix.shape == (3, 3) and rsa.meta["metric"] == "rsa"


def test_presets():
    assert C.preset_options("seed002")["minmax"] is True
    assert C.preset_options("seed000", kernel="rbf")["kernel"] == "rbf"
    assert C.preset_options("seed000")["normalize"] is True
    with pytest.raises(ValueError, match="preset"):
        C.preset_options("seed999")


@pytest.mark.slow
def test_figures_save_their_numbers(tmp_path, images):
    from vitscope.viz.similarity import save_cka_grid, save_cluster_curves, save_residual, save_similarity

    m = tiny()
    res = C.stream_layer_cka(m, images, batch_size=10)
    paths = save_similarity(res, tmp_path / "one", clusters=[0, 0, 1])
    names = {p.name for p in paths}
    assert {"one.png", "one.matrix.npy", "one.json", "one.csv", "one.clusters.npy"} <= names
    np.testing.assert_allclose(np.load(tmp_path / "one.matrix.npy"), res.matrix)
    grid = save_cka_grid({("a", "a"): res, ("a", "b"): res.matrix}, tmp_path / "grid")
    assert any(p.name == "grid.a__b.npy" for p in grid)
    rr = C.stream_residual_cka(m, images, batch_size=10)
    assert any(p.name == "res.csv" for p in save_residual(rr, tmp_path / "res"))
    cc = save_cluster_curves({"m": {"nmi": np.array([0.1, 0.2]), "ari": np.array([0.0, 0.1]),
                                    "purity": np.array([0.3, 0.4])}}, tmp_path / "curves")
    assert (tmp_path / "curves.csv").read_text().count("\n") == 3
    assert any(p.name == "curves.png" for p in cc)
