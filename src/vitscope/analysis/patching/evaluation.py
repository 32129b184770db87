"""The evaluation entry point of patching: :class:`PatchOptions` and :func:`evaluate` (``vitscope patch``, the study
analysis ``patching``, the report section and the app tab call it)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitscope.analysis.api import OptionError, Options, Result, tidy_table
from vitscope.analysis.patching.activation import DIRECTIONS, activation_patching, check_blocks
from vitscope.analysis.patching.attribution import agreement, attribution_patching
from vitscope.analysis.patching.corrupt import parse_corruption, parse_region
from vitscope.analysis.patching.pairs import make_pairs
from vitscope.analysis.patching.path import path_patching
from vitscope.analysis.patching.sites import SITES, site_kind

METHODS = ("activation", "attribution", "both")
_SITE_ALIASES = {**{h: s for s, h in SITES.items()}, **{h.replace("attn.", ""): s for s, h in SITES.items()}}


@dataclass
class PatchOptions(Options):
    """Options of :func:`evaluate`."""

    site: str = "resid_pre"            # resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, result, q, k, v,
                                       # pattern
    metric: Any = "logit"              # logit-diff:A,B | logit[:CLASS] | prob[:CLASS] | a callable on the logits
    direction: str = "denoising"       # denoising (clean into corrupted) or noising (corrupted into clean)
    method: str = "activation"         # activation, attribution (gradient estimate), both (and their agreement)
    corrupt: str | None = None         # edit | blur:S | noise:S | replace[:PATH]; None: the data gives pairs
    region: str | None = None          # patches the corruption touches, "r0:r1,c0:c1" (default: all)
    patches: str | None = None         # patch only these positions, "r0:r1,c0:c1" (position / pattern sites)
    receivers: str | None = None       # path patching: "logits" or "B.H.q,B.k,..." (cells: the sender heads)
    freeze_mlps: bool = False          # path patching: freeze MLP outputs as well as the other heads
    freeze_norm: bool = False          # attribution: LayerNorm scales held constant in the backward pass
    blocks: str = "all"                # all, "0,3,-1" or "4:8"
    per_pair: bool = False             # also one row per pair (column `pair`)
    limit: int | None = None           # pairs made from a dataset (default 8)
    seed: int = 0                      # seed of the noise corruption
    batch_size: int = 64               # patched runs per forward pass
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self.check_choice("site", tuple(SITES), aliases=_SITE_ALIASES)
        if not callable(self.metric):
            kind = str(self.metric).partition(":")[0].strip().lower()
            if kind not in ("logit-diff", "logit", "prob"):
                raise OptionError("metric", f"`metric` must be logit-diff:A,B, logit[:CLASS], prob[:CLASS] or a "
                                            f"callable, got {self.metric!r}")
        self.check_choice("direction", DIRECTIONS)
        self.check_choice("method", METHODS)
        for name, check in (("corrupt", parse_corruption), ("region", lambda t: parse_region(t, None, "region")),
                            ("patches", lambda t: parse_region(t, None, "patches"))):
            if getattr(self, name) is not None:
                try:
                    check(getattr(self, name))
                except ValueError as e:
                    msg = str(e)
                    msg = f"`{name}`{msg[len(name):]}" if msg.startswith(name) else f"`{name}`: {msg}"
                    raise OptionError(name, msg) from None
        if self.receivers is not None:
            if self.method != "activation":
                raise OptionError("method", "`method` must be activation with receivers (path patching has no "
                                            "gradient estimate here)")
        self.check_blocks("blocks")
        self.check_int("limit", optional=True)
        self.check_int("batch_size")
        self.check_int("seed", minimum=0)


def model_items(models) -> dict[str, Any]:
    """``{label: model}`` from one model, a list or a mapping (labels: the models' names)."""
    if isinstance(models, Mapping):
        return dict(models)
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    out = {}
    for m in items:
        label = str((getattr(m, "meta", None) or {}).get("name") or "model")
        while label in out:
            label += "'"
        out[label] = m
    return out


def _blocks(model, text) -> list[int]:
    from vitscope.features.access import parse_blocks

    return check_blocks(model, parse_blocks(text, model.cfg.depth) if isinstance(text, str) else text)


def evaluate(models, data=None, options: PatchOptions | None = None, **overrides) -> Result:
    """Activation patching (``method="activation"``), attribution patching (``"attribution"``), both with their
    agreement (``"both"``), or path patching (``receivers`` set) of every block.

    Args:
        models: a :class:`HookedViT`, a list or ``{label: model}``.
        data: ``(clean, corrupted)`` images (paths, PIL images, arrays or preprocessed tensors), a list of such
            pairs, a :class:`~vitscope.analysis.patching.pairs.PatchPairs`, or, with ``options.corrupt``, images /
            a dataset to corrupt (``edit`` needs synthetic data).
        options: :class:`PatchOptions` (keyword overrides on top).

    Returns a :class:`~vitscope.analysis.api.Result`: one row per model x block x cell (``metric`` "effect",
    ``value`` normalised so that 0 is the corrupted run and 1 the clean run; ``delta`` the raw change of the metric;
    ``site``, ``direction``, ``method``, ``quantity`` and the cell's ``position`` / ``token`` / ``row`` / ``col`` /
    ``head``); per-block summaries without cell columns (``effect_max``, and ``changed_share`` where the changed
    patches are known: see :meth:`PatchGrid.summary_rows`); ``agreement_r`` rows for ``method="both"``;
    ``figures()`` draws the grids.
    """
    opts = (options or PatchOptions()).replace(**overrides) if overrides else (options or PatchOptions())
    if data is None:
        raise ValueError("patching needs inputs: (clean, corrupted) images, or images with a corruption")
    items = model_items(models)
    rows: list[dict] = []
    grids: dict[str, dict[str, Any]] = {}
    pairs_of: dict[str, Any] = {}
    for label, model in items.items():
        if opts.device is not None:
            model = model.to(opts.device)
        pairs = make_pairs(model, data, opts.corrupt, opts.region, opts.limit, opts.seed)
        blocks = _blocks(model, opts.blocks)
        patches = parse_region(opts.patches, (pairs.clean.shape[-2] // model.cfg.patch_size,
                                              pairs.clean.shape[-1] // model.cfg.patch_size), "patches")
        kw = dict(metric=opts.metric, direction=opts.direction, blocks=blocks)
        g: dict[str, Any] = {}
        if opts.receivers is not None:
            g["path"] = path_patching(model, pairs, opts.receivers, freeze_mlps=opts.freeze_mlps,
                                      batch_size=opts.batch_size, progress=opts.progress, **kw)
        else:
            if opts.method in ("activation", "both"):
                g["activation"] = activation_patching(model, pairs, opts.site, patches=patches,
                                                      batch_size=opts.batch_size, progress=opts.progress, **kw)
            if opts.method in ("attribution", "both"):
                g["attribution"] = attribution_patching(model, pairs, opts.site, patches=patches,
                                                        freeze_norm=opts.freeze_norm, **kw)
        for grid in g.values():
            rows += grid.rows(label, per_pair=opts.per_pair) + grid.summary_rows(label, pairs.changed)
        if len(g) == 2:
            rows += [{"model": label, "site": g["activation"].site, "direction": opts.direction, "method": "both",
                      **r} for r in agreement(g["activation"], g["attribution"])]
        grids[label] = g
        pairs_of[label] = pairs
    first = next(iter(pairs_of.values()))
    table = tidy_table(rows, "patching", opts, dataset=first.description)
    return Result("patching", table, _summary(grids, first, opts), opts,
                  meta={"grids": grids, "pairs": pairs_of, "models": items,
                        "context": {"data": first.description or None}}, draw=_draw)   # the title counts the pairs


def _summary(grids: dict, pairs, opts: PatchOptions) -> str:
    label, g = next(iter(grids.items()))
    grid = g.get("path") or g.get("activation") or g.get("attribution")
    best_b, best_k, best = None, None, 0.0
    for b in grid.blocks:
        e = grid.effect(b)
        k = int(np.argmax(np.abs(e)))
        if best_b is None or abs(e[k]) > abs(best):
            best_b, best_k, best = b, k, float(e[k])
    cell = grid.cells[best_b][best_k]
    what = ("head " + str(cell["head"]) if "head" in cell else "") + \
        ((" " if "head" in cell else "") + _token(cell) if "token" in cell else "")
    kind = "path patching to " + str(opts.receivers) if opts.receivers else f"{grid.method} patching of {grid.site}"
    n = len(pairs)
    return (f"{kind} ({grid.direction}, {grid.metric}) on {n} pair{'s' if n != 1 else ''}: largest effect "
            f"{best:+.3f} at block {best_b}, {what} ({label})")


def _token(cell: dict) -> str:
    return f"patch ({cell['row']}, {cell['col']})" if cell["token"] == "patch" else cell["token"].upper()


# ----------------------------------------------------------------------------- figures
def _draw(result: Result) -> dict:
    from vitscope.runtime import slug

    figs: dict[str, Any] = {}
    many = len(result.meta["grids"]) > 1
    for label, g in result.meta["grids"].items():
        pre = f"{slug(label)}_" if many else ""
        pairs = result.meta["pairs"][label]
        model = result.meta["models"][label]
        t = result.table
        for method, grid in g.items():
            shown = t[(t["model"] == label) & (t["method"] == grid.method) & (t["metric"] == "effect")
                      & (t["site"] == grid.site)]
            name = f"{pre}patching_{'path' if method == 'path' else grid.site}" + \
                ("_attribution" if method == "attribution" else "")
            figs[name] = (draw_grid(grid, model, pairs, title=result.titled(_title(label, grid, pairs))), shown)
        if len(g) == 2:
            a, e = g["activation"], g["attribution"]
            r = t[(t["model"] == label) & (t["metric"] == "agreement_r")]
            overall = float(r[r["block"].isna()]["value"].iloc[0])
            pts = {a.site: (np.concatenate([a.effect(b) for b in a.blocks]),
                            np.concatenate([e.effect(b) for b in e.blocks]), overall)}
            from vitscope.viz.patching import plot_agreement

            figs[f"{pre}patching_{a.site}_agreement"] = (plot_agreement(pts, title=result.titled(
                f"{label}: attribution vs activation patching ({len(pairs)} pairs)")), r)
    return figs


def _title(label: str, grid, pairs) -> str:
    what = (f"path patching -> {grid.extra.get('receivers')}" if grid.method == "path"
            else f"{grid.method} patching, {grid.site}")
    n = len(pairs)
    return f"{label}: {what} ({grid.direction}, {grid.metric}; {n} pair{'s' if n != 1 else ''})"


def draw_grid(grid, model=None, pairs=None, title: str | None = None):
    """The figure of one grid: block x position maps over the image grid (position sites; over the clean image and
    with the changed patches outlined when there is one pair), block x head (head sites, path patching) or per-block
    heads x queries (pattern)."""
    from vitscope.viz.patching import plot_head_effects, plot_pattern_effects, plot_position_effects

    if grid.method == "path" or site_kind(grid.site) == "head":
        xl = "sender head" if grid.method == "path" else "head"
        return plot_head_effects(grid.head_map(), grid.blocks, title=title, xlabel=xl)
    if site_kind(grid.site) == "pattern":
        maps, _ = grid.pattern_maps()
        return plot_pattern_effects(maps, grid.blocks, title=title)
    maps, prefix = grid.position_maps()
    images, changed = {}, None
    if pairs is not None and len(pairs) == 1 and model is not None:
        from vitscope.viz.attention import denormalize

        pcfg = model.preprocess_cfg
        mean, std = (pcfg.mean, pcfg.std) if pcfg is not None else ((0.5,) * 3, (0.5,) * 3)
        images = {"clean": denormalize(pairs.clean[0].float().cpu(), mean, std),
                  "corrupted": denormalize(pairs.corrupted[0].float().cpu(), mean, std)}
        changed = pairs.changed[0] if pairs.changed is not None and not pairs.changed[0].all() else None
    return plot_position_effects(maps, grid.blocks, prefix, images=images, changed=changed, title=title)

