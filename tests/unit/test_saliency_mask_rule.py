"""walmer2023's "bicubic" rule for putting an object mask on the token grid, on non-square masks with a crop.

Reference: the crop written out by hand, then PIL's bicubic filter reproduced with torch (antialiased bicubic,
a = -0.5, the horizontal pass first, each pass rounded and clipped to 8 bits as PIL does), then walmer2023's
threshold: a token is object when the resized 0/255 mask is above 0. The masks are chosen so that many cells
are only partly covered (values between 1 and 127), where another threshold would give another answer.
"""
import numpy as np
import pytest
import torch

from vitscope.analysis.attention.saliency import mask_to_token_grid
from vitscope.models.preprocess import PreprocessConfig


def pil_bicubic_8bit(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 -> (rows, cols) as PIL's ``Image.resize(..., BICUBIC)`` computes it."""
    import torch.nn.functional as F

    t = torch.tensor(m, dtype=torch.float64)[None, None]
    t = F.interpolate(t, size=(m.shape[0], size[1]), mode="bicubic", antialias=True, align_corners=False)
    t = t.round().clamp(0, 255)
    t = F.interpolate(t, size=size, mode="bicubic", antialias=True, align_corners=False)
    return t.round().clamp(0, 255)[0, 0].numpy()


def blocky_masks(h, w, n=6, seed=0):
    """Rectangles whose edges fall on even pixels (so a 2x reduction of the mask is exact)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = np.zeros((h, w), bool)
        r0, c0 = 2 * rng.integers(h // 8, h // 2 - 4), 2 * rng.integers(w // 8, w // 2 - 4)
        m[r0:r0 + 2 * rng.integers(2, h // 6), c0:c0 + 2 * rng.integers(2, w // 6)] = True
        out.append(m)
    return out


def square_crop(m):
    h, w = m.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return m[top:top + s, left:left + s]


@pytest.mark.parametrize("shape", [(96, 160), (160, 96)])
@pytest.mark.parametrize("grid", [(6, 6), (5, 7)])
def test_bicubic_rule_square_centre_crop(shape, grid):
    partial = 0
    for m in blocky_masks(*shape):
        crop = square_crop(m).astype(np.uint8) * 255
        v = pil_bicubic_8bit(crop, grid)
        got = mask_to_token_grid(m, grid, preprocess_cfg=None, rule="bicubic")
        np.testing.assert_array_equal(got, v > 0)
        partial += int(((v > 0) & (v < 128)).sum())
    assert partial >= 5, "the masks must give partly covered cells, else a changed threshold goes unseen"


def test_bicubic_rule_after_the_models_resize_and_crop():
    """input 48, crop_pct 0.5: a 192 x 384 mask is halved to 96 x 192 and its centre 48 x 48 is kept."""
    cfg = PreprocessConfig(input_size=48, crop_pct=0.5)
    partial = 0
    for m in blocky_masks(192, 384, seed=3):
        half = m[::2, ::2]                                              # exact: constant on 2 x 2 blocks
        crop = half[24:72, 72:120].astype(np.uint8) * 255
        if not crop.any():
            continue
        v = pil_bicubic_8bit(crop, (6, 6))
        got = mask_to_token_grid(m, (6, 6), preprocess_cfg=cfg, rule="bicubic")
        np.testing.assert_array_equal(got, v > 0)
        partial += int(((v > 0) & (v < 128)).sum())
    assert partial >= 3


def test_the_reference_is_pils_filter():
    """The torch reproduction above equals PIL itself on these masks (so the test compares against PIL)."""
    from PIL import Image

    for m in blocky_masks(96, 160, seed=5):
        a = m.astype(np.uint8) * 255
        for size in [(6, 6), (5, 7), (12, 20)]:
            pil = np.asarray(Image.fromarray(a).resize(size[::-1], Image.BICUBIC)).astype(float)
            np.testing.assert_array_equal(pil_bicubic_8bit(a, size), pil)
