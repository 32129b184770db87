"""Activations for SAEs, streamed from a feature store in shuffled chunks (memory bounded by the chunk).

A store array ``store[site, block, tokens]`` is (N, D) for ``cls`` / ``mean`` or (N, T, D) for ``patches`` /
``all``; its rows are tokens, ``N * T`` of them. An epoch visits the images in chunks of ``chunk_images``
consecutive images, the chunks in a seeded random order; the tokens of a chunk (every requested block read for the
same images) are shuffled with a seeded permutation and cut into batches; a chunk's last partial batch is dropped.
The order is a pure function of (seed, epoch, chunk), so a resumed run picks up at any step without reading the
batches before it. With ``centre="image"`` each image's patch tokens are read less their mean (``hooks.centre_tokens``),
before the shuffle: what a centred SAE reads.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from vitscope.analysis.sae.hooks import centre_tokens
from vitscope.analysis.sae.models import check_centre

TOKENS = ("patches", "cls", "mean", "all")


def check_store(store, site: str, blocks: Sequence[int], tokens: str) -> None:
    """One-line errors for a store without the site, a block or the token reduction asked for."""
    path = getattr(store, "path", "the store")
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {', '.join(TOKENS)}, got {tokens!r}")
    if tokens not in store.reductions:
        raise ValueError(f"the store at {path} holds token reductions {store.reductions}, not {tokens!r}; extract "
                         f"it with `vitscope extract ... --tokens {tokens}`")
    try:
        from vitscope.features.plan import canonical_site

        name = canonical_site(site)[0]
    except ValueError as e:
        raise ValueError(f"unknown site {site!r}: {e}") from None
    if name not in store.sites:
        raise ValueError(f"the store at {path} holds sites {store.sites}, not {site!r}; extract it with "
                         f"`vitscope extract ... --sites {site}`")
    missing = [b for b in blocks if b not in store.layers]
    if missing:
        raise ValueError(f"the store at {path} holds blocks {store.layers}, not {missing}; extract them with "
                         f"`vitscope extract ... --blocks {','.join(map(str, missing))}`")


def resolve_store_blocks(store, blocks) -> list[int]:
    """``"8"``, ``"4,8"``, ``"-1"``, ``"all"`` or ints -> block indices of the store's model (negatives from the end)."""
    from vitscope.features.access import parse_blocks

    depth = int((store.model or {}).get("config", {}).get("depth") or (max(store.layers) + 1))
    if isinstance(blocks, str):
        blocks = parse_blocks(blocks, depth)
    elif isinstance(blocks, int):
        blocks = [blocks]
    out = []
    for b in blocks:
        b = int(b)
        out.append(b + depth if b < 0 else b)
    return list(dict.fromkeys(out))


