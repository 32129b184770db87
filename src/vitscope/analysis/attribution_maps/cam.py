"""Class-activation maps for ViTs at any block: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, Eigen-CAM, Score-CAM,
Ablation-CAM and HiResCAM, as pytorch-grad-cam computes them with its ViT reshape transform.

The activation of a block (``site``: by default ``blocks.{b}.ln1.hook_normalized``, the output of the block's first
LayerNorm, which is what pytorch-grad-cam's ViT example hooks, ``model.blocks[-1].norm1``) is read at every token;
the prefix tokens of that block (CLS, DIST, registers, found through ``model.token_layout(b)``) are dropped and the
patch tokens are reshaped to the grid as channels ``A`` (B, D, rows, cols). With ``g = ∂s/∂A`` (s: the logit of the
target class), the map before the ReLU is

- ``gradcam``: ``Σ_k mean_ij(g_k) A_k`` (Selvaraju et al. 2017);
- ``gradcam++``: ``Σ_k (Σ_ij relu(g_kij) α_kij) A_k`` with ``α = g² / (2 g² + Σ_ij A_k · g³ + 1e-6)`` (0 where
  g = 0) (Chattopadhyay et al. 2018; pytorch-grad-cam's closed form with the exponential replaced by the logit);
- ``xgradcam``: ``Σ_k (Σ_ij g_kij A_kij / (Σ_ij A_kij + 1e-7)) A_k`` (Fu et al. 2020);
- ``layercam``: ``Σ_k relu(g_k) ⊙ A_k`` (Jiang et al. 2021);
- ``hirescam``: ``Σ_k g_k ⊙ A_k`` (Draelos & Carin 2020);
- ``eigencam``: the projection of the centred activations (N × D) on their first right singular vector
  (Muhammad & Yeasin 2020); no gradient, no class. The sign of a singular vector is arbitrary: by default it is
  LAPACK's (NumPy's SVD, as pytorch-grad-cam), ``eigen_sign="positive"`` flips the map when ``|min| > |max|``
  (Seg-Eigen-CAM's correction);
- ``scorecam``: ``Σ_k softmax_k(s(x ⊙ Â_k)) A_k`` with ``Â_k`` channel k upsampled to the image (bilinear,
  corners aligned) and min-max scaled (Wang et al. 2020);
- ``ablationcam``: ``Σ_k ((s - s_k) / s) A_k`` with ``s_k`` the score with channel k ablated at every token
  (Desai & Ramaswamy 2020). ``ablation_value="zero"`` (default, the paper) sets the channel to 0;
  ``"pytorch-grad-cam"`` sets it to ``min(A) - 1e7`` (that library's rule for activations that are not ReLU
  outputs; its value is computed on the image's whole token tensor).

Then ``relu``, per image ``(c - min) / (max + 1e-7)`` (after subtracting the min), a bilinear resize to the image
(half-pixel centres, cv2's ``INTER_LINEAR``) and the same scaling again: pytorch-grad-cam's output for one target
layer. ``grid`` keeps the map on the token grid after the ReLU (not rescaled).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from vitscope.analysis.attention.relevance import class_targets
from vitscope.analysis.attention.tokens import grid_of, normalize_block

CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "scorecam", "ablationcam", "hirescam")
GRADIENT_CAMS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
CAM_ALIASES = {"grad-cam": "gradcam", "grad_cam": "gradcam", "gradcampp": "gradcam++", "grad-cam++": "gradcam++",
               "gradcamplusplus": "gradcam++", "xgrad-cam": "xgradcam", "layer-cam": "layercam",
               "eigen-cam": "eigencam", "score-cam": "scorecam", "ablation-cam": "ablationcam",
               "hires-cam": "hirescam", "hirescam": "hirescam"}
#: where the activation is read in block b
SITES = {"ln1": "blocks.{b}.ln1.hook_normalized", "ln2": "blocks.{b}.ln2.hook_normalized",
         "resid_pre": "blocks.{b}.hook_resid_pre", "resid_mid": "blocks.{b}.hook_resid_mid",
         "resid_post": "blocks.{b}.hook_resid_post", "attn_out": "blocks.{b}.hook_attn_out",
         "mlp_out": "blocks.{b}.hook_mlp_out"}
ABLATION_VALUES = ("zero", "pytorch-grad-cam")
EIGEN_SIGNS = ("lapack", "positive")


class CAM(NamedTuple):
    """``maps`` (B, H, W) on the image, in [0, 1]; ``grid`` (B, rows, cols) after the ReLU; ``targets`` (B,)
    (Eigen-CAM explains no class: its map does not depend on the target); ``block`` the block read."""

    maps: torch.Tensor
    grid: torch.Tensor
    targets: torch.Tensor | None
    block: int


def site_name(model, block: int, site: str = "ln1") -> tuple[str, int]:
    """(hook name, block index >= 0) of ``site`` in ``block`` (negative blocks count from the end)."""
    if site not in SITES:
        raise ValueError(f"site must be one of {', '.join(SITES)}, got {site!r}")
    b = normalize_block(block, model.cfg.depth)
    return SITES[site].format(b=b), b


def tokens_to_grid(t: torch.Tensor, layout) -> torch.Tensor:
    """(B, T, D) tokens -> (B, D, rows, cols): the patch tokens of ``layout`` only (prefix tokens dropped)."""
    B, T, D = t.shape
    if T != layout.n_tokens:
        raise ValueError(f"block {layout.block}: the activation has {T} tokens, the layout {layout.n_tokens}")
    rows, cols = layout.grid
    return t[:, layout.patches].reshape(B, rows, cols, D).permute(0, 3, 1, 2)


def scale_maps(cam: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image``: per map ``c - min``, ``/ (1e-7 + max)``, then a bilinear resize."""
    c = cam - cam.flatten(1).amin(1)[:, None, None]
    c = c / (1e-7 + c.flatten(1).amax(1)[:, None, None])
    if size is not None and tuple(c.shape[-2:]) != tuple(size):
        c = F.interpolate(c[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return c


def activations_and_gradients(model, x: torch.Tensor, target=None, block: int = -1, site: str = "ln1",
                              gradients: bool = True):
    """``(A (B, D, rows, cols), g or None, logits, targets, layout)`` at ``site`` of ``block``."""
    if gradients and model.cfg.head == "none":
        raise ValueError("this model has no classification head: class-activation maps need class logits")
    name, b = site_name(model, block, site)
    layout = model.token_layout(b, grid_of(x, model))
    store = {}

    def keep(t, hook):
        store["a"] = t
        return t

    with torch.enable_grad() if gradients else torch.inference_mode():
        xin = x.detach().clone().requires_grad_(gradients)
        with model.hooks([(name, keep)]):
            logits = model(xin)
        targets = class_targets(logits, target) if model.cfg.head != "none" else None
        a = store["a"]
        g = None
        if gradients:
            score = logits.gather(1, targets[:, None]).sum()
            g = torch.autograd.grad(score, a)[0].detach()
    A = tokens_to_grid(a.detach(), layout)
    G = tokens_to_grid(g, layout) if g is not None else None
    return A, G, logits.detach(), (targets.detach() if targets is not None else None), layout


def gradient_cam(method: str, A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The map before the ReLU (B, rows, cols) of a gradient CAM from activations and gradients (B, D, r, c)."""
    if method == "gradcam":
        w = g.mean(dim=(2, 3))
    elif method == "gradcam++":
        g2 = g * g
        g3 = g2 * g
        s = A.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + s * g3 + 1e-6)
        aij = torch.where(g != 0, aij, torch.zeros_like(aij))
        w = (g.clamp(min=0) * aij).sum(dim=(2, 3))
    elif method == "xgradcam":
        s = A.sum(dim=(2, 3), keepdim=True)
        w = (g * A / (s + 1e-7)).sum(dim=(2, 3))
    elif method == "layercam":
        return (g.clamp(min=0) * A).sum(1)
    elif method == "hirescam":
        return (g * A).sum(1)
    else:
        raise ValueError(f"{method!r} is not a gradient CAM; choose among {', '.join(GRADIENT_CAMS)}")
    return (w[:, :, None, None] * A).sum(1)


def eigen_projection(A: torch.Tensor, sign: str = "lapack") -> torch.Tensor:
    """First principal component of each image's centred activations, on the grid (B, rows, cols)."""
    if sign not in EIGEN_SIGNS:
        raise ValueError(f"eigen_sign must be one of {', '.join(EIGEN_SIGNS)}, got {sign!r}")
    out = []
    for a in A.detach().cpu().float().numpy():
        m = a.reshape(a.shape[0], -1).T                                               # N, D
        m = m - m.mean(axis=0)
        vt = np.linalg.svd(m, full_matrices=True)[2]
        p = (m @ vt[0]).reshape(a.shape[1:])
        if sign == "positive" and abs(p.min()) > abs(p.max()):
            p = -p
        out.append(p)
    return torch.from_numpy(np.float32(out)).to(A.device)


def score_cam_weights(model, x: torch.Tensor, A: torch.Tensor, targets: torch.Tensor,
                      batch_size: int = 16) -> torch.Tensor:
    """Softmax over channels of the target logit on the image masked by each upsampled, scaled channel (B, D)."""
    up = F.interpolate(A, size=x.shape[-2:], mode="bilinear", align_corners=True)       # B, D, H, W
    flat = up.flatten(2)
    lo, hi = flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]
    up = (up - lo) / (hi - lo + 1e-8)
    scores = torch.empty(A.shape[:2], dtype=torch.float32)
    with torch.inference_mode():
        for i in range(x.shape[0]):
            masked = x[i][None] * up[i][:, None]                                        # D, C, H, W
            for s in range(0, masked.shape[0], batch_size):
                out = model(masked[s:s + batch_size])
                scores[i, s:s + out.shape[0]] = out[:, int(targets[i])].float().cpu()
    return torch.softmax(scores, dim=-1).to(A.device)


def ablation_cam_weights(model, x: torch.Tensor, name: str, targets: torch.Tensor, logits: torch.Tensor,
                         value: str = "zero", batch_size: int = 32) -> torch.Tensor:
    """``(s - s_k) / s`` for every channel k ablated at every token of the activation at hook ``name`` (B, D)."""
    if value not in ABLATION_VALUES:
        raise ValueError(f"ablation_value must be one of {', '.join(ABLATION_VALUES)}, got {value!r}")
    orig = logits.gather(1, targets[:, None].to(logits.device))[:, 0].float()
    D = model.cfg.embed_dim
    weights = torch.empty(x.shape[0], D, dtype=torch.float32, device=logits.device)
    with torch.inference_mode():
        for i in range(x.shape[0]):
            for s in range(0, D, batch_size):
                chans = torch.arange(s, min(D, s + batch_size), device=x.device)

                def ablate(t, hook, chans=chans):
                    t = t.clone()
                    v = 0.0
                    if value == "pytorch-grad-cam":
                        lo = t[0].min()
                        v = 0.0 if float(lo) == 0 else lo - 1e7
                    t[torch.arange(len(chans), device=t.device), :, chans] = v
                    return t

                with model.hooks([(name, ablate)]):
                    out = model(x[i][None].expand(len(chans), *x.shape[1:]))
                weights[i, s:s + len(chans)] = out[:, int(targets[i])].float()
    return (orig[:, None] - weights) / orig[:, None]


def resolve_cam(method: str) -> str:
    m = str(method).strip().lower()
    m = CAM_ALIASES.get(m, m)
    if m not in CAM_METHODS:
        raise ValueError(f"CAM method must be one of {', '.join(CAM_METHODS)}, got {method!r}")
    return m


def class_activation_map(model, x: torch.Tensor, target=None, method: str = "gradcam", block: int = -1,
                         site: str = "ln1", ablation_value: str = "zero", eigen_sign: str = "lapack",
                         batch_size: int = 32) -> CAM:
    """One CAM of ``x`` (B, C, H, W) for ``target`` (None: the predicted class; an int; one per image)."""
    method = resolve_cam(method)
    name, b = site_name(model, block, site)
    A, g, logits, targets, _ = activations_and_gradients(model, x, target, b, site,
                                                         gradients=method in GRADIENT_CAMS)
    if method in GRADIENT_CAMS:
        cam = gradient_cam(method, A, g)
    elif method == "eigencam":
        cam = eigen_projection(A, eigen_sign)
    else:
        if targets is None:
            raise ValueError(f"{method} needs class logits; this model has no classification head")
        if method == "scorecam":
            w = score_cam_weights(model, x, A, targets, batch_size=min(batch_size, 16))
        else:
            w = ablation_cam_weights(model, x, name, targets, logits, ablation_value, batch_size)
        cam = (w[:, :, None, None].to(A.dtype) * A).sum(1)
    cam = cam.float().clamp(min=0)
    maps = scale_maps(scale_maps(cam, tuple(x.shape[-2:])))
    return CAM(maps, cam, targets, b)
