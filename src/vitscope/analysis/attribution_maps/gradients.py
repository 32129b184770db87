"""Attributions on the input pixels: saliency, input x gradient, Integrated Gradients, SmoothGrad /
SmoothGrad-squared / VarGrad (occlusion, the other perturbation of the input, is in ``occlusion.py``).

Every function returns :class:`PixelAttribution`: ``attributions`` (B, C, H, W) as Captum returns them and
``maps`` (B, H, W), the channels reduced: the max of ``|∂s/∂x|`` over channels for saliency (Simonyan et al.
2014), the sum over channels for every other method (attributions add up: for Integrated Gradients the map sums to
``s(x) - s(baseline)``).

- ``saliency``: ``|∂s/∂x|`` (Captum's ``Saliency``, ``abs=True``);
- ``input-x-gradient``: ``x ⊙ ∂s/∂x``;
- ``integrated-gradients`` (Sundararajan et al. 2017): ``(x - x') ⊙ Σ_k w_k ∂s/∂x(x' + α_k (x - x'))`` with
  Captum's quadrature rules (``gausslegendre`` by default, ``riemann_left/right/middle/trapezoid``); every step
  of every image runs in batches of ``internal_batch_size`` (default: all in one pass). The completeness error
  ``|Σ attributions - (s(x) - s(x'))| / |s(x) - s(x')|`` is reported per image;
- ``smoothgrad`` / ``smoothgrad-sq`` / ``vargrad`` (Smilkov et al. 2017; Adebayo et al. 2018): ``n`` copies of
  each image with Gaussian noise of standard deviation ``stdev`` (in the model's input units, as Captum's
  ``NoiseTunnel``; drawn as Captum draws it, so the same seed gives Captum's numbers), the saliency of each copy,
  then the mean, the mean of squares or the variance over copies; all copies in batches of ``batch_size``;
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vitscope.analysis.attention.relevance import class_targets

IG_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
BASELINES = ("zeros", "black", "blur", "noise")
NOISE_KINDS = ("smoothgrad", "smoothgrad-sq", "vargrad")


class PixelAttribution(NamedTuple):
    """``attributions`` (B, C, H, W); ``maps`` (B, H, W); ``targets`` (B,); ``completeness`` (B,) relative error
    of Integrated Gradients (None for the other methods)."""

    attributions: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor
    completeness: torch.Tensor | None = None


def _check_head(model) -> None:
    if model.cfg.head == "none":
        raise ValueError("this model has no classification head: input attributions need class logits")


def input_gradients(model, x: torch.Tensor, targets: torch.Tensor, batch_size: int | None = None,
                    scores: bool = False):
    """``∂ logit_target / ∂x`` for every row of ``x`` (targets (len(x),)), in batches of ``batch_size``; with
    ``scores=True`` also the target logits (len(x),) of the same forward passes."""
    out, val = [], []
    n = x.shape[0]
    bs = n if not batch_size else int(batch_size)
    with torch.enable_grad():
        for s in range(0, n, bs):
            xi = x[s:s + bs].detach().clone().requires_grad_(True)
            logits = model(xi)
            score = logits.gather(1, targets[s:s + bs, None].to(logits.device))[:, 0]
            out.append(torch.autograd.grad(score.sum(), xi)[0].detach())
            val.append(score.detach())
    return (torch.cat(out), torch.cat(val)) if scores else torch.cat(out)


def _targets(model, x: torch.Tensor, target, need_logits: bool = True):
    """(targets (B,), logits or None): the model runs only when the logits are needed or the target is None."""
    _check_head(model)
    if target is None or need_logits:
        with torch.inference_mode():
            logits = model(x)
        return class_targets(logits, target).clone(), logits.clone()
    shape = torch.empty(x.shape[0], model.cfg.num_classes, device=x.device)
    return class_targets(shape, target), None


def saliency(model, x: torch.Tensor, target=None) -> PixelAttribution:
    t, _ = _targets(model, x, target, need_logits=False)
    a = input_gradients(model, x, t).abs()
    return PixelAttribution(a, a.amax(1), t)


def input_x_gradient(model, x: torch.Tensor, target=None) -> PixelAttribution:
    t, _ = _targets(model, x, target, need_logits=False)
    a = x.detach() * input_gradients(model, x, t)
    return PixelAttribution(a, a.sum(1), t)


def quadrature(rule: str, n: int) -> tuple[list[float], list[float]]:
    """(step sizes, alphas) of Captum's approximation rule ``rule`` with ``n`` steps."""
    if n < 2:
        raise ValueError(f"steps must be at least 2, got {n}")
    if rule == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return list(0.5 * w), list(0.5 * (1 + nodes))
    if rule not in IG_RULES:
        raise ValueError(f"ig_rule must be one of {', '.join(IG_RULES)}, got {rule!r}")
    steps = [1 / n] * n
    kind = rule.split("_")[1]
    if kind == "trapezoid":
        steps[0] /= 2
        steps[-1] /= 2
        return steps, torch.linspace(0, 1, n).tolist()
    lo, hi = {"left": (0, 1 - 1 / n), "right": (1 / n, 1), "middle": (1 / (2 * n), 1 - 1 / (2 * n))}[kind]
    return steps, torch.linspace(lo, hi, n).tolist()


