"""Task-format loaders on small files written here in each public format."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from conftest import save_rgb
from PIL import Image, ImageDraw

from vitscope.data.tasks import (UnsafePickleError, load_coco, load_davis, load_imagenet_s, load_partimagenet,
                                 load_revisited, load_spair, safe_load_pickle)


def _rle_columns(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE written from its definition: run lengths over the column-major pixels, from 0s."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


def _poly_mask(h, w, poly):
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).polygon([tuple(p) for p in np.asarray(poly).reshape(-1, 2)], fill=1)
    return np.asarray(im, bool)


def _coco_files(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils

    h, w = 24, 32
    (tmp_path / "images").mkdir()
    save_rgb(tmp_path / "images" / "000000000001.jpg", h, w)
    save_rgb(tmp_path / "images" / "000000000002.jpg", h, w, seed=2)
    blob = np.zeros((h, w), bool)
    blob[3:9, 20:30] = True
    crowd = np.zeros((h, w), bool)
    crowd[15:22, 2:6] = True
    enc = mask_utils.encode(np.asfortranarray(blob.astype(np.uint8)))
    poly = [4.0, 4.0, 14.0, 4.0, 14.0, 12.0, 4.0, 12.0]
    data = {
        "info": {"description": "test"}, "licenses": [],
        "images": [{"id": 2, "file_name": "000000000002.jpg", "height": h, "width": w},
                   {"id": 1, "file_name": "000000000001.jpg", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18, "segmentation": [poly], "area": 80.0,
             "bbox": [4.0, 4.0, 10.0, 8.0], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float(blob.sum()),
             "segmentation": {"size": [h, w], "counts": enc["counts"].decode("ascii")}, "bbox": [20.0, 3.0, 10.0, 6.0]},
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": float(crowd.sum()),
             "segmentation": {"size": [h, w], "counts": _rle_columns(crowd)}, "bbox": [2.0, 15.0, 4.0, 7.0]},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return tmp_path / "instances.json", tmp_path / "images", poly, blob, crowd


def test_coco_polygon_and_both_rle_forms(tmp_path):
    ann, imgs, poly, blob, crowd = _coco_files(tmp_path)
    ds = load_coco(ann, imgs)
    assert len(ds) == 2 and ds.image_ids == [1, 2]
    s = ds[0]
    assert s.masks.shape == (3, 24, 32) and s.category_names == ["dog", "person", "person"]
    ref_poly = _poly_mask(24, 32, poly)
    assert (s.masks[0] ^ ref_poly).sum() <= 24  # rasterisers differ on the boundary only
    np.testing.assert_array_equal(s.masks[1], blob)
    np.testing.assert_array_equal(s.masks[2], crowd)
    np.testing.assert_array_equal(s.boxes[0], [4, 4, 14, 12])
    assert s.iscrowd.tolist() == [False, False, True]
    np.testing.assert_array_equal(s.foreground(), s.masks[0] | blob)
    assert ds[1].masks.shape == (0, 24, 32)
    assert len(load_coco(ann, imgs, require_annotations=True)) == 1
    only_dog = load_coco(ann, imgs, categories=[18])
    assert len(only_dog) == 1 and only_dog[0].category_names == ["dog"]
    d = ds.image_dataset(transform=lambda im: np.array(im))
    assert d.ids[0].endswith("000000000001.jpg") and d[1][0].shape == (24, 32, 3)


def test_partimagenet_parts(tmp_path):
    pytest.importorskip("pycocotools")
    (tmp_path / "images" / "test").mkdir(parents=True)
    save_rgb(tmp_path / "images" / "test" / "n01440764_10043.JPEG", 20, 20, fmt="JPEG")
    cats = [{"id": 0, "name": "Quadruped Head", "supercategory": "Quadruped"},
            {"id": 1, "name": "Quadruped Body", "supercategory": "Quadruped"},
            {"id": 9, "name": "Fish Head", "supercategory": "Fish"}]
    anns = [{"id": 1, "image_id": 7, "category_id": 0, "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]], "area": 36,
             "bbox": [2, 2, 6, 6], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": [[8, 2, 18, 2, 18, 12, 8, 12]], "area": 100,
             "bbox": [8, 2, 10, 10], "iscrowd": 0}]
    (tmp_path / "test.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "n01440764_10043.JPEG", "height": 20, "width": 20}],
        "annotations": anns, "categories": cats}))
    ds = load_partimagenet(tmp_path / "test.json", tmp_path / "images" / "test")
    s = ds[0]
    assert s.part_names == ["Quadruped Head", "Quadruped Body"] and s.supercategory == "Quadruped"
    assert s.wnid == "n01440764" and s.part_masks.shape == (2, 20, 20)
    pm = s.part_map()
    assert pm[4, 4] == 0 and pm[5, 12] == 1 and pm[15, 15] == -1
    assert s.object_mask().sum() == (s.part_masks[0] | s.part_masks[1]).sum()
    assert ds.supercategories == ["Fish", "Quadruped"]
    assert len(load_partimagenet(tmp_path / "test.json", tmp_path / "images" / "test", supercategories=["Fish"])) == 0


def test_imagenet_s_masks(tmp_path):
    root = tmp_path / "ImageNetS50"
    ids = np.zeros((10, 12), np.int64)
    ids[2:6, 3:9] = 919
    ids[0, :] = 1000
    (root / "validation-segmentation" / "n01443537").mkdir(parents=True)
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)  # R + 256 G, as published
    Image.fromarray(rgb).save(root / "validation-segmentation" / "n01443537" / "ILSVRC2012_val_00000001.png")
    save_rgb(root / "validation" / "n01443537" / "ILSVRC2012_val_00000001.JPEG", 10, 12, fmt="JPEG")
    (root / "ImageNetS_categories_im50.txt").write_text("n01443537\nn01491361\n")
    ds = load_imagenet_s(root)
    assert len(ds) == 1 and ds[0].wnid == "n01443537" and ds[0].path.endswith(".JPEG")
    np.testing.assert_array_equal(ds[0].mask(), ids)
    assert ds[0].object_mask().sum() == 24 and ds.class_id("n01491361") == 2
    assert ds.image_dataset(transform=np.array)[0][0].shape == (10, 12, 3)


def test_davis_palette_masks(tmp_path):
    from vitscope.data.tasks.davis import davis_palette

    root = tmp_path / "DAVIS"
    for seq, T in (("bear", 3), ("car-roundabout", 2)):
        (root / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (root / "Annotations" / "480p" / seq).mkdir(parents=True)
        for t in range(T):
            save_rgb(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", 12, 16, seed=t)
            m = np.zeros((12, 16), np.uint8)
            m[2:5, t:t + 4] = 1
            m[7:10, 8:12] = 2
            m[0, 0] = 255
            im = Image.fromarray(m, mode="P")
            im.putpalette(davis_palette())
            im.save(root / "Annotations" / "480p" / seq / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\ncar-roundabout\n")
    ds = load_davis(root)
    assert [s.name for s in ds] == ["bear", "car-roundabout"]
    s = ds.sequence("bear")
    assert len(s) == 3 and s.n_objects == 2
    assert s.frames().shape == (3, 12, 16, 3)
    m = s.masks()
    assert m.shape == (3, 12, 16) and m[2, 3, 2] == 1 and m[2, 3, 1] == 0 and m[0, 8, 9] == 2 and m[0, 0, 0] == 255
    assert len(ds.image_dataset()) == 5
    with pytest.raises(FileNotFoundError):
        load_davis(root, split="test-dev")


def test_spair_pairs(tmp_path):
    root = tmp_path / "SPair-71k"
    (root / "JPEGImages" / "cat").mkdir(parents=True)
    save_rgb(root / "JPEGImages" / "cat" / "2008_000001.jpg", 30, 40)
    save_rgb(root / "JPEGImages" / "cat" / "2008_000002.jpg", 36, 20)
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "Layout" / "large").mkdir(parents=True)
    name = "000001-2008_000001-2008_000002:cat"
    pair = {"filename": name, "src_imname": "2008_000001.jpg", "trg_imname": "2008_000002.jpg",
            "src_imsize": [40, 30, 3], "trg_imsize": [20, 36, 3], "src_bndbox": [2, 3, 30, 25],
            "trg_bndbox": [1, 1, 15, 31], "category": "cat", "src_pose": "Frontal", "trg_pose": "Left",
            "src_kps": [[5, 6], [20, 10]], "trg_kps": [[3, 4], [12, 20]], "kps_ids": ["0", "7"],
            "mirror": 0, "viewpoint_variation": 1, "scale_variation": 0, "truncation": 0, "occlusion": 2}
    (root / "PairAnnotation" / "test" / f"{name}.json").write_text(json.dumps(pair))
    (root / "Layout" / "large" / "test.txt").write_text(name + "\n")
    ds = load_spair(root)
    p = ds[0]
    assert p.category == "cat" and p.src_size == (40, 30) and p.trg_size == (20, 36)
    np.testing.assert_array_equal(p.trg_kps, [[3, 4], [12, 20]])
    assert p.kps_ids.tolist() == [0, 7] and p.flags["occlusion"] == 2
    assert p.pck_threshold(0.1) == pytest.approx(3.0)
    assert Image.open(p.trg_path).size == p.trg_size
    assert len(ds.image_paths()) == 2
    assert len(load_spair(root, categories=["dog"])) == 0


def _revisited(tmp_path, gnd=None):
    root = tmp_path / "roxford5k"
    (root / "jpg").mkdir(parents=True)
    imlist = ["all_souls_000000", "ashmolean_000001", "balliol_000002"]
    for k, n in enumerate(imlist + ["all_souls_000013"]):
        save_rgb(root / "jpg" / f"{n}.jpg", 20, 30, seed=k)
    gnd = gnd or [{"bbx": [2.0, 3.0, 12.0, 15.0], "easy": np.array([0]), "hard": np.array([2]), "junk": np.array([1])}]
    cfg = {"imlist": imlist, "qimlist": ["all_souls_000013"], "gnd": gnd}
    with open(root / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump(cfg, f, protocol=2)
    return root


def test_revisited_ground_truth_and_protocols(tmp_path):
    root = _revisited(tmp_path)
    gt = load_revisited(root)
    assert gt.name == "roxford5k" and len(gt) == 3
    q = gt.queries[0]
    assert q.positives("medium").tolist() == [0, 2] and q.ignored("medium").tolist() == [1]
    assert q.positives("hard").tolist() == [2] and sorted(q.ignored("hard").tolist()) == [0, 1]
    assert q.positives("easy").tolist() == [0]
    assert gt.db_path(1).endswith("jpg/ashmolean_000001.jpg")
    qd = gt.query_dataset(transform=np.array)
    assert qd[0][0].shape == (12, 10, 3)  # cropped to the box
    assert gt.query_dataset(transform=np.array, crop=False)[0][0].shape == (20, 30, 3)
    assert load_revisited(root / "gnd_roxford5k.pkl").name == "roxford5k"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        safe_load_pickle(pickle.dumps({"imlist": [], "gnd": [_Evil()]}))
    root = _revisited(tmp_path)
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": [1], "qimlist": [], "gnd": [_Evil()]}))
    with pytest.raises(UnsafePickleError, match="not loaded"):
        load_revisited(root)
    # plain data in every protocol, with numpy arrays and scalars, comes back as written
    obj = {"a": [1, 2.5, "s", None, True, b"x", (1, 2), {3}], "arr": np.arange(6, dtype=np.int32).reshape(2, 3),
           "f": np.float64(1.5), "nested": [{"bbx": np.array([1.0, 2.0])}]}
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        back = safe_load_pickle(pickle.dumps(obj, protocol=proto))
        assert back["a"] == obj["a"] and back["f"] == 1.5
        np.testing.assert_array_equal(back["arr"], obj["arr"])
        np.testing.assert_array_equal(back["nested"][0]["bbx"], [1.0, 2.0])
    with pytest.raises(ValueError, match="not a readable pickle"):
        safe_load_pickle(b"garbage")


def test_revisited_index_out_of_range(tmp_path):
    root = _revisited(tmp_path, gnd=[{"bbx": [0, 0, 5, 5], "easy": [7], "hard": [], "junk": []}])
    with pytest.raises(ValueError, match="outside the 3 database images"):
        load_revisited(root)
