"""vitscope's attribution maps against pytorch-grad-cam's CAMs, Captum's Integrated Gradients and NoiseTunnel, and
pytorch-grad-cam's ROAD imputation, on the same tiny model and input (goldens written by
scripts/make_attribution_goldens.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vitscope.analysis.attribution_maps.cam import CAM_METHODS, class_activation_map
from vitscope.analysis.attribution_maps.gradients import integrated_gradients, noise_tunnel
from vitscope.analysis.attribution_maps.metrics import linear_imputation
from vitscope.models.config import ViTConfig
from vitscope.models.vit import HookedViT

GOLDEN = Path(__file__).resolve().parents[1] / "goldens" / "attribution" / "tiny_vit.safetensors"


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    model = HookedViT(ViTConfig(**ast.literal_eval(meta["config"]))).eval()
    model.load_state_dict({k[len("model."):]: v for k, v in t.items() if k.startswith("model.")})
    return model, t


@pytest.mark.parametrize("block", [-1, -2])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_cams_match_pytorch_grad_cam(golden, method, block):
    model, t = golden
    kw = {"ablation_value": "pytorch-grad-cam"} if method == "ablationcam" else {}
    r = class_activation_map(model, t["input"], t["targets"], method, block=block, **kw)
    ref = t[f"cam.{method}.b{block}"]
    assert ref.std() > 0.05                                    # the reference map is not flat
    torch.testing.assert_close(r.maps, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rule,steps", [("gausslegendre", 64), ("riemann_trapezoid", 16), ("riemann_middle", 16)])
def test_integrated_gradients_match_captum(golden, rule, steps):
    model, t = golden
    r = integrated_gradients(model, t["input"], t["targets"], baseline="black", steps=steps, rule=rule)
    ref = t[f"ig.{rule}.{steps}"]
    torch.testing.assert_close(r.attributions, ref, atol=1e-5, rtol=1e-4)
    # Captum's convergence delta is sum(attributions) - (f(x) - f(baseline))
    with torch.no_grad():
        gap = model(t["input"]).gather(1, t["targets"][:, None])[:, 0] - \
            model(-torch.ones_like(t["input"])).gather(1, t["targets"][:, None])[:, 0]
    np.testing.assert_allclose(r.completeness.numpy(), (t[f"ig.{rule}.{steps}.delta"].abs() / gap.abs()).numpy(),
                               atol=1e-4)


def test_integrated_gradients_complete_at_64_steps(golden):
    model, t = golden
    r = integrated_gradients(model, t["input"], t["targets"], baseline="black", steps=64)
    assert (r.completeness < 0.01).all(), r.completeness


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad-sq", "vargrad"])
def test_noise_tunnel_matches_captum(golden, kind):
    model, t = golden
    r = noise_tunnel(model, t["input"], t["targets"], kind, samples=8, stdev=0.2, seed=7)
    torch.testing.assert_close(r.attributions, t[f"nt.{kind}"], atol=1e-6, rtol=1e-4)


def test_road_imputation_matches_pytorch_grad_cam(golden):
    _, t = golden
    out = linear_imputation(t["road.image"].numpy(), t["road.keep"].numpy() > 0.5)
    np.testing.assert_allclose(out, t["road.imputed"].numpy(), atol=1e-5)