def make_baseline(x: torch.Tensor, baseline="zeros", preprocess_cfg=None, seed: int = 0) -> torch.Tensor:
    """The reference input: ``zeros`` (0 in the model's normalised input), ``black`` (a black image, normalised
    with the model's mean / std), ``blur`` (a Gaussian blur of the image, sigma = 1/16 of its side, as a
    "blurred" baseline of Sturmfels et al. 2020), ``noise`` (uniform noise over the black-to-white range, seeded),
    a number (every value) or a tensor broadcastable to ``x``."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, a number or a tensor, got {baseline!r}")
    if baseline == "zeros":
        return torch.zeros_like(x)
    mean, std = _mean_std(x, preprocess_cfg)
    if baseline == "black":
        return ((0 - mean) / std).expand_as(x).clone()
    if baseline == "noise":
        g = torch.Generator().manual_seed(int(seed))
        u = torch.rand(x.shape, generator=g).to(x)
        return (u - mean) / std
    sigma = max(x.shape[-2:]) / 16
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def _mean_std(x, cfg):
    mean = torch.tensor(getattr(cfg, "mean", None) or (0.5, 0.5, 0.5), dtype=x.dtype, device=x.device)
    std = torch.tensor(getattr(cfg, "std", None) or (0.5, 0.5, 0.5), dtype=x.dtype, device=x.device)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


def integrated_gradients(model, x: torch.Tensor, target=None, baseline="zeros", steps: int = 64,
                         rule: str = "gausslegendre", internal_batch_size: int | None = None,
                         preprocess_cfg=None, seed: int = 0) -> PixelAttribution:
    """Integrated Gradients of ``x`` (B, C, H, W) with every step batched (see the module doc)."""
    t, _ = _targets(model, x, target, need_logits=False)
    x = x.detach()
    base = make_baseline(x, baseline, preprocess_cfg or getattr(model, "preprocess_cfg", None), seed)
    sizes, alphas = quadrature(rule, int(steps))
    B, S = x.shape[0], len(alphas)
    diff = x - base
    # the path, then x and the baseline themselves: their scores (for the completeness error) come from the same
    # passes; their gradients are not used
    path = torch.cat([base + a * diff for a in alphas] + [x, base], dim=0)              # (S + 2) B, C, H, W
    g, score = input_gradients(model, path, t.repeat(S + 2), internal_batch_size, scores=True)
    w = torch.tensor(sizes, dtype=torch.float32, device=g.device).view(-1, 1)
    total = (g[:S * B].reshape(S, -1) * w).sum(0).reshape(x.shape)
    attr = total * diff
    gap = (score[S * B:(S + 1) * B] - score[(S + 1) * B:]).float()
    err = (attr.flatten(1).sum(1).float() - gap).abs() / gap.abs().clamp(min=1e-12)
    return PixelAttribution(attr, attr.sum(1), t, err.cpu())


def noise_tunnel(model, x: torch.Tensor, target=None, kind: str = "smoothgrad", samples: int = 16,
                 stdev: float = 0.15, seed: int | None = 0, batch_size: int | None = None) -> PixelAttribution:
    """SmoothGrad (``kind="smoothgrad"``), SmoothGrad-squared or VarGrad of the saliency |∂s/∂x|.

    The noise is ``torch.normal(0, stdev)`` of shape (B * samples, C, H, W), copies of an image next to each other
    (Captum's ``NoiseTunnel``); ``seed`` seeds a generator of its own (None: the global one, as Captum)."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    t, _ = _targets(model, x, target, need_logits=False)
    x = x.detach()
    B = x.shape[0]
    std = torch.tensor(float(stdev), device=x.device).repeat((B * samples,) + tuple(x.shape[1:]))
    gen = None if seed is None else torch.Generator(device=x.device).manual_seed(int(seed))
    noisy = x.repeat_interleave(samples, dim=0) + torch.normal(0, std, generator=gen)
    g = input_gradients(model, noisy, t.repeat_interleave(samples), batch_size).abs()
    g = g.reshape(B, samples, *x.shape[1:])
    if kind == "smoothgrad":
        a = g.mean(1)
    elif kind == "smoothgrad-sq":
        a = (g * g).mean(1)
    else:
        a = (g * g).mean(1) - g.mean(1) ** 2
    return PixelAttribution(a, a.sum(1), t)
