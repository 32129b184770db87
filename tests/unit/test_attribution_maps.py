"""Attribution maps: occlusion and Ablation-CAM against plain loops, the metrics against scikit-learn / SciPy /
their definitions, deletion and insertion against the removal curves, the attention methods unchanged through
explain(), the randomisation check on the demo model, options."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.analysis.api import OptionError
from vitscope.analysis.attribution_maps import METHODS, ExplainOptions, explain
from vitscope.analysis.attribution_maps.cam import class_activation_map, site_name
from vitscope.analysis.attribution_maps.metrics import (
    energy_pointing_game, linear_imputation, map_auroc, map_iou, pointing_game, spearman, token_removal,
)
from vitscope.models.config import ViTConfig
from vitscope.models.vit import HookedViT


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                            num_registers=2)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "ln" not in n:
                p.copy_(0.25 * torch.randn(p.shape, generator=g))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return m, x


def test_occlusion_matches_a_loop(tiny):
    m, x = tiny
    t = torch.tensor([0, 2, 4])
    r = explain(m, x, t, "occlusion", batch_size=5)
    with torch.no_grad():
        base = m(x)
        for i in range(3):
            for rr in range(4):
                for cc in range(4):
                    xo = x[i:i + 1].clone()
                    xo[:, :, rr * 8:(rr + 1) * 8, cc * 8:(cc + 1) * 8] = 0.0
                    want = float(base[i, t[i]] - m(xo)[0, t[i]])
                    assert abs(float(r.grid[i, rr, cc]) / 3 - want) < 1e-4     # the map sums 3 channels
                    assert torch.allclose(r.attributions[i, :, rr * 8:(rr + 1) * 8, cc * 8:(cc + 1) * 8],
                                          torch.tensor(want), atol=1e-4)


def test_ablation_cam_zero_matches_a_loop(tiny):
    m, x = tiny
    t = torch.tensor([1, 1, 3])
    r = class_activation_map(m, x, t, "ablationcam", block=0, batch_size=7)
    name, _ = site_name(m, 0)
    lay = m.token_layout(0)
    store = {}
    with torch.no_grad(), m.hooks([(name, lambda a, hook: store.setdefault("a", a))]):
        s0 = m(x).gather(1, t[:, None])[:, 0]
    A = store["a"][:, lay.patches]                                                   # B, N, D (registers dropped)
    cam = torch.zeros(3, 16)
    for k in range(32):
        def zero(a, hook, k=k):
            a = a.clone()
            a[..., k] = 0
            return a
        with torch.no_grad(), m.hooks([(name, zero)]):
            sk = m(x).gather(1, t[:, None])[:, 0]
        cam += ((s0 - sk) / s0)[:, None] * A[..., k]
    torch.testing.assert_close(r.grid, cam.clamp(min=0).reshape(3, 4, 4), atol=1e-4, rtol=1e-4)


def test_cam_drops_registers_through_the_layout(tiny):
    m, x = tiny
    r = class_activation_map(m, x, None, "gradcam", block=-1)
    assert r.grid.shape == (3, 4, 4) and r.maps.shape == (3, 32, 32)


def test_every_method_returns_maps_on_the_image_grid(tiny):
    m, x = tiny
    for meth in METHODS:
        e = explain(m, x[:1], 2, meth, steps=4, samples=2)
        assert e.maps.shape == (1, 32, 32) and e.grid.shape == (1, 4, 4), meth
        assert int(e.targets[0]) == 2


@pytest.mark.parametrize("method", ["rollout", "grad-rollout", "chefer2021-generic", "chefer2021-lrp"])
def test_attention_methods_are_the_existing_functions(method):
    from vitscope.analysis.attention.relevance import relevance_from_model
    from vitscope.analysis.attention.rollout import rollout_from_model

    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    e = explain(m, x, [1, 4], method)
    ref = rollout_from_model(m, x) if method == "rollout" else relevance_from_model(m, x, [1, 4], method=method)
    torch.testing.assert_close(e.grid, ref.maps.float(), atol=0, rtol=0)
    assert e.maps.shape == (2, 32, 32)


def test_auroc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 6, (4, 9, 7), generator=g).float()                       # many ties
    masks = torch.rand(4, 9, 7, generator=g) > 0.6
    got = map_auroc(maps, masks)
    want = [roc_auc_score(masks[i].ravel().numpy(), maps[i].ravel().numpy()) for i in range(4)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.isnan(map_auroc(maps[:1], torch.zeros(1, 9, 7, dtype=torch.bool))[0])


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 6, 6), generator=g).float()
    b = a + torch.randn(3, 6, 6, generator=g)
    got = spearman(a, b)
    want = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    want_abs = [spearmanr(a[i].ravel(), b[i].abs().ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(spearman(-a, b, absolute=True), want_abs, atol=1e-12)


def test_localisation_metrics_by_definition():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 1.0
    maps[0, 3, 3] = 0.5
    maps[1, 0, 0] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    np.testing.assert_array_equal(pointing_game(maps, masks), [1.0, 0.0])
    np.testing.assert_array_equal(pointing_game(maps, masks, tolerance=2), [1.0, 1.0])
    np.testing.assert_allclose(energy_pointing_game(maps, masks), [1 / 1.5, 0.0])
    np.testing.assert_allclose(map_iou(maps, masks, 0.5), [1 / 5, 0.0])


def test_linear_imputation_is_the_neighbour_mean():
    g = np.random.default_rng(0)
    img = g.normal(size=(2, 7, 6))
    keep = g.random((7, 6)) > 0.5
    out = linear_imputation(img, keep)
    assert np.array_equal(out[:, keep], img[:, keep])
    w = {(dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx}
    for y, x in zip(*np.nonzero(~keep)):
        nb = [((y + dy, x + dx), wt) for (dy, dx), wt in w.items() if 0 <= y + dy < 7 and 0 <= x + dx < 6]
        mean = sum(wt * out[:, p[0], p[1]] for p, wt in nb) / sum(wt for _, wt in nb)
        np.testing.assert_allclose(out[:, y, x], mean, atol=1e-9)


def test_deletion_and_insertion_are_the_removal_curves():
    """On the same order, deletion's correct counts are the positive removal curve and insertion with k kept the
    negative curve with N - k removed."""
    import vitscope as vs
    from vitscope.analysis.class_embedding.removal import removal_curves
    from vitscope.features.access import image_batches, open_dataset_any

    m = vs.load_model("demo-vit")
    ds = open_dataset_any("builtin:demo?n=16")
    (x,), y, _ = next(iter(image_batches([m], ds, 6, 6)))
    imps = {}
    res = removal_curves(m, [(x, y)], orders="grads", step=5, importances=imps)
    grid = imps["grads"].reshape(6, 8, 8)
    N = 64
    k, p, c = token_removal(m, x, y, grid, "deletion", step=5, labels=y)
    np.testing.assert_array_equal(k[:-1], res.removed)
    np.testing.assert_array_equal(c[:-1].sum(1), res.correct[("grads", "positive")])
    k, p, c = token_removal(m, x, y, grid, "insertion", step=5, labels=y)
    kept = {int(v): i for i, v in enumerate(k)}
    for j, r in enumerate(res.removed):
        assert c[kept[N - int(r)]].sum() == res.correct[("grads", "negative")][j]
    assert p.shape == (len(k), 6) and (p >= 0).all() and (p <= 1).all()


@pytest.mark.slow
def test_randomised_demo_model_maps_correlate_less():
    import vitscope as vs
    from vitscope.analysis.attribution_maps.sanity import cascading_randomization, summarize
    from vitscope.features.access import image_batches, open_dataset_any

    m = vs.load_model("demo-vit")
    (x,), y, _ = next(iter(image_batches([m], open_dataset_any("builtin:demo?n=16"), 4, 4)))
    for method in ("saliency", "smoothgrad", "gradcam"):
        s = summarize(cascading_randomization(m, x, y, method, ExplainOptions(samples=8)))
        randomised = [v for k, v in s.items() if k != "trained"]
        assert s["block 0"] < s["trained"] - 0.3, (method, s)           # the whole model randomised
        assert np.mean(randomised) < s["trained"], (method, s)
        if method != "smoothgrad":                                      # two SmoothGrad draws differ themselves
            assert max(randomised) < s["trained"], (method, s)


@pytest.mark.slow
def test_integrated_gradients_complete_on_the_demo_model():
    import vitscope as vs
    from vitscope.features.access import image_batches, open_dataset_any

    m = vs.load_model("demo-vit")
    (x,), y, _ = next(iter(image_batches([m], open_dataset_any("builtin:demo?n=16"), 4, 4)))
    e = explain(m, x, y, "integrated-gradients", steps=64, internal_batch_size=128)
    assert e.extra["completeness"].median() < 0.01, e.extra["completeness"]
    # the demo model's score has sharp steps along the path of some images: more steps close the gap
    e = explain(m, x, y, "integrated-gradients", steps=512, internal_batch_size=256)
    assert (e.extra["completeness"] < 0.01).all(), e.extra["completeness"]


def test_options_check_themselves():
    with pytest.raises(OptionError, match="`steps` must be an integer >= 2, got 1"):
        ExplainOptions(steps=1)
    with pytest.raises(OptionError, match="did you mean 'gradcam'"):
        ExplainOptions(methods="gradcamm")
    with pytest.raises(OptionError, match="`metrics` takes"):
        ExplainOptions(metrics="speed")
    with pytest.raises(OptionError, match="road_fractions"):
        ExplainOptions(road_fractions=(0.5, 1.0))
    assert ExplainOptions(methods="ig,grad-cam,chefer").methods == ("integrated-gradients", "gradcam",
                                                                    "chefer2021-generic")
    with pytest.raises(ValueError, match="unknown option `stepz`"):
        ExplainOptions.from_mapping({"stepz": 3})
