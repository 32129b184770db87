"""What to extract: sites (hook names), layers and token reductions, resolved against one model.

A *site* is a hook of the public contract. Short names cover what the seeds read:

=============  ==================================  ===========
short name     hook                                 layers
=============  ==================================  ===========
resid_pre      ``blocks.{i}.hook_resid_pre``        per block
resid_mid      ``blocks.{i}.hook_resid_mid``        per block
resid_post     ``blocks.{i}.hook_resid_post``       per block
ln1            ``blocks.{i}.ln1.hook_normalized``   per block
ln2            ``blocks.{i}.ln2.hook_normalized``   per block
attn_out       ``blocks.{i}.hook_attn_out``         per block
mlp_out        ``blocks.{i}.hook_mlp_out``          per block
ln_final       ``ln_final.hook_normalized``         none
clip_proj      ``ln_final.hook_normalized`` @ proj  none
embed          ``hook_full_embed``                  none
=============  ==================================  ===========

``clip_proj`` (CLIP models, head ``clip_proj``): the final norm followed by the CLIP projection, applied to
**every** token (open_clip's visual tower with ``pool_type='none'``: ``ln_post(x) @ proj``); its width is the
projection's (512 for ViT-B, 768 for ViT-L), and its CLS is the model's image embedding.

Full names work too: ``blocks.{i}.mlp.hook_pre``, ``blocks.*.attn.hook_v``, the suffix ``mlp.hook_pre``, or a
non-block hook such as ``ln_final.hook_normalized``. A site is stored under its short name when it has one,
else under its block suffix (``mlp.hook_pre``).

A *reduction* turns the tokens of one image (T, D) into a feature, using the model's token layout at that
block (never a hard-coded ``1:``):

=============  ===========  =============================================================
reduction      shape        what
=============  ===========  =============================================================
cls            (D,)         the CLS token
dist           (D,)         the distillation token (DeiT-distilled)
mean           (D,)         the mean of the patch tokens (prefix tokens excluded)
cls+mean       (2, D)       CLS and the patch mean, stacked (``reshape(N, -1)`` concatenates)
registers      (R, D)       the register tokens
patches        (N_p, D)     every patch token, in grid order (rows x cols)
all            (T, D)       every token
=============  ===========  =============================================================

Head-split hooks (``attn.hook_q/k/v/z``, B, T, H, Dh) are flattened to (B, T, H*Dh) first.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from vitscope.models.layout import TokenLayout

BLOCK_SHORT = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "ln1": "ln1.hook_normalized",
    "ln2": "ln2.hook_normalized",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
GLOBAL_SHORT = {
    "ln_final": "ln_final.hook_normalized",
    "embed": "hook_full_embed",
    "clip_proj": "ln_final.hook_normalized",       # then the CLIP projection on every token (see ``site_tokens``)
}
PROJECTED_SITES = ("clip_proj",)
# block hooks that have a token axis (axis 1) and can be reduced
BLOCK_SUFFIXES = tuple(BLOCK_SHORT.values()) + (
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "mlp.hook_pre", "mlp.hook_post",
)
GLOBAL_HOOKS = tuple(GLOBAL_SHORT.values())
REDUCTIONS = ("cls", "dist", "mean", "cls+mean", "registers", "patches", "all")
_SHORT_OF = {v: k for k, v in {**BLOCK_SHORT, **GLOBAL_SHORT}.items() if k not in PROJECTED_SITES}
_BLOCK_RE = re.compile(r"^blocks\.(\{i\}|\*|\d+)\.(.+)$")


def canonical_site(site: str) -> tuple[str, bool, int | None]:
    """``site`` -> (stored name, is_block_site, fixed layer or None). Raises ValueError for unknown sites."""
    s = site.strip()
    if s in BLOCK_SHORT:
        return s, True, None
    if s in GLOBAL_SHORT:
        return s, False, None
    fixed = None
    m = _BLOCK_RE.match(s)
    if m:
        s = m.group(2)
        if m.group(1).isdigit():
            fixed = int(m.group(1))
    if s in BLOCK_SUFFIXES:
        return _SHORT_OF.get(s, s), True, fixed
    if s in GLOBAL_HOOKS and not m:
        return _SHORT_OF[s], False, None
    raise ValueError(
        f"unknown or unsupported feature site {site!r}; use a short name {sorted(BLOCK_SHORT) + sorted(GLOBAL_SHORT)}, "
        f"a block hook 'blocks.{{i}}.<suffix>' with suffix in {list(BLOCK_SUFFIXES)}, or {list(GLOBAL_HOOKS)}. "
        "Attention patterns (B, H, T, T) have no token axis to reduce: use the attention analyses for them"
    )


def hook_name(site: str, layer: int | None) -> str:
    """Stored site name (+ layer) -> the model's hook name."""
    if site in GLOBAL_SHORT:
        return GLOBAL_SHORT[site]
    suffix = BLOCK_SHORT.get(site, site)
    return f"blocks.{layer}.{suffix}"


