"""k-means clustering scores against scikit-learn's metrics and loops written here; dense object pooling."""
from collections import Counter

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from vitscope.analysis.cluster import (
    blockwise_cluster_scores,
    cluster_and_score,
    cluster_scores,
    dense_cluster_scores,
    kmeans,
    object_features,
    purity_score,
    reduce_tokens,
    token_mask_weights,
)
from vitscope.models import ViTConfig, token_layout


def ref_purity(t, p):
    total = 0
    for c in set(p):
        members = [t[i] for i in range(len(t)) if p[i] == c]
        total += Counter(members).most_common(1)[0][1]
    return total / len(t)


def test_scores_match_sklearn_and_a_purity_loop():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, size=200)
    p = np.where(rng.random(200) < 0.7, t, rng.integers(0, 7, size=200))
    s = cluster_scores(t, p)
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(t, p))
    assert s["ari"] == pytest.approx(adjusted_rand_score(t, p))
    assert s["purity"] == pytest.approx(ref_purity(list(t), list(p)))
    assert purity_score(["a", "b", "b"], [1, 1, 2]) == pytest.approx(ref_purity(["a", "b", "b"], [1, 1, 2]))


def blobs(n_per, k, d, rng, spread=0.05):
    centres = rng.normal(size=(k, d)) * 5
    x = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres])
    return x, np.repeat(np.arange(k), n_per)


def test_kmeans_is_seed_002s_kmeans_and_separable_blobs_score_one():
    rng = np.random.default_rng(1)
    x, y = blobs(20, 6, 8, rng)
    ref = KMeans(n_clusters=6, random_state=0, n_init=10).fit(x).labels_
    np.testing.assert_array_equal(kmeans(x, k=6), ref)
    s = cluster_and_score(x, y, k=6)
    assert s == pytest.approx({"nmi": 1.0, "ari": 1.0, "purity": 1.0})


def test_blockwise_scores_rise_with_structure():
    rng = np.random.default_rng(2)
    x, y = blobs(15, 4, 6, rng)
    noise = rng.normal(size=x.shape)
    out = blockwise_cluster_scores({"b0": noise, "b1": x}, y, k=4)
    assert set(out) == {"nmi", "ari", "purity"}
    assert out["nmi"][1] == pytest.approx(1.0) and out["nmi"][0] < 0.5


def test_reduce_tokens_uses_the_layout():
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=8, depth=2, num_heads=2, num_registers=2,
                    register_location="end", num_classes=3)
    lay = token_layout(cfg, 1)
    t = np.arange(3 * lay.n_tokens * 8, dtype=float).reshape(3, lay.n_tokens, 8)
    np.testing.assert_array_equal(reduce_tokens(t, lay, "cls"), t[:, lay.cls])
    np.testing.assert_allclose(reduce_tokens(t, lay, "mean"), t[:, 1:17].mean(1))    # registers excluded


def ref_coverage(mask, grid):
    h, w = mask.shape
    r, c = grid
    out = np.zeros(grid)
    for i in range(r):
        for j in range(c):
            out[i, j] = mask[i * h // r:(i + 1) * h // r, j * w // c:(j + 1) * w // c].mean()
    return out / out.sum()


def test_object_features_are_mask_weighted_means():
    rng = np.random.default_rng(3)
    grid = (4, 4)
    tokens = rng.normal(size=(3, 16, 5))                                               # 3 blocks
    m1 = np.zeros((32, 32))
    m1[0:12, 0:20] = 1
    m2 = np.zeros((32, 32))
    m2[20:32, 8:32] = 1
    empty = np.zeros((32, 32))
    feats, labs = object_features(tokens, np.stack([m1, m2, empty]), [7, 9, 4], grid=grid, resample="area")
    assert feats.shape == (3, 2, 5) and labs.tolist() == [7, 9]                       # empty mask dropped
    for b in range(3):
        for k, m in enumerate((m1, m2)):
            w = ref_coverage(m, grid).reshape(-1)
            ref = sum(w[p] * tokens[b, p] for p in range(16))
            np.testing.assert_allclose(feats[b, k], ref, atol=1e-12)
    single, _ = object_features(tokens[0], [m1], [1], resample="area")
    np.testing.assert_allclose(single[0], feats[0, 0])
    # walmer2023's bicubic default: PIL's 8-bit bicubic resize of the 0/255 mask (reproduced in torch by
    # test_saliency_mask_rule.pil_bicubic_8bit), divided by its sum
    from test_saliency_mask_rule import pil_bicubic_8bit

    for m in (m1, m2):
        want = pil_bicubic_8bit(m.astype(np.uint8) * 255, grid)
        np.testing.assert_allclose(token_mask_weights(m, grid), want / want.sum(), rtol=1e-12)


def test_dense_clustering_of_object_features():
    rng = np.random.default_rng(4)
    classes = rng.normal(size=(3, 6)) * 4
    feats, labs = [], []
    for img in range(12):
        tok = 0.05 * rng.normal(size=(16, 6))
        masks, lab = [], []
        for c in range(3):
            m = np.zeros((16, 16))
            r = (img + c) % 4
            m[r * 4:(r + 1) * 4, :] = 1                                                # one row of tokens per object
            tok[r * 4:(r + 1) * 4] += classes[c]
            masks.append(m)
            lab.append(c)
        f, l = object_features(tok, masks, lab, resample="area")
        feats.append(f)
        labs.append(l)
    x, y = np.concatenate(feats), np.concatenate(labs)
    out = dense_cluster_scores([x], y, k=3)
    assert out["nmi"][0] == pytest.approx(1.0) and out["purity"][0] == pytest.approx(1.0)


def test_errors():
    x = np.random.default_rng(5).normal(size=(10, 3))
    with pytest.raises(ValueError, match="at least k samples"):
        kmeans(x, k=50)
    with pytest.raises(ValueError, match="labels"):
        cluster_and_score(x, np.arange(9), k=2)
    with pytest.raises(ValueError, match="masks"):
        object_features(np.zeros((16, 4)), [np.ones((8, 8))], [1, 2])
    with pytest.raises(ValueError, match="square grid"):
        object_features(np.zeros((15, 4)), [np.ones((8, 8))], [1])
    with pytest.raises(ValueError, match="token mode"):
        reduce_tokens(np.zeros((2, 5, 3)), None, "all")
