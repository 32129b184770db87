"""Dense clustering on COCO and PartImageNet files: the masks their loaders give, and mask-pooled features
against a slow loop written here (image files -> model -> patch tokens -> covered fraction of each patch)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.cluster import dataset_masks, model_dense_cluster_scores, model_object_features
from vitscope.data.synthetic import SynthConfig, write
from vitscope.data.tasks import load_coco, load_partimagenet
from vitscope.models.preprocess import PreprocessConfig

pytest.importorskip("pycocotools")
SIZE, PATCH = 32, 8


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write(root, SynthConfig(size=SIZE, n_classes=3, seed=4), formats=["coco", "partimagenet"], scenes=4,
          part_images=4, progress=False)
    coco = load_coco(root / "coco" / "annotations" / "instances_synth.json", root / "coco" / "images")
    parts = load_partimagenet(root / "partimagenet" / "annotations" / "test.json",
                              root / "partimagenet" / "images" / "test")
    return root, coco, parts


def model(size=SIZE):
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(embed_dim=24, depth=2, num_heads=2, patch_size=PATCH, img_size=size, num_classes=3))
    m.preprocess_cfg = PreprocessConfig(input_size=size, crop_pct=1.0)     # the images are size x size already
    return m.eval()


def test_coco_masks_are_the_non_crowd_instances(written):
    _, coco, _ = written
    for i in range(len(coco)):
        s = coco[i]
        masks, labels = coco.masks(i)
        keep = ~s.iscrowd
        assert labels == [int(c) for c in s.category_ids[keep]]
        assert all(np.array_equal(a, b) for a, b in zip(masks, s.masks[keep]))
    with pytest.raises(ValueError, match="object masks only"):
        coco.masks(0, "part")


def test_partimagenet_object_is_the_union_of_parts(written):
    _, _, parts = written
    s = parts[0]
    (obj,), (label,) = parts.masks(0, "object")
    assert np.array_equal(obj, s.part_masks.any(0)) and parts.supercategories[label] == s.supercategory
    pm, pl = parts.masks(0, "part")
    assert pl == [int(c) for c in s.part_ids] and len(pm) == len(s.part_masks) >= 2


def test_the_image_dataset_carries_the_masks(written):
    _, coco, parts = written
    ds = coco.image_dataset()
    assert [len(m) for m in dataset_masks(ds.source, 1)] == [len(m) for m in coco.masks(1)]
    assert dataset_masks(parts.image_dataset().source, 2, "part")[1] == parts.masks(2, "part")[1]


def slow_object_features(m, structure, level, hook):
    """Per image: the file, the model's normalisation, the patch tokens of ``hook``; per mask, the fraction of each
    8 x 8 patch it covers as weights."""
    feats, labels = [], []
    pp = m.preprocess_cfg
    for i, path in enumerate(structure.image_paths()):
        img = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
        x = (torch.from_numpy(img).permute(2, 0, 1) - torch.tensor(pp.mean)[:, None, None]) \
            / torch.tensor(pp.std)[:, None, None]
        with torch.no_grad():
            _, cache = m.run_with_cache(x[None], names_filter=hook)
        tok = cache[hook][0, 1:].double().numpy()                                    # N, D (CLS first)
        for mask, lab in zip(*structure.masks(i, level)):
            g = img.shape[0] // PATCH
            cover = mask.reshape(g, PATCH, g, PATCH).mean(axis=(1, 3)).reshape(-1)
            if cover.sum() == 0:
                continue
            feats.append((cover[:, None] * tok).sum(0) / cover.sum())
            labels.append(lab)
    return np.stack(feats), np.array(labels)


@pytest.mark.parametrize("which,level", [("coco", "object"), ("parts", "object"), ("parts", "part")])
def test_mask_pooled_features_match_a_slow_loop(written, which, level):
    _, coco, parts = written
    structure = coco if which == "coco" else parts
    m = model(Image.open(structure.image_paths()[0]).size[0])          # COCO scenes are 2 x SIZE
    hook = "blocks.1.hook_resid_post"
    feats, labels = model_object_features(m, structure.image_dataset(), level, [hook], resample="area", batch_size=3)
    want_f, want_l = slow_object_features(m, structure, level, hook)
    np.testing.assert_array_equal(labels, want_l)
    np.testing.assert_allclose(feats[hook], want_f, rtol=1e-4, atol=1e-5)


def test_cli_dense_clustering_on_coco_and_partimagenet(written, tmp_path):
    from vitscope.cli.main import app
    from vitscope import save_model

    root, coco_files, _ = written
    save_model(model(2 * SIZE), tmp_path / "m")
    runner = CliRunner()
    coco = ["--coco", str(root / "coco" / "annotations" / "instances_synth.json"),
            "--image-root", str(root / "coco" / "images")]
    r = runner.invoke(app, ["cluster", str(tmp_path / "m"), "--dense", "object", "--k", "3", *coco,
                            "--out", str(tmp_path / "o1"), "--quiet"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "o1" / "cluster_object.json").read_text())
    assert meta["dense"] == "object" and meta["k"] == 3 and meta["models"] == ["m"]
    nmi = np.load(tmp_path / "o1" / "cluster_object.m.nmi.npy")
    # the command's numbers are those of the library on the same files with the same options
    from vitscope import load_model

    want, _ = model_dense_cluster_scores(load_model(tmp_path / "m"), coco_files.image_dataset(), "object",
                                         k=3)
    np.testing.assert_allclose(nmi, want["nmi"], rtol=1e-9)
    pin = ["--partimagenet", str(root / "partimagenet" / "annotations" / "test.json"),
           "--image-root", str(root / "partimagenet" / "images" / "test")]
    r = runner.invoke(app, ["cluster", str(tmp_path / "m"), "--dense", "part", "--k", "4", *pin,
                            "--out", str(tmp_path / "o2"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cluster", str(tmp_path / "m"), *coco, "--out", str(tmp_path / "o3")])
    assert r.exit_code != 0 and "--dense" in str(r.exception)


def test_dense_scores_from_coco_are_per_block(written):
    _, coco, _ = written
    scores, hooks = model_dense_cluster_scores(model(2 * SIZE), coco.image_dataset(), "object", k=3, batch_size=4)
    assert hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert all(np.asarray(v).shape == (2,) for v in scores.values())