def site_tokens(model, site: str, t: torch.Tensor) -> torch.Tensor:
    """The tokens a site stores, from its hook's activation: for ``clip_proj`` the CLIP projection of every
    (final-normed) token, (B, T, D) -> (B, T, P); any other site unchanged."""
    if site in PROJECTED_SITES:
        return torch.nn.functional.linear(t, model.head.weight)
    return t


def site_width(cfg, site: str, hook: str) -> int:
    """The feature width of a site: the MLP width for mlp hooks, the projection width for ``clip_proj``."""
    if site in PROJECTED_SITES:
        return cfg.num_classes
    return cfg.hidden_dim if ".mlp.hook_" in f".{hook}" else cfg.embed_dim


def parse_list(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (whitespace stripped, empty entries dropped)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if str(v).strip()]


def parse_layers(layers: str | int | Iterable[int], depth: int) -> list[int]:
    """``"all"``, ``"0,3,11"``, ``"-1"``, ``"4:8"``, an int or a list of ints -> sorted block indices."""
    if isinstance(layers, int):
        items: list = [layers]
    elif isinstance(layers, str):
        if layers.strip() == "all":
            return list(range(depth))
        items = parse_list(layers)
    else:
        items = list(layers)
    out: set[int] = set()
    for it in items:
        if isinstance(it, str) and ":" in it:
            a, b = it.split(":", 1)
            start = int(a) if a.strip() else 0
            stop = int(b) if b.strip() else depth
            out.update(range(start + depth if start < 0 else start, stop + depth if stop < 0 else stop))
            continue
        try:
            i = int(it)
        except (TypeError, ValueError):
            raise ValueError(f"layers must be 'all', a comma list of block indices or a range a:b, got {it!r}") from None
        if i < 0:
            i += depth
        out.add(i)
    bad = sorted(i for i in out if not 0 <= i < depth)
    if bad:
        raise ValueError(f"layer(s) {bad} do not exist; this model has blocks 0..{depth - 1}")
    if not out:
        raise ValueError("no layers selected")
    return sorted(out)


def parse_reductions(tokens: str | Sequence[str]) -> list[str]:
    out = []
    for t in parse_list(tokens):
        t = t.lower()
        if t not in REDUCTIONS:
            raise ValueError(f"unknown token reduction {t!r}; choose among {list(REDUCTIONS)}")
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError(f"no token reduction given; choose among {list(REDUCTIONS)}")
    return out


# ----------------------------------------------------------------------------- reductions
def reduce_tokens(t: torch.Tensor, layout: TokenLayout, reduction: str) -> torch.Tensor:
    """Tokens (B, T, D) (or (B, T, H, Dh), flattened) -> the reduced feature (B, ...) on the same device."""
    if t.ndim > 3:
        t = t.flatten(2)                                                              # B, T, H*Dh
    if t.shape[1] != layout.n_tokens:
        raise ValueError(f"block {layout.block}: expected {layout.n_tokens} tokens from the layout, got {t.shape[1]}")
    if reduction == "cls":
        return t[:, layout.index_of("cls")]                                            # B, D
    if reduction == "dist":
        return t[:, layout.index_of("dist")]                                           # B, D
    if reduction == "mean":
        return t[:, layout.patches].mean(dim=1, dtype=torch.float32)                   # B, D
    if reduction == "cls+mean":
        cls = t[:, layout.index_of("cls")].float()
        return torch.stack([cls, t[:, layout.patches].mean(dim=1, dtype=torch.float32)], dim=1)  # B, 2, D
    if reduction == "registers":
        if not layout.registers:
            raise ValueError(f"there are no register tokens at block {layout.block}")
        r0, r1 = layout.registers[0], layout.registers[-1] + 1
        if r1 - r0 == len(layout.registers):
            return t[:, r0:r1]                                                         # B, R, D
        return t[:, list(layout.registers)]
    if reduction == "patches":
        return t[:, layout.patches]                                                    # B, N, D
    if reduction == "all":
        return t                                                                       # B, T, D
    raise ValueError(f"unknown token reduction {reduction!r}; choose among {list(REDUCTIONS)}")


