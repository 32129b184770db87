"""Position-embedding similarity and patch-embedding filters (probing-vits; ViT paper, figure 7)."""
from __future__ import annotations

import numpy as np
import torch


def patch_position_embeddings(model, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Position embeddings of the patch tokens (N, D) on ``grid`` (default: the model's), prefix entries dropped.

    Learned embeddings are resampled (bicubic) to another grid exactly as the forward pass does; fixed
    sin-cos ones are recomputed. Models without absolute position embeddings (BEiT) raise.
    """
    if model.cfg.pos_embed == "none":
        raise ValueError("this model has no absolute position embedding (pos_embed='none', e.g. BEiT's "
                         "relative position bias); there is nothing to compare")
    with torch.no_grad():
        _, patch = model._pos_embed(tuple(grid or model.cfg.grid))
    return patch[0].detach().float()


def position_similarity(model, grid: tuple[int, int] | None = None) -> np.ndarray:
    """Cosine similarity of every patch's position embedding to every other: (rows, cols, rows, cols).

    ``sim[i, j]`` is the map (rows, cols) of the patch at (i, j) against all patches.
    """
    pe = patch_position_embeddings(model, grid)                                       # N, D
    rows, cols = grid or model.cfg.grid
    pe = torch.nn.functional.normalize(pe.double(), dim=-1)
    sim = pe @ pe.T                                                                   # N, N
    return sim.reshape(rows, cols, rows, cols).numpy()


def patch_embedding_filters(model, n: int = 28, mode: str = "pca") -> np.ndarray:
    """Patch-embedding filters as RGB images (n, p, p, C) in [0, 1].

    ``mode="pca"``: the top ``n`` principal components of the D filters (the ViT paper's figure 7);
    ``"raw"``: the first ``n`` filters. Each image is min-max scaled on its own.
    """
    w = model.patch_embed.proj.weight.detach().double().cpu()                         # D, C, p, p
    D, C, p, _ = w.shape
    flat = w.reshape(D, C * p * p)
    if mode == "pca":
        flat = flat - flat.mean(0, keepdim=True)
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)                        # k, C*p*p
        comps = vh[: min(n, vh.shape[0])]
    elif mode == "raw":
        comps = flat[: min(n, D)]
    else:
        raise ValueError(f"mode must be 'pca' or 'raw', got {mode!r}")
    imgs = comps.reshape(-1, C, p, p).permute(0, 2, 3, 1).numpy()                     # n, p, p, C
    lo = imgs.min(axis=(1, 2, 3), keepdims=True)
    hi = imgs.max(axis=(1, 2, 3), keepdims=True)
    return (imgs - lo) / np.where(hi > lo, hi - lo, 1.0)
