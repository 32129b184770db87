"""``explain(model, images, target, method, **options)``: every attribution method behind one call, each returning a
map on the image grid (B, H, W) and one on the token grid (B, rows, cols) for a target class."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vitscope.analysis.attribution_maps.cam import class_activation_map
from vitscope.analysis.attribution_maps.gradients import (
    input_x_gradient, integrated_gradients, noise_tunnel, saliency,
)
from vitscope.analysis.attribution_maps.methods import (ATTENTION_METHODS, CAM_METHODS,  # noqa: F401
                                                        FAMILIES, GRADIENT_METHODS, METHOD_ALIASES, METHODS,
                                                        PERTURBATION_METHODS, TOKEN_METHODS, resolve_method)
from vitscope.analysis.attribution_maps.occlusion import occlusion

@dataclass
class Explanation:
    """``maps`` (B, H, W) on the image; ``grid`` (B, rows, cols) on the token grid (native for token methods, the
    mean over each patch for pixel methods); ``targets`` (B,); ``attributions`` (B, C, H, W) for pixel methods;
    ``extra``: per-image numbers of the method (``completeness`` of Integrated Gradients)."""

    method: str
    maps: torch.Tensor
    grid: torch.Tensor
    targets: torch.Tensor
    attributions: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def to_image(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, rows, cols) -> (B, H, W) by bilinear interpolation (half-pixel centres)."""
    return F.interpolate(grid[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) -> (B, rows, cols): the mean over each cell."""
    return F.adaptive_avg_pool2d(maps[:, None].float(), grid)[:, 0]


def _images(model, images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        x = images if images.ndim == 4 else images[None]
        if x.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
        return x.to(model.device, model.dtype)
    return model.preprocess(images if isinstance(images, (list, tuple)) else [images]).to(model.device)


def explain(model, images, target=None, method: str = "gradcam", options=None, **kw) -> Explanation:
    """The attribution map of ``method`` for ``target`` (None: the predicted class; an int; one per image).

    ``images``: (B, C, H, W) preprocessed, or paths / PIL images (preprocessed by the model). ``options``: an
    :class:`~vitscope.analysis.attribution_maps.options.ExplainOptions` (or its fields as keywords: ``block``,
    ``site``, ``steps``, ``baseline``, ``ig_rule``, ``samples``, ``stdev``, ``seed``, ...)."""
    from vitscope.analysis.attribution_maps.options import ExplainOptions

    opts = options or ExplainOptions()
    if kw:
        opts = ExplainOptions.from_mapping({**opts.to_dict(), **kw})
    method = resolve_method(method)
    x = _images(model, images)
    size = tuple(x.shape[-2:])
    rows, cols = model.token_layout(0, (size[0] // model.cfg.patch_size, size[1] // model.cfg.patch_size)).grid
    extra: dict[str, Any] = {}
    attributions = None
    if method in CAM_METHODS:
        r = class_activation_map(model, x, target, method, opts.block, opts.site, opts.ablation_value,
                                 opts.eigen_sign, opts.batch_size)
        grid, maps, targets = r.grid, r.maps, r.targets
    elif method in ATTENTION_METHODS:
        from vitscope.analysis.attention.relevance import relevance_from_model
        from vitscope.analysis.attention.rollout import rollout_from_model

        kws = dict(start_block=opts.start_block, end_block=opts.block, discard_ratio=opts.discard_ratio,
                   normalize="max")
        if method == "rollout":
            a = rollout_from_model(model, x, head_fusion=opts.head_fusion, **kws)
            with torch.inference_mode():
                targets = _class_targets(model, x, target)
        else:
            a = relevance_from_model(model, x, target, method=method, **kws)
            targets = a.targets
        grid = a.maps.float()
        maps = to_image(grid, size)
    elif method == "random":
        g = torch.Generator().manual_seed(int(opts.seed))
        grid = torch.rand((x.shape[0], rows, cols), generator=g).to(x.device)
        maps = to_image(grid, size)
        targets = _class_targets(model, x, target)
    else:
        if method == "saliency":
            r = saliency(model, x, target)
        elif method == "input-x-gradient":
            r = input_x_gradient(model, x, target)
        elif method == "integrated-gradients":
            r = integrated_gradients(model, x, target, opts.baseline, opts.steps, opts.ig_rule,
                                     opts.internal_batch_size, seed=opts.seed)
            extra["completeness"] = r.completeness
        elif method == "occlusion":
            r = occlusion(model, x, target, baseline=opts.occlusion_value, batch_size=opts.batch_size)
        else:
            r = noise_tunnel(model, x, target, method, opts.samples, opts.stdev, opts.seed,
                             opts.internal_batch_size)
        maps, targets, attributions = r.maps.float(), r.targets, r.attributions
        grid = to_grid(maps, (rows, cols))
    return Explanation(method, maps.detach(), grid.detach(), targets.detach(), attributions, extra)


def _class_targets(model, x, target) -> torch.Tensor:
    from vitscope.analysis.attention.relevance import class_targets

    with torch.inference_mode():
        logits = model(x)
    return class_targets(logits, target).clone()
