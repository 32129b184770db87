"""Training augmentations on batches of tensors, with torch ops only (no torchvision).

Every function takes an explicit ``torch.Generator`` so that a training step's randomness depends only on
(seed, epoch, step, rank): resuming or re-running gives the same batches.
Images are float tensors in [0, 1], shape (B, 3, H, W), until :func:`normalize`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), g: torch.Generator | None = None,
                      attempts: int = 10) -> torch.Tensor:
    """Random-resized-crop boxes as in torchvision / timm: (n, 4) integer ``top, left, h, w``.

    For each image: up to ``attempts`` draws of an area fraction in ``scale`` and a log-uniform aspect
    ratio in ``ratio``; the first box that fits is kept; otherwise a centre crop with the ratio clamped.
    """
    g = g if g is not None else torch.Generator().manual_seed(0)
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    boxes = torch.zeros(n, 4, dtype=torch.long)
    found = torch.zeros(n, dtype=torch.bool)
    for _ in range(attempts):
        target = area * _uniform(g, n, *scale)                                          # n
        r = torch.exp(_uniform(g, n, *log_r))                                           # n
        w = torch.round(torch.sqrt(target * r)).long()
        h = torch.round(torch.sqrt(target / r)).long()
        ok = (w > 0) & (h > 0) & (w <= width) & (h <= height) & ~found
        # positions drawn for every image (so the stream of random numbers does not depend on `ok`)
        top = (torch.rand(n, generator=g, dtype=torch.float64) * (height - h + 1).clamp(min=1)).long()
        left = (torch.rand(n, generator=g, dtype=torch.float64) * (width - w + 1).clamp(min=1)).long()
        new = torch.stack([top, left, h, w], dim=1)
        boxes[ok] = new[ok]
        found |= ok
    if not found.all():                                                                 # fallback: centre crop
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            h, w = height, int(round(height * ratio[1]))
        else:
            w, h = width, height
        fb = torch.tensor([(height - h) // 2, (width - w) // 2, h, w])
        boxes[~found] = fb
    return boxes


def random_resized_crop(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), g: torch.Generator | None = None
                        ) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size): crop a random box of each image and resize it (bilinear, antialiased)."""
    B, _, H, W = x.shape
    boxes = sample_crop_boxes(B, H, W, scale, ratio, g)
    out = []
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        crop = x[i:i + 1, :, t:t + h, l:l + w]                                          # 1, C, h, w
        out.append(resize(crop, size))
    return torch.cat(out, dim=0)                                                        # B, C, *size


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size), bilinear with antialiasing; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def random_flip(x: torch.Tensor, p: float = 0.5, g: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], generator=g) < p                                      # B
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Labels (B,) -> smoothed one-hot targets (B, C): 1 - eps + eps/C on the label, eps/C elsewhere."""
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    t.scatter_(1, labels[:, None], 1.0 - smoothing + off)
    return t


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c t_c log softmax(logits)_c: ``F.cross_entropy`` with probability targets, in
    float32."""
    return F.cross_entropy(logits.float(), targets)


def _beta(g: torch.Generator, alpha: float) -> float:
    """One draw of Beta(alpha, alpha), seeded from ``g`` (torch's Beta sampler takes no generator)."""
    import numpy as np

    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    rng = np.random.default_rng(seed)
    return float(rng.beta(alpha, alpha))


def mixup_cutmix(x: torch.Tensor, targets: torch.Tensor, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5, g: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Batch mixup / cutmix as in timm (``mode="batch"``): one lambda per batch, partner = the reversed batch.

    ``targets`` are soft targets (B, C). With both alphas > 0, cutmix is chosen with ``switch_prob``.
    Returns (mixed images, mixed targets, info dict with "kind" and "lam").
    """
    g = g if g is not None else torch.Generator().manual_seed(0)
    draw = float(torch.rand(1, generator=g))
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(1, generator=g)) < switch_prob)
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or draw >= prob:
        return x, targets, {"kind": "none", "lam": 1.0}
    lam = _beta(g, cutmix_alpha if use_cutmix else mixup_alpha)
    if use_cutmix:
        H, W = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(H * cut), int(W * cut)
        cy = int(torch.randint(0, H, (1,), generator=g))
        cx = int(torch.randint(0, W, (1,), generator=g))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)                                # area actually pasted
        kind = "cutmix"
    else:
        x = x * lam + x.flip(0) * (1.0 - lam)
        kind = "mixup"
    targets = targets * lam + targets.flip(0) * (1.0 - lam)
    return x, targets, {"kind": kind, "lam": lam}


def patch_dropout(tokens: torch.Tensor, layout, rate: float, g: torch.Generator | None = None) -> torch.Tensor:
    """PatchDropout (Liu et al. 2022; FLIP): keep a random subset of the patch tokens of each image.

    ``tokens`` (B, T, D) enter block 0 with their position embeddings already added; ``layout`` is the model's
    layout at block 0 (prefix tokens and registers are always kept, in place). Keeps
    ``max(1, round(N * (1 - rate)))`` patches per image, in their original order -> (B, T - dropped, D).
    """
    if rate <= 0:
        return tokens
    B, T, D = tokens.shape
    sl = layout.patches
    N = sl.stop - sl.start
    keep = max(1, int(round(N * (1.0 - rate))))
    idx = torch.rand(B, N, generator=g).argsort(dim=1)[:, :keep].sort(dim=1).values.to(tokens.device)  # B, keep
    patches = tokens[:, sl].gather(1, idx[:, :, None].expand(-1, -1, D))                              # B, keep, D
    return torch.cat([tokens[:, :sl.start], patches, tokens[:, sl.stop:]], dim=1)
