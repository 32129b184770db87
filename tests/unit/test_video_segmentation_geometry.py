"""DAVIS label propagation on non-square videos (real DAVIS frames are 854 x 480) at DINO's resolution, end to end
against a plain pipeline written here (explicit sizes, a nearest-neighbour loop, DINO's propagation as a loop), and
the other public functions of ``video_segmentation`` with their arguments away from their defaults."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from test_video_segmentation import dino_propagation_loop  # noqa: E402  (the loop reference, one copy)
from vitscope.analysis.video_segmentation import (boundary_radius, davis_rows, davis_table, evaluate_davis,
                                                  evaluate_sequence, neighbourhood_mask, one_hot_labels,
                                                  prepare_video, tiled_features, video_block_features)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def model():
    from vitscope import HookedViT, ViTConfig

    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)).eval()


def write_video(root, name, h, w, n_frames=4, seed=0):
    """A smooth random background with two rectangles moving right; frames as JPEG, masks as DAVIS palette PNGs."""
    from vitscope.data.tasks.davis import write_palette_mask

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
    (root / "Annotations" / "480p" / name).mkdir(parents=True)
    for t in range(n_frames):
        img = np.stack([(yy * 255 // h), (xx * 255 // w), np.full((h, w), 90)], -1).astype(np.float64)
        img += rng.normal(0, 12, img.shape)
        ids = np.zeros((h, w), np.uint8)
        a, b = h // 5, w // 6 + 3 * t
        ids[a:a + h // 3, b:b + w // 4] = 1
        ids[h - h // 3:h - 2, w // 2 + 2 * t:w // 2 + 2 * t + w // 5] = 2
        ids[0, 0] = 255                                                     # a void pixel
        img[ids == 1] = (230, 40, 40)
        img[ids == 2] = (30, 200, 60)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
        write_palette_mask(ids, root / "Annotations" / "480p" / name / f"{t:05d}.png")


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    from vitscope.data.tasks import load_davis

    root = tmp_path_factory.mktemp("davis")
    write_video(root, "wide", 60, 100, seed=0)                             # landscape, like 854 x 480
    write_video(root, "tall", 100, 60, seed=1)                             # portrait
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("wide\ntall\n")
    return load_davis(root)


def nearest(a, size_hw):
    """Nearest-neighbour resize written out: output (i, j) reads input (floor((i + 1/2) H / h), ...)."""
    H, W = a.shape
    h, w = size_hw
    ys = [int((i + 0.5) * H / h) for i in range(h)]
    xs = [int((j + 0.5) * W / w) for j in range(w)]
    return np.array([[a[y, x] for x in xs] for y in ys])


def reference_predictions(model, seq, size_hw, block, **kw):
    """The protocol with every size spelled out: bilinear frames at ``size_hw`` (H', W'), patch tokens of the block
    output, the first mask on the (H'/p, W'/p) grid, DINO's propagation loop, bilinear upsampling by p to
    (H', W'), per-channel min-max, argmax, and PIL's nearest back to the frame's (H, W)."""
    p = model.cfg.patch_size
    frames, gt = seq.frames(), seq.masks()
    H, W = frames.shape[1:3]
    th, tw = size_hw
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=f"blocks.{block}.hook_resid_post")
    feats = cache[f"blocks.{block}.hook_resid_post"][:, 1:].reshape(len(x), th // p, tw // p, -1)
    first = np.where(gt[0] == 255, 0, gt[0])
    soft = dino_propagation_loop(feats, torch.from_numpy(nearest(first, (th // p, tw // p))), **kw)
    out = [first.astype(np.uint8)]
    for t in range(1, len(soft)):
        up = F.interpolate(soft[t][None].float(), size=(th, tw), mode="bilinear", align_corners=False)[0]
        for c in range(up.shape[0]):
            if up[c].max() > 0:
                up[c] = (up[c] - up[c].min()) / (up[c] - up[c].min()).max()
        ids = up.argmax(0).numpy().astype(np.uint8)
        out.append(np.asarray(Image.fromarray(ids).resize((W, H), Image.NEAREST)))
    return np.stack(out)


def test_label_propagation_on_non_square_videos_at_dino_resolution(model, davis):
    kw = dict(n_last=2, radius=2, topk=3, temperature=0.2)
    res = evaluate_davis(model, davis, blocks=[0, -1], resolution="dino", short_side=48, bound_th=2, batch_size=3,
                         keep_predictions=True, **kw)
    # 60 x 100 -> short side 48, long side floor(48 x 100 / 60 / 64) x 64 = 64; the portrait video the other way
    assert res["info"]["wide"]["input_size"] == (48, 64) and res["info"]["wide"]["grid"] == (6, 8)
    assert res["info"]["tall"]["input_size"] == (64, 48) and res["info"]["tall"]["grid"] == (8, 6)
    for seq in davis:
        size = res["info"][seq.name]["input_size"]
        for b in (0, 1):
            got = res["predictions"][b][seq.name]
            assert got.shape == seq.masks().shape
            ref = reference_predictions(model, seq, size, b, **kw)
            assert np.array_equal(got, ref), (seq.name, b, float((got != ref).mean()))
    seqs = {s.name: evaluate_sequence(reference_predictions(model, s, res["info"][s.name]["input_size"], 1, **kw),
                                      s.masks(), bound_th=2) for s in davis}
    table, _ = davis_table(seqs)
    assert res["global"][1] == pytest.approx(table)
    assert res["global"][1]["J-Mean"] > 0.2                                   # the objects are followed at all
    rows = davis_rows(res, "m", resolution="dino")
    assert {(r["block"], r["metric"]) for r in rows} >= {(0, "J&F-Mean"), (1, "F-Decay")}
    assert all(r["model"] == "m" and r["task"] == "davis" and r["resolution"] == "dino" for r in rows)


def test_dense_resolution_is_its_parts_composed(model, davis):
    from vitscope.analysis.video_segmentation import propagate_labels, soft_to_ids

    seq = davis[1]                                                            # 100 x 60
    res = evaluate_davis(model, [seq], blocks=[1], resolution="dense", tile=16, radius=1, progress=True,
                         keep_predictions=True)
    assert res["info"]["tall"] == {"input_size": (48, 32), "grid": (6, 4), "original_size": (100, 60)}
    x, small, _ = prepare_video(seq.frames(), seq.masks()[0], 8, "dense", tile=16)
    feats = tiled_features(model, x, [1], tile=16)[1]
    soft = propagate_labels(feats, small, radius=1)
    ref = [soft_to_ids(soft[t], 8, (100, 60)) for t in range(1, len(soft))]
    assert np.array_equal(res["predictions"][1]["tall"][1:], np.stack(ref))


def test_prepare_video_sizes_and_masks_on_the_token_grid(davis):
    seq = davis[0]                                                            # 60 x 100
    frames, first = seq.frames(), seq.masks()[0]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x, small, info = prepare_video(frames, first, 8, "dino", short_side=48, mean=mean, std=std)
    ref = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, size=(48, 64), mode="bilinear",
                        align_corners=False)
    ref = (ref - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, ref)
    assert np.array_equal(small, nearest(np.where(first == 255, 0, first), (6, 8)))
    assert info == {"input_size": (48, 64), "grid": (6, 8), "original_size": (60, 100)}
    # walmer2023 without --dense: squashed to tile x tile
    x, small, info = prepare_video(frames, first, 8, "squash", tile=24)
    assert tuple(x.shape) == (4, 3, 24, 24) and small.shape == (3, 3) and info["grid"] == (3, 3)
    # --dense: bicubic to short side 2 x tile, the long side floored to the patch: 32 x floor(53.3 / 8) x 8 = 48
    x, small, info = prepare_video(frames, first, 8, "dense", tile=16)
    assert tuple(x.shape) == (4, 3, 32, 48) and info["grid"] == (4, 6)
    ref = np.asarray(Image.fromarray(frames[1]).resize((48, 32), Image.BICUBIC)).astype(np.float32) / 255
    ref = (ref - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_tiled_features_against_one_tile_at_a_time(model):
    torch.manual_seed(1)
    frames = torch.randn(2, 3, 32, 40)                                         # tiles of 16: rows 0, 16; cols 0, 16, 24
    got = tiled_features(model, frames, [0, 1], tile=16, device="cpu")
    ref = {b: torch.full((2, 4, 5, 16), float("nan")) for b in (0, 1)}
    for y in (0, 16):
        for x0 in (0, 16, 24):
            with torch.no_grad():
                _, cache = model.run_with_cache(frames[:, :, y:y + 16, x0:x0 + 16])
            for b in (0, 1):
                tok = cache[f"blocks.{b}.hook_resid_post"][:, 1:].reshape(2, 2, 2, 16)
                for i in range(2):
                    for j in range(2):
                        if torch.isnan(ref[b][0, y // 8 + i, x0 // 8 + j, 0]):     # the first tile written wins
                            ref[b][:, y // 8 + i, x0 // 8 + j] = tok[:, i, j]
    for b in (0, 1):
        torch.testing.assert_close(got[b], ref[b], rtol=1e-5, atol=1e-5)
    dense = video_block_features(model, frames, [1], resolution="dense", tile=16, batch_size=1, device="cpu")
    torch.testing.assert_close(dense[1], ref[1], rtol=1e-5, atol=1e-5)
    plain = video_block_features(model, frames, [1], resolution="dino", batch_size=1)
    with torch.no_grad():
        _, cache = model.run_with_cache(frames)
    torch.testing.assert_close(plain[1], cache["blocks.1.hook_resid_post"][:, 1:].reshape(2, 4, 5, 16))


def test_small_helpers_with_other_arguments():
    m = neighbourhood_mask(3, 4, 1, device="cpu")
    ref = [[abs(i // 4 - j // 4) <= 1 and abs(i % 4 - j % 4) <= 1 for j in range(12)] for i in range(12)]
    assert m.tolist() == ref
    oh = one_hot_labels(np.array([[0, 2], [1, 0]]), num_classes=4)
    assert oh.shape == (4, 2, 2) and oh[3].sum() == 0 and oh[2, 0, 1] == 1
    assert boundary_radius((480, 854), 0.008) == 8 and boundary_radius((480, 854), 3) == 3
    # n_objects larger than the first frame's ids: the missing object scores J = 1 (both empty) in every frame
    gt = np.zeros((4, 6, 7), np.uint8)
    gt[:, 1:3, 1:4] = 1
    res = evaluate_sequence(gt, gt, n_objects=2, bound_th=1)
    assert res["J"].shape == (2, 2) and np.all(res["J"] == 1) and np.all(res["F"] == 1)
