"""Image-level features of every block (or a chosen list) of one or several models, one forward pass per image.

What the per-block downstream evaluations read (k-NN, retrieval): the block output (``hook_resid_post``,
walmer2023 reads the raw block output, no final norm) reduced to the CLS token (default) or the mean of the patch
tokens. Blocks where the CLS token does not exist yet (CLS entering at a later block, cls-register) are left out when
``blocks`` is None and are an error when asked for.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

TOKENS = ("cls", "mean")


def resolve_blocks(model, blocks: Iterable[int] | str | None = None, tokens: str = "cls") -> list[int]:
    """The block indices to read: ``None`` / ``"all"`` = every block that has the token; negatives count from
    the end; a string ``"0,3,-1"`` or ``"4:8"`` is parsed."""
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}, got {tokens!r}")
    depth = model.cfg.depth
    has = [b for b in range(depth) if tokens != "cls" or model.token_layout(b).cls is not None]
    if blocks is None or (isinstance(blocks, str) and blocks.strip().lower() in ("", "all")):
        if not has:
            raise ValueError("the model has no CLS token at any block; use tokens='mean' (--tokens mean)")
        return has
    if isinstance(blocks, str):
        blocks = parse_blocks(blocks, depth)
    out = []
    for b in blocks:
        b = int(b)
        bb = b + depth if b < 0 else b
        if not 0 <= bb < depth:
            raise ValueError(f"block {b} does not exist in a model of depth {depth}")
        if bb not in has:
            raise ValueError(f"block {bb} has no CLS token (it enters before block {model.cfg.cls_block}); choose "
                             f"blocks {has[0]}..{has[-1]} or tokens='mean'")
        if bb not in out:
            out.append(bb)
    return out


def parse_blocks(text: str, depth: int) -> list[int]:
    """``"0,3,-1"``, ``"4:8"`` (end excluded) or ``"all"`` -> block indices."""
    text = text.strip()
    if text.lower() == "all":
        return list(range(depth))
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                out += list(range(depth))[slice(int(a) if a else None, int(b) if b else None)]
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--blocks takes 'all', '0,3,-1' or '4:8', got {text!r}") from None
    if not out:
        raise ValueError(f"--blocks selects no block: {text!r}")
    return out


def forward_block_features(model, images, blocks: Sequence[int], tokens: str = "cls") -> dict[int, Any]:
    """Run ``model`` once on a batch (B, 3, H, W); ``{block: (B, D) float32 CPU tensor}``."""
    import torch

    hooks = {b: f"blocks.{b}.hook_resid_post" for b in blocks}
    x = images.to(model.device, model.dtype)
    grid = (x.shape[-2] // model.cfg.patch_size, x.shape[-1] // model.cfg.patch_size)
    with torch.inference_mode():
        _, cache = model.run_with_cache(x, names_filter=list(hooks.values()))
    out = {}
    for b, h in hooks.items():
        t = cache[h]                                                                   # B, T, D
        lay = model.token_layout(b, grid)                                              # what block b received
        f = t[:, lay.index_of("cls")] if tokens == "cls" else t[:, lay.patches].mean(dim=1)
        out[b] = f.float().cpu()
    return out


def collect_block_features(models: Mapping[str, Any], data, blocks: Mapping[str, Sequence[int]] | None = None,
                           tokens: str = "cls", batch_size: int = 64, limit: int | None = None,
                           progress: bool = False) -> tuple[dict[str, dict[int, np.ndarray]], np.ndarray]:
    """``({model: {block: (N, D) float32}}, labels (N,))`` of a dataset, each image decoded once and run once per
    model with that model's own preprocessing. ``blocks``: ``{model: blocks}`` (default every block with the
    token). For datasets too large to hold in memory, write a feature store (``vitscope extract``) instead."""
    from vitscope.analysis.similarity.compare import image_batches

    names = list(models)
    bl = {n: resolve_blocks(models[n], None if blocks is None else blocks.get(n), tokens) for n in names}
    parts: dict[str, dict[int, list]] = {n: {b: [] for b in bl[n]} for n in names}
    labels = []
    for images, lab, _ in image_batches([models[n] for n in names], data, batch_size, limit, progress=progress,
                                        min_size=1):
        for n, x in zip(names, images):
            for b, f in forward_block_features(models[n], x, bl[n], tokens).items():
                parts[n][b].append(f.numpy())
        labels.append(np.asarray(lab))
    if not labels:
        raise ValueError("no images were read; check the dataset")
    feats = {n: {b: np.concatenate(v) for b, v in parts[n].items()} for n in names}
    return feats, np.concatenate(labels).astype(np.int64)
