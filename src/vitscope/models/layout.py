"""Where each kind of token sits in the sequence at a given block."""
from __future__ import annotations

from dataclasses import dataclass

from vitscope.models.config import ViTConfig


@dataclass(frozen=True)
class TokenLayout:
    """Token positions at the input of one block.

    ``cls``/``dist`` are indices or None when absent (not yet entered); ``registers`` is a tuple of
    indices (empty when absent); ``patches`` is a slice; ``grid`` is (rows, cols) of the patch tokens;
    ``patch_size`` the model's patch size in pixels (None when the layout was built by hand).
    """

    block: int
    n_tokens: int
    cls: int | None
    dist: int | None
    registers: tuple[int, ...]
    patches: slice
    grid: tuple[int, int]
    patch_size: int | None = None

    @property
    def n_patches(self) -> int:
        return self.patches.stop - self.patches.start

    @property
    def prefix(self) -> tuple[int, ...]:
        """Indices of every non-patch token (CLS, DIST, registers), in sequence order."""
        idx = [i for i in (self.cls, self.dist) if i is not None] + list(self.registers)
        return tuple(sorted(idx))

    def index_of(self, token: str) -> int:
        """Index of ``"cls"``, ``"dist"`` or ``"reg{k}"``; a clear error when it is absent at this block."""
        if token == "cls":
            if self.cls is None:
                raise ValueError(f"there is no CLS token at block {self.block}")
            return self.cls
        if token == "dist":
            if self.dist is None:
                raise ValueError(f"there is no distillation token at block {self.block}")
            return self.dist
        if token.startswith("reg"):
            k = int(token[3:])
            if not self.registers:
                raise ValueError(f"there are no register tokens at block {self.block}")
            if not 0 <= k < len(self.registers):
                raise ValueError(f"register {k} does not exist; this model has {len(self.registers)} registers")
            return self.registers[k]
        raise ValueError(f"unknown token {token!r}; expected 'cls', 'dist' or 'reg<k>'")


def token_layout(cfg: ViTConfig, block: int, grid: tuple[int, int] | None = None) -> TokenLayout:
    """Layout of the tokens entering ``block`` (``block == cfg.depth`` means after the last block).

    Negative blocks count from the end as on the command line: ``-1`` is the last block (``depth - 1``).
    """
    if -cfg.depth <= block < 0:
        block += cfg.depth
    if not 0 <= block <= cfg.depth:
        raise ValueError(f"block must be in [-{cfg.depth}, {cfg.depth}] for a model of depth {cfg.depth} "
                         f"(-1: the last block; {cfg.depth}: the output), got {block}")
    rows, cols = grid or cfg.grid
    n_patch = rows * cols
    has_cls = cfg.class_token and block >= cfg.cls_block
    has_dist = cfg.distill_token and block >= cfg.cls_block
    n_reg = cfg.num_registers if block >= cfg.register_block else 0
    pos = 0
    cls = dist = None
    if has_cls:
        cls, pos = pos, pos + 1
    if has_dist:
        dist, pos = pos, pos + 1
    regs: tuple[int, ...] = ()
    if n_reg and cfg.register_location == "prefix":
        regs, pos = tuple(range(pos, pos + n_reg)), pos + n_reg
    patches = slice(pos, pos + n_patch)
    pos += n_patch
    if n_reg and cfg.register_location == "end":
        regs, pos = tuple(range(pos, pos + n_reg)), pos + n_reg
    return TokenLayout(block=block, n_tokens=pos, cls=cls, dist=dist, registers=regs,
                       patches=patches, grid=(rows, cols), patch_size=cfg.patch_size)


def entry_block(cfg: ViTConfig, token: str) -> int:
    """Block before which ``token`` ("cls", "dist", "reg") enters the sequence."""
    if token in ("cls", "dist"):
        return cfg.cls_block
    if token.startswith("reg"):
        return cfg.register_block
    return 0
