"""DAVIS-2017 semi-supervised video object segmentation by label propagation, and the DAVIS-2017 scorer.

Propagation follows DINO's evaluation (``eval_video_segmentation.py``): the labels of frame t are an
affinity-weighted vote over the first frame (its one-hot ground truth) and the ``n_last`` previous frames (their
soft predictions); affinities exp(cos / temperature) restricted to a square neighbourhood of ``radius`` tokens,
the ``topk`` largest over all context frames jointly kept (ties at the threshold kept), normalised to sum 1.
The output goes through the protocol's bilinear upsampling by the patch size and per-channel min-max
normalisation before the argmax (:func:`soft_to_ids`).

The scorer is the DAVIS-2017 evaluation (``davis2017-evaluation``): J = region IoU, F = boundary F-measure with a
dilation of ceil(0.008 x image diagonal) pixels; per object Mean, Recall (share of frames > 0.5) and Decay
(first quarter minus last quarter), first and last frames not scored; the global table averages over all objects
of all sequences. Differences from that code: a predicted id the ground truth lacks raises a ValueError (the
reference exits the process), and the decay bins are correct for sequences longer than 256 frames.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitscope.analysis.api import OptionError, Options, Result, tidy_table

VOID = 255


# ----------------------------------------------------------------------------- label propagation
def neighbourhood_mask(h: int, w: int, radius: int, device=None) -> torch.Tensor:
    """(h*w, h*w) bool: token i may take labels from token j iff |row_i - row_j| <= radius and
    |col_i - col_j| <= radius (row-major token order)."""
    r = torch.arange(h, device=device).repeat_interleave(w)
    c = torch.arange(w, device=device).repeat(h)
    return ((r[:, None] - r[None, :]).abs() <= radius) & ((c[:, None] - c[None, :]).abs() <= radius)


def one_hot_labels(labels, num_classes: int | None = None) -> torch.Tensor:
    """(h, w) integer ids -> (C, h, w) float32 one-hot with C = max id + 1 (or ``num_classes``)."""
    lab = (labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.tensor(np.asarray(labels))).long()
    if lab.ndim != 2:
        raise ValueError(f"labels must be a (h, w) array of object ids, got shape {tuple(lab.shape)}")
    if lab.numel() and int(lab.min()) < 0:
        raise ValueError("labels must be non-negative object ids (0 = background)")
    C = int(lab.max()) + 1 if num_classes is None else int(num_classes)
    if lab.numel() and int(lab.max()) >= C:
        raise ValueError(f"labels hold id {int(lab.max())} but num_classes is {C}")
    return F.one_hot(lab, C).permute(2, 0, 1).float()


def propagate_labels(frame_feats, first_labels, n_last=7, radius=12, topk=5, temperature=0.1):
    """Propagate the first frame's labels through a video (DINO's protocol).

    ``frame_feats`` (T, h, w, D) patch features of every frame (tensor or array); ``first_labels`` (h, w) int
    object ids of frame 0 on the token grid (0 = background). Returns soft labels (T, C, h, w) float32 with
    C = max id + 1: frame 0 is the one-hot ground truth, frame t the vote over the context {0} + the ``n_last``
    frames before t (their soft labels, never re-binarised). ``radius`` <= 0 disables the neighbourhood
    restriction.

    Vectorised: the target tokens are taken in bands of rows; each band is one matrix product against the rows of
    every context frame its neighbourhood reaches, then the top ``topk`` + 1 similarities per token. Weights are
    exp(cos / temperature) of the ``topk`` best, normalised; a token whose (``topk`` + 1)-th weight equals its
    ``topk``-th (a tie at the threshold, which the protocol keeps) is recomputed over all its candidates.
    """
    feats = torch.as_tensor(frame_feats)
    if feats.ndim != 4:
        raise ValueError(f"frame_feats must be (T, h, w, D), got shape {tuple(feats.shape)}")
    T, h, w, D = feats.shape
    if T < 1:
        raise ValueError("frame_feats holds no frame")
    onehot = one_hot_labels(first_labels).to(feats.device)
    if tuple(onehot.shape[1:]) != (h, w):
        raise ValueError(f"first_labels is {tuple(onehot.shape[1:])} but the features are on a {h} x {w} grid")
    if topk < 1 or temperature <= 0 or n_last < 0:
        raise ValueError(f"need topk >= 1, temperature > 0 and n_last >= 0; got {topk}, {temperature}, {n_last}")
    C, n = onehot.shape[0], h * w
    f = F.normalize(feats.reshape(T, n, D).float(), dim=-1, p=2)                      # T, hw, D
    bands = _row_bands(h, w, radius, feats.device)
    soft = torch.empty(T, C, n, dtype=torch.float32, device=feats.device)             # T, C, hw
    soft[0] = onehot.reshape(C, n)
    for t in range(1, T):
        ctx = [0] + list(range(max(1, t - n_last), t))                                 # first + previous frames
        keys, labels = f[ctx], soft[ctx]                                               # m, hw, D ; m, C, hw
        for (q0, q1), (k0, k1), allowed in bands:
            soft[t, :, q0:q1] = _vote(f[t, q0:q1], keys[:, k0:k1], labels[:, :, k0:k1], allowed, topk,
                                      temperature)
    return soft.reshape(T, C, h, w)


def _row_bands(h: int, w: int, radius: int, device) -> list:
    """[((q0, q1), (k0, k1), allowed)]: token ranges of a band of target rows, of the rows its neighbourhood
    reaches, and the (q1 - q0, k1 - k0) bool window mask between them (None: no restriction)."""
    if radius <= 0:
        return [((0, h * w), (0, h * w), None)]
    step = max(1, -(-h // 8))
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    out = []
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        a, b = max(0, r0 - radius), min(h, r1 + radius)
        q, k = slice(r0 * w, r1 * w), slice(a * w, b * w)
        allowed = (((rows[q, None] - rows[None, k]).abs() <= radius)
                   & ((cols[q, None] - cols[None, k]).abs() <= radius))
        out.append(((q.start, q.stop), (k.start, k.stop), allowed))
    return out


def _vote(q: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, allowed, topk: int,
          temperature: float) -> torch.Tensor:
    """Soft labels (C, nq) of ``nq`` target tokens (nq, D) from ``m`` context frames' candidate tokens
    ``keys`` (m, nk, D) with ``labels`` (m, C, nk); ``allowed`` (nq, nk) or None."""
    m, nk, _ = keys.shape
    C = labels.shape[1]
    sim = torch.matmul(keys, q.T)                                                      # m, nk, nq
    if allowed is not None:
        sim.masked_fill_(~allowed.T, float("-inf"))
    sim = sim.permute(2, 0, 1).reshape(q.shape[0], m * nk)                             # nq, m*nk
    lab = labels.permute(1, 0, 2).reshape(C, m * nk)                                   # C, m*nk
    k = min(topk, m * nk)
    vals, idx = torch.topk(sim, min(k + 1, m * nk), dim=1)                             # nq, k+1
    wts = torch.exp(vals / temperature)
    tie = (wts[:, k] == wts[:, k - 1]) if vals.shape[1] > k else torch.ones_like(wts[:, 0], dtype=torch.bool)
    wts, idx = wts[:, :k], idx[:, :k]
    out = (lab[:, idx] * (wts / wts.sum(1, keepdim=True))).sum(-1)                     # C, nq
    if tie.any():                                                                      # keep every tied weight
        rows = tie.nonzero()[:, 0]
        aff = torch.exp(sim[rows] / temperature)                                       # r, m*nk (outside: 0)
        aff = aff * (aff >= wts[rows, k - 1:k])
        out[:, rows] = lab @ (aff / aff.sum(1, keepdim=True)).T
    return out


def norm_mask(soft: torch.Tensor) -> torch.Tensor:
    """Per channel with a positive maximum: (x - min) / max(x - min), as the protocol does before the argmax.
    ``soft`` (C, H, W); a new tensor is returned."""
    x = soft.clone()
    flat = x.reshape(x.shape[0], -1)
    pos = flat.max(1).values > 0
    if pos.any():
        sub = flat[pos] - flat[pos].min(1, keepdim=True).values
        flat[pos] = sub / sub.max(1, keepdim=True).values
    return x


def soft_to_ids(soft, patch_size: int, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """Soft token labels (C, h, w) -> (H, W) uint8 object ids, as the protocol writes them: bilinear upsampling
    by ``patch_size`` (align_corners=False), :func:`norm_mask`, argmax (first channel on ties), then a nearest
    resize to ``out_size`` (H, W) of the original frame (PIL's nearest filter)."""
    from PIL import Image

    s = torch.as_tensor(soft).float()
    up = F.interpolate(s[None], scale_factor=patch_size, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[0]                                # C, h*p, w*p
    ids = torch.argmax(norm_mask(up), dim=0).cpu().numpy().astype(np.uint8)
    if out_size is not None and tuple(ids.shape) != tuple(out_size):
        ids = np.asarray(Image.fromarray(ids).resize((int(out_size[1]), int(out_size[0])), Image.NEAREST))
    return ids


# ----------------------------------------------------------------------------- the DAVIS-2017 scorer
def _binary(mask, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {m.shape}")
    return m.astype(bool)


def davis_j(pred, gt) -> float:
    """Region similarity J: |P and G| / |P or G| of two binary masks; 1 when both are empty."""
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} masks differ in size")
    union = np.logical_or(p, g).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, g).sum() / union)


