"""Dense clustering on non-square images that the model resizes and centre-crops: each object mask must follow
the image (short side resized, centre cropped), not be squashed to the input size.

The reference is written out by hand: with crop_pct 0.5 a 256 x 128 image (or 128 x 256) becomes 128 x 64 (a
2x reduction), then its centre 32 x 32 is cut out. The masks are made of 2 x 2 pixel blocks, so the
reduced mask is exact whatever the resampling filter; the weight of each 8 x 8 patch is the fraction of it the
object covers, and the feature is the weighted mean of the patch tokens the model computes for that crop.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.cluster import model_object_features
from vitscope.data.datasets import ImageDataset
from vitscope.models.preprocess import PreprocessConfig

SIZE, PATCH, REGS = 32, 8, 2


class MaskedImages:
    """A minimal in-memory image source with object masks (the interface ``dataset_masks`` reads)."""

    def __init__(self, images, masks, labels):
        self.images, self._masks, self._labels = images, masks, labels
        self.ids = [f"img{i}" for i in range(len(images))]
        self.paths = list(self.ids)
        self.labels = np.zeros(len(images), dtype=np.int64)
        self.classes = ["thing"]
        self.description = "masked images"

    def load(self, i):
        return self.images[i]

    def masks(self, i, level):
        return self._masks[i], self._labels[i]


def blocky_mask(rng, h, w):
    """A union of two rectangles whose edges fall on even pixels."""
    m = np.zeros((h, w), bool)
    for _ in range(2):
        r0, c0 = 2 * rng.integers(0, h // 2 - 8), 2 * rng.integers(0, w // 2 - 8)
        m[r0:r0 + 2 * rng.integers(4, h // 4), c0:c0 + 2 * rng.integers(4, w // 4)] = True
    return m


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    for h, w in [(128, 256), (256, 128), (128, 256)]:
        images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        ms = [blocky_mask(rng, h, w) for _ in range(2)]
        # one object centred, so that it survives the crop whatever the rectangles above did
        c = np.zeros((h, w), bool)
        c[h // 2 - 20:h // 2 + 12, w // 2 - 14:w // 2 + 22] = True
        masks.append(ms + [c])
        labels.append([1, 2, 3])
    return MaskedImages(images, masks, labels)


def make_model():
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=SIZE, patch_size=PATCH, embed_dim=24, depth=2, num_heads=2, num_classes=3,
                            num_registers=REGS)).eval()
    m.preprocess_cfg = PreprocessConfig(input_size=SIZE, crop_pct=0.5)
    return m


def crop_by_hand(mask):
    """Reduce 2x (2 x 2 blocks -> 1 pixel), then cut out the centred SIZE x SIZE window."""
    h, w = mask.shape
    small = mask[::2, ::2]                                            # exact: the mask is constant on 2 x 2 blocks
    sh, sw = small.shape
    top, left = (sh - SIZE) // 2, (sw - SIZE) // 2
    return small[top:top + SIZE, left:left + SIZE].astype(float)


def reference(model, src, hook):
    feats, labels = [], []
    for i, img in enumerate(src.images):
        x = model.preprocess(img)
        with torch.no_grad():
            _, cache = model.run_with_cache(x, names_filter=hook)
        tok = cache[hook][0, 1 + REGS:].double().numpy()                             # CLS, registers, then patches
        g = SIZE // PATCH
        for m, lab in zip(*src.masks(i, "object")):
            crop = crop_by_hand(m)
            cover = np.array([[crop[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH].mean() for c in range(g)]
                              for r in range(g)]).reshape(-1)
            if cover.sum() == 0:
                continue
            feats.append(sum(cover[p] * tok[p] for p in range(g * g)) / cover.sum())
            labels.append(lab)
    return np.stack(feats), np.array(labels)


def test_masks_follow_the_resize_and_centre_crop():
    src = make_data()
    model = make_model()
    hook = "blocks.1.hook_resid_post"
    feats, labels = model_object_features(model, ImageDataset(src), "object", [hook], resample="area", batch_size=2)
    want_f, want_l = reference(model, src, hook)
    np.testing.assert_array_equal(labels, want_l)
    np.testing.assert_allclose(feats[hook], want_f, rtol=1e-4, atol=1e-5)


def test_the_crop_matters_here():
    """The inputs are chosen so that a squashed mask gives other weights (else the test above proves nothing)."""
    src = make_data()
    squashed = np.asarray(Image.fromarray(src.masks(0, "object")[0][2].astype(np.uint8) * 255)
                          .resize((SIZE, SIZE), Image.NEAREST)) > 127
    assert not np.array_equal(squashed, crop_by_hand(src.masks(0, "object")[0][2]) > 0)


@pytest.mark.parametrize("resample", ["bicubic", "area"])
def test_every_mask_kept_is_inside_the_crop(resample):
    """A mask lying wholly outside the centre crop is dropped (it covers no token), whatever the filter."""
    src = make_data()
    h, w = src.images[0].size[1], src.images[0].size[0]
    outside = np.zeros((h, w), bool)
    outside[:, :16] = True                                              # the left 16 px: cropped away
    src._masks[0] = [outside] + src._masks[0][2:]
    src._labels[0] = [9, 3]
    model = make_model()
    _, labels = model_object_features(model, ImageDataset(src), "object", ["blocks.0.hook_resid_post"],
                                      resample=resample, batch_size=2)
    assert 9 not in labels.tolist() and labels.tolist().count(3) == 3
