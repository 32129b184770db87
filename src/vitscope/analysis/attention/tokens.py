"""Token bookkeeping shared by every attention analysis.

Every index comes from ``model.token_layout(block)`` (a :class:`~vitscope.models.layout.TokenLayout`): CLS,
the distillation token and registers may sit anywhere and may enter at a later block (cls-register), so
nothing here assumes "CLS is token 0" or "patches start at 1".

Queries (the row of the attention matrix that is read) are named:

- ``"cls"``, ``"dist"``, ``"reg<k>"`` (register k): a prefix token;
- ``(row, col)`` or the string ``"row,col"``: one patch token;
- ``"centre"`` / ``"center"``, ``"top"``, ``"left"``, ``"right"``, ``"bottom"``: the patch positions walmer2023
  uses (centre = ``((rows-1)//2, (cols-1)//2)``, the others on the edges through the centre);
- ``"mean"``: the mean over all patch queries (walmer2023's "spatial" query).
"""
from __future__ import annotations

import torch

from vitscope.models.layout import TokenLayout

PATCH_POSITIONS = ("centre", "center", "top", "left", "right", "bottom")
MEAN_QUERY = "mean"


def token_names(layout: TokenLayout) -> list[str]:
    """Name of every token in sequence order: ``cls``, ``dist``, ``reg<k>``, ``patch<j>``."""
    names = [""] * layout.n_tokens
    if layout.cls is not None:
        names[layout.cls] = "cls"
    if layout.dist is not None:
        names[layout.dist] = "dist"
    for k, i in enumerate(layout.registers):
        names[i] = f"reg{k}"
    for j in range(layout.n_patches):
        names[layout.patches.start + j] = f"patch{j}"
    return names


def index_map(old: TokenLayout, new: TokenLayout) -> list[int]:
    """For each token of ``old`` (sequence order), its index in ``new``; every old token must still be there."""
    where = {n: i for i, n in enumerate(token_names(new))}
    try:
        return [where[n] for n in token_names(old)]
    except KeyError as e:  # a token disappeared: not something any supported model does
        raise ValueError(f"token {e.args[0]} of block {old.block} is missing at block {new.block}") from e


