"""The app's attribution-map view: the figure and the numbers of ``attribution_maps.explain`` on the same input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vitscope as vs
from vitscope.analysis.attribution_maps import METHODS, explain
from vitscope.app import views as V


@pytest.fixture(scope="module")
def demo():
    return vs.load_model("demo-vit")


@pytest.fixture(scope="module")
def photo():
    """A portrait image (taller than wide) with a bright disc off centre, lightly noised."""
    yy, xx = np.mgrid[:100, :72]
    disc = (yy - 62) ** 2 + (xx - 24) ** 2 < 18 ** 2
    a = np.where(disc[..., None], [250, 120, 30], [30, 140, 60]) + np.random.default_rng(2).normal(0, 12, (100, 72, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("method, kw", [("gradcam", {"block": 1}), ("saliency", {"target": 3}),
                                        ("chefer2021-generic", {})])
def test_explain_view_equals_explain(demo, photo, method, kw):
    view = V.explain_view(demo, photo, method, **kw)
    x = demo.preprocess([photo]).to(demo.device, demo.dtype)           # the library's own preprocessing
    block = V.normalize_block(kw.get("block", -1), demo.cfg.depth)
    ref = explain(demo, x, kw.get("target"), method, block=block)
    assert view.figure is not None and view.figure.dtype == np.uint8 and max(view.figure.shape[:2]) == V.DISPLAY
    np.testing.assert_allclose(view.arrays["map"], ref.maps[0].numpy(), rtol=1e-5, atol=1e-6)
    rows, cols = ref.grid.shape[1:]
    t = view.table.sort_values(["row", "col"])
    assert len(t) == rows * cols and set(t["method"]) == {method}
    np.testing.assert_allclose(t["value"].to_numpy().reshape(rows, cols), ref.grid[0].numpy(), rtol=1e-5, atol=1e-6)
    target = kw.get("target")
    if target is None:
        with torch.inference_mode():
            target = int(demo(x)[0].argmax())
    assert view.meta["target"] == target and (set(t["target"]) == {target})
    assert "\n" not in view.note and method in view.note


def test_explain_view_bad_method_and_block(demo, photo):
    with pytest.raises(ValueError) as e:
        V.explain_view(demo, photo, "gradcan")
    assert "\n" not in str(e.value) and "gradcam" in str(e.value) and "gradcan" in str(e.value)
    with pytest.raises(ValueError, match="block 9 does not exist") as e:
        V.explain_view(demo, photo, "gradcam", block=9)
    assert "\n" not in str(e.value)


def test_every_method_is_offered():
    from vitscope.app import ui

    assert ui.EXPLAIN_METHODS == METHODS
