"""Saliency IoU's named rules against transcriptions of walmer2023's code (``prep_token_masks``,
``att_to_binary_mask`` called in its order, with its in-place division), and masks given with each batch."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.analysis.attention import saliency as SA
from vitscope.models.layout import TokenLayout


# ----------------------------------------------------------------------------- walmer2023, transcribed
def seed_token_mask(objects, gv, gh):
    """Each object: centre crop to a square, 0/255, resized (PIL's default filter for 'L', bicubic), > 0; OR."""
    masks = []
    for m in objects:
        m = m.astype(np.uint8)
        h, w = m.shape
        if h < w:
            ws = int((w - h) / 2)
            m = m[:, ws:ws + h]
        else:
            hs = int((h - w) / 2)
            m = m[hs:hs + w, :]
        r = np.array(Image.fromarray(m * 255).resize([gh, gv], Image.BICUBIC)).astype(float)
        if r.sum() == 0:
            continue
        masks.append(r / r.sum())
    return np.sum(masks, axis=0) > 0


def seed_binary(attn, mode, merge, mass=0.6, centre=None):
    """att_to_binary_mask: note the in-place ``/=`` on a view of ``attn`` for the cls and centre modes."""
    nb, nh = attn.shape[:2]
    gl = int(np.sqrt(attn.shape[2] - 1))
    attn = attn[:, :, :, 1:]
    if mode == "cls":
        attn = attn[:, :, 0, :]
    elif mode == "spc":
        attn = torch.sum(attn[:, :, 1:, :], dim=2)
    else:
        attn = attn[:, :, centre, :]
    if merge:
        attn = torch.sum(attn, dim=1, keepdim=True)
        nh = 1
    attn /= torch.sum(attn, dim=2, keepdim=True)
    val, idx = torch.sort(attn)
    val /= torch.sum(val, dim=2, keepdim=True)
    th = torch.cumsum(val, dim=2) > (1 - mass)
    idx2 = torch.argsort(idx)
    for b in range(nb):
        for h in range(nh):
            th[b, h] = th[b, h][idx2[b, h]]
    return th.reshape(nb, nh, gl, gl)


def rand_objects(seed, H=37, W=45, k=3):
    rng = np.random.default_rng(seed)
    out = np.zeros((k, H, W), bool)
    for j in range(k):
        y, x = rng.integers(0, H - 6), rng.integers(0, W - 6)
        out[j, y:y + rng.integers(2, 7), x:x + rng.integers(2, 7)] = True
    return out


# ----------------------------------------------------------------------------- tests
def test_default_mask_rule_resizes_each_object_like_seed002():
    differs = 0
    for seed in range(12):
        objs = rand_objects(seed)
        want = seed_token_mask(objs, 5, 5)
        got = SA.mask_to_token_grid(objs, (5, 5), rule="bicubic")
        assert np.array_equal(got, want), seed
        union = SA.mask_to_token_grid(objs, (5, 5), rule="bicubic-union")
        np.testing.assert_array_equal(union, SA.mask_to_token_grid(objs.any(0), (5, 5), rule="bicubic"))
        differs += not np.array_equal(union, want)
    assert differs > 0                                       # the two named rules are not the same rule


def test_seed002_merge_rule_reproduces_the_in_place_renormalisation():
    g = torch.Generator().manual_seed(0)
    T, H = 17, 3
    P = (torch.randn(2, H, T, T, generator=g, dtype=torch.float64) * 3).softmax(-1)
    lay = TokenLayout(0, T, 0, None, (), slice(1, T), (4, 4))
    centre = 1 + (3 // 2) * 4 + 3 // 2
    work = P.clone()                                          # the seed's call order on one tensor
    seed = {}
    for mode in ("cls", "spc", "center"):
        for merge in (False, True):
            seed[(mode, merge)] = seed_binary(work, mode, merge, centre=centre)
    names = {"cls": "cls", "spc": "mean", "center": "centre"}
    for (mode, merge), want in seed.items():
        got = SA.binarize_attention(P, lay, names[mode], merge, merge_rule="seed002")
        assert torch.equal(got, want), (mode, merge)
    plain = SA.binarize_attention(P, lay, "cls", True)        # default: raw maps summed
    assert not torch.equal(plain, seed[("cls", True)])
    fresh = seed_binary(P.clone(), "cls", True)               # the seed's merge on untouched maps = default
    assert torch.equal(plain, fresh)


def test_masks_with_each_batch():
    g = torch.Generator().manual_seed(1)
    lay = TokenLayout(0, 10, 0, None, (), slice(1, 10), (3, 3))
    pats = [{b: (torch.randn(2, 2, 10, 10, generator=g) * 2).softmax(-1) for b in range(2)} for _ in range(2)]
    gts = [torch.rand(2, 3, 3, generator=g) > 0.5 for _ in range(2)]
    a, b, c = (SA.SaliencyIoU(2, 2, queries=("cls", "mean")) for _ in range(3))
    for p, gt in zip(pats, gts):
        a.set_masks(gt)
        for blk, pat in p.items():
            a.update(blk, pat, lay)
            b.update(blk, pat, lay, gt)
        c.update_batch(p, lay, gt)
    ra, rb, rc = a.compute(), b.compute(), c.compute()
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k])
        np.testing.assert_array_equal(ra[k], rc[k])
        assert ra[k].shape[0] == 4
    want = SA.iou(SA.binarize_attention(pats[1][0], lay, "cls"), gts[1]).numpy()
    np.testing.assert_array_equal(ra[("cls", False)][2:, 0], want)
    with pytest.raises(ValueError, match="do not match"):
        SA.SaliencyIoU(2, 2).update(0, pats[0][0], lay, torch.zeros(3, 3, 3, dtype=torch.bool))
