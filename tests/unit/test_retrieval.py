"""Revisited retrieval scores against a slow walk down each ranking written from the definition, hand-made
rankings with known answers, and the descriptor pipeline's sizes."""
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.analysis.retrieval import (image_descriptors, prepare_image, rank_database, retrieval_per_block,
                                         revisited_map, revisited_per_query)


def slow_scores(column, positives, ignored, kappas=(1, 5, 10)):
    """Walk the ranking with the ignored images removed; AP as the mean of the precision just before and just after
    each positive (trapezoid), over all positives; P@k with k cut at the last positive found."""
    positives, ignored = set(int(i) for i in positives), set(int(i) for i in ignored)
    filtered = [int(i) for i in column if int(i) not in ignored]
    ap, hits, found_at = 0.0, 0, []
    for r, idx in enumerate(filtered):
        if idx in positives:
            before = 1.0 if r == 0 else hits / r
            after = (hits + 1) / (r + 1)
            ap += (before + after) / 2 / len(positives)
            hits += 1
            found_at.append(r + 1)
    prec = []
    for k in kappas:
        if not found_at:
            prec.append(0.0)
            continue
        kq = min(k, max(found_at))
        prec.append(sum(1 for R in found_at if R <= kq) / kq)
    return ap, prec


def protocol(g, p):
    e, h, j = list(g["easy"]), list(g["hard"]), list(g["junk"])
    return {"easy": (e, j + h), "medium": (e + h, j), "hard": (h, j + e)}[p]


def test_hand_made_ranking_with_junk_in_between():
    # ranking: 5 (pos), 7 (junk), 2 (neg), 3 (pos), 8 (junk), 1 (pos), 0, 4, 6; one positive (9) never retrieved
    col = np.array([5, 7, 2, 3, 8, 1, 0, 4, 6])
    gnd = [{"easy": [5, 3], "hard": [1, 9], "junk": [7, 8]}]
    m, p = revisited_map(col[:, None], gnd, "medium")
    # with junk removed: 5, 2, 3, 1 -> positives at 0-based 0, 2, 3 of 4 positives
    ap = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 3 + 3 / 4) / 2) / 4
    assert m == pytest.approx(ap)
    assert p == pytest.approx({1: 1.0, 5: 3 / 4, 10: 3 / 4})      # k cut at the last positive (rank 4)


def test_last_positive_before_k():
    col = np.array([4, 2, 0, 1, 3])
    m, p = revisited_map(col[:, None], [{"easy": [4, 2], "hard": [], "junk": []}], "easy")
    assert m == pytest.approx(1.0)
    assert p == {1: 1.0, 5: 1.0, 10: 1.0}


def test_protocols_and_skipped_queries():
    col = np.array([[0, 1, 2, 3, 4, 5]]).T.repeat(2, 1)
    gnd = [{"easy": [1], "hard": [0], "junk": [2]},
           {"easy": [3], "hard": [], "junk": []}]                  # no hard image: skipped under "hard"
    m_hard, p_hard = revisited_map(col, gnd, "hard")
    assert m_hard == pytest.approx(1.0) and p_hard[1] == 1.0        # only query 0, its hard image first
    aps, _ = revisited_per_query(col, gnd, "hard")
    assert np.isnan(aps[1])
    m_easy, _ = revisited_map(col, gnd, "easy")
    # query 0 easy: 1 at position 1, hard 0 ignored before it -> rank 0 -> AP 1; query 1: 3 at 3 -> AP 1/2 * (0 + 1/4)
    assert m_easy == pytest.approx((1.0 + (0 + 1 / 4) / 2) / 2)
    assert np.isnan(revisited_map(col, [{"easy": [], "hard": [], "junk": [1]}] * 2, "medium")[0])


def test_nothing_retrieved_gives_zero():
    col = np.array([[0, 1, 2]]).T
    m, p = revisited_map(col, [{"easy": [7], "hard": [], "junk": []}], "medium")
    assert m == 0.0 and p == {1: 0.0, 5: 0.0, 10: 0.0}


@pytest.mark.parametrize("proto", ["easy", "medium", "hard"])
def test_random_rankings_match_slow_walk(proto):
    rng = np.random.default_rng(3)
    n_db, n_q = 60, 12
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], 1)
    gnd = []
    for _ in range(n_q):
        ids = rng.permutation(n_db)
        e, h, j = rng.integers(0, 6, 3)
        gnd.append({"easy": ids[:e], "hard": ids[e:e + h], "junk": ids[e + h:e + h + j], "bbx": [0, 0, 1, 1]})
    ref = [slow_scores(ranks[:, i], *protocol(g, proto)) if len(protocol(g, proto)[0]) else None
           for i, g in enumerate(gnd)]
    kept = [r for r in ref if r is not None]
    m, p = revisited_map(ranks, gnd, proto)
    assert m == pytest.approx(np.mean([r[0] for r in kept]))
    for j, k in enumerate((1, 5, 10)):
        assert p[k] == pytest.approx(np.mean([r[1][j] for r in kept]))


