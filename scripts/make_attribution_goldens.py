"""Write tests/goldens/attribution/*.safetensors: pytorch-grad-cam's CAMs, Captum's Integrated Gradients and
NoiseTunnel, and pytorch-grad-cam's ROAD imputation on a tiny vitscope model, which
tests/parity/test_attribution_goldens.py checks vitscope.analysis.attribution_maps against.

pytorch-grad-cam and Captum need torchvision; run this in the goldens virtual environment (see CONTRIBUTING.md)
with vitscope's source on the path (vitscope's light dependencies installed there):

    goldens-venv/bin/pip install grad-cam captum
    PYTHONPATH=src goldens-venv/bin/python scripts/make_attribution_goldens.py

The model is a vitscope ``HookedViT`` (32 px, patch 8, width 32, 3 blocks, 4 heads, 5 classes, CLS) with weights
redrawn at a larger scale than the default init so that the maps are not flat; its weights are saved with the
outputs. CAMs read ``model.blocks[b].ln1`` (pytorch-grad-cam's ViT example hooks ``blocks[-1].norm1``) through
its ViT reshape transform; Ablation-CAM runs with ``AblationLayerVit`` and ``batch_size=1`` (its ablation value,
``min - 1e7``, is then the image's own, vitscope's ``ablation_value="pytorch-grad-cam"``).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from vitscope.models.config import ViTConfig
from vitscope.models.vit import HookedViT

OUT = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "attribution"
CONFIG = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)
TARGETS = [1, 3]
BLOCKS = (-1, -2)


def tiny_model() -> HookedViT:
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**CONFIG)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("ln1.weight") or name.endswith("ln2.weight") or "ln_final.weight" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.25 * torch.randn(p.shape, generator=g))
    return m


def cams(model, x) -> dict[str, torch.Tensor]:
    from pytorch_grad_cam import (AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
                                  XGradCAM)
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    rows, cols = model.cfg.grid
    reshape = partial(vit_reshape_transform, height=rows, width=cols)
    methods = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
               "eigencam": EigenCAM, "scorecam": ScoreCAM, "hirescam": HiResCAM,
               "ablationcam": partial(AblationCAM, ablation_layer=AblationLayerVit(), batch_size=1)}
    out = {}
    for b in BLOCKS:
        for name, cls in methods.items():
            cam = cls(model=model, target_layers=[model.blocks[b].ln1], reshape_transform=reshape)
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS])
            out[f"cam.{name}.b{b}"] = torch.from_numpy(np.asarray(maps, np.float32))
            cam.activations_and_grads.release()
    return out


def captum_attributions(model, x) -> dict[str, torch.Tensor]:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    out = {}
    ig = IntegratedGradients(model)
    base = -torch.ones_like(x)                       # black for mean = std = 0.5
    for rule, steps in (("gausslegendre", 64), ("riemann_trapezoid", 16), ("riemann_middle", 16)):
        a, delta = ig.attribute(x, baselines=base, target=TARGETS, n_steps=steps, method=rule,
                                return_convergence_delta=True)
        out[f"ig.{rule}.{steps}"] = a.detach()
        out[f"ig.{rule}.{steps}.delta"] = delta.detach()
    nt = NoiseTunnel(Saliency(model))
    for kind, name in (("smoothgrad", "smoothgrad"), ("smoothgrad_sq", "smoothgrad-sq"), ("vargrad", "vargrad")):
        torch.manual_seed(7)
        a = nt.attribute(x, nt_type=kind, nt_samples=8, stdevs=0.2, target=TARGETS)
        out[f"nt.{name}"] = a.detach()
    return out


def road_imputation() -> dict[str, torch.Tensor]:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    g = torch.Generator().manual_seed(3)
    img = torch.randn(3, 12, 10, generator=g)
    keep = (torch.rand(12, 10, generator=g) > 0.4).float()
    keep[0, :3] = 0                                  # removed pixels on the border and in the corner
    return {"road.image": img, "road.keep": keep, "road.imputed": NoisyLinearImputer(noise=0.0)(img, keep)}


def main() -> None:
    import captum
    import pytorch_grad_cam  # noqa: F401
    from importlib.metadata import version

    model = tiny_model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors["input"] = x
    tensors["targets"] = torch.tensor(TARGETS)
    tensors.update(cams(model, x))
    tensors.update(captum_attributions(model, x))
    tensors.update(road_imputation())
    meta = {"config": repr(CONFIG), "torch": torch.__version__, "grad-cam": version("grad-cam"),
            "captum": captum.__version__}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "tiny_vit.safetensors"), metadata=meta)
    print(f"wrote {OUT / 'tiny_vit.safetensors'} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
