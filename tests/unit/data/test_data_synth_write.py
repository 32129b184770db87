"""The synthetic benchmark on disk: same seed same bytes, and every loader reads back what was generated."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vitscope.data import open_dataset, tasks
from vitscope.data.synthetic import SynthConfig, object_sample
from vitscope.data.synthetic.retrieval import retrieval_set
from vitscope.data.synthetic.scenes import scene_sample
from vitscope.data.synthetic.video import video_sample
from vitscope.data.synthetic.write import rle_counts, write

SMALL = dict(train_per_class=2, val_per_class=1, scenes=3, part_images=3, semantic_images=3, videos=1, frames=4,
             pairs=3, landmarks=2)
CFG = SynthConfig(size=32, n_classes=4, seed=5)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write(root, CFG, **SMALL)
    return root


def test_same_seed_same_bytes_other_seed_differs(written, tmp_path):
    write(tmp_path / "again", CFG, **SMALL)
    a, b = _digest(written), _digest(tmp_path / "again")
    assert len(a) > 50 and a == b
    write(tmp_path / "other", SynthConfig(size=32, n_classes=4, seed=6), **SMALL)
    c = _digest(tmp_path / "other")
    assert c.keys() == a.keys()
    assert sum(a[k] != c[k] for k in a) > 0.8 * len(a)


def test_imagefolder_round_trip(written):
    ds = open_dataset(written / "classification" / "train", transform=np.array)
    assert ds.classes == sorted(CFG.classes) and len(ds) == 8
    for i in range(len(ds)):
        img, label, _ = ds[i]
        k = int(ds.paths[i].rsplit("/", 1)[1][:5])
        s = object_sample(CFG, "train", k)
        assert ds.classes[label] == s.shape
        np.testing.assert_array_equal(img, s.image)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_rle_counts_decoded_by_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (1, 1), (4, 3)):
        for first in (0, 1):
            m = rng.random(shape) < 0.5
            m.flat[0] = bool(first)
            rle = mask_utils.frPyObjects({"size": list(shape), "counts": rle_counts(m)}, *shape)
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), m)


def test_coco_round_trip(written):
    ds = tasks.load_coco(written / "coco" / "annotations" / "instances_synth.json", written / "coco" / "images")
    assert len(ds) == 3 and sorted(ds.categories.values()) == sorted(CFG.classes)
    for i in range(3):
        s, ref = ds[i], scene_sample(CFG, i)
        np.testing.assert_array_equal(s.masks, ref.masks)
        assert s.category_ids.tolist() == (ref.labels + 1).tolist()
        np.testing.assert_array_equal(s.boxes, ref.boxes)
        np.testing.assert_array_equal(s.foreground(), ref.semantic > 0)
        from PIL import Image

        np.testing.assert_array_equal(np.asarray(Image.open(s.path)), ref.image)


def test_scene_ground_truth_is_consistent():
    for i in range(5):
        s = scene_sample(CFG, i)
        assert (s.masks.sum(0) <= 1).all()  # visible masks are disjoint
        np.testing.assert_array_equal(s.masks.any(0), s.semantic > 0)
        for k in range(len(s.labels)):
            assert (s.semantic[s.masks[k]] == s.labels[k] + 1).all()
            assert ((s.parts[k] >= 0) == s.masks[k]).all()
            for x, y, vis in s.keypoints[k]:
                if vis:  # a visible keypoint lies on (or next to) its object's visible pixels
                    assert s.masks[k][max(0, int(y) - 1): int(y) + 2, max(0, int(x) - 1): int(x) + 2].any()


def test_partimagenet_round_trip(written):
    ds = tasks.load_partimagenet(written / "partimagenet" / "annotations" / "test.json",
                                 written / "partimagenet" / "images" / "test")
    for i in range(len(ds)):
        s, ref = ds[i], object_sample(CFG, "test", i)
        assert s.supercategory == ref.shape.capitalize()
        expected = np.where(ref.parts >= 0, 4 * ref.label + ref.parts, -1)  # part category = class * 4 + part
        np.testing.assert_array_equal(s.part_map(), expected)
        assert s.part_names[0].startswith(ref.shape.capitalize() + " ")
        np.testing.assert_array_equal(s.object_mask(), ref.mask)


def test_imagenet_s_round_trip(written):
    ds = tasks.load_imagenet_s(written / "imagenet-s")
    assert ds.categories == CFG.classes and len(ds) == 3
    for s in ds:
        m = s.mask()
        cls = ds.class_id(s.wnid)
        assert set(np.unique(m)) == {0, cls}
        from PIL import Image

        assert Image.open(s.path).size == m.shape[::-1]


def test_davis_round_trip_and_motion(written):
    ds = tasks.load_davis(written / "davis")
    seq = ds[0]
    ref = video_sample(CFG, 0, n_frames=4)
    np.testing.assert_array_equal(seq.masks(), ref.masks)
    # frames are JPEG, as DAVIS ships them: equal up to compression once the pixel noise is averaged out
    blocks = lambda a: a.reshape(4, 16, 4, 16, 4, 3).astype(float).mean((2, 4))  # noqa: E731
    assert np.abs(blocks(seq.frames()) - blocks(ref.frames)).mean() < 3
    assert seq.n_objects == 2
    clip = video_sample(CFG, 1, n_frames=10)
    cy = [np.argwhere(clip.masks[t] == 1).mean(0) for t in range(10)]
    assert np.linalg.norm(cy[-1] - cy[0]) > 2  # objects move


def test_spair_round_trip(written):
    ds = tasks.load_spair(written / "spair")
    assert len(ds) == 3
    for p in ds:
        assert len(p.src_kps) == len(p.trg_kps) == len(p.kps_ids) > 0
        # keypoints sit on the object: inside its box, up to the pixel grid (vertices lie on the outline)
        for kps, box in ((p.src_kps, p.src_bbox), (p.trg_kps, p.trg_bbox)):
            assert (kps >= box[:2] - 2).all() and (kps <= box[2:] + 2).all()


def test_revisited_round_trip(written):
    gt = tasks.load_revisited(written / "revisited" / "rsynth")
    rs = retrieval_set(CFG, n_landmarks=2)
    assert gt.imlist == rs.db_names and len(gt.queries) == 6                  # three queries per landmark
    assert (rs.query_landmark == np.repeat([0, 1], 3)).all()
    for q, m, img in zip(gt.queries, rs.query_landmark, rs.query_images):
        for kind in ("easy", "hard", "junk"):
            assert (rs.db_landmark[getattr(q, kind)] == m).all()
        assert len(q.easy) == 3 and len(q.hard) == 6 and len(q.junk) == 2
        assert not set(q.easy) & set(q.hard) and not set(q.hard) & set(q.junk)
        assert img.shape == (48, 48, 3)                                       # 1.5 x the image side
    assert (rs.db_landmark == -1).sum() == 12


def test_revisited_query_box_frames_the_landmark_with_context():
    """The box holds the whole landmark with a margin on every side (a crop is not cut at its outline)."""
    from vitscope.data.synthetic.render import box_of
    from vitscope.data.synthetic.retrieval import QUERY_MARGIN, query_box

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.zeros((96, 96), bool)
        y0, x0 = rng.integers(30, 40, size=2)
        h, w = rng.integers(15, 30, size=2)
        mask[y0:y0 + h, x0:x0 + w] = True
        b = query_box(rng, mask)
        t = np.array(box_of(mask), float)
        margin = np.array([t[0] - b[0], t[1] - b[1], b[2] - t[2], b[3] - t[3]]) / np.array([w, h, w, h])
        assert (margin >= QUERY_MARGIN[0] - 0.5 / 15).all() and (margin <= QUERY_MARGIN[1] + 0.5 / 15).all()
    edge = np.zeros((96, 96), bool)
    edge[0:20, 80:96] = True                                                  # at the corner: kept inside
    b = query_box(rng, edge)
    assert b[0] < 80 and b[1] == 0 and b[2] == 96 and b[3] > 20