def patch_position(name: str, grid: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of walmer2023's named query positions on a ``grid``."""
    rows, cols = grid
    mr, mc = (rows - 1) // 2, (cols - 1) // 2
    table = {"centre": (mr, mc), "center": (mr, mc), "top": (0, mc), "left": (mr, 0),
             "right": (mr, cols - 1), "bottom": (rows - 1, mc)}
    if name not in table:
        raise ValueError(f"unknown patch position {name!r}; expected one of {sorted(table)}")
    return table[name]


def _entry_error(token: str, layout: TokenLayout, cfg) -> ValueError:
    """The one error for a token asked for at a block before it enters (names the entry block)."""
    what = {"cls": "the CLS token", "dist": "the distillation token"}.get(token, f"register {token[3:]}")
    if cfg is None:
        return ValueError(f"{what} is not in the sequence at block {layout.block}")
    if token in ("cls", "dist"):
        present = cfg.class_token if token == "cls" else cfg.distill_token
        if not present and token == "cls":
            pool = (" or the attention pool's own attention (maps.pool_attention_maps)"
                    if cfg.global_pool == "map" else "")
            return ValueError(f"this model has no CLS token (it pools with global_pool={cfg.global_pool!r}); use the "
                              f"query 'mean', the average over the patch queries (CLI: --query mean){pool}")
        if not present:
            return ValueError("this model has no distillation token")
        entry = cfg.cls_block
    else:
        if not cfg.num_registers:
            return ValueError("this model has no register tokens (num_registers=0)")
        k = int(token[3:])
        if k >= cfg.num_registers:
            return ValueError(f"register {k} does not exist; this model has {cfg.num_registers} registers "
                              f"(reg0..reg{cfg.num_registers - 1})")
        entry = cfg.register_block
    return ValueError(f"{what} enters the sequence before block {entry}; block {layout.block} comes before it. "
                      f"Choose a block >= {entry}.")


def parse_query(query) -> str | tuple[int, int]:
    """Normalise a query spec: strings like ``"3,4"`` become ``(3, 4)``; names are lower-cased."""
    if isinstance(query, (tuple, list)):
        if len(query) != 2:
            raise ValueError(f"a patch query is (row, col), got {query!r}")
        return int(query[0]), int(query[1])
    if not isinstance(query, str):
        raise ValueError(f"query must be a name or (row, col), got {query!r}")
    q = query.strip().lower()
    if "," in q:
        r, c = q.split(",", 1)
        return int(r), int(c)
    if q in ("cls", "dist", MEAN_QUERY) or q in PATCH_POSITIONS or (q.startswith("reg") and q[3:].isdigit()):
        return q
    raise ValueError(f"unknown query {query!r}; expected 'cls', 'dist', 'reg<k>', 'mean', 'centre', 'top', "
                     f"'left', 'right', 'bottom' or 'row,col'")


def resolve_query(query, layout: TokenLayout, cfg=None) -> int | str:
    """Token index of ``query`` at this block, or ``"mean"`` for the mean over patch queries.

    Pass the model config as ``cfg`` for an error that names the block where a late token enters.
    """
    q = parse_query(query)
    if q == MEAN_QUERY:
        return MEAN_QUERY
    if isinstance(q, str) and q in PATCH_POSITIONS:
        q = patch_position(q, layout.grid)
    if isinstance(q, tuple):
        r, c = q
        rows, cols = layout.grid
        if not (0 <= r < rows and 0 <= c < cols):
            raise ValueError(f"patch query ({r}, {c}) is outside the {rows}x{cols} token grid")
        return layout.patches.start + r * cols + c
    idx = {"cls": layout.cls, "dist": layout.dist}.get(q) if q in ("cls", "dist") else None
    if q.startswith("reg"):
        k = int(q[3:])
        if k < len(layout.registers):
            idx = layout.registers[k]
        elif layout.registers:
            raise ValueError(f"register {k} does not exist; this model has {len(layout.registers)} registers")
    if idx is None:
        raise _entry_error(q, layout, cfg)
    return idx


def check_pattern(pattern: torch.Tensor, layout: TokenLayout) -> None:
    """One readable error when a pattern does not match the layout it is read with."""
    if pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"expected an attention pattern of shape (B, H, T, T), got {tuple(pattern.shape)}")
    if pattern.shape[-1] != layout.n_tokens:
        raise ValueError(f"pattern has {pattern.shape[-1]} tokens but the layout of block {layout.block} has "
                         f"{layout.n_tokens}; use model.token_layout(block, grid) of the same block and input size")


def normalize_block(block: int, depth: int) -> int:
    """Allow negative block indices (``-1`` = last block)."""
    b = block + depth if block < 0 else block
    if not 0 <= b < depth:
        raise ValueError(f"block {block} does not exist in a model of depth {depth}")
    return b


def blocks_with_token(model, token: str | None) -> list[int]:
    """Blocks at whose input ``token`` is present (all blocks for patch queries and ``mean``)."""
    depth = model.cfg.depth
    if token is None:
        return list(range(depth))
    q = parse_query(token)
    if not isinstance(q, str) or q == MEAN_QUERY or q in PATCH_POSITIONS:
        return list(range(depth))
    from vitscope.models.layout import entry_block

    present = {"cls": model.cfg.class_token, "dist": model.cfg.distill_token}.get(q, model.cfg.num_registers > 0)
    if not present:
        resolve_query(q, model.token_layout(depth), model.cfg)  # raises the readable error
    return list(range(entry_block(model.cfg, q), depth))


def grid_of(x: torch.Tensor, model) -> tuple[int, int]:
    """Token grid of a batch of images (B, C, H, W) for this model."""
    p = model.cfg.patch_size
    return (x.shape[-2] // p, x.shape[-1] // p)
