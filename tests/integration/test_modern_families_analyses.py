"""Every analysis on the modern families: random-weight tiny DINOv3 (RoPE, registers), SigLIP 2 (no CLS,
attention pool) and EVA-02 (RoPE scaled to a reference grid, SwiGLU, mean pooling), as timm saves them
(tests/goldens/timm_modern). Where an analysis reads CLS and the model has none, it fails in one line that names
the alternative (the patch mean, or the attention pool's own attention), and the alternative runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vitscope as vs
from vitscope.analysis.attention.distance import attention_distance
from vitscope.analysis.attention.maps import attention_maps_from_model, pool_attention_maps
from vitscope.analysis.attention.rollout import rollout_from_model
from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings
from vitscope.analysis.class_embedding.projection import logit_lens
from vitscope.analysis.knn import knn_evaluate
from vitscope.analysis.probes.experiment import probe_store
from vitscope.analysis.probes.train import TrainConfig
from vitscope.analysis.similarity.cka import linear_cka
from vitscope.features import extract_features
from vitscope.features.plan import make_plan

ROOT = Path(__file__).resolve().parents[1] / "goldens" / "timm_modern"
FAMILIES = ["dinov3", "siglip2", "eva02_tiny"]
DATA = "synthetic:n=24,size=32,classes=4"


@pytest.fixture(scope="module")
def models():
    return {name: vs.load_model(ROOT / name) for name in FAMILIES}


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_maps_and_rollout(models, x, name):
    model = models[name]
    H = model.cfg.num_heads
    if model.cfg.class_token:
        maps = attention_maps_from_model(model, x, block=-1, query="cls")
        assert maps.shape == (3, H, 4, 4) and torch.isfinite(maps).all()
        roll = rollout_from_model(model, x, discard_ratio=0.5)
        assert roll.maps.shape == (3, 4, 4) and torch.isfinite(roll.maps).all()
        return
    with pytest.raises(ValueError, match="no CLS token.*--query mean.*pool_attention_maps") as err:
        attention_maps_from_model(model, x, block=-1, query="cls")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="--query mean"):
        rollout_from_model(model, x)
    maps = attention_maps_from_model(model, x, block=-1, query="mean")
    assert maps.shape == (3, H, 4, 4)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(3, H))                 # no prefix tokens: all mass
    roll = rollout_from_model(model, x, query="mean", discard_ratio=0.5)
    assert roll.maps.shape == (3, 4, 4) and torch.isfinite(roll.maps).all()
    pool = pool_attention_maps(model, x)                                              # the probe's attention
    assert pool.shape == (3, model.cfg.map_heads or H, 4, 4)
    torch.testing.assert_close(pool.sum((-2, -1)), torch.ones(pool.shape[:2]))


def test_pool_attention_covers_only_patches_when_the_pool_reads_cls():
    pe = vs.load_model(ROOT / "pe_core")                                              # PE: the pool reads CLS too
    maps = pool_attention_maps(pe, torch.randn(2, 3, 32, 32), fusion="mean")
    assert maps.shape == (2, 4, 4) and float(maps.sum((-2, -1)).max()) < 1.0


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_distance(models, x, name):
    acc = attention_distance(models[name], [x], variants=("A",), progress=False)
    d = acc["A"].compute()
    assert d.shape == (2, models[name].cfg.num_heads) and np.isfinite(np.asarray(d)).all()


@pytest.fixture(scope="module")
def stores(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("modern")
    return {name: extract_features(m, DATA, root / name, layers="all", sites="ln2", tokens=("mean",),
                                   progress=False) for name, m in models.items()}


def test_extraction_without_cls_names_the_alternative(models):
    with pytest.raises(ValueError, match="no CLS token.*--tokens mean") as err:
        make_plan(models["siglip2"], sites="resid_post", tokens=("cls", "mean"))
    assert "\n" not in str(err.value)
    make_plan(models["dinov3"], sites="resid_post", tokens=("cls", "mean", "registers"))


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_cka_knn_and_probes(stores, name):
    store = stores[name]
    a = np.asarray(store.load("ln2", 0, "mean"), dtype=np.float64)
    b = np.asarray(store.load("ln2", 1, "mean"), dtype=np.float64)
    assert 0.0 < linear_cka(a, b) <= 1.0 + 1e-6
    assert linear_cka(a, a) == pytest.approx(1.0, abs=1e-6)
    y = np.array(store.labels)
    res = knn_evaluate(torch.as_tensor(b[:18]), torch.as_tensor(y[:18]), torch.as_tensor(b[18:]),
                       torch.as_tensor(y[18:]), ks=(3,))
    assert 0.0 <= res[3]["top1"] <= 100.0
    cfg = TrainConfig(epochs=1, min_steps=5, batch_size=16)
    run = probe_store(store, experiments=("ln2.1.ap",), probes=("linear",), reductions=("ap",), cfg=cfg, lrs=(0.01,),
                      wds=(1e-4,), baseline=False)
    assert len(run.fits) >= 1


@pytest.mark.parametrize("name", ["dinov3", "eva02_tiny", "siglip2"])
def test_logit_lens(models, x, name):
    """Own heads (DINOv3: CLS, EVA-02: mean + fc_norm); SigLIP 2 has none: given class embeddings read through
    its attention pool, each token pooled alone (HookedViT.head_input), the prediction from the pool's output."""
    model = models[name]
    L = model.cfg.depth
    labels = torch.tensor([0, 1, 2])
    proj = None
    if model.cfg.head == "none":
        g = torch.Generator().manual_seed(1)
        proj = ClassEmbeddings.from_linear_head(torch.randn(5, model.cfg.embed_dim, generator=g), torch.zeros(5))
    res = logit_lens(model, [(x, labels)], projection=proj, record=True)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x, names_filter=["hook_pooled", f"blocks.{L - 1}.hook_resid_post"])
    true = res.true_logits("resid", L - 1)                                            # N, T
    if name == "dinov3":                                     # the CLS of the last block through the head = logits
        np.testing.assert_allclose(true[:, 0], logits[torch.arange(3), labels].numpy(), atol=1e-4)
        assert (res.predictions == logits.argmax(-1).numpy()).all()
    elif name == "eva02_tiny":
        assert (res.predictions == logits.argmax(-1).numpy()).all()
    else:
        with torch.no_grad():
            lens = proj.project(model, cache[f"blocks.{L - 1}.hook_resid_post"])      # B, T, C through the pool
        np.testing.assert_allclose(true, lens[torch.arange(3), :, labels].numpy(), atol=1e-4)
        pooled = cache["hook_pooled"] @ proj.weight.T                                 # the pool's own read-out
        assert (res.predictions == pooled.argmax(-1).numpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_app_views(models, name):
    """The web app's views on each family: attention (per-token query), rollout and relevance, token maps,
    distance, logit lens and predictions."""
    from vitscope.app import views

    model = models[name]
    img = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    choices = views.query_choices(model)
    assert ("cls" in choices) == model.cfg.class_token and "patch" in choices
    for fn, kw in [(views.attention_view, {"query": choices[0]}), (views.rollout_view, {}),
                   (views.rollout_view, {"method": "chefer2021-generic"}), (views.tokens_view, {}),
                   (views.distance_view, {}), (views.logit_lens_view, {}), (views.predictions_view, {})]:
        assert fn(model, img, **kw) is not None