def test_revisitop_ok_junk_form_and_query_objects():
    from vitscope.data.tasks.revisited import RevisitedQuery

    col = np.array([[3, 0, 1, 2]]).T
    q = RevisitedQuery("q", np.zeros(4), np.array([1]), np.array([2]), np.array([0]))
    a = revisited_map(col, [q], "medium")
    b = revisited_map(col, [{"ok": [1, 2], "junk": [0]}], "medium")
    assert a == b


def test_bad_ranks():
    with pytest.raises(ValueError, match="columns"):
        revisited_map(np.zeros((5, 2), np.int64), [{"easy": [1]}], "medium")
    with pytest.raises(ValueError, match="protocol"):
        revisited_map(np.zeros((5, 1), np.int64), [{"easy": [1]}], "middle")
    with pytest.raises(ValueError, match="integer"):
        revisited_map(np.zeros((5, 1)), [{"easy": [1]}], "medium")


def test_rank_database_is_cosine_order():
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(20, 5)), rng.normal(size=(3, 5))
    ranks = rank_database(db, q)
    assert ranks.shape == (20, 3)
    for i in range(3):
        cos = [float(q[i] @ d) / (np.linalg.norm(q[i]) * np.linalg.norm(d)) for d in db]
        assert list(ranks[:, i]) == sorted(range(20), key=lambda j: -cos[j])


def test_gnd_with_unexpected_objects_is_refused(tmp_path):
    from vitscope.data.tasks import UnsafePickleError, load_revisited

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "jpg").mkdir()
    with open(tmp_path / "gnd_evil.pkl", "wb") as f:
        pickle.dump({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "bbx": Evil()}]}, f)
    with pytest.raises(UnsafePickleError, match="builtins.print"):
        load_revisited(tmp_path)


def test_thumbnail_keeps_aspect_and_never_enlarges():
    from vitscope.models.preprocess import PreprocessConfig

    cfg = PreprocessConfig(input_size=32)
    big = Image.new("RGB", (100, 50))
    assert tuple(prepare_image(big, cfg, 8, imsize=40).shape) == (3, 16, 40)          # 40 x 20 -> 40 x 16
    small = Image.new("RGB", (30, 21))
    assert tuple(prepare_image(small, cfg, 8, imsize=64).shape) == (3, 16, 24)
    assert tuple(prepare_image(big, cfg, 8, imsize=40, preprocess="model").shape) == (3, 32, 32)


def test_multiscale_descriptor_is_the_mean_over_scales():
    from vitscope import HookedViT, ViTConfig

    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)).eval()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    got = image_descriptors({"m": m}, [img], {"m": [1]}, imsize=64, multiscale=True)["m"][1][0]
    from vitscope.models.preprocess import PreprocessConfig

    x = prepare_image(img, m.preprocess_cfg or PreprocessConfig(input_size=32), 8, 64)[None]
    ref = []
    for s in (1, 1 / math.sqrt(2), 0.5):
        y = x if s == 1 else torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        h, w = y.shape[-2] // 8 * 8, y.shape[-1] // 8 * 8
        _, cache = m.run_with_cache(y[..., :h, :w], names_filter=["blocks.1.hook_resid_post"])
        ref.append(cache["blocks.1.hook_resid_post"][0, 0].detach().numpy())
    np.testing.assert_allclose(got, np.mean(ref, 0), rtol=1e-5, atol=1e-6)


def test_per_block_rows():
    rng = np.random.default_rng(0)
    db = {0: rng.normal(size=(10, 4)), 2: rng.normal(size=(10, 4))}
    qs = {0: rng.normal(size=(2, 4)), 2: rng.normal(size=(2, 4))}
    gnd = [{"easy": [1, 2], "hard": [3], "junk": [4]}, {"easy": [5], "hard": [], "junk": []}]
    rows = retrieval_per_block(db, qs, gnd, model="m", crop=True)
    metrics = {r["metric"] for r in rows}
    assert "mAP_medium" in metrics and "mP@10_hard" in metrics and len(metrics) == 12
    r = next(r for r in rows if r["block"] == 2 and r["metric"] == "mAP_easy")
    assert r["value"] == pytest.approx(100 * revisited_map(rank_database(db[2], qs[2]), gnd, "easy")[0])
    assert r["crop"] is True and r["n_queries"] == 2
