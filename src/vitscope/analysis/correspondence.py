"""SPair-71k keypoint correspondence per block, as walmer2023 (``run_kp_analysis.py``) computes it.

Both images are letterboxed to ``size`` x ``size`` (long side -> size with Lanczos, short side rounded half to
even, centred on black); the patch tokens of a block are L2-normalised per token and then bilinearly upsampled to
pixels (align_corners=False, not renormalised). A source keypoint's descriptor is read at pixel
(row = round(y), col = trunc(x)); its prediction is the target pixel with the largest dot product (first in raster
order on ties). A keypoint is correct when ||pred - gt|| < alpha x L, L = the longer side of the target box in
letterboxed pixels; PCK is pooled over all keypoints of a category's pairs, then averaged over categories.

Bilinear upsampling is linear, so the score map of a keypoint is the upsampled map of its dot products with the
target tokens: nothing of size D x size x size is ever built. Differences from walmer2023's code: a keypoint on the
last pixel row (y >= size - 0.5) reads row size - 1 instead of failing, source keypoints outside the letterboxed
image are left out (counted in ``n_outside``), and the pair sample is drawn per category from its own seeded
generator, without replacement by default (``with_replacement=True``: walmer2023's draw).
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitscope.analysis.api import OptionError, Options, Result, tidy_table

ALPHAS = (0.1, 0.05, 0.01)


def pck(pred_kps, gt_kps, threshold_len, alpha):
    """Boolean mask (N,) of correct keypoints: ||pred - gt|| < alpha x threshold_len (strict).
    ``pred_kps``, ``gt_kps`` (N, 2); ``threshold_len`` a number or (N,) per keypoint."""
    p = np.asarray(pred_kps, dtype=np.float64).reshape(-1, 2)
    g = np.asarray(gt_kps, dtype=np.float64).reshape(-1, 2)
    if p.shape != g.shape:
        raise ValueError(f"pred_kps {p.shape} and gt_kps {g.shape} must both be (N, 2)")
    return np.linalg.norm(p - g, axis=1) < alpha * np.asarray(threshold_len, dtype=np.float64)


# ----------------------------------------------------------------------------- letterbox
def letterbox_geometry(width: int, height: int, size: int = 224) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """(scale, (new_w, new_h), (off_x, off_y)) of walmer2023's letterbox: the long side becomes ``size``, the
    short side round-half-even(size x short / long), centred with offset floor((size - short') / 2)."""
    scale = size / max(width, height)
    if width >= height:
        nw, nh = size, int(round(size * height / width))
    else:
        nw, nh = int(round(size * width / height)), size
    return scale, (nw, nh), ((size - nw) // 2, (size - nh) // 2)


def letterbox(image, size: int = 224) -> np.ndarray:
    """PIL image -> (size, size, 3) uint8, the image resized (Lanczos) and centred on black."""
    from PIL import Image

    im = image.convert("RGB")
    _, (nw, nh), (ox, oy) = letterbox_geometry(im.width, im.height, size)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[oy:oy + nh, ox:ox + nw] = np.asarray(im.resize((nw, nh), Image.LANCZOS))
    return canvas


def letterbox_points(kps, width: int, height: int, size: int = 224) -> np.ndarray:
    """Keypoints (N, 2) (x, y) in original pixels -> letterboxed pixels."""
    scale, _, (ox, oy) = letterbox_geometry(width, height, size)
    return np.asarray(kps, dtype=np.float64).reshape(-1, 2) * scale + np.array([ox, oy], dtype=np.float64)


def threshold_length(bbox, width: int, height: int, size: int = 224) -> float:
    """The longer side of a box (x0, y0, x1, y1) in letterboxed pixels (no +1), what PCK's alpha multiplies."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    return max(x1 - x0, y1 - y0) * size / max(width, height)


# ----------------------------------------------------------------------------- matching
def upsample_matrix(n: int, factor: int) -> torch.Tensor:
    """(n x factor, n) weights of 1-D linear upsampling by ``factor`` (align_corners=False), the same weights
    ``F.interpolate(..., mode="bilinear")`` applies along each axis."""
    eye = torch.eye(n, dtype=torch.float64)[None]                                     # 1, n (channels), n
    return F.interpolate(eye, scale_factor=factor, mode="linear", align_corners=False)[0].T.float()


def match_keypoints(src_tokens, trg_tokens, src_kps, patch_size: int) -> np.ndarray:
    """Predicted target pixels (N, 2) int (x, y) of source keypoints (N, 2) (x, y, letterboxed pixels).

    ``src_tokens``, ``trg_tokens`` (h, w, D) patch tokens of one block; descriptors are the per-token
    L2-normalised tokens bilinearly upsampled by ``patch_size``. Source pixel: row round-half-even(y) (at most the
    last row), column trunc(x). Keypoints must lie inside the image (see :func:`inside`).
    """
    s = F.normalize(torch.as_tensor(src_tokens).float(), dim=-1)                      # h, w, D
    t = F.normalize(torch.as_tensor(trg_tokens).float(), dim=-1)
    h, w, _ = s.shape
    Wy, Wx = upsample_matrix(h, patch_size), upsample_matrix(w, patch_size)             # H, h ; W, w
    kps = np.asarray(src_kps, dtype=np.float64).reshape(-1, 2)
    if len(kps) == 0:
        return np.zeros((0, 2), np.int64)
    rows = torch.from_numpy(np.minimum(np.round(kps[:, 1]), Wy.shape[0] - 1).astype(np.int64))
    cols = torch.from_numpy(np.trunc(kps[:, 0]).astype(np.int64))
    desc = torch.einsum("ki,kj,ijd->kd", Wy[rows], Wx[cols], s)                       # N, D
    g = torch.einsum("kd,ijd->kij", desc, t)                                           # N, h, w
    scores = Wy @ g @ Wx.T                                                             # N, H, W
    best = scores.flatten(1).argmax(1)
    W = scores.shape[-1]
    return torch.stack([best % W, best // W], 1).numpy()


def inside(kps, size_hw: tuple[int, int]) -> np.ndarray:
    """(N,) bool: keypoints whose descriptor pixel (round(y), trunc(x)) exists in an image of ``size_hw``."""
    k = np.asarray(kps, dtype=np.float64).reshape(-1, 2)
    H, W = size_hw
    return (k[:, 0] >= 0) & (k[:, 0] < W) & (k[:, 1] >= 0) & (k[:, 1] < H)


# ----------------------------------------------------------------------------- the pair sample
def sample_pairs(pairs: Sequence, per_category: int | None = 20, seed: int = 42,
                 with_replacement: bool = False) -> list:
    """Up to ``per_category`` pairs of each category, the same whatever order the files were listed in:
    categories and their pairs are sorted by name, each category draws from its own generator seeded by
    (``seed``, the category's name). ``with_replacement``: draw ``per_category`` with replacement (walmer2023's
    sample, duplicates included). ``None``: every pair."""
    by_cat: dict[str, list] = {}
    for p in pairs:
        by_cat.setdefault(p.category, []).append(p)
    out = []
    for cat in sorted(by_cat):
        group = sorted(by_cat[cat], key=lambda p: p.name)
        if per_category is None:
            out += group
            continue
        rng = np.random.default_rng([int(seed), zlib.crc32(cat.encode())])
        if with_replacement:
            idx = rng.integers(0, len(group), per_category)
        else:
            idx = np.sort(rng.choice(len(group), min(per_category, len(group)), replace=False))
        out += [group[i] for i in idx]
    return out


# ----------------------------------------------------------------------------- evaluation per block
def evaluate_spair(model, pairs: Sequence, blocks=None, size: int | None = None, alphas=ALPHAS,
                   batch_size: int = 16, progress: bool = False, keep_matches: int = 0) -> dict:
    """PCK of every block of ``model`` on SPair pairs (e.g. ``sample_pairs(load_spair(root))``).

    ``size``: the letterbox side, default the model's input size (224 for walmer2023's models). Returns
    ``{"pck": {block: {alpha: PCK in %}}, "per_category": {block: {category: {alpha: %}}}, "counts": {category:
    keypoints}, "n_outside": int, "matches": [...]}`` (``keep_matches`` pairs' predictions, for figures).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from vitscope.analysis.dense_features import block_patch_features, resolve_blocks
    from vitscope.data.decode import load_image

    blocks = resolve_blocks(model, blocks)
    size = int(size or model.cfg.img_size[0])
    p = model.cfg.patch_size
    if size % p:
        raise ValueError(f"the letterbox size {size} must be a multiple of the patch size {p}")
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no SPair pairs to evaluate")
    pcfg = getattr(model, "preprocess_cfg", None)
    mean = torch.tensor(pcfg.mean if pcfg else (0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor(pcfg.std if pcfg else (0.229, 0.224, 0.225)).view(3, 1, 1)
    paths = list(dict.fromkeys(q for pair in pairs for q in (pair.src_path, pair.trg_path)))
    index = {q: i for i, q in enumerate(paths)}
    feats: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    for i in tqdm(range(0, len(paths), batch_size), desc="keypoints: features", unit="batch",
                  disable=not progress):
        imgs = [letterbox(load_image(q), size) for q in paths[i:i + batch_size]]
        x = torch.stack([(torch.from_numpy(a).permute(2, 0, 1).float() / 255 - mean) / std for a in imgs])
        for b, f in block_patch_features(model, x, blocks).items():
            feats[b].append(f)
    fmap = {b: torch.cat(v) for b, v in feats.items()}
    alphas = tuple(float(a) for a in alphas)
    correct = {b: {} for b in blocks}
    counts: dict[str, int] = {}
    n_outside = 0
    matches = []
    for j, pair in enumerate(pairs):
        sw, sh = _size_of(pair.src_path, pair.src_size, Image)
        tw, th = _size_of(pair.trg_path, pair.trg_size, Image)
        src = letterbox_points(pair.src_kps, sw, sh, size)
        trg = letterbox_points(pair.trg_kps, tw, th, size)
        ok = inside(src, (size, size))
        n_outside += int((~ok).sum())
        src, trg = src[ok], trg[ok]
        L = threshold_length(pair.trg_bbox, tw, th, size)
        counts[pair.category] = counts.get(pair.category, 0) + len(src)
        for b in blocks:
            pred = match_keypoints(fmap[b][index[pair.src_path]], fmap[b][index[pair.trg_path]], src, p)
            c = correct[b].setdefault(pair.category, {a: 0 for a in alphas})
            for a in alphas:
                c[a] += int(pck(pred, trg, L, a).sum())
            if j < keep_matches and b == blocks[-1]:
                matches.append({"pair": pair.name, "src_kps": src, "trg_kps": trg, "pred": pred, "threshold": L,
                                "src_image": letterbox(load_image(pair.src_path), size),
                                "trg_image": letterbox(load_image(pair.trg_path), size), "block": b})
    per_cat = {b: {cat: {a: (100.0 * c[a] / counts[cat] if counts[cat] else float("nan")) for a in alphas}
                   for cat, c in correct[b].items()} for b in blocks}
    result = {b: {a: float(np.nanmean([v[a] for v in per_cat[b].values()])) if per_cat[b] else float("nan")
                  for a in alphas} for b in blocks}
    return {"pck": result, "per_category": per_cat, "counts": counts, "n_outside": n_outside, "matches": matches,
            "n_pairs": len(pairs), "size": size}


def _size_of(path: str, size: tuple[int, int], Image) -> tuple[int, int]:
    if size and size[0] > 0 and size[1] > 0:
        return int(size[0]), int(size[1])
    with Image.open(path) as im:
        return im.size


def spair_rows(result: dict, model_name: str, **options) -> list[dict]:
    """Tidy rows (model, block, task, metric, value, options...) of :func:`evaluate_spair`."""
    return [{"model": model_name, "block": int(b), "task": "spair", "metric": f"pck@{a:g}", "value": float(v),
             **options} for b, d in result["pck"].items() for a, v in d.items()]


# ----------------------------------------------------------------------------- the evaluation entry point
SPLITS = ("test", "val", "trn")


@dataclass
class KeypointsOptions(Options):
    """Options of :func:`evaluate` (``vitscope keypoints``, the study analysis ``keypoints``)."""

    blocks: str = "all"                      # all, "0,3,-1" or "4:8"
    split: str = "test"                      # SPair pair split: test, val or trn
    pairs_per_category: int = 20             # pairs drawn per category (0: every pair)
    seed: int = 42                           # seed of the pair sample
    with_replacement: bool = False           # draw with replacement (walmer2023's sample)
    size: int | None = None                  # letterbox side; default: the model's input size
    batch_size: int = 16                     # images per forward pass
    keep_matches: int = 4                    # pairs whose predictions are kept for the figure
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self.check_blocks("blocks")
        self.check_choice("split", SPLITS)
        self.check_int("pairs_per_category", minimum=0)
        self.check_int("seed", minimum=0)
        self.check_int("size", minimum=8, optional=True)
        self.check_int("batch_size")
        self.check_int("keep_matches", minimum=0)


def spair_sample(data, opts: KeypointsOptions) -> tuple[list, str | None]:
    """(pairs, description of the set): ``data`` an SPair-71k folder or ``synthetic[:pairs=N,...]`` (read with
    ``opts.split``), a loaded :class:`~vitscope.data.tasks.SPair` or a list of pairs; sampled by
    :func:`sample_pairs` with ``opts.pairs_per_category`` (0: every pair), ``opts.seed``, ``opts.with_replacement``."""
    from vitscope.data.tasks import load_spair

    if data is None:
        raise ValueError("keypoint transfer needs an SPair-71k folder (JPEGImages/, PairAnnotation/, Layout/) or "
                         "synthetic[:pairs=N]")
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        from vitscope.data.tasks.synthetic import default_cache, task_root

        data = load_spair(task_root(data, "spair", default_cache()), split=opts.split)
    pairs = sample_pairs(data, opts.pairs_per_category or None, opts.seed, opts.with_replacement)
    if not pairs:
        raise ValueError(f"no SPair pairs to evaluate in {getattr(data, 'description', 'the data given')}")
    return pairs, getattr(data, "description", None)


def evaluate(models, data, options: KeypointsOptions | None = None, **overrides) -> Result:
    """SPair-71k keypoint transfer PCK@0.1 / 0.05 / 0.01 (in %) of every block's patch tokens, walmer2023's
    protocol, per model.

    Args:
        models: ``{label: HookedViT}`` (or one model / a list).
        data: see :func:`spair_sample`.
        options: :class:`KeypointsOptions` (keyword overrides are applied on top).

    The table has one row per model x block x threshold; ``result.arrays["categories"]`` the PCK per category.
    """
    from vitscope.analysis.knn import _as_pairs

    opts = (options or KeypointsOptions()).replace(**overrides) if overrides else (options or KeypointsOptions())
    kind, items = _as_pairs(models)
    if kind != "models":
        raise ValueError("keypoint transfer runs models over the images (no feature stores)")
    for label, model in items.items():
        size, p = int(opts.size or model.cfg.img_size[0]), model.cfg.patch_size
        if size % p:
            raise OptionError("size", f"`size` must be a multiple of {label}'s patch size {p}, got {size}")
    pairs, desc = spair_sample(data, opts)
    rows, cats, matches = [], [], {}
    for label, model in items.items():
        res = evaluate_spair(model, pairs, opts.blocks, size=opts.size, batch_size=opts.batch_size,
                             progress=opts.progress, keep_matches=opts.keep_matches)
        rows += spair_rows(res, label, size=res["size"], pairs=len(pairs), seed=opts.seed,
                           with_replacement=opts.with_replacement)
        cats += [{"model": label, "block": b, "category": c, "metric": f"pck@{a:g}", "value": v}
                 for b, d in res["per_category"].items() for c, av in d.items() for a, v in av.items()]
        matches[label] = (max(res["pck"]), res["matches"], res["n_outside"])
    table = tidy_table(rows, "keypoints", opts, dataset=desc)
    best = max((r for r in rows if r["metric"] == "pck@0.1"), key=lambda r: r["value"])
    summary = (f"SPair PCK@0.1 of {len(items)} model(s) on {len(pairs)} pair(s): best {best['value']:.1f}% "
               f"({best['model']}, block {best['block']})")
    n_images = len({path for p in pairs for path in (p.src_path, p.trg_path)})
    return Result("keypoints", table, summary, opts, draw=_draw, arrays={"categories": cats, "matches": matches},
                  meta={"pairs": [p.name for p in pairs], "context": {"data": desc, "n_images": n_images}})


def _draw(result: Result) -> dict:
    """PCK per block at each threshold (dashed: random twins), and each model's predicted matches at its last
    block (source keypoints, target ground truth and predictions)."""
    from vitscope.runtime import slug
    from vitscope.viz.downstream_dense import plot_keypoint_matches
    from vitscope.viz.per_block import plot_metric_per_block

    n, out = len(result.meta["pairs"]), {}
    for metric in sorted(set(result.table["metric"])):
        shown = result.table[result.table["metric"] == metric]
        out[f"keypoints_{slug(metric)}"] = (plot_metric_per_block(
            shown, title=f"SPair keypoint transfer, {n} pairs", ylabel=f"PCK ({metric}, %)", **result.context()),
            shown)
    for label, (block, kept, _) in result.arrays["matches"].items():
        if kept:
            out[f"matches_{slug(label)}"] = plot_keypoint_matches(kept, title=f"{label}, block {block}")
    return out
