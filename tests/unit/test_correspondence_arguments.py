"""SPair keypoint transfer: categories draw their own pair samples; PCK on pairs whose images and boxes differ in size
(the threshold comes from the target box), ``evaluate_spair`` against a plain implementation; the remaining public
functions with their arguments away from their defaults."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from test_correspondence import reference_match  # noqa: E402  (the full-upsampling reference, one copy)
from vitscope.analysis.correspondence import (evaluate_spair, letterbox, letterbox_geometry, letterbox_points,
                                              sample_pairs, spair_rows, threshold_length, upsample_matrix)


@dataclass
class P:
    name: str
    category: str


def test_each_category_draws_its_own_sample():
    cats = ("aeroplane", "bicycle", "bird", "boat")
    pairs = [P(f"{i:03d}", c) for c in cats for i in range(30)]             # the same 30 names in every category
    for replace in (False, True):
        s = sample_pairs(pairs, 5, seed=0, with_replacement=replace)
        names = {c: tuple(p.name for p in s if p.category == c) for c in cats}
        assert all(len(v) == 5 for v in names.values())
        assert len(set(names.values())) == len(cats), names               # no two categories draw alike
    every = sample_pairs(pairs, None)
    assert [(p.category, p.name) for p in every] == sorted((p.category, p.name) for p in pairs)


def test_upsample_matrix_hand_worked():
    # linear, align_corners=False, factor 2: output i reads input (i + 1/2) / 2 - 1/2, clamped to [0, n - 1]
    ref = [[1, 0, 0], [0.75, 0.25, 0], [0.25, 0.75, 0], [0, 0.75, 0.25], [0, 0.25, 0.75], [0, 0, 1]]
    np.testing.assert_allclose(upsample_matrix(3, 2).numpy(), ref, atol=1e-7)


def test_letterbox_known_answer():
    img = Image.new("RGB", (20, 10), (200, 100, 50))                        # wide: 40 x 20, centred at rows 10..29
    out = letterbox(img, size=40)
    assert out.shape == (40, 40, 3)
    assert (out[:10] == 0).all() and (out[30:] == 0).all()
    assert (out[10:30] == (200, 100, 50)).all()
    # another letterbox side: 500 x 375 -> 100 x 75, 12 black rows above
    assert letterbox_geometry(500, 375, size=100) == (0.2, (100, 75), (0, 12))
    np.testing.assert_allclose(letterbox_points([[0, 0], [500, 375]], 500, 375, size=100), [[0, 12], [100, 87]])
    assert threshold_length([10, 20, 110, 70], 500, 375, size=100) == pytest.approx(20.0)


# ----------------------------------------------------------------------------- evaluate_spair vs a plain version
@dataclass
class Pair:
    name: str
    category: str
    src_path: str
    trg_path: str
    src_kps: np.ndarray
    trg_kps: np.ndarray
    src_bbox: np.ndarray
    trg_bbox: np.ndarray
    src_size: tuple
    trg_size: tuple


@pytest.fixture(scope="module")
def model():
    from vitscope import HookedViT, ViTConfig

    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)).eval()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Sources 40 x 24 with a 2-pixel box, targets 24 x 48 with a box over the whole image: a PCK threshold read from
    the wrong box (or the wrong image's size) is 10 times too small."""
    d = tmp_path_factory.mktemp("spair")
    rng = np.random.default_rng(0)
    out = []
    for k, (cat, given) in enumerate((("cat", True), ("cat", False), ("dog", True))):
        src, trg = d / f"s{k}.png", d / f"t{k}.png"
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(src)
        Image.fromarray(rng.integers(0, 255, (48, 24, 3), dtype=np.uint8)).save(trg)
        n = 12
        skp = np.c_[rng.uniform(0, 40, n), rng.uniform(0, 24, n)]
        tkp = np.c_[rng.uniform(0, 24, n), rng.uniform(0, 48, n)]
        skp[0] = [-300.0, 5.0]                                              # outside the letterboxed source: left out
        out.append(Pair(f"{k}:{cat}", cat, str(src), str(trg), skp, tkp, np.array([3.0, 4.0, 5.0, 5.0]),
                        np.array([0.0, 0.0, 24.0, 48.0]), (40, 24) if given else (0, 0),
                        (24, 48) if given else (0, 0)))
    return out


