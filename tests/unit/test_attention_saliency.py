"""Saliency IoU: binarisation, IoU, masks on the token grid, streaming over batches; loop references."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitscope import HookedViT, PreprocessConfig, ViTConfig
from vitscope.analysis.attention import saliency as SA
from vitscope.analysis.attention.maps import collect_patterns
from vitscope.models.preprocess import resize_crop

CONFIGS = {
    "plain": dict(),
    "registers": dict(num_registers=2),
    "late": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
}


def make_model(kind, seed=0):
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10, **CONFIGS[kind])
    return HookedViT(cfg).eval()


def random_pattern(B, H, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, T, generator=g) * 2).softmax(-1)


def ref_binary(P, lay, query, merge, mass):
    """walmer2023's att_to_binary_mask written with loops over our layout."""
    a = P.double().numpy()
    B, H = a.shape[:2]
    rows, cols = lay.grid
    p0, N = lay.patches.start, lay.n_patches
    out = []
    for b in range(B):
        per = []
        for h in range(H):
            if query == "cls":
                v = [a[b, h, lay.cls, p0 + k] for k in range(N)]
            elif query == "mean":
                v = [sum(a[b, h, p0 + q, p0 + k] for q in range(N)) for k in range(N)]
            else:
                c = ((rows - 1) // 2) * cols + (cols - 1) // 2
                v = [a[b, h, p0 + c, p0 + k] for k in range(N)]
            per.append(v)
        if merge:
            per = [[sum(per[h][k] for h in range(H)) for k in range(N)]]
        maps = []
        for v in per:
            s = sum(v)
            v = [x / s for x in v]
            order = sorted(range(N), key=lambda k: v[k])
            keep, cum = [False] * N, 0.0
            for k in order:
                cum += v[k]
                keep[k] = cum > 1 - mass
            maps.append(np.array(keep).reshape(rows, cols))
        out.append(maps)
    return np.array(out)


def ref_iou(pred, gt):
    B, K = pred.shape[:2]
    out = np.zeros((B, K))
    for b in range(B):
        for k in range(K):
            inter = union = 0
            for i in range(gt.shape[1]):
                for j in range(gt.shape[2]):
                    p, g = bool(pred[b, k, i, j]), bool(gt[b, i, j])
                    inter += p and g
                    union += p or g
            out[b, k] = inter / union if union else np.nan
    return out


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
def test_binarize_and_iou_match_reference(kind, B):
    model = make_model(kind)
    g = torch.Generator().manual_seed(4)
    gt = torch.rand(B, 4, 4, generator=g) > 0.5
    for block in range(3):
        lay = model.token_layout(block)
        P = random_pattern(B, 4, lay.n_tokens, seed=block)
        for query in ("cls", "mean", "centre"):
            if query == "cls" and lay.cls is None:
                continue
            for merge in (False, True):
                for mass in (0.6, 0.3):
                    got = SA.binarize_attention(P, lay, query, merge, mass)
                    want = ref_binary(P, lay, query, merge, mass)
                    np.testing.assert_array_equal(got.numpy(), want)
                    np.testing.assert_allclose(SA.iou(got, gt).numpy(), ref_iou(want, gt.numpy()))


def test_iou_known_answers():
    pred = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    pred[0, 0, 0] = True                                      # top row
    pred[0, 1] = True                                         # everything
    gt = torch.tensor([[[True, False], [False, False]]])
    np.testing.assert_allclose(SA.iou(pred, gt).numpy(), [[0.5, 0.25]])
    assert torch.isnan(SA.iou(torch.zeros(1, 1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool))).all()


def test_mask_to_token_grid_rules():
    m = np.zeros((32, 32), np.uint8)
    m[:16, :16] = 1                                           # top-left quarter
    m[20, 30] = 1                                             # one stray pixel
    grid = (4, 4)
    maj = SA.mask_to_token_grid(m, grid, rule="majority")
    anyr = SA.mask_to_token_grid(m, grid, rule="any")
    bic = SA.mask_to_token_grid(m, grid, rule="bicubic")
    want = np.zeros(grid, bool)
    want[:2, :2] = True
    np.testing.assert_array_equal(maj, want)
    want_any = want.copy()
    want_any[2, 3] = True
    np.testing.assert_array_equal(anyr, want_any)
    assert bic[:2, :2].all()                                  # walmer2023's rule contains the object cells
    # loop reference for "any" / "majority" on a random mask (area fraction per cell)
    rng = np.random.default_rng(0)
    m = rng.random((40, 40)) > 0.7
    for rule in ("any", "majority"):
        got = SA.mask_to_token_grid(m, (5, 5), rule=rule)
        for i in range(5):
            for j in range(5):
                frac = m[8 * i:8 * i + 8, 8 * j:8 * j + 8].mean()
                assert got[i, j] == (frac > 0 if rule == "any" else frac >= 0.5)


def test_mask_follows_the_image_preprocessing():
    """A mask drawn into a non-square image lands where the preprocessed image has it."""
    h, w = 48, 80
    m = np.zeros((h, w), np.uint8)
    m[8:40, 24:56] = 1
    cfg = PreprocessConfig(input_size=32, crop_pct=0.8, interpolation="bilinear")
    img = Image.fromarray(np.repeat(m[..., None] * 255, 3, -1).astype(np.uint8))
    crop = np.asarray(resize_crop(img, cfg))[..., 0] / 255.0                 # the image's own preprocessing
    want = np.array([[crop[8 * i:8 * i + 8, 8 * j:8 * j + 8].mean() >= 0.5 for j in range(4)] for i in range(4)])
    got = SA.mask_to_token_grid(m, (4, 4), preprocess_cfg=cfg, rule="majority")
    np.testing.assert_array_equal(got, want)
    # without a config: a square centre crop (walmer2023)
    sq = SA.crop_mask_like_preprocess(m)
    assert sq.shape == (48, 48) and sq.sum() == 32 * 32


def test_streaming_saliency_equals_functional():
    model = make_model("late", seed=1)
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(2, 3, 32, 32, generator=g), torch.randn(1, 3, 32, 32, generator=g)]
    gts = [torch.rand(2, 4, 4, generator=g) > 0.5, torch.rand(1, 4, 4, generator=g) > 0.5]
    res = SA.saliency_iou(model, list(zip(xs, gts)), mass=0.6, progress=False)
    P = collect_patterns(model, torch.cat(xs))
    gt = torch.cat(gts)
    for (q, merge), v in res.items():
        assert v.shape == (3, 3, 1 if merge else 4)
        for b in range(3):
            lay = model.token_layout(b)
            if q == "cls" and lay.cls is None:
                assert np.isnan(v[:, b]).all()
                continue
            want = ref_iou(ref_binary(P[b], lay, q, merge, 0.6), gt.numpy())
            np.testing.assert_allclose(v[:, b], want, rtol=1e-6)
    rows = SA.summarize_iou(res)
    assert {r["query"] for r in rows} == {"cls", "mean", "centre"}
    assert len(rows) == 3 * 3 * (4 + 1)
