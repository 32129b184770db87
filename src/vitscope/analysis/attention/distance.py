"""Mean attention distance per block x head, two named variants, streamed over batches.

- **Variant A** (walmer2023, "Teaching Matters"; the default): patch positions on [0, 1]
  (grid coordinate / (edge - 1)); every prefix token (CLS, DIST, registers) is dropped from queries and
  keys and each query row is renormalised over the patch keys (a row with no mass on patches counts 0);
  ``d_i = Σ_j a_ij ‖p_i - p_j‖``, averaged over the patch queries.
- **Variant B** (probing-vits, "probing-vits"; Raghu et al.): distance in pixels (patch_size x grid distance);
  prefix tokens dropped from queries and keys **without** renormalising; Σ over keys, mean over queries.

Both give one value per image x block x head, then the mean (and std) over images. ``MeanAttentionDistance``
accumulates sums over batches (update / compute), so a dataset pass never holds more than one batch of
one block's pattern; :func:`attention_distance` runs that pass with hooks that reduce each pattern as soon
as it is computed.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from vitscope.analysis.attention.maps import block_of, pattern_hook
from vitscope.analysis.attention.tokens import check_pattern
from vitscope.models.layout import TokenLayout

VARIANTS = ("A", "B")


def patch_coordinates(grid: tuple[int, int]) -> torch.Tensor:
    """(N, 2) integer (row, col) of each patch token in sequence order (row-major)."""
    rows, cols = grid
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=1).double()


def distance_matrix(grid: tuple[int, int], variant: str = "A", patch_size: int | None = None) -> torch.Tensor:
    """(N, N) float64 distances between patch tokens: normalised [0, 1] coordinates (A) or pixels (B)."""
    rows, cols = grid
    p = patch_coordinates(grid)
    if variant == "A":
        p = p / torch.tensor([max(rows - 1, 1), max(cols - 1, 1)], dtype=torch.float64)
    elif variant == "B":
        if patch_size is None:
            raise ValueError("variant B measures pixels and needs patch_size")
        p = p * float(patch_size)
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return torch.cdist(p, p)


def _patch_block(pattern: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    check_pattern(pattern, layout)
    return pattern[:, :, layout.patches, layout.patches]                             # B, H, N, N


def _patch_size(patch_size: int | None, layout: TokenLayout | None) -> int | None:
    if patch_size is not None:
        return patch_size
    return getattr(layout, "patch_size", None)


def mean_attention_distance(pattern: torch.Tensor, layout: TokenLayout, variant: str = "A",
                            patch_size: int | None = None, dist: torch.Tensor | None = None) -> torch.Tensor:
    """Per image and head: (B, H) mean attention distance of one block's pattern (B, H, T, T).

    Variant B measures pixels: ``patch_size`` defaults to the layout's (``model.token_layout(b)`` carries the
    model's patch size).
    """
    a = _patch_block(pattern, layout)
    if dist is None:
        ps = _patch_size(patch_size, layout)
        if variant == "B" and ps is None:
            raise ValueError("variant B measures pixels: pass patch_size, or a layout from model.token_layout(b)")
        dist = distance_matrix(layout.grid, variant, ps)
    dist = dist.to(device=a.device, dtype=a.dtype if a.dtype == torch.float64 else torch.float32)
    a = a.to(dist.dtype)
    d = torch.einsum("bhqk,qk->bhq", a, dist)                                        # B, H, N
    if variant == "A":
        s = a.sum(-1)                                                                # B, H, N
        d = d / torch.where(s == 0, torch.ones_like(s), s)
    return d.mean(-1)                                                                # B, H


class MeanAttentionDistance:
    """Streaming mean attention distance over a dataset: ``update`` per block and batch, ``compute`` at the end.

    Keeps, per block and head, the float64 sum and sum of squares of the per-image values and the number of
    images, so the result equals the all-at-once mean over images exactly (up to float rounding).
    """

    def __init__(self, depth: int, num_heads: int, variant: str = "A", patch_size: int | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.depth, self.num_heads, self.variant, self.patch_size = depth, num_heads, variant, patch_size
        self._dist: dict[tuple, torch.Tensor] = {}
        self.reset()

    def reset(self) -> None:
        self.sum = np.zeros((self.depth, self.num_heads))
        self.sumsq = np.zeros((self.depth, self.num_heads))
        self.count = np.zeros(self.depth, dtype=np.int64)

    def _matrix(self, layout: TokenLayout, device) -> torch.Tensor:
        ps = _patch_size(self.patch_size, layout)
        if self.variant == "B" and ps is None:
            raise ValueError("variant B measures pixels: give MeanAttentionDistance a patch_size, or layouts from "
                             "model.token_layout(b)")
        key = (tuple(layout.grid), str(device), ps)
        if key not in self._dist:
            self._dist[key] = distance_matrix(layout.grid, self.variant, ps).float().to(device)
        return self._dist[key]

    def update_values(self, block: int, values: torch.Tensor | np.ndarray) -> None:
        """Add per-image values (B, H) of one block."""
        v = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
        self.sum[block] += v.sum(0)
        self.sumsq[block] += (v ** 2).sum(0)
        self.count[block] += v.shape[0]

    def update(self, block: int, pattern: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Reduce one block's pattern (B, H, T, T) and add it; returns the per-image values (B, H)."""
        d = mean_attention_distance(pattern, layout, self.variant, self.patch_size,
                                    dist=self._matrix(layout, pattern.device))
        self.update_values(block, d)
        return d

    def compute(self) -> np.ndarray:
        """(depth, heads) mean over images; NaN for blocks never updated."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.count[:, None]

    def std(self) -> np.ndarray:
        """(depth, heads) population standard deviation over images."""
        m = self.compute()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.maximum(self.sumsq / self.count[:, None] - m ** 2, 0.0))

    @property
    def n_images(self) -> int:
        return int(self.count.max()) if self.count.size else 0


def images_of(batch) -> torch.Tensor:
    """The image tensor of a batch: a tensor, or the first element of a tuple / list (``(images, labels, idx)``)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"]
    raise ValueError(f"expected a batch tensor (B, C, H, W) or a tuple starting with one, got {type(batch).__name__}")


