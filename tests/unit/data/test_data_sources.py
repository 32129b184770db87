"""Tar shards, Hugging Face datasets and videos through open_dataset, checked against the bytes written."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from conftest import rgb_array

from vitscope.data import open_dataset
from vitscope.data.webdataset import expand_braces

RAW = lambda im: np.array(im)  # noqa: E731 - the decoded image as an array


def _png(arr) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf, name, data: bytes):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def write_clip_benchmark(root, splits=("test", "train"), per_shard=3, shards=2, bad_key=None):
    """The clip_benchmark webdataset layout: classnames, templates, <split>/<k>.tar with sNNNNNNN.png + .cls."""
    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("apple\nbanana\ncherry\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    expected = {}
    for split in splits:
        (root / split).mkdir()
        n = 0
        for s in range(shards):
            with tarfile.open(root / split / f"{s}.tar", "w") as tf:
                for _ in range(per_shard):
                    key = f"s{n:07d}"
                    arr = rgb_array(6, 5, seed=100 * len(split) + n)
                    data = b"garbage" if key == bad_key else _png(arr)
                    _add(tf, f"{key}.png", data)
                    _add(tf, f"{key}.cls", str(n % 3).encode())
                    expected.setdefault(split, []).append((f"{s}.tar", key, arr, n % 3))
                    n += 1
        (root / split / "nshards.txt").write_text(str(shards))
    return expected


def test_brace_expansion():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}{1..2}") == ["x1", "x2", "y1", "y2"]
    assert expand_braces("{8..10}") == ["8", "9", "10"]


def test_clip_benchmark_shards_folder_split_and_pattern(tmp_path):
    exp = write_clip_benchmark(tmp_path / "wds")
    with pytest.raises(ValueError, match="several splits"):
        open_dataset(tmp_path / "wds")
    ds = open_dataset(f"{tmp_path / 'wds'}?split=test", transform=RAW)
    assert ds.classes == ["apple", "banana", "cherry"]
    assert ds.source.templates == ["a photo of a {c}."]
    assert len(ds) == len(exp["test"])
    for i, (shard, key, arr, lab) in enumerate(exp["test"]):
        assert ds.ids[i].endswith(f"{shard}#{key}")
        x, y, j = ds[i]
        np.testing.assert_array_equal(x, arr)
        assert y == lab and j == i
    for spec in (tmp_path / "wds" / "train", f"{tmp_path}/wds/train/{{0..1}}.tar", f"{tmp_path}/wds/train/*.tar"):
        ds2 = open_dataset(spec, transform=RAW)
        assert [d.rsplit("#", 1)[1] for d in ds2.ids] == [e[1] for e in exp["train"]]
        np.testing.assert_array_equal(ds2[4][0], exp["train"][4][2])
    assert len(open_dataset(tmp_path / "wds" / "train" / "1.tar", transform=RAW)) == 3
    with pytest.raises(FileNotFoundError):
        open_dataset(f"{tmp_path}/wds/train/{{0..5}}.tar")


def test_shards_bad_member_skipped_and_workers(tmp_path):
    write_clip_benchmark(tmp_path / "wds", splits=("test",), bad_key="s0000004")
    ds = open_dataset(tmp_path / "wds", transform=lambda im: __import__("torch").from_numpy(np.asarray(im).copy()))
    got = [int(i) for b in ds.batches(batch_size=2, num_workers=2) for i in b[2]]
    assert got == [0, 1, 2, 3, 5]
    assert [r.id.rsplit("#", 1)[1] for r in ds.skipped] == ["s0000004"]


def test_truncated_shard_keeps_samples_before_the_cut(tmp_path):
    write_clip_benchmark(tmp_path / "wds", splits=("test",), shards=1, per_shard=4)
    p = tmp_path / "wds" / "test" / "0.tar"
    data = p.read_bytes()
    p.write_bytes(data[: 512 * 7 + 100])  # cut inside the 4th member header/data region
    with pytest.warns(UserWarning, match="cut short"):
        ds = open_dataset(p, transform=RAW)
    assert 1 <= len(ds) < 4
    list(ds.batches(batch_size=8))


def _hf_dataset(n=5):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    arrs = [rgb_array(6, 7, seed=k) for k in range(n)]
    feats = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["x", "y", "z"])})
    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in arrs], "fine": [k % 3 for k in range(n)]},
                                    features=feats)
    return ds, arrs


def test_hf_save_to_disk_dataset_and_dict(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds, arrs = _hf_dataset()
    ds.save_to_disk(str(tmp_path / "one"))
    d = open_dataset(tmp_path / "one", transform=RAW)
    assert d.classes == ["x", "y", "z"] and d.labels.tolist() == [0, 1, 2, 0, 1]
    for i in range(5):
        np.testing.assert_array_equal(d[i][0], arrs[i])
    datasets.DatasetDict({"train": ds, "test": ds.select([3, 4])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="several splits"):
        open_dataset(tmp_path / "dd")
    d = open_dataset(tmp_path / "dd", split="test", transform=RAW)
    assert len(d) == 2 and d.ids[0].endswith("[test]#0")
    np.testing.assert_array_equal(d[1][0], arrs[4])
    with pytest.raises(ValueError, match="image column"):
        open_dataset(f"{tmp_path / 'one'}?image=nope")


def test_hf_load_dataset_path_on_local_parquet(tmp_path, monkeypatch):
    """hf:NAME goes through datasets.load_dataset; a local parquet folder exercises it without a network."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    ds, arrs = _hf_dataset(4)
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    d = open_dataset(f"hf:{tmp_path / 'pq'}?split=train", transform=RAW)
    assert len(d) == 4 and d.classes == ["x", "y", "z"]
    np.testing.assert_array_equal(d[2][0], arrs[2])