def reduced_shape(layout: TokenLayout, reduction: str, width: int) -> tuple[int, ...]:
    """Per-sample shape of a reduction at a layout (validates that the tokens exist)."""
    if reduction in ("cls", "dist"):
        layout.index_of(reduction)
        return (width,)
    if reduction == "mean":
        return (width,)
    if reduction == "cls+mean":
        layout.index_of("cls")
        return (2, width)
    if reduction == "registers":
        if not layout.registers:
            raise ValueError(f"there are no register tokens at block {layout.block}")
        return (len(layout.registers), width)
    if reduction == "patches":
        return (layout.n_patches, width)
    if reduction == "all":
        return (layout.n_tokens, width)
    raise ValueError(f"unknown token reduction {reduction!r}")


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Entry:
    """One hook to attach: its name, the stored site, the layer (None for global sites), layout block, reductions."""

    hook: str
    site: str
    layer: int | None
    block: int
    reductions: tuple[str, ...]


@dataclass
class Plan:
    """The hooks to attach and the arrays they fill, for one model."""

    entries: list[Entry]
    sites: list[str]
    layers: list[int]
    reductions: list[str]
    stop_at: int | None            # forward(x, stop_at=...) argument; None = run through the final norm
    keys: list[tuple[str, int | None, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = [(e.site, e.layer, r) for e in self.entries for r in e.reductions]


def make_plan(model, sites: str | Sequence[str] = ("resid_post",), layers: str | Iterable[int] = "all",
              tokens: str | Sequence[str] = ("cls", "mean")) -> Plan:
    """Resolve sites x layers x reductions against ``model``; errors say what is missing and how to fix it."""
    cfg = model.cfg
    depth = cfg.depth
    site_list = parse_list(sites)
    if not site_list:
        raise ValueError("no feature site given; e.g. sites='resid_post'")
    reductions = parse_reductions(tokens)
    requested_layers = parse_layers(layers, depth)
    entries: list[Entry] = []
    seen = set()
    used_layers: set[int] = set()
    for raw in site_list:
        site, is_block, fixed = canonical_site(raw)
        if is_block:
            lays = [fixed] if fixed is not None else requested_layers
            if fixed is not None and not 0 <= fixed < depth:
                raise ValueError(f"site {raw!r}: block {fixed} does not exist; this model has blocks 0..{depth - 1}")
            for i in lays:
                name = hook_name(site, i)
                if name in seen:
                    continue
                seen.add(name)
                entries.append(Entry(name, site, i, i, tuple(reductions)))
                used_layers.add(i)
        else:
            name = hook_name(site, None)
            if name not in model.hook_dict:
                raise ValueError(f"site {raw!r}: this model has no {name} (e.g. no final norm)")
            if site in PROJECTED_SITES and (cfg.head != "clip_proj" or not hasattr(model, "head")):
                raise ValueError(f"site {raw!r} is the CLIP projection of every token; this model's head is "
                                 f"{cfg.head!r}, not a CLIP projection: use ln_final for non-CLIP models")
            if (name, site) in seen:
                continue
            seen.add((name, site))
            final = site in ("ln_final",) + PROJECTED_SITES
            entries.append(Entry(name, site, None, depth if final else 0, tuple(reductions)))
    for e in entries:
        if e.hook not in model.hook_dict:
            raise ValueError(f"this model has no hook {e.hook!r}")
        lay = model.token_layout(e.block)
        for r in e.reductions:
            try:
                reduced_shape(lay, r, 1)
            except ValueError as err:
                where = f"layer {e.layer}" if e.layer is not None else e.site
                if r in ("cls", "cls+mean") and not model.cfg.class_token:
                    raise ValueError(f"token reduction {r!r}: this model has no CLS token (it pools with "
                                     f"global_pool={model.cfg.global_pool!r}); use --tokens mean (the patch mean), or "
                                     f"the ln_final site's mean for its final features") from None
                if r in ("cls", "cls+mean", "dist") and model.cfg.class_token and model.cfg.cls_block > 0:
                    start = model.cfg.cls_block
                    raise ValueError(f"token reduction {r!r} at {where}: no CLS token yet, it enters at block "
                                     f"{start}; use --tokens mean for every block, or --blocks "
                                     f"{start}:{model.cfg.depth} for the CLS token") from None
                raise ValueError(f"token reduction {r!r} at {where}: {err}; drop it from tokens or choose other "
                                 f"layers") from None
    needs_final = any(e.site in ("ln_final",) + PROJECTED_SITES for e in entries)
    block_layers = [e.layer for e in entries if e.layer is not None]
    if needs_final:
        stop_at = None
    elif block_layers:
        stop_at = max(block_layers) + 1
    else:
        stop_at = 0                                                                   # only the embedding
    sites_out = list(dict.fromkeys(e.site for e in entries))
    return Plan(entries, sites_out, sorted(used_layers), reductions, stop_at)

