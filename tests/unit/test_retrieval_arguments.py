"""Revisited retrieval: the query crop against a known answer (the box is x0, y0, x1, y1, as revisitop passes it to
PIL), and every public function with its arguments away from their defaults, against references written here or the
slow walk of ``test_retrieval``."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from test_retrieval import slow_scores  # noqa: E402  (the loop reference, one copy)
from vitscope.analysis.retrieval import (average_precision, crop_to_box, image_descriptors, prepare_image,
                                         protocol_sets, rank_database, retrieval_per_block, retrieval_scores,
                                         revisited_map, revisited_per_query)


def coordinate_image(w=12, h=8):
    """Pixel (y, x) holds (10 x, 10 y, 7): every crop says where it came from."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 10 * np.arange(w)[None, :]
    a[..., 1] = 10 * np.arange(h)[:, None]
    a[..., 2] = 7
    return Image.fromarray(a)


def test_crop_to_box_known_answer():
    img = coordinate_image()
    out = np.asarray(crop_to_box(img, [2, 1, 9, 4]))             # x0 = 2, y0 = 1, x1 = 9, y1 = 4
    assert out.shape == (3, 7, 3)                                 # rows y 1..3, columns x 2..8
    assert out[0, 0].tolist() == [20, 10, 7] and out[-1, -1].tolist() == [80, 30, 7]
    # fractional boxes are rounded as PIL's crop rounds them (revisitop passes the floats to PIL)
    frac = (2.4, 0.6, 8.5, 4.5)                                   # -> (2, 1, 8, 4): round half to even
    assert np.array_equal(np.asarray(crop_to_box(img, np.array(frac))), np.asarray(img.crop(frac)))
    assert np.asarray(crop_to_box(img, frac)).shape == (3, 6, 3)
    # no box (or NaN): the whole image
    assert crop_to_box(img, None) is img and crop_to_box(img, [np.nan] * 4) is img


