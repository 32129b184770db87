"""The bundled demo models keep their promises on the held-out synthetic split, and `vitscope demo` builds
its report. Accuracy and saliency IoU are computed here with the data and attention packages, not with the
report code."""
import re

import numpy as np
import pytest
import torch

from vitscope.analysis.attention.saliency import image_mask_pairs, saliency_batches, saliency_iou
from vitscope.data import open_dataset
from vitscope.models.loading import load_model
from vitscope.models.preprocess import Preprocessor
from vitscope.models.vit import HookedViT
from vitscope.report.demo import DEMO_MODELS, demo_model_path, held_out_spec

N_TEST = 400        # held-out images for accuracy (the split never seen in training or validation)
N_SALIENCY = 128


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _accuracy(model, n):
    ds = open_dataset(held_out_spec(n), transform=Preprocessor(model.preprocess_cfg))
    assert list(ds.classes) == model.cfg.meta["classes"]
    correct = 0
    with torch.inference_mode():
        for x, y, _ in ds.batches(200):
            correct += int((model(x).argmax(-1) == y).sum())
    return correct / len(ds)


def _saliency(model, rule):
    ds = open_dataset(held_out_spec(N_SALIENCY))
    batches = list(saliency_batches(model, image_mask_pairs(ds), batch_size=64, rule=rule))
    v = saliency_iou(model, batches, queries=("cls",), merge=(True,), progress=False)[("cls", True)]
    return float(np.nanmean(v[:, -1, 0]))                      # last block, heads merged, mean over images


def test_demo_models_are_bundled_and_small():
    for name in DEMO_MODELS:
        folder = demo_model_path(name)
        assert (folder / "model.safetensors").stat().st_size < 3_000_000
    reg = load_model(str(demo_model_path("demo-vit-reg4"))).cfg
    assert (reg.num_registers, reg.register_block, reg.cls_block, reg.register_location) == (4, 3, 6, "end")
    plain = load_model(str(demo_model_path("demo-vit"))).cfg
    assert (plain.num_registers, plain.cls_block) == (0, 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_demo_model_accuracy_on_the_held_out_split(name):
    model = load_model(str(demo_model_path(name)))
    assert _accuracy(model, N_TEST) >= 0.90


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_demo_model_attention_localises_objects_better_than_random_weights(name):
    """Last block, CLS query, heads merged, top 60% of the mass (walmer2023). On the 8 x 8 grid the tight masks
    (cells at least half object) carry the claim; walmer2023's bicubic masks, which also mark the cells around
    the small objects (4x their area), show a smaller gain (docs/demo-model.md gives both)."""
    model = load_model(str(demo_model_path(name)))
    torch.manual_seed(0)
    random = HookedViT(model.cfg, model.preprocess_cfg).eval()
    trained, rand = _saliency(model, "majority"), _saliency(random, "majority")
    assert trained >= 3 * rand and trained >= rand + 0.15, (trained, rand)
    trained, rand = _saliency(model, "bicubic"), _saliency(random, "bicubic")
    assert trained >= rand + 0.02, (trained, rand)


@pytest.mark.slow
def test_vitscope_demo_writes_the_report(tmp_path):
    from vitscope.report.demo import run_demo

    page = run_demo(tmp_path, n_images=6, n_eval=80, progress=False)       # 10 per class: the probes run
    text = page.read_text()
    status = re.findall(r"<section id='([^']*)' class='vs-section status-([a-z]+)'>", text)
    assert len(status) >= 2 * 10
    assert [s for s, st in status if st == "failed"] == []
    skipped = {s for s, st in status if st == "skipped"}
    assert skipped == {"demo-vit-token_pages"}                    # the plain model has no registers
    pdfs = re.findall(r"href='(demo-vit-reg4/tokens_[^']+\.pdf)'", text)
    assert pdfs and all((tmp_path / p).read_bytes().startswith(b"%PDF") for p in pdfs)