def plain_letterbox(path, size):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    nw, nh = (size, round(size * h / w)) if w >= h else (round(size * w / h), size)
    canvas = np.zeros((size, size, 3), np.uint8)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    canvas[oy:oy + nh, ox:ox + nw] = np.asarray(im.resize((nw, nh), Image.LANCZOS))
    return canvas, size / max(w, h), np.array([ox, oy]), (w, h)


def plain_spair(model, pairs, size, block, alphas):
    """Letterbox, block tokens, full upsampling and argmax, then ||pred - gt|| < alpha x (longer side of the target
    box, in letterboxed pixels); keypoints pooled per category, categories averaged."""
    p = model.cfg.patch_size
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)

    def tokens(canvas):
        x = ((torch.from_numpy(canvas).permute(2, 0, 1).float() / 255 - mean) / std)[None]
        with torch.no_grad():
            _, cache = model.run_with_cache(x, names_filter=f"blocks.{block}.hook_resid_post")
        return cache[f"blocks.{block}.hook_resid_post"][0, 1:].reshape(size // p, size // p, -1)

    hits, counts = {}, {}
    for pair in pairs:
        s_img, s_scale, s_off, _ = plain_letterbox(pair.src_path, size)
        t_img, t_scale, t_off, (tw, th) = plain_letterbox(pair.trg_path, size)
        skp = pair.src_kps * s_scale + s_off
        tkp = pair.trg_kps * t_scale + t_off
        keep = [0 <= x < size and 0 <= y < size for x, y in skp]
        skp, tkp = skp[keep], tkp[keep]
        x0, y0, x1, y1 = pair.trg_bbox
        L = max(x1 - x0, y1 - y0) * size / max(tw, th)
        maps = reference_match(tokens(s_img), tokens(t_img), skp, p)
        c = hits.setdefault(pair.category, {a: 0 for a in alphas})
        counts[pair.category] = counts.get(pair.category, 0) + len(skp)
        for m, g in zip(maps, tkp):
            yy, xx = divmod(int(torch.argmax(m)), m.shape[1])
            for a in alphas:
                c[a] += float(np.hypot(xx - g[0], yy - g[1])) < a * L
    per_cat = {cat: {a: 100 * c[a] / counts[cat] for a in alphas} for cat, c in hits.items()}
    return {a: float(np.mean([v[a] for v in per_cat.values()])) for a in alphas}, per_cat, counts


def test_evaluate_spair_on_pairs_of_different_sizes_against_a_plain_version(model, pairs):
    alphas = (0.3, 0.1)
    res = evaluate_spair(model, pairs, blocks=[0, -1], size=48, alphas=alphas, batch_size=1, keep_matches=1,
                         progress=True)
    assert res["size"] == 48 and res["n_pairs"] == 3 and res["n_outside"] == 3
    for b in (0, 1):
        pck, per_cat, counts = plain_spair(model, pairs, 48, b, alphas)
        assert res["counts"] == counts == {"cat": 22, "dog": 11}
        assert res["pck"][b] == pytest.approx(pck)
        for cat in per_cat:
            assert res["per_category"][b][cat] == pytest.approx(per_cat[cat])
    assert res["pck"][1][0.3] > 20                                       # the wide target box lets many through
    m = res["matches"]
    assert len(m) == 1 and m[0]["pair"] == "0:cat" and m[0]["block"] == 1 and m[0]["src_image"].shape == (48, 48, 3)
    assert m[0]["threshold"] == pytest.approx(48 * 48 / 48)               # target box 24 x 48 of a 24 x 48 image
    rows = spair_rows(res, "m", size=48)
    assert {r["metric"] for r in rows} == {"pck@0.3", "pck@0.1"} and all(r["size"] == 48 for r in rows)