def _write_video(path, frames, fps=5):
    import imageio.v2 as iio

    w = iio.get_writer(str(path), fps=fps, codec="libx264", quality=10, macro_block_size=1)
    for f in frames:
        w.append_data(f)
    w.close()


def test_video_frames_and_options(tmp_path):
    frames = [np.full((32, 48, 3), 20 * k, np.uint8) for k in range(8)]
    _write_video(tmp_path / "clip.mp4", frames)
    ds = open_dataset(tmp_path / "clip.mp4", transform=RAW)
    assert len(ds) == 8 and ds.ids[3].endswith("clip.mp4#frame=3") and (ds.labels == -1).all()
    for k in (0, 5, 2):  # random access, out of order
        x = ds[k][0]
        assert x.shape == (32, 48, 3) and abs(float(x.mean()) - 20 * k) < 6
    ds = open_dataset(f"{tmp_path / 'clip.mp4'}?stride=3&start=1", transform=RAW)
    assert [i.rsplit("=", 1)[1] for i in ds.ids] == ["1", "4", "7"]
    assert abs(float(ds[2][0].mean()) - 140) < 6
    assert len(open_dataset(tmp_path / "clip.mp4", max_frames=2, transform=RAW)) == 2
    from vitscope.data.video import count_frames, read_frames

    assert count_frames(tmp_path / "clip.mp4") == 8
    clip = read_frames(tmp_path / "clip.mp4")
    assert clip.shape == (8, 32, 48, 3) and np.allclose(clip.reshape(8, -1).mean(1), 20 * np.arange(8), atol=6)
    np.testing.assert_array_equal(read_frames(tmp_path / "clip.mp4", [5, 1]), clip[[5, 1]])


def test_gif_and_unreadable_video(tmp_path):
    from PIL import Image

    ims = [Image.fromarray(np.full((8, 8, 3), 60 * k, np.uint8)) for k in range(3)]
    ims[0].save(tmp_path / "a.gif", save_all=True, append_images=ims[1:])
    ds = open_dataset(tmp_path / "a.gif", transform=RAW)
    assert len(ds) == 3 and abs(float(ds[2][0].mean()) - 120) < 2
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot read"):
        open_dataset(tmp_path / "bad.mp4")


def test_shards_read_in_the_parent_then_in_forked_workers(tmp_path):
    """A shard opened in the parent must not share its file offset with forked workers."""
    import torch

    exp = write_clip_benchmark(tmp_path / "wds", splits=("test",), shards=2, per_shard=6)
    ds = open_dataset(tmp_path / "wds", transform=lambda im: torch.from_numpy(np.array(im)))
    ds[0], ds[7]  # opens both shards in this process
    seen = {}
    for images, labels, idx in ds.batches(batch_size=1, num_workers=2, multiprocessing_context="fork"):
        seen[int(idx[0])] = images[0].numpy()
    assert sorted(seen) == list(range(12))
    for i, (_, _, arr, _) in enumerate(exp["test"]):
        np.testing.assert_array_equal(seen[i], arr)