def boundary_map(mask) -> np.ndarray:
    """DAVIS boundary pixels: (y, x) differs from its right, lower or lower-right neighbour (only the neighbours
    that exist); the image border is never a boundary by itself."""
    m = _binary(mask, "mask")
    b = np.zeros_like(m)
    b[:, :-1] |= m[:, :-1] != m[:, 1:]
    b[:-1, :] |= m[:-1, :] != m[1:, :]
    b[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]
    return b


def boundary_radius(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Dilation radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th x image diagonal)."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*shape)))


def _dilate_disk(b: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by the disk {dy^2 + dx^2 <= r^2}, nothing outside the image."""
    if r <= 0 or not b.any():
        return b.copy()
    from scipy import ndimage

    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ndimage.binary_dilation(b, structure=(yy ** 2 + xx ** 2) <= r * r)


def davis_f(pred, gt, bound_th=0.008) -> float:
    """Contour accuracy F: boundary precision / recall with a disk tolerance of ``boundary_radius`` pixels;
    1 when both boundaries are empty, 0 when exactly one is."""
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} masks differ in size")
    r = boundary_radius(p.shape, bound_th)
    bp, bg = boundary_map(p), boundary_map(g)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = float(np.logical_and(bp, _dilate_disk(bg, r)).sum() / n_p)
    recall = float(np.logical_and(bg, _dilate_disk(bp, r)).sum() / n_g)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def davis_statistics(values) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame scores: nanmean; share > 0.5 (NaN counts as a miss);
    mean of the first quarter minus the last (four bins with shared edges, as the DAVIS toolkit; correct for any
    length)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    with np.errstate(invalid="ignore"):
        mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        recall = float(np.mean(np.nan_to_num(v, nan=0.0) > 0.5))
        edges = np.round(np.linspace(1, len(v), 5) + 1e-10).astype(np.int64) - 1
        bins = [v[edges[i]:edges[i + 1] + 1] for i in range(4)]
        m = [np.nanmean(b) if np.isfinite(b).any() else np.nan for b in bins]
    return mean, recall, float(m[0] - m[3])


def evaluate_sequence(pred_ids, gt_ids, n_objects: int | None = None, bound_th: float = 0.008) -> dict:
    """Score one sequence as DAVIS-2017 semi-supervised: ``pred_ids``, ``gt_ids`` (T, H, W) integer object ids
    (ground-truth void 255 counts as background). Objects 1..K (K = ``n_objects`` or the first ground-truth
    frame's largest id); frames 1..T-2 are scored (the first and the last are not). Returns
    ``{"J": (K, T-2), "F": (K, T-2)}`` per-frame arrays (empty when T < 3). A predicted id above K raises.
    """
    pred = np.asarray(pred_ids)
    gt = np.asarray(gt_ids).astype(np.int64)
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None] if gt.ndim == 2 else gt
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"predicted masks {pred.shape} and ground truth {gt.shape} must both be (T, H, W)")
    gt = np.where(gt == VOID, 0, gt)
    K = int(gt[0].max()) if n_objects is None else int(n_objects)
    pmax = int(pred.max()) if pred.size else 0
    if pmax > K:
        raise ValueError(f"the prediction holds object id {pmax} but the ground truth has only {K} object(s); "
                         f"predict ids 0..{K}")
    frames = range(1, pred.shape[0] - 1)
    J = np.zeros((K, len(frames)))
    Fm = np.zeros((K, len(frames)))
    for k in range(1, K + 1):
        for j, t in enumerate(frames):
            J[k - 1, j] = davis_j(pred[t] == k, gt[t] == k)
            Fm[k - 1, j] = davis_f(pred[t] == k, gt[t] == k, bound_th)
    return {"J": J, "F": Fm}


def davis_table(results: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[dict, list[dict]]:
    """Global and per-object tables from ``{sequence: evaluate_sequence(...)}``.

    Returns (global, per_object): global holds ``J&F-Mean`` = (J-Mean + F-Mean) / 2 and ``J-Mean``, ``J-Recall``,
    ``J-Decay``, ``F-Mean``, ``F-Recall``, ``F-Decay``, each the plain mean over all objects of all sequences;
    per_object one row per ``<seq>_<k>`` with its J-Mean, F-Mean and J&F-Mean. Objects of sequences with fewer
    than three frames have no scored frame: NaN in per_object, left out of the global means (NaN if none is left).
    """
    stats = {m: [] for m in ("J", "F")}
    rows = []
    for seq, res in results.items():
        for k in range(res["J"].shape[0]):
            row = {"sequence": f"{seq}_{k + 1}"}
            for m in ("J", "F"):
                s = davis_statistics(res[m][k])
                stats[m].append(s)
                row[f"{m}-Mean"] = s[0]
            row["J&F-Mean"] = (row["J-Mean"] + row["F-Mean"]) / 2
            rows.append(row)
    out = {}
    for m in ("J", "F"):
        a = np.asarray(stats[m], dtype=np.float64).reshape(-1, 3)
        a = a[np.isfinite(a[:, 0])]                      # objects with no scored frame (T < 3) are left out
        mean = a.mean(axis=0) if len(a) else np.full(3, np.nan)
        out[f"{m}-Mean"], out[f"{m}-Recall"], out[f"{m}-Decay"] = (float(x) for x in mean)
    out = {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out}
    return out, rows


# ----------------------------------------------------------------------------- frames -> features, per block
RESOLUTIONS = ("dino", "squash", "dense")


def dino_frame_size(height: int, width: int, short_side: int = 480) -> tuple[int, int]:
    """DINO's frame size: the short side becomes ``short_side``, the long side
    floor(short_side x long / short / 64) x 64 (854 x 480 -> 832 x 480). Returns (H', W'). The same size is used
    for the frame and its mask (DINO's own code swaps them for square frames)."""
    if height > width:
        return int((short_side * height / width) // 64 * 64), short_side
    return short_side, int((short_side * width / height) // 64 * 64)


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    m = np.where(np.asarray(mask) == VOID, 0, np.asarray(mask)).astype(np.uint8)
    return np.asarray(Image.fromarray(m).resize((int(size_hw[1]), int(size_hw[0])), Image.NEAREST))


def prepare_video(frames: np.ndarray, first_mask: np.ndarray, patch_size: int, resolution: str = "dino",
                  short_side: int = 480, tile: int = 224, mean=(0.485, 0.456, 0.406),
                  std=(0.229, 0.224, 0.225)) -> tuple[torch.Tensor, np.ndarray, dict]:
    """Frames (T, H, W, 3) uint8 and the first ground-truth mask (H, W) -> (normalised frames (T, 3, H', W'),
    first mask on the token grid (h, w), info).

    ``resolution``: "dino" (default): bilinear resize to :func:`dino_frame_size` (``short_side`` 480), cropped at
    the bottom / right to a multiple of the patch (what a strided patch embedding ignores); "squash" (walmer2023
    without ``--dense``): frames and mask squashed to ``tile`` x ``tile``; "dense" (walmer2023's ``--dense``):
    bicubic resize to short side 2 x ``tile`` (448), long side floored to a multiple of the patch, the frames
    then cut into ``tile`` x ``tile`` tiles by :func:`tiled_features`. The mask goes to the token grid with a
    nearest resize (void counts as background).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got shape {frames.shape}")
    T, H, W, _ = frames.shape
    p = patch_size
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0                  # T, 3, H, W
    if resolution == "dino":
        th, tw = dino_frame_size(H, W, short_side)
        x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=False)
        x = x[:, :, : th // p * p, : tw // p * p]
        grid = (th // p, tw // p)
    elif resolution == "squash":
        x = F.interpolate(x, size=(tile, tile), mode="bilinear", align_corners=False, antialias=False)
        th = tw = tile
        grid = (tile // p, tile // p)
    else:
        s = 2 * tile
        if H > W:
            tw, th = s, int(s * H / W) // p * p
        else:
            th, tw = s, int(s * W / H) // p * p
        from PIL import Image

        x = torch.stack([torch.from_numpy(np.array(Image.fromarray(f).resize((tw, th), Image.BICUBIC))).permute(
            2, 0, 1).float() / 255.0 for f in frames])
        grid = (th // p, tw // p)
    x = _normalise(x, mean, std)
    if min(grid) < 1:
        raise ValueError(f"frames of {H} x {W} give no token at patch size {p} with resolution {resolution!r}")
    small = _resize_mask(first_mask, grid)
    return x, small, {"input_size": (int(th), int(tw)), "grid": grid, "original_size": (H, W)}


def _tile_starts(length: int, tile: int) -> list[int]:
    starts = list(range(0, max(length - tile, 0) + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)                                                   # last tile on the edge
    return starts


def tiled_features(model, frames: torch.Tensor, blocks: Sequence[int], tile: int = 224,
                   device="cpu") -> dict[int, torch.Tensor]:
    """walmer2023's dense extraction: each frame (3, H', W') cut into ``tile`` x ``tile`` tiles (the last one of a
    row / column aligned to the edge, overlapping), each tile run at ``tile`` px, its patch tokens placed on the
    full grid; on overlaps the first tile written wins. {block: (T, H'/p, W'/p, D)}."""
    from vitscope.analysis.dense_features import block_patch_features

    p = model.cfg.patch_size
    T, _, Hs, Ws = frames.shape
    if Hs < tile or Ws < tile:
        raise ValueError(f"dense extraction needs frames of at least {tile} px, got {Hs} x {Ws}")
    gh, gw = Hs // p, Ws // p
    out: dict[int, torch.Tensor] = {}
    filled = torch.zeros(gh, gw, dtype=torch.bool)
    for y in _tile_starts(Hs, tile):
        for x in _tile_starts(Ws, tile):
            feats = block_patch_features(model, frames[:, :, y:y + tile, x:x + tile], blocks, device=device)
            ty, tx = y // p, x // p
            n = tile // p
            new = ~filled[ty:ty + n, tx:tx + n]
            for b, f in feats.items():
                if b not in out:
                    out[b] = torch.zeros(T, gh, gw, f.shape[-1], device=device)
                region = out[b][:, ty:ty + n, tx:tx + n]
                region[:, new] = f[:, new.to(f.device)]
            filled[ty:ty + n, tx:tx + n] = True
    return out


def video_block_features(model, frames: torch.Tensor, blocks: Sequence[int], resolution: str = "dino",
                         tile: int = 224, batch_size: int = 8, device="cpu") -> dict[int, torch.Tensor]:
    """{block: (T, h, w, D)} patch features of every frame; one forward pass per frame serves every block."""
    from vitscope.analysis.dense_features import block_patch_features

    parts: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    for i in range(0, frames.shape[0], batch_size):
        chunk = frames[i:i + batch_size]
        feats = (tiled_features(model, chunk, blocks, tile, device) if resolution == "dense"
                 else block_patch_features(model, chunk, blocks, device=device))
        for b in blocks:
            parts[b].append(feats[b])
    return {b: torch.cat(v) for b, v in parts.items()}


def evaluate_davis(model, davis, blocks=None, resolution: str = "dino", short_side: int = 480,
                   tile: int | None = None, n_last: int = 7, radius: int = 12, topk: int = 5,
                   temperature: float = 0.1, bound_th: float = 0.008, batch_size: int = 8, progress: bool = False,
                   keep_predictions: bool | str = False, upscale: bool = True) -> dict:
    """Label propagation + the DAVIS-2017 scorer for every block of ``model`` on a :class:`Davis` dataset (or a
    list of :class:`DavisSequence`).

    Returns ``{"global": {block: global table}, "objects": {block: per-object rows}, "predictions":
    {block: {sequence: (T, H, W) uint8}} (with ``keep_predictions``; ``"first"``: only the first sequence at the
    last block, for a figure), "info": {...}}``. ``tile`` defaults to the model's input size (224 for walmer2023's
    models). ``upscale=False``: frames whose short side is below ``short_side`` keep their size (the "dino"
    resolution; DAVIS's own 480p frames are not affected).
    """
    from tqdm.auto import tqdm

    from vitscope.analysis.dense_features import resolve_blocks

    blocks = resolve_blocks(model, blocks)
    tile = int(tile or model.cfg.img_size[0])
    pcfg = getattr(model, "preprocess_cfg", None)
    mean = pcfg.mean if pcfg is not None else (0.485, 0.456, 0.406)
    std = pcfg.std if pcfg is not None else (0.229, 0.224, 0.225)
    seqs = list(davis)
    if not seqs:
        raise ValueError("the DAVIS dataset holds no sequence")
    per_block = {b: {} for b in blocks}
    preds = {b: {} for b in blocks}
    info = {}
    for seq in tqdm(seqs, desc="davis", unit="video", disable=not progress):
        gt = seq.masks()
        if len(seq.mask_paths) != len(seq.frame_paths):
            raise ValueError(f"sequence {seq.name!r} has {len(seq.frame_paths)} frames but {len(seq.mask_paths)} "
                             f"annotations; scoring needs one annotation per frame (the val split)")
        frames = seq.frames()
        side = short_side if upscale else min(short_side, min(frames.shape[1:3]))
        x, small, meta = prepare_video(frames, gt[0], model.cfg.patch_size, resolution, side, tile, mean, std)
        info[seq.name] = meta
        feats = video_block_features(model, x, blocks, resolution, tile, batch_size)
        H, W = frames.shape[1:3]
        for b in blocks:
            soft = propagate_labels(feats[b], small, n_last, radius, topk, temperature)
            ids = np.stack([np.where(gt[0] == VOID, 0, gt[0]).astype(np.uint8)]
                           + [soft_to_ids(soft[t], model.cfg.patch_size, (H, W)) for t in range(1, len(soft))])
            per_block[b][seq.name] = evaluate_sequence(ids, gt, n_objects=seq.n_objects, bound_th=bound_th)
            if keep_predictions is True or (keep_predictions == "first" and seq is seqs[0] and b == max(blocks)):
                preds[b][seq.name] = ids
    out = {"global": {}, "objects": {}, "info": info}
    for b in blocks:
        out["global"][b], out["objects"][b] = davis_table(per_block[b])
    if keep_predictions:
        out["predictions"] = {b: p for b, p in preds.items() if p}
    return out


def davis_rows(result: dict, model_name: str, **options) -> list[dict]:
    """The tidy rows (model, block, task, metric, value, options...) of :func:`evaluate_davis`."""
    return [{"model": model_name, "block": int(b), "task": "davis", "metric": m, "value": float(v), **options}
            for b, table in result["global"].items() for m, v in table.items()]


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class DavisOptions(Options):
    """Options of :func:`evaluate` (``vitscope davis``, the study analysis ``davis``)."""

    blocks: str = "all"                      # all, "0,3,-1" or "4:8"
    split: str = "val"                       # ImageSets/2017/<split>.txt
    sequences: tuple[str, ...] | None = None  # only these sequences
    limit: int | None = None                 # only the first N sequences
    resolution: str = "dino"                 # dino, squash (walmer2023) or dense (walmer2023's --dense)
    short_side: int = 480                    # dino: the frames' short side (DINO: 480)
    upscale: bool = False                    # dino: also enlarge frames smaller than short_side (DINO's code does)
    tile: int | None = None                  # squash / dense size; default: the model's input size
    n_last: int = 7                          # previous frames in the context, besides the first
    radius: int = 12                         # neighbourhood radius in tokens (0: none)
    topk: int = 5                            # affinities kept per token, over all context frames
    temperature: float = 0.1                 # affinity temperature
    batch_size: int = 8                      # frames per forward pass
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self.check_blocks("blocks")
        if isinstance(self.sequences, str):
            self.sequences = tuple(s.strip() for s in self.sequences.split(",") if s.strip())
        if self.sequences is not None:
            if isinstance(self.sequences, str) or not all(isinstance(s, str) for s in self.sequences):
                raise OptionError("sequences", f"`sequences` is a list of sequence names, got {self.sequences!r}")
            self.sequences = tuple(self.sequences) or None
        self.check_int("limit", optional=True)
        self.check_choice("resolution", RESOLUTIONS)
        self.check_int("short_side")
        self.check_int("tile", minimum=8, optional=True)
        self.check_int("n_last", minimum=0)
        self.check_int("radius", minimum=0)
        self.check_int("topk")
        self.check_number("temperature", low=0, low_open=True)
        self.check_int("batch_size")


def davis_sequences(data, opts: DavisOptions) -> tuple[list, str | None]:
    """(sequences, description of the set) to evaluate: ``data`` a DAVIS-2017 folder or ``synthetic[:videos=N,frames=T,...]`` (read with
    ``opts.split`` / ``opts.sequences``), a loaded :class:`~vitscope.data.tasks.Davis` or a list of sequences;
    the first ``opts.limit``."""
    from vitscope.data.tasks import load_davis

    if data is None:
        raise ValueError("DAVIS label propagation needs a DAVIS-2017 folder (JPEGImages/, Annotations/, "
                         "ImageSets/) or synthetic[:videos=N]")
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        from vitscope.data.tasks.synthetic import default_cache, task_root

        data = load_davis(task_root(data, "davis", default_cache()), split=opts.split,
                          sequences=list(opts.sequences) if opts.sequences else None)
    seqs = list(data)
    seqs = seqs[:opts.limit] if opts.limit else seqs
    if not seqs:
        raise ValueError(f"no DAVIS sequence to evaluate in {getattr(data, 'description', 'the data given')}")
    return seqs, getattr(data, "description", None)


def evaluate(models, data, options: DavisOptions | None = None, **overrides) -> Result:
    """DAVIS-2017 J&F of label propagation from every block's patch tokens (DINO's protocol, the DAVIS-2017
    scorer), per model.

    Args:
        models: ``{label: HookedViT}`` (or one model / a list).
        data: see :func:`davis_sequences`.
        options: :class:`DavisOptions` (keyword overrides are applied on top).

    The table has one row per model x block x metric (``J&F-Mean``, ``J-Mean``, ``J-Recall``, ...);
    ``result.arrays["objects"]`` holds the per-object scores.
    """
    from vitscope.analysis.knn import _as_pairs

    opts = (options or DavisOptions()).replace(**overrides) if overrides else (options or DavisOptions())
    seqs, desc = davis_sequences(data, opts)
    kind, items = _as_pairs(models)
    if kind != "models":
        raise ValueError("DAVIS label propagation runs models over the frames (no feature stores)")
    prop = dict(resolution=opts.resolution, short_side=opts.short_side, n_last=opts.n_last, radius=opts.radius,
                topk=opts.topk, temperature=opts.temperature)
    rows, objects, shown = [], [], {}
    for label, model in items.items():
        res = evaluate_davis(model, seqs, opts.blocks, tile=opts.tile, batch_size=opts.batch_size,
                             progress=opts.progress, keep_predictions="first", upscale=opts.upscale, **prop)
        rows += davis_rows(res, label, **prop, tile=int(opts.tile or model.cfg.img_size[0]))
        objects += [{"model": label, "block": b, **r} for b, rs in res["objects"].items() for r in rs]
        last = max(res["global"])
        shown[label] = (last, res["predictions"][last][seqs[0].name])
    table = tidy_table(rows, "davis", opts, dataset=desc)
    best = max((r for r in rows if r["metric"] == "J&F-Mean"), key=lambda r: r["value"])
    summary = (f"DAVIS J&F of {len(items)} model(s) on {len(seqs)} sequence(s): best {best['value']:.3f} "
               f"({best['model']}, block {best['block']})")
    return Result("davis", table, summary, opts, draw=_draw,
                  arrays={"objects": objects, "predictions": shown, "sequence": seqs[0]},
                  meta={"sequences": [s.name for s in seqs],
                        "context": {"data": desc, "n_images": sum(len(s) for s in seqs)}})


def _draw(result: Result) -> dict:
    """J&F, J and F per block (dashed: random twins) and the first sequence propagated by each model's last
    block (propagated above, ground truth below)."""
    from vitscope.runtime import slug
    from vitscope.viz.downstream_dense import plot_propagation
    from vitscope.viz.per_block import plot_metric_per_block

    n, res = len(result.meta["sequences"]), result.options.resolution
    out = {}
    for metric in ("J&F-Mean", "J-Mean", "F-Mean"):
        shown = result.table[result.table["metric"] == metric]
        out[f"davis_{slug(metric)}"] = (plot_metric_per_block(
            shown, title=f"DAVIS label propagation ({res}), {n} sequence(s)", ylim=(0.0, 1.0),   # J, F in [0, 1]
            **result.context()), shown)
    seq, preds = result.arrays["sequence"], result.arrays["predictions"]
    for label, (block, ids) in preds.items():
        name = f"propagation_{slug(label)}_{slug(seq.name)}" if len(preds) > 1 else f"propagation_{slug(seq.name)}"
        out[name] = plot_propagation(seq.frames(), ids, seq.masks(), title=f"{label}, block {block}: {seq.name}")
    return out