def test_query_source_crops_the_same_region(tmp_path):
    from vitscope.data.tasks import load_revisited

    root = tmp_path / "rparis6k"
    (root / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in ("db0", "q0"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / "jpg" / f"{n}.jpg")
    with open(root / "gnd_rparis6k.pkl", "wb") as f:
        pickle.dump({"imlist": ["db0"], "qimlist": ["q0"],
                     "gnd": [{"bbx": [3.0, 2.0, 25.0, 9.0], "easy": [0], "hard": [], "junk": []}]}, f)
    gt = load_revisited(root)
    full = gt.query_dataset(transform=np.array, crop=False)[0][0]
    crop = gt.query_dataset(transform=np.array)[0][0]
    assert crop.shape == (7, 22, 3)
    assert np.array_equal(crop, full[2:9, 3:25])
    assert np.array_equal(np.asarray(crop_to_box(Image.fromarray(full), gt.queries[0].bbx)), crop)


# ----------------------------------------------------------------------------- the other arguments
GND = [{"easy": [1, 4], "hard": [2], "junk": [3]}, {"easy": [], "hard": [0, 5], "junk": [1]},
       {"easy": [6], "hard": [], "junk": []}]


def test_protocol_sets_and_average_precision_hand_made():
    assert [a.tolist() for a in protocol_sets(GND[0], "easy")] == [[1, 4], [3, 2]]
    assert [a.tolist() for a in protocol_sets(GND[0], "hard")] == [[2], [3, 1, 4]]
    assert [a.tolist() for a in protocol_sets({"ok": [5], "junk": [2]}, "hard")] == [[5], [2]]
    # positives at filtered positions 0 and 2 of 3 positives: ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 3
    assert average_precision(np.array([0, 2]), 3) == pytest.approx((1 + (1 / 2 + 2 / 3) / 2) / 3)


def test_per_query_scores_with_other_kappas_and_protocols():
    rng = np.random.default_rng(1)
    ranks = np.stack([rng.permutation(8) for _ in range(3)], 1)
    for proto in ("easy", "hard"):
        aps, prs = revisited_per_query(ranks, GND, proto, kappas=(2, 3))
        assert prs.shape == (3, 2)
        for i, g in enumerate(GND):
            pos, ign = protocol_sets(g, proto)
            if len(pos) == 0:
                assert np.isnan(aps[i]) and np.isnan(prs[i]).all()
                continue
            ap, pr = slow_scores(ranks[:, i], pos, ign, kappas=(2, 3))
            assert aps[i] == pytest.approx(ap) and prs[i] == pytest.approx(pr)


def test_rank_database_without_normalisation_is_the_dot_product_order():
    rng = np.random.default_rng(2)
    db, q = rng.normal(size=(9, 3)) * rng.uniform(0.1, 5, (9, 1)), rng.normal(size=(2, 3))
    ranks = rank_database(db, q, normalize=False, device="cpu")
    for i in range(2):
        dots = [float(q[i] @ d) for d in db]
        assert ranks[:, i].tolist() == sorted(range(9), key=lambda j: -dots[j])
    assert not np.array_equal(ranks, rank_database(db, q))         # the lengths matter here


def test_scores_and_rows_with_chosen_protocols_and_kappas():
    rng = np.random.default_rng(3)
    db, q = rng.normal(size=(8, 4)), rng.normal(size=(3, 4))
    ranks = rank_database(db, q)
    got = retrieval_scores(db, q, GND, protocols=("hard",), kappas=(2,))
    assert list(got) == ["hard"] and set(got["hard"]) == {"mAP", "mP@2", "n_queries"}
    kept = [slow_scores(ranks[:, i], *protocol_sets(g, "hard"), kappas=(2,)) for i, g in enumerate(GND)
            if len(protocol_sets(g, "hard")[0])]
    assert got["hard"]["n_queries"] == len(kept) == 2
    assert got["hard"]["mAP"] == pytest.approx(100 * np.mean([k[0] for k in kept]))
    assert got["hard"]["mP@2"] == pytest.approx(100 * np.mean([k[1][0] for k in kept]))
    assert revisited_map(ranks, GND, "hard")[0] == pytest.approx(np.mean([k[0] for k in kept]))
    rows = retrieval_per_block({1: db}, {1: q}, GND, model="m", protocols=("hard",), kappas=(2,), imsize=64)
    assert {r["metric"] for r in rows} == {"mAP_hard", "mP@2_hard"}
    assert all(r["model"] == "m" and r["imsize"] == 64 and r["n_db"] == 8 for r in rows)


@pytest.fixture(scope="module")
def two_models():
    from vitscope import HookedViT, ViTConfig

    torch.manual_seed(0)
    a = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)).eval()
    b = HookedViT(ViTConfig(img_size=16, patch_size=4, embed_dim=8, depth=3, num_heads=2, num_classes=3)).eval()
    return {"a": a, "b": b}


def test_image_descriptors_with_every_argument(two_models):
    """Per-model sizes, the model's own preprocessing, patch-mean tokens, batches of one and a progress callable,
    against the hooked forward pass run image by image."""
    rng = np.random.default_rng(4)
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 60), (50, 30))]
    from vitscope.analysis.similarity.compare import preprocess_config

    seen = []

    def progress(starts):
        seen.extend(starts)
        return starts

    got = image_descriptors(two_models, [lambda im=im: im for im in imgs], {"a": [1], "b": [0, 2]},
                            imsize={"a": 48, "b": None}, preprocess="model", tokens="mean", batch_size=1,
                            progress=progress)
    assert seen == [0, 1]
    for name, blocks, size in (("a", [1], 48), ("b", [0, 2], None)):
        m = two_models[name]
        for i, im in enumerate(imgs):
            x = prepare_image(im, preprocess_config(m), m.cfg.patch_size, size, preprocess="model")[None]
            with torch.no_grad():
                _, cache = m.run_with_cache(x)
            for b in blocks:
                ref = cache[f"blocks.{b}.hook_resid_post"][0, 1:].mean(0).numpy()     # CLS at 0, then patches
                np.testing.assert_allclose(got[name][b][i], ref, rtol=1e-5, atol=1e-6)
    assert got["a"][1].shape == (2, 16) and got["b"][2].shape == (2, 8)
