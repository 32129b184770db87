"""Head composition scores (Elhage et al. 2021, as TransformerLens computes them).

With row vectors, head ``h`` reads through ``QK = W_Q W_K^T`` (D, D) and writes ``OV = W_V W_O`` (D, D). For a
writing head ``a`` in an earlier block and a reading head ``b`` in a later one:

* Q-composition: ``||OV_a QK_b||_F / (||OV_a||_F ||QK_b||_F)`` (``a`` writes what ``b``'s queries read);
* K-composition: ``||OV_a QK_b^T||_F / (||OV_a||_F ||QK_b||_F)`` (... what ``b``'s keys read);
* V-composition: ``||OV_a OV_b||_F / (||OV_a||_F ||OV_b||_F)`` (... what ``b``'s values read).

The matrices are those the model computes with: the first LayerNorm's weight is part of the reading matrices
(``diag(w) W``, as ``fold_ln`` would put it) and LayerScale part of the writing one (``W_O diag(gamma)``), so the
scores are the same with or without weight processing's ``fold_ln`` (tested); ``center_writing_weights`` changes
``W_O`` and so the scores, as in TransformerLens. The norms are computed on the (Dh x Dh) cores of the low-rank
factors (QR), never on D x D products.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitscope.analysis.api import Options, Result, tidy_table

MODES = ("Q", "K", "V")


def head_matrices(model) -> dict[str, torch.Tensor]:
    """Per block and head, in float64: ``Q``, ``K``, ``V`` (L, H, D, Dh; reading, LayerNorm weight included) and
    ``O`` (L, H, Dh, D; writing, LayerScale included)."""
    cfg = model.cfg
    if cfg.res_post_norm:
        raise ValueError("composition scores need pre-norm blocks: residual post-norm blocks normalise what heads "
                         "write, so no fixed matrix maps one head's output to another's input")
    D, H, Dh = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    out = {k: [] for k in ("Q", "K", "V", "O")}
    for blk in model.blocks:
        W = blk.attn.qkv.weight.detach().double().reshape(3, H, Dh, D)                 # 3, H, Dh, D
        w_ln = blk.ln1.weight.detach().double()                                        # D
        for i, k in enumerate("QKV"):
            out[k].append(W[i].transpose(1, 2) * w_ln[None, :, None])                  # H, D, Dh
        Wo = blk.attn.proj.weight.detach().double().reshape(D, H, Dh).permute(1, 2, 0)  # H, Dh, D
        gamma = blk.ls1.gamma.detach().double() if hasattr(blk.ls1, "gamma") else torch.ones(D, dtype=torch.float64)
        out["O"].append(Wo * gamma)
    return {k: torch.stack(v) for k, v in out.items()}


def _core(x: torch.Tensor) -> torch.Tensor:
    """R factor of the QR decomposition of each (D, r) matrix: ``x = Q R`` with orthonormal Q, so that
    ``||x M y^T||_F = ||R_x M R_y^T||_F``."""
    return torch.linalg.qr(x, mode="r")[1]


def composition_scores(model, modes=MODES) -> dict[str, np.ndarray]:
    """``{mode: (L, H, L, H)}``: the score of writer (block, head) with reader (block, head); NaN unless the writer's
    block is before the reader's."""
    M = head_matrices(model)
    L, H = M["Q"].shape[:2]
    Q, K, V, O = (M[k].reshape(L * H, *M[k].shape[2:]) for k in "QKVO")
    rV, rOt, rQ, rK = _core(V), _core(O.transpose(1, 2)), _core(Q), _core(K)      # LH, Dh, Dh each
    norm_ov = torch.linalg.matrix_norm(rV @ rOt.transpose(1, 2))                     # ||V O||_F
    norm_qk = torch.linalg.matrix_norm(rQ @ rK.transpose(1, 2))                      # ||Q K^T||_F
    right = {"Q": (Q, rK, norm_qk), "K": (K, rQ, norm_qk), "V": (V, rOt, norm_ov)}
    block = torch.arange(L).repeat_interleave(H)
    earlier = (block[:, None] < block[None, :]).numpy()
    out = {}
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"composition mode must be one of {MODES}, got {mode!r}")
        R1, rR2, nr = right[mode]
        scores = np.full((L * H, L * H), np.nan)
        for a in range(L * H):                                                         # writer a: V_a O_a
            mid = O[a][None] @ R1                                                      # LH, Dh, Dh: O_a R1_b
            prod = rV[a][None] @ mid @ rR2.transpose(1, 2)                             # LH, Dh, Dh
            s = torch.linalg.matrix_norm(prod) / (norm_ov[a] * nr)
            scores[a] = np.where(earlier[a], s.numpy(), np.nan)
        out[mode] = scores.reshape(L, H, L, H)
    return out


@dataclass
class CompositionOptions(Options):
    """Options of :func:`evaluate`."""

    modes: str = "Q,K,V"

    def validate(self) -> None:
        parts = [p.strip().upper() for p in str(self.modes).split(",") if p.strip()]
        if not parts or any(p not in MODES for p in parts):
            from vitscope.analysis.api import OptionError

            raise OptionError("modes", f"`modes` takes Q, K and V (comma-separated), got {self.modes!r}")
        self.modes = ",".join(dict.fromkeys(parts))


def evaluate(models, data=None, options: CompositionOptions | None = None, **overrides) -> Result:
    """Q-, K- and V-composition scores of every pair of heads in different blocks (weights only: ``data`` unused).
    One row per model x writer (``block``, ``head``) x reader (``block2``, ``head2``) x mode (``metric``
    ``q_composition`` ...); ``figures()`` draws the (L*H) x (L*H) maps."""
    from vitscope.analysis.patching.evaluation import model_items

    opts = (options or CompositionOptions()).replace(**overrides) if overrides else (options or CompositionOptions())
    modes = opts.modes.split(",")
    rows, scores = [], {}
    for label, model in model_items(models).items():
        s = composition_scores(model, modes)
        scores[label] = s
        for mode, arr in s.items():
            for a, h, b, g in zip(*np.nonzero(~np.isnan(arr))):
                rows.append({"model": label, "block": int(a), "head": int(h), "block2": int(b), "head2": int(g),
                             "metric": f"{mode.lower()}_composition", "value": float(arr[a, h, b, g])})
    table = tidy_table(rows, "composition", opts)
    top = table.loc[table["value"].idxmax()] if len(table) else None
    summary = ("composition scores: no pair of heads in different blocks" if top is None else
               f"composition scores ({', '.join(modes)}) of {len(scores)} model(s): strongest {top['metric']} "
               f"{top['value']:.3f}, head {top['block']}.{top['head']} -> {top['block2']}.{top['head2']} "
               f"({top['model']})")
    return Result("composition", table, summary, opts, meta={"scores": scores}, draw=_draw)


def _draw(result: Result) -> dict:
    from vitscope.runtime import slug
    from vitscope.viz.patching import plot_composition

    many = len(result.meta["scores"]) > 1
    return {f"{slug(k) + '_' if many else ''}composition": (plot_composition(v, title=f"{k}: head composition"),
                                                            result.table[result.table["model"] == k])
            for k, v in result.meta["scores"].items()}
