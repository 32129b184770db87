"""ImageDataset over folders and lists: order, labels, indices, the skip policy, workers, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import save_rgb, write_mixed_folder
from PIL import Image

from vitscope.data import collate_skip, open_dataset, read_skip_report
from vitscope.models.preprocess import PreprocessConfig, Preprocessor

TF = Preprocessor(PreprocessConfig(input_size=16, crop_pct=1.0))


def _imagefolder(root):
    for c, n in (("cat", 3), ("dog", 2), ("emu", 1)):
        for k in range(n):
            save_rgb(root / c / f"img{k}.png", seed=10 * len(c) + k)
    return root


def test_imagefolder_order_labels_and_items(tmp_path):
    root = _imagefolder(tmp_path / "f")
    ds = open_dataset(root, transform=TF)
    assert ds.classes == ["cat", "dog", "emu"]
    assert [p.split("/")[-2:] for p in ds.paths] == [["cat", "img0.png"], ["cat", "img1.png"], ["cat", "img2.png"],
                                                     ["dog", "img0.png"], ["dog", "img1.png"], ["emu", "img0.png"]]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 2])
    x, y, i = ds[4]
    assert x.shape == (3, 16, 16) and y == 1 and i == 4
    ref = TF(Image.open(ds.paths[4]).convert("RGB"))
    torch.testing.assert_close(x, ref)


def test_flat_folder_natural_order_no_labels(tmp_path):
    for k in (10, 2, 1):
        save_rgb(tmp_path / "frames" / f"frame{k}.png", seed=k)
    ds = open_dataset(tmp_path / "frames", transform=TF)
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == ["frame1.png", "frame2.png", "frame10.png"]
    assert ds.classes == [] and (ds.labels == -1).all() and ds[0][1] == -1


def test_list_files_relative_paths_and_class_names(tmp_path):
    root = _imagefolder(tmp_path / "f")
    (tmp_path / "l.csv").write_text("path,label\nf/dog/img1.png,dog\nf/cat/img0.png,cat\n")
    ds = open_dataset(tmp_path / "l.csv", transform=TF)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [1, 0]
    assert ds.paths[0] == str(root / "dog" / "img1.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "l.txt").write_text("../f/emu/img0.png 5\n../f/cat/img2.png 0\n")
    ds = open_dataset(tmp_path / "sub" / "l.txt", transform=TF)
    assert ds.labels.tolist() == [5, 0] and len(ds.classes) == 6
    assert ds[0][0].shape == (3, 16, 16)
    (tmp_path / "nolabel.txt").write_text("f/emu/img0.png\n")
    assert open_dataset(tmp_path / "nolabel.txt", transform=TF).labels.tolist() == [-1]


def test_mixed_folder_run_finishes_with_good_ones_and_a_report(tmp_path):
    root = tmp_path / "mixed"
    bad, good = write_mixed_folder(root)
    ds = open_dataset(root, transform=TF)
    assert len(ds) == len(bad) + len(good)
    seen = []
    for images, labels, idx in ds.batches(batch_size=3):
        assert images.shape[1:] == (3, 16, 16) and len(images) == len(idx)
        seen += idx.tolist()
    assert sorted(ds.paths[i].rsplit("/", 1)[1] for i in seen) == sorted(good)
    got = {r.id.rsplit("/", 1)[1]: r.kind for r in ds.skipped}
    assert got == bad
    rep = ds.write_skip_report(tmp_path / "out" / "skipped.csv")
    back = read_skip_report(rep)
    assert {r.id.rsplit("/", 1)[1] for r in back} == set(bad)
    line = ds.skip_summary(report=rep)
    assert line.startswith(f"skipped {len(bad)} of {len(ds)} images") and "skipped.csv" in line


def test_skip_records_come_back_from_workers(tmp_path):
    root = tmp_path / "mixed"
    bad, good = write_mixed_folder(root)
    ds = open_dataset(root, transform=TF)
    n = sum(len(b[2]) for b in ds.batches(batch_size=4, num_workers=2))
    assert n == len(good)
    assert {r.id.rsplit("/", 1)[1] for r in ds.skipped} == set(bad)


def test_raise_policy_stops_at_first_bad_file(mixed_folder):
    from vitscope.data import ImageDecodeError

    root, bad, good = mixed_folder
    ds = open_dataset(root, transform=TF, on_error="raise")
    with pytest.raises(ImageDecodeError):
        for _ in ds.batches(batch_size=64):
            pass


def test_collate_skip_drops_failed_items():
    from vitscope.data import SkipRecord

    rec = SkipRecord(1, "b.png", "bad", "corrupt")
    batch = collate_skip([(torch.zeros(3, 2, 2), 4, 0), (rec, -1, 1), (torch.ones(3, 2, 2), 5, 2)])
    images, labels, idx = batch
    assert images.shape == (2, 3, 2, 2) and labels.tolist() == [4, 5] and idx.tolist() == [0, 2]
    assert batch.skipped == [rec]
    empty = collate_skip([(rec, -1, 1)])
    assert len(empty[2]) == 0 and empty.skipped == [rec]


def test_clear_errors_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "l.csv").write_text("missing1.png,0\nmissing2.png,1\n")
    with pytest.raises(FileNotFoundError, match="none of the 2 files"):
        open_dataset(tmp_path / "l.csv")
    with pytest.raises(ValueError, match="unknown option"):
        open_dataset("synthetic:colour=red")
    with pytest.raises(ValueError, match="on_error"):
        open_dataset("synthetic", on_error="ignore")


def test_list_with_some_missing_files_skips_them(tmp_path):
    save_rgb(tmp_path / "a.png")
    (tmp_path / "l.txt").write_text("a.png\ngone.png\n")
    ds = open_dataset(tmp_path / "l.txt", transform=TF)
    assert sum(len(b[2]) for b in ds.batches()) == 1
    assert [r.kind for r in ds.skipped] == ["missing"]


def test_single_image_and_default_transform(tmp_path):
    p = save_rgb(tmp_path / "one.png", 40, 50)
    ds = open_dataset(p)
    assert len(ds) == 1 and ds[0][0].shape == (3, 224, 224)


def test_subset_keeps_ids(tmp_path):
    root = _imagefolder(tmp_path / "f")
    ds = open_dataset(root, transform=TF)
    sub = ds.subset([5, 0])
    assert sub.ids == [ds.ids[5], ds.ids[0]] and sub.labels.tolist() == [2, 0]
    torch.testing.assert_close(sub[0][0], ds[5][0])


def test_sample_photographs_ship_and_open():
    from vitscope.data.samples import SHIPPED, sample_image, sample_paths

    paths = sample_paths()
    assert set(SHIPPED) <= set(paths)
    img = sample_image("cat")
    assert img.mode == "RGB" and min(img.size) == 256
    # real photographs, not flat test cards: plenty of distinct colours and texture
    a = np.asarray(img)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 5000 and a.std() > 30
    ds = open_dataset("builtin:samples", transform=TF)
    assert len(ds) == len(paths) and ds[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="unknown built-in"):
        open_dataset("builtin:nothing")


def test_top_level_images_beside_class_folders_warn(tmp_path):
    root = _imagefolder(tmp_path / "f")
    save_rgb(root / "stray.png")
    with pytest.warns(UserWarning, match="1 images at the top level are ignored"):
        ds = open_dataset(root, transform=TF)
    assert len(ds) == 6
    assert len(open_dataset(root, transform=TF, layout="flat")) == 7