def read_rows(arr, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of a store array. A memory map of a whole ``.npy`` file is read with a plain file read: the
    pages go through the page cache instead of staying mapped in this process, so its memory does not grow with
    the part of the store a long run has read. Anything else is sliced."""
    import mmap

    if isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap) and arr.flags.c_contiguous and arr.ndim:
        per_row = int(np.prod(arr.shape[1:], dtype=np.int64))
        with open(arr.filename, "rb") as f:
            f.seek(int(arr.offset) + lo * per_row * arr.dtype.itemsize)
            out = np.fromfile(f, dtype=arr.dtype, count=(hi - lo) * per_row)
        return out.reshape(hi - lo, *arr.shape[1:])
    return np.asarray(arr[lo:hi])


class StoreStream:
    """Shuffled batches ``{block: (B, D) float32}`` of one site and token reduction of a store (module docstring)."""

    def __init__(self, store, site: str, blocks: Sequence[int], tokens: str, batch_size: int,
                 chunk_images: int, seed: int = 0, limit: int | None = None, centre: str = "none") -> None:
        check_store(store, site, blocks, tokens)
        check_centre(centre, tokens)
        self.store, self.site, self.blocks, self.tokens, self.centre = store, site, list(blocks), tokens, centre
        self.arrays = {b: store[site, b, tokens] for b in self.blocks}
        a = self.arrays[self.blocks[0]]
        self.per_image = int(a.shape[1]) if a.ndim == 3 else 1
        self.d = int(a.shape[-1])
        valid = np.asarray(store.valid)
        self.images = np.nonzero(valid)[0]
        if limit is not None:
            self.images = self.images[:limit]
        if len(self.images) == 0:
            raise ValueError(f"the store at {getattr(store, 'path', '?')} holds no valid image")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.chunk_images = max(1, min(int(chunk_images), len(self.images)))
        self.chunks = [self.images[s:s + self.chunk_images] for s in range(0, len(self.images), self.chunk_images)]
        self.batches_per_chunk = [len(c) * self.per_image // self.batch_size for c in self.chunks]
        if sum(self.batches_per_chunk) == 0:
            rows = len(self.images) * self.per_image
            if rows < self.batch_size:                     # a larger chunk cannot help: the store is too small
                raise ValueError(f"{len(self.images)} images x {self.per_image} tokens are {rows} rows, fewer than "
                                 f"one batch of {self.batch_size}; lower --batch-size to at most {rows}, or use "
                                 f"more images")
            raise ValueError(f"a chunk of {self.chunk_images} images x {self.per_image} tokens holds fewer rows than "
                             f"one batch of {self.batch_size}; raise --chunk-images or lower --batch-size")

    @property
    def rows(self) -> int:
        return len(self.images) * self.per_image

    @property
    def steps_per_epoch(self) -> int:
        return sum(self.batches_per_chunk)

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, *key]))

    def read_chunk(self, images: np.ndarray) -> dict[int, torch.Tensor]:
        """The rows of ``images`` (sorted indices) of every block, float32 (rows, D)."""
        out = {}
        images = np.asarray(images)
        lo, hi = int(images[0]), int(images[-1]) + 1
        for b, arr in self.arrays.items():
            # a contiguous run is one read; scattered images (the initialisation sample) are read one by one,
            # never the whole span between them (that would hold most of the store in memory)
            part = read_rows(arr, lo, hi) if hi - lo == len(images) else \
                np.concatenate([read_rows(arr, int(i), int(i) + 1) for i in images])
            t = torch.from_numpy(np.array(part, dtype=np.float32))                        # a writable copy
            if self.centre != "none":
                t = centre_tokens(t.view(len(images), self.per_image, self.d), self.centre)
            out[b] = t.reshape(-1, self.d)
        return out

    def sample(self, n: int) -> dict[int, torch.Tensor]:
        """About ``n`` rows drawn evenly over the images (for initialisation and normalisation)."""
        take = max(1, min(len(self.images), -(-n // self.per_image)))
        idx = np.sort(self._rng(7919).choice(self.images, take, replace=False))
        return self.read_chunk(idx)

    def __call__(self, start: int = 0, steps: int | None = None) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        """Yield ``(step, {block: (B, D)})`` from ``start`` for ``steps`` steps (forever when None)."""
        step, epoch = 0, 0
        end = None if steps is None else start + steps
        while end is None or step < end:
            order = self._rng(epoch).permutation(len(self.chunks))
            for ci in order:
                nb = self.batches_per_chunk[ci]
                if step + nb <= start:
                    step += nb
                    continue
                rows = self.read_chunk(self.chunks[ci])
                perm = torch.from_numpy(self._rng(epoch, int(ci) + 1).permutation(len(self.chunks[ci]) *
                                                                               self.per_image))
                for j in range(nb):
                    if end is not None and step >= end:
                        return
                    if step >= start:
                        idx = perm[j * self.batch_size:(j + 1) * self.batch_size]
                        yield step, {b: r.index_select(0, idx) for b, r in rows.items()}
                    step += 1
                del rows
            epoch += 1
