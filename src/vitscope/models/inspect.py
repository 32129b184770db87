"""What a model looks like from the outside: config, token layout per block, every hook with its shape.

Used by ``vitscope inspect MODEL``; the functions are plain library calls::

    model = vs.load_model("dinov2-vits14-reg4", pretrained=False)
    describe(model)["hooks"]["blocks.0.attn.hook_pattern"]   # [1, 6, 1374, 1374]
"""
from __future__ import annotations

from typing import Any

import torch

from vitscope.models.layout import TokenLayout
from vitscope.models.vit import HookedViT


def _input_hw(model: HookedViT, input_size=None) -> tuple[int, int]:
    if input_size is not None:
        return (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(input_size)
    pp = model.preprocess_cfg
    return tuple(pp.input_size) if pp is not None else tuple(model.cfg.img_size)


def hook_shapes(model: HookedViT, input_size: int | tuple[int, int] | None = None,
                batch: int = 1) -> dict[str, list[int] | None]:
    """Shape of every hook for a ``batch`` of zero images at ``input_size`` (default: the model's input).

    One real forward with a recording hook on every hook point (nothing is cached, so large models at
    large inputs fit). Names come in the order the forward reaches them; hooks that the forward does not
    reach for this architecture come last and map to None.
    """
    h, w = _input_hw(model, input_size)
    shapes: dict[str, list[int] | None] = {}

    def record(t: torch.Tensor, hook) -> None:
        shapes.setdefault(hook.name, list(t.shape))

    x = torch.zeros(batch, model.cfg.in_chans, h, w, device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        model.run_with_hooks(x, fwd_hooks=[(lambda name: True, record)])
    for name in model.hook_names:           # in the order they ran; then the ones that did not run
        shapes.setdefault(name, None)
    return shapes


def _describe_layout(lay: TokenLayout) -> str:
    parts = []
    if lay.cls is not None:
        parts.append(f"CLS@{lay.cls}")
    if lay.dist is not None:
        parts.append(f"DIST@{lay.dist}")
    if lay.registers:
        r = lay.registers
        parts.append(f"registers@{r[0]}..{r[-1]} ({len(r)})")
    parts.append(f"patches@{lay.patches.start}..{lay.patches.stop - 1} ({lay.grid[0]}x{lay.grid[1]})")
    return ", ".join(parts)


def layout_table(model: HookedViT, grid: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Token layout entering each block (``block == depth``: the output), consecutive equal blocks merged.

    Each row: ``blocks`` (first, last), ``n_tokens``, ``cls``, ``dist``, ``registers``, ``patches``
    ([start, stop)), ``grid`` and a one-line ``text``.
    """
    rows: list[dict[str, Any]] = []
    for i in range(model.cfg.depth + 1):
        lay = model.token_layout(i, grid)
        row = {"n_tokens": lay.n_tokens, "cls": lay.cls, "dist": lay.dist, "registers": list(lay.registers),
               "patches": [lay.patches.start, lay.patches.stop], "grid": list(lay.grid),
               "text": _describe_layout(lay)}
        if rows and all(rows[-1][k] == row[k] for k in row):
            rows[-1]["blocks"][1] = i
        else:
            rows.append({"blocks": [i, i], **row})
    return rows


def describe(model: HookedViT, input_size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """Config, preprocessing, provenance, parameter count, token layout and hook shapes of ``model``."""
    h, w = _input_hw(model, input_size)
    p = model.cfg.patch_size
    grid = (h // p, w // p)
    n_params = sum(t.numel() for t in model.parameters())
    return {
        "meta": dict(getattr(model, "meta", {}) or {}),
        "config": model.cfg.to_dict(),
        "preprocess": model.preprocess_cfg.to_dict() if model.preprocess_cfg is not None else None,
        "parameters": n_params,
        "input": [1, model.cfg.in_chans, h, w],
        "layout": layout_table(model, grid),
        "hooks": hook_shapes(model, (h, w)),
    }
