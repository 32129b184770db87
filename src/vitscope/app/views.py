"""The web app's views as pure functions: (model, image, options) -> a picture and the numbers behind it.

Each view calls the ``evaluate`` of its analysis (``vitscope.analysis.attention``) and draws (``vitscope.viz``),
returning a :class:`View`:
``figure`` (RGB uint8, what the page shows), ``arrays`` (saved as ``.npy``), ``table`` (a tidy DataFrame,
saved as ``.csv``), a ``note`` shown under the figure, and ``meta``. :func:`save_view` writes all of it.
Nothing here knows about Gradio; the tests call these functions directly.

Everything runs without gradients (``torch.inference_mode``) except the gradient relevance, which needs them.
Callers that share a model between threads hold its lock around a view (hooks live on the model).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from vitscope.analysis.api import OptionError
from vitscope.analysis.attention.common import map_frame
from vitscope.analysis.attention.relevance import METHOD_TITLES, METHODS, resolve_method
from vitscope.analysis.attention.tokens import grid_of, normalize_block
from vitscope.app.models import class_label, class_names
from vitscope.viz.attention import colorize, denormalize, overlay, upsample

FUSIONS = ("mean", "max", "min")
ROLLOUT_METHODS = METHODS                 # the library's names; old ones (grad_rollout, chefer) are accepted
DISPLAY = 448                      # long side of the main figure, pixels
PNG_LEVEL = 1                      # zlib level of the PNGs written (fast; the figures are small)


@dataclass
class View:
    """What a view returns: a picture, its numbers and a line of text."""

    name: str
    figure: np.ndarray | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    table: pd.DataFrame | None = None
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)     # further pictures (e.g. every head)
    label: dict[str, float] | None = None                           # top-k predictions, for a label widget


# ----------------------------------------------------------------------------- input and pictures
def model_input(model, image) -> tuple[torch.Tensor, np.ndarray]:
    """An image (PIL, array or path) -> (batch (1, 3, H, W) on the model's device, what the model sees as uint8)."""
    x = model.preprocess([image]).to(model.device, model.dtype)
    pcfg = model.preprocess_cfg
    mean, std = (pcfg.mean, pcfg.std) if pcfg is not None else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return x, denormalize(x[0].float(), mean, std)


def display_size(shape: tuple[int, int], size: int = DISPLAY) -> tuple[int, int]:
    """(height, width) of a picture of ``shape`` scaled so that its long side is ``size``."""
    h, w = shape
    s = size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def enlarge(img: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    h, w = display_size(img.shape[:2], size)
    if (h, w) == img.shape[:2]:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def patch_at(x: float, y: float, shape: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """The patch (row, col) under pixel (x, y) of a picture of ``shape`` (height, width) showing the model input."""
    h, w = shape
    rows, cols = grid
    r = min(max(int(y * rows / h), 0), rows - 1)
    c = min(max(int(x * cols / w), 0), cols - 1)
    return r, c


def mark_patch(img: np.ndarray, patch: tuple[int, int], grid: tuple[int, int], colour=(0, 255, 255)) -> np.ndarray:
    """Draw a box around one patch of the picture."""
    h, w = img.shape[:2]
    rows, cols = grid
    r, c = patch
    out = Image.fromarray(img)
    ImageDraw.Draw(out).rectangle([c * w / cols, r * h / rows, (c + 1) * w / cols - 1, (r + 1) * h / rows - 1],
                                  outline=colour, width=max(2, w // 150))
    return np.asarray(out)


def blank(text: str, shape: tuple[int, int] = (DISPLAY // 2, DISPLAY)) -> np.ndarray:
    """A grey picture with a line of text (shown where a map cannot be drawn)."""
    img = Image.new("RGB", (shape[1], shape[0]), (235, 235, 235))
    d = ImageDraw.Draw(img)
    y = 10
    for line in _wrap(text, max(20, shape[1] // 7)):
        d.text((10, y), line, fill=(60, 60, 60), font=_font())
        y += 14
    return np.asarray(img)


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


_FONT = None


def _font():
    global _FONT
    if _FONT is None:
        _FONT = ImageFont.load_default()
    return _FONT


def mosaic(tiles: list[np.ndarray], labels: list[str], ncols: int, gap: int = 4) -> np.ndarray:
    """Tiles of one size in a grid, each with its label above it (white background)."""
    th, tw = tiles[0].shape[:2]
    cap = 14
    nrows = -(-len(tiles) // ncols)
    out = Image.new("RGB", (ncols * (tw + gap) + gap, nrows * (th + cap + gap) + gap), (255, 255, 255))
    d = ImageDraw.Draw(out)
    for k, (t, lab) in enumerate(zip(tiles, labels)):
        r, c = divmod(k, ncols)
        x0, y0 = gap + c * (tw + gap), gap + r * (th + cap + gap)
        d.text((x0 + 2, y0), lab, fill=(0, 0, 0), font=_font())
        out.paste(Image.fromarray(t), (x0, y0 + cap))
    return np.asarray(out)


def _map_overlay(base: np.ndarray, m: np.ndarray, cmap: str, alpha: float, size: int) -> np.ndarray:
    return overlay(enlarge(base, size), m, cmap=cmap, alpha=alpha)


def _tidy_map(m: np.ndarray, **cols) -> pd.DataFrame:
    """A map (rows, cols) or a stack of maps (K, rows, cols) as a tidy table; list-valued ``cols`` give one value
    per map of the stack."""
    m = np.asarray(m, float)
    return map_frame(m[None] if m.ndim == 2 else m, **cols)


def _model_name(model) -> str:
    return str((getattr(model, "meta", None) or {}).get("name") or "model")


def _query_label(query) -> str:
    if isinstance(query, (tuple, list)):
        return f"patch ({int(query[0])}, {int(query[1])})"
    q = str(query).strip().lower()
    return {"cls": "CLS", "dist": "DIST"}.get(q, q)


def query_choices(model) -> list[str]:
    """The prefix-token queries this model has (CLS, DIST, reg0..) plus ``patch`` (a clicked patch)."""
    cfg = model.cfg
    out = (["cls"] if cfg.class_token else []) + (["dist"] if cfg.distill_token else [])
    return out + [f"reg{k}" for k in range(cfg.num_registers)] + ["patch"]


# ----------------------------------------------------------------------------- views
def attention_view(model, image, block: int = -1, head: str | int = "mean", query="cls", alpha: float = 0.6,
                   cmap: str = "inferno", size: int = DISPLAY) -> View:
    """Attention of ``query`` over the patches at ``block``: one head or the heads fused (mean / max / min).

    ``query``: ``"cls"``, ``"dist"``, ``"reg<k>"`` or a patch ``(row, col)``. When the token is not in the
    sequence at that block (cls-register: it enters later), the view has no figure and the note says where it enters.
    Numbers: ``vitscope.analysis.attention.maps.evaluate``.
    """
    from vitscope.analysis.attention.maps import AttentionMapOptions, evaluate

    b = normalize_block(int(block), model.cfg.depth)
    x, base = model_input(model, image)
    grid = grid_of(x, model)
    q = tuple(int(v) for v in query) if isinstance(query, (tuple, list)) else query
    meta = {"model": _model_name(model), "view": "attention", "block": b, "head": head,
            "query": _query_label(q), "alpha": alpha, "cmap": cmap}
    fusion = head if isinstance(head, str) and head in FUSIONS else "mean"
    if q == "patch":                                                   # the patch query before a patch is chosen
        return View("attention", None, note="click a patch of the image to use it as the query", meta=meta)
    try:
        result = evaluate({meta["model"]: model}, x, AttentionMapOptions(block=b, query=q, fusion=fusion, limit=None))
    except OptionError:
        raise
    except ValueError as e:                                            # the token is not there yet
        return View("attention", None, note=str(e), meta=meta)
    maps = result.arrays["maps"][0]                                                       # H, rows, cols
    H = maps.shape[0]
    if isinstance(head, str) and head in FUSIONS:
        shown, what = result.arrays["fused"][0], f"{head} over {H} heads"
    else:
        h = int(head)
        if not 0 <= h < H:
            raise ValueError(f"head {h} does not exist; this model has {H} heads (0..{H - 1})")
        shown, what = maps[h], f"head {h}"
    fig = _map_overlay(base, shown, cmap, alpha, size)
    if isinstance(q, tuple):
        fig = mark_patch(fig, q, grid)
    small = enlarge(base, max(64, min(128, size // 4)))
    heads = mosaic([overlay(small, maps[k], cmap=cmap, alpha=alpha) for k in range(H)],
                   [f"head {k}" for k in range(H)], ncols=min(H, 8))
    table = _tidy_map(np.concatenate([maps, shown[None]]), model=meta["model"], block=b, query=meta["query"],
                      head=[str(k) for k in range(H)] + [str(head)])
    note = (f"{meta['query']} -> patches at block {b}, {what}; attention on patches sums to "
            f"{float(maps.sum(axis=(1, 2)).mean()):.3f} (mean over heads; the rest goes to prefix tokens)")
    return View("attention", fig, {"maps": maps, "shown": shown}, table, note, meta, {"heads": heads})


def rollout_view(model, image, method: str = "rollout", target: int | None = None, head_fusion: str = "mean",
                 discard_ratio: float = 0.0, alpha: float = 0.6, cmap: str = "inferno", size: int = DISPLAY,
                 normalize: str = "max") -> View:
    """Attention rollout, vit-explain's gradient rollout or one of Chefer et al.'s relevance rules (the names of
    ``vitscope.analysis.attention.relevance.METHODS``) of the CLS token over the patches.

    ``target``: the class explained by the gradient methods (None: the predicted class). Rollout needs no
    class. Gradients are taken only for the gradient methods. ``normalize``: "max" or "minmax".
    Numbers: ``vitscope.analysis.attention.relevance.evaluate``.
    """
    from vitscope.analysis.attention.relevance import RolloutOptions, evaluate

    method = resolve_method(method, ROLLOUT_METHODS)
    x, base = model_input(model, image)
    end = model.cfg.depth - 1
    meta = {"model": _model_name(model), "view": method, "head_fusion": head_fusion, "discard_ratio": discard_ratio}
    if method != "rollout" and model.cfg.head == "none":
        return View(method, None, note="this model has no classification head: the gradient methods need a "
                                       "class score (use rollout)", meta=meta)
    opts = RolloutOptions(method=method, target=target, head_fusion=head_fusion, discard_ratio=discard_ratio,
                          normalize=normalize, limit=None)
    try:
        result = evaluate({meta["model"]: model}, x, opts)
    except OptionError:
        raise
    except ValueError as e:                          # CLS not there yet; a model chefer2021-lrp does not support
        return View(method, None, note=str(e), meta=meta)
    if method == "rollout":
        note = f"rollout over blocks 0..{end}, heads fused by {head_fusion}, discard ratio {discard_ratio:g}"
    else:
        t = int(result.arrays["targets"][0])
        meta["target"] = t
        note = (f"{METHOD_TITLES[method]} for {class_label(model, t)} (logit {float(result.arrays['logits'][0]):.3f}"
                f"{', the predicted class' if target is None else ''})")
    m = result.arrays["maps"][0]
    fig = _map_overlay(base, m, cmap, alpha, size)
    table = _tidy_map(m, model=meta["model"], method=method, target=meta.get("target", -1))
    return View(method, fig, {"map": m, "matrix": result.arrays["matrix"][0]}, table, note, meta)


def explain_view(model, image, method: str = "gradcam", target: int | None = None, block: int = -1,
                 alpha: float = 0.55, cmap: str = "inferno", size: int = DISPLAY) -> View:
    """The attribution map of any method of ``vitscope.analysis.attribution_maps.METHODS`` (CAMs, input
    gradients, occlusion, the attention methods) for ``target`` (None: the predicted class), over the image.

    ``block``: the block a CAM reads (and the last block the attention methods roll out). The figure shows the map
    on the image grid; the table holds it on the token grid (the mean over each patch for the pixel methods).
    Numbers: ``vitscope.analysis.attribution_maps.explain``.
    """
    from vitscope.analysis.attribution_maps import FAMILIES, explain
    from vitscope.analysis.attribution_maps import resolve_method as resolve_attribution

    method = resolve_attribution(method)
    b = normalize_block(int(block), model.cfg.depth)
    x, base = model_input(model, image)
    meta = {"model": _model_name(model), "view": "explain", "method": method, "family": FAMILIES[method],
            "block": b}
    if model.cfg.head == "none":
        return View("explain", None, note="this model has no classification head: an attribution map explains a "
                                          "class score (use the rollout tab)", meta=meta)
    try:
        e = explain(model, x, target, method, block=b)
    except OptionError:
        raise
    except ValueError as err:                        # CLS not there yet; a model chefer2021-lrp does not support
        return View("explain", None, note=str(err), meta=meta)
    t = int(e.targets[0])
    meta["target"] = t
    m, grid = e.maps[0].float().cpu().numpy(), e.grid[0].float().cpu().numpy()
    fig = _map_overlay(base, m, cmap, alpha, size)
    table = _tidy_map(grid, model=meta["model"], method=method, family=meta["family"], block=b, target=t)
    at = f" at block {b}" if meta["family"] == "cam" else (f" over blocks 0..{b}" if meta["family"] == "attention"
                                                           else "")
    note = (f"{method} ({meta['family']}){at} for {class_label(model, t)}"
            f"{', the predicted class' if target is None else ''}; map range [{m.min():.3g}, {m.max():.3g}]")
    return View("explain", fig, {"map": m, "grid": grid}, table, note, meta)


def tokens_view(model, image, block: int = -1, cmap: str = "inferno", size: int = DISPLAY) -> View:
    """CLS and register attention over the patches at ``block`` (cls-register): one row per token, mean then heads.

    Tokens not yet in the sequence at that block are listed in the note with the block where they enter.
    Numbers: ``vitscope.analysis.attention.token_pages.evaluate``.
    """
    from vitscope.analysis.attention.token_pages import TokenPagesOptions, evaluate, prefix_tokens

    b = normalize_block(int(block), model.cfg.depth)
    x, base = model_input(model, image)
    grid = grid_of(x, model)
    meta = {"model": _model_name(model), "view": "tokens", "block": b}
    if not prefix_tokens(model):
        return View("tokens", None, note="this model has neither a CLS token nor registers", meta=meta)
    try:
        result = evaluate({meta["model"]: model}, x, TokenPagesOptions(block=b, absent="skip", limit=None))
    except OptionError as e:                                     # none of the tokens is there yet
        return View("tokens", None, note=str(e), meta=meta)
    present, notes = result.meta["tokens"], result.meta["notes"]
    maps = {t: result.arrays["maps"][t][0] for t in present}                             # H, rows, cols each
    H = next(iter(maps.values())).shape[0]
    tile = max(48, min(112, size // 4))
    tiles, labels = [], []
    for t in present:
        for k, m in enumerate([maps[t].mean(0)] + list(maps[t])):
            tiles.append(colorize(upsample(m, display_size(grid, tile), "nearest"), cmap))
            labels.append(f"{_query_label(t)} " + ("mean" if k == 0 else f"h{k - 1}"))
    fig = mosaic([enlarge(base, tile)] + tiles, ["image"] + labels, ncols=H + 1) if len(present) == 1 else \
        mosaic(tiles, labels, ncols=H + 1)
    table = _tidy_map(np.concatenate([maps[t] for t in present]), model=meta["model"], block=b,
                      token=[t for t in present for _ in range(H)], head=[str(k) for _ in present for k in range(H)])
    note = f"block {b}: {', '.join(_query_label(t) for t in present)}; rows are tokens, columns the mean then each head"
    if notes:
        note += ". " + " ".join(notes)
    return View("tokens", fig, {f"maps_{t}": maps[t] for t in present}, table, note, meta)


def distance_view(model, image, variant: str = "A") -> View:
    """Mean attention distance of every head and block for this image (variant A or B, docs/attention.md).
    Numbers: ``vitscope.analysis.attention.distance.evaluate``."""
    from vitscope.analysis.attention.distance import AttentionDistanceOptions, evaluate
    from vitscope.viz.attention_distance import plot_attention_distance

    x, _ = model_input(model, image)
    name = _model_name(model)
    result = evaluate({name: model}, x, AttentionDistanceOptions(variants=(variant,), limit=None))
    d = result.arrays["mean"][name][variant]                                             # L, H
    fig = plot_attention_distance(d, variant, title=f"{name}: mean attention distance ({variant})")
    t = result.table
    table = t[t["head"].notna()][["model", "block", "head", "metric", "value"]].reset_index(drop=True)
    note = (f"per head: mean over patch queries of the attention-weighted distance to the keys "
            f"({'normalised grid units' if variant == 'A' else 'pixels'}); block means "
            + ", ".join(f"{v:.2f}" for v in d.mean(1)))
    return View("distance", figure_to_array(fig), {"distance": d}, table, note, {"model": name, "variant": variant})


def logit_lens_view(model, image, block: int = -1, alpha: float = 0.55, size: int = DISPLAY) -> View:
    """Logit lens: every patch token of ``blocks.{block}.hook_resid_post`` projected by ``model.project_to_logits``;
    the map shows each patch's top class. The table also gives, per block, the share of patches whose top class
    is the model's prediction."""
    cfg = model.cfg
    if cfg.head == "none":
        return View("logit_lens", None, note="this model has no classification head to project onto",
                    meta={"model": _model_name(model)})
    b = normalize_block(int(block), cfg.depth)
    x, base = model_input(model, image)
    grid = grid_of(x, model)
    names = [f"blocks.{i}.hook_resid_post" for i in range(cfg.depth)]
    with torch.inference_mode():
        logits, cache = model.run_with_cache(x, names_filter=names)
        pred = int(logits[0].argmax())
        per_block, top_at_b, logit_at_b = [], None, None
        for i in range(cfg.depth):
            lay = model.token_layout(i, grid)
            pl = model.project_to_logits(cache[names[i]][0, lay.patches]).float()       # N, C
            top = pl.argmax(-1)
            per_block.append(float((top == pred).float().mean()))
            if i == b:
                top_at_b, logit_at_b = top.cpu().numpy(), pl.cpu().numpy()
    rows, cols = grid
    top_map = top_at_b.reshape(rows, cols)
    fig, legend = _class_map_figure(model, base, top_map, alpha, size)
    name = _model_name(model)
    table = pd.concat([
        _tidy_map(top_map.astype(float), model=name, block=b, metric="top_class"),
        pd.DataFrame({"model": name, "block": np.arange(cfg.depth), "metric": "share_of_patches_top_is_prediction",
                      "row": -1, "col": -1, "value": per_block}),
    ], ignore_index=True)
    note = (f"block {b}: top class of each patch token through the final norm and head; prediction "
            f"{class_label(model, pred)}; share of patches agreeing with it per block: "
            + ", ".join(f"{v:.2f}" for v in per_block) + ". " + legend)
    arrays = {"top_class": top_map, "patch_logits": logit_at_b.reshape(rows, cols, -1),
              "agreement_per_block": np.asarray(per_block)}
    return View("logit_lens", fig, arrays, table, note, {"model": name, "block": b, "prediction": pred})


PATCH_CORRUPTIONS = ("blur:0.5", "blur:1", "noise:0.3", "noise:0.1")
PATCH_SITES = ("resid_pre", "attn_out", "mlp_out")


def patching_view(model, image, patch: tuple[int, int] | None = None, corrupt: str = "blur:0.5",
                  site: str = "resid_pre", size: int = DISPLAY) -> View:
    """Activation patching of one patch position (denoising): in the run of the image's corrupted copy, that
    position's ``site`` activation is taken from the clean image, one block at a time; the true-class logit's
    effect per block (0 = the corrupted run, 1 = the clean one). ``patch``: (row, col), default the centre."""
    from vitscope.analysis.patching import PatchOptions, evaluate
    from vitscope.viz.patching import plot_block_effects

    name = _model_name(model)
    if model.cfg.head == "none":
        return View("patching", None, note="this model has no classification head to measure", meta={"model": name})
    x, base = model_input(model, image)
    grid = grid_of(x, model)
    r, c = (grid[0] // 2, grid[1] // 2) if patch is None else (int(patch[0]), int(patch[1]))
    if not (0 <= r < grid[0] and 0 <= c < grid[1]):
        raise ValueError(f"patch ({r}, {c}) is outside the {grid[0]} x {grid[1]} patch grid")
    res = evaluate({name: model}, x, PatchOptions(site=site, corrupt=corrupt, patches=f"{r},{c}"))
    t = res.table[res.table["metric"] == "effect"].sort_values("block")
    eff = t["value"].to_numpy()
    pairs = res.meta["pairs"][name]
    pcfg = model.preprocess_cfg
    mean, std = (pcfg.mean, pcfg.std) if pcfg is not None else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    corrupted = denormalize(pairs.corrupted[0].float().cpu(), mean, std)
    chart = plot_block_effects(eff, t["block"].tolist(), corrupted, (r, c), grid,
                               title=f"{site} at patch ({r}, {c}), {corrupt}")
    best = int(np.argmax(np.abs(eff)))
    note = (f"patch ({r}, {c}), {site}, corrupted by {corrupt}: the clean activation restores "
            + ", ".join(f"{v:+.2f}" for v in eff) + f" of the true-class logit at blocks 0-{len(eff) - 1} "
            f"(largest at block {int(t['block'].iloc[best])}); click another patch of the image")
    table = t[["model", "block", "site", "direction", "position", "row", "col", "metric", "value", "delta"]]
    return View("patching", mark_patch(enlarge(base, size), (r, c), grid), {"effect": eff}, table, note,
                {"model": name, "patch": [r, c], "site": site, "corrupt": corrupt},
                images={"effects": figure_to_array(chart)})


def _class_map_figure(model, base: np.ndarray, top_map: np.ndarray, alpha: float, size: int):
    """Each patch coloured by its class (tab20 by frequency), blended over the image, with a legend strip."""
    import matplotlib

    classes, counts = np.unique(top_map, return_counts=True)
    order = classes[np.argsort(-counts, kind="stable")]
    palette = (np.asarray(matplotlib.colormaps["tab20"].colors) * 255).astype(np.uint8)
    colour = {int(c): palette[k % 20] for k, c in enumerate(order)}
    rgb = np.stack([[colour[int(c)] for c in row] for row in top_map]).astype(np.uint8)      # rows, cols, 3
    img = enlarge(base, size)
    h, w = img.shape[:2]
    heat = np.asarray(Image.fromarray(rgb).resize((w, h), Image.NEAREST))
    fig = (img.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha + 0.5).astype(np.uint8)
    shown = order[:10]
    strip = Image.new("RGB", (w, 16 * len(shown) + 6), (255, 255, 255))
    d = ImageDraw.Draw(strip)
    n = top_map.size
    for k, c in enumerate(shown):
        d.rectangle([6, 4 + 16 * k, 18, 16 + 16 * k], fill=tuple(int(v) for v in colour[int(c)]))
        d.text((24, 4 + 16 * k), f"{class_label(model, int(c))}  ({int((top_map == c).sum())}/{n} patches)",
               fill=(0, 0, 0), font=_font())
    legend = ", ".join(f"{class_label(model, int(c))}: {int((top_map == c).sum())}" for c in shown)
    return np.concatenate([fig, np.asarray(strip)], axis=0), f"patches per class: {legend}"


def predictions_view(model, image, k: int = 5) -> View:
    """Top-``k`` classes with softmax probabilities."""
    if model.cfg.head == "none":
        return View("predictions", None, note="this model has no classification head",
                    meta={"model": _model_name(model)})
    x, _ = model_input(model, image)
    with torch.inference_mode():
        logits = model(x)[0].float().cpu()
    p = logits.softmax(-1)
    k = min(k, p.numel())
    top = p.topk(k)
    labels = [class_label(model, int(c)) for c in top.indices]
    table = pd.DataFrame({"model": _model_name(model), "rank": np.arange(1, k + 1),
                          "class": top.indices.numpy(), "name": labels,
                          "logit": logits[top.indices].numpy(), "probability": top.values.numpy()})
    known = "" if class_names(model) else " (the model carries no class names)"
    note = f"top-{k}: " + ", ".join(f"{lab} {v:.3f}" for lab, v in zip(labels, top.values.tolist())) + known
    return View("predictions", None, {"logits": logits.numpy()}, table, note, {"model": _model_name(model)},
                label={lab: float(v) for lab, v in zip(labels, top.values.tolist())})


# ----------------------------------------------------------------------------- files
def figure_to_array(fig, dpi: int = 100) -> np.ndarray:
    """Render a matplotlib Figure to RGB uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_view(view: View, folder: str | Path, stem: str | None = None) -> list[Path]:
    """Write the view: ``stem.png`` (+ one PNG per further picture), ``stem.<array>.npy``, ``stem.csv``, ``stem.json``."""
    from vitscope.viz.save import save_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or view.name
    out = []
    if view.figure is not None:
        Image.fromarray(view.figure).save(folder / f"{stem}.png", compress_level=PNG_LEVEL)
        out.append(folder / f"{stem}.png")
    for key, img in view.images.items():
        Image.fromarray(img).save(folder / f"{stem}_{key}.png", compress_level=PNG_LEVEL)
        out.append(folder / f"{stem}_{key}.png")
    for key, arr in view.arrays.items():
        np.save(folder / f"{stem}.{key}.npy", np.asarray(arr))
        out.append(folder / f"{stem}.{key}.npy")
    if view.table is not None:
        view.table.to_csv(folder / f"{stem}.csv", index=False)
        out.append(folder / f"{stem}.csv")
    out.append(save_json({**view.meta, "note": view.note}, folder / f"{stem}.json"))
    return out