def stream_patterns(model, batches: Iterable, reducers, blocks: Sequence[int] | None = None,
                    device=None, progress: bool = True, total: int | None = None, desc: str = "attention") -> int:
    """Run ``model`` over ``batches`` and call ``reducer(block, pattern, layout)`` for every block's pattern.

    Each pattern is reduced inside its hook and dropped, so memory stays at one block of one batch.
    Returns the number of images seen.
    """
    from tqdm.auto import tqdm

    depth = model.cfg.depth
    blocks = list(range(depth)) if blocks is None else sorted(set(blocks))
    state = {"grid": None}

    def hook(t: torch.Tensor, hp) -> None:
        b = block_of(hp.name)
        lay = model.token_layout(b, state["grid"])
        for r in reducers:
            r(b, t, lay)

    n = 0
    device = device or model.device
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    try:
        with torch.inference_mode(), model.hooks([(pattern_hook(b), hook) for b in blocks]):
            for batch in batches:
                x = images_of(batch).to(device=device, dtype=model.dtype)
                state["grid"] = (x.shape[-2] // model.cfg.patch_size, x.shape[-1] // model.cfg.patch_size)
                model(x, stop_at=blocks[-1] + 1)
                n += x.shape[0]
                bar.update(x.shape[0])
    finally:
        bar.close()
    return n


def multi_variant_reducer(accumulators: dict[str, MeanAttentionDistance]):
    """One hook reducer that feeds several variants from a single read of each pattern (stacked einsum)."""
    variants = list(accumulators)
    cache: dict[tuple, torch.Tensor] = {}

    def reduce(block: int, pattern: torch.Tensor, layout: TokenLayout) -> None:
        a = _patch_block(pattern, layout)
        if a.dtype != torch.float64:
            a = a.float()
        key = (tuple(layout.grid), str(a.device), a.dtype)
        if key not in cache:
            mats = [distance_matrix(layout.grid, v, accumulators[v].patch_size) for v in variants]
            if "A" in variants:                              # a row of ones gives the row sums in the same pass
                mats.append(torch.ones_like(mats[0]))
            cache[key] = torch.stack(mats).to(device=a.device, dtype=a.dtype)                # V(+1), N, N
        d = torch.einsum("bhqk,vqk->vbhq", a, cache[key])                                   # V(+1), B, H, N
        for k, v in enumerate(variants):
            dv = d[k]
            if v == "A":
                rowsum = d[-1]
                dv = dv / torch.where(rowsum == 0, torch.ones_like(rowsum), rowsum)
            accumulators[v].update_values(block, dv.mean(-1))

    return reduce


def attention_distance(model, batches: Iterable, variants: Sequence[str] = ("A", "B"),
                       blocks: Sequence[int] | None = None, device=None, progress: bool = True,
                       total: int | None = None) -> dict[str, MeanAttentionDistance]:
    """Mean attention distance of ``model`` over ``batches`` (tensors or ``(images, ...)`` tuples).

    Returns ``{variant: MeanAttentionDistance}``; ``.compute()`` is (depth, heads), ``.std()`` likewise.
    """
    cfg = model.cfg
    acc = {v: MeanAttentionDistance(cfg.depth, cfg.num_heads, v, cfg.patch_size) for v in dict.fromkeys(variants)}
    stream_patterns(model, batches, [multi_variant_reducer(acc)], blocks, device, progress, total,
                    desc="attention distance")
    return acc
