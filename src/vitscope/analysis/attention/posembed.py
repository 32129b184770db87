"""Position-embedding similarity and patch-embedding filters (probing-vits; ViT paper, figure 7)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitscope.analysis.api import Drawn, OptionError, Result
from vitscope.analysis.attention.common import AttentionOptions, one_model, options_of, weights_of
from vitscope.runtime import model_meta


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


# ----------------------------------------------------------------------------- the evaluation entry point
FILTER_MODES = ("pca", "raw")


@dataclass
class PosEmbedOptions(AttentionOptions):
    """Options of :func:`evaluate` (``vitscope pos-embed``, the report's section)."""

    grid: Any = None                    # token grid "rows,cols" (default: the model's); learned ones are resampled
    filters: int = 28                   # patch-embedding filters drawn
    filter_mode: str = "pca"            # pca (principal components, the ViT paper's figure) or raw (first filters)

    def validate(self) -> None:
        g = self.grid
        if g is not None:
            parts = g.split(",") if isinstance(g, str) else list(g) if isinstance(g, (list, tuple)) else [g]
            try:
                grid = tuple(int(str(p).strip()) for p in parts)
            except ValueError:
                grid = ()
            if len(grid) != 2 or min(grid) < 1:
                raise OptionError("grid", f"`grid` takes 'rows,cols' (two positive integers), got {g!r}")
            self.grid = grid
        self.check_int("filters")
        self.check_choice("filter_mode", FILTER_MODES)


def evaluate(models, data=None, options: PosEmbedOptions | None = None, **overrides) -> Result:
    """Cosine similarity of every patch's position embedding with every other (probing-vits), and the
    patch-embedding filters as images (the ViT paper's figure 7). Reads the weights only (``data`` is unused).

    Returns a :class:`~vitscope.analysis.api.Result`: one row per pair of patches (``metric``
    ``position_similarity``; ``row``, ``col`` the patch, ``row2``, ``col2`` the other), none for a model without an
    absolute position embedding; ``arrays``: ``similarity`` (rows, cols, rows, cols) or None, ``filters``
    (n, p, p, channels) in [0, 1]. ``figures()``: the similarity grid and the filters.
    """
    import pandas as pd

    from vitscope.analysis.api import tidy_table

    opts = options_of(PosEmbedOptions, options, overrides)
    label, model = one_model(models)
    sim = position_similarity(model, opts.grid) if model.cfg.pos_embed != "none" else None
    filters = patch_embedding_filters(model, opts.filters, opts.filter_mode)
    if sim is not None:
        R, C = sim.shape[:2]
        i, j = np.divmod(np.arange(R * C), C)
        df = pd.DataFrame({"model": label, "metric": "position_similarity", "row": np.repeat(i, R * C),
                           "col": np.repeat(j, R * C), "row2": np.tile(i, R * C), "col2": np.tile(j, R * C),
                           "value": sim.reshape(-1)})
        what = f"position-embedding similarity on a {R}x{C} grid and {len(filters)} patch-embedding filters"
    else:
        df = pd.DataFrame({"model": [], "metric": [], "value": []})
        what = (f"{len(filters)} patch-embedding filters (the model has no absolute position embedding: "
                f"{model.cfg.pos_embed!r})")
    table = tidy_table(df, "position_embedding", opts, weights={label: weights_of(model)})
    return Result("position_embedding", table, f"{label}: {what} ({opts.filter_mode})", opts,
                  {"similarity": sim, "filters": filters}, meta={"model": label, "record": model_meta(model, label)},
                  draw=_draw)


def _draw(result: Result) -> dict:
    from vitscope.viz.attention_tokens import plot_patch_filters, plot_position_similarity

    a, o, rec = result.arrays, result.options, result.meta["record"]
    out = {}
    if a["similarity"] is not None:
        out["pos_embed_similarity"] = Drawn(plot_position_similarity(a["similarity"]),
                                            arrays={"similarity": a["similarity"]},
                                            meta={**rec, "grid": list(a["similarity"].shape[:2])})
    out["patch_filters"] = Drawn(plot_patch_filters(a["filters"], title=f"patch-embedding filters ({o.filter_mode})"),
                                 arrays={"filters": a["filters"]}, meta={**rec, "mode": o.filter_mode})
    return out
