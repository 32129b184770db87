"""What patching patches and measures: sites (hook names per block), the cells of a grid (token positions, heads,
head x query rows) as masks, the token each position is, and the metric on the logits.

A *site* is a short name for one hook of every block:

=============  ==============================  =====================================  ==========================
site           hook                            activation                             a cell is
=============  ==============================  =====================================  ==========================
resid_pre      ``blocks.{i}.hook_resid_pre``   B, T, D                                a token position
resid_mid      ``blocks.{i}.hook_resid_mid``   B, T, D                                a token position
resid_post     ``blocks.{i}.hook_resid_post``  B, T, D                                a token position
attn_out       ``blocks.{i}.hook_attn_out``    B, T, D                                a token position
mlp_out        ``blocks.{i}.hook_mlp_out``     B, T, D                                a token position
z, q, k, v     ``blocks.{i}.attn.hook_z``, ... B, T, H, Dh                            a head (every position)
result         ``blocks.{i}.attn.hook_result`` B, T, H, D                             a head (every position)
pattern        ``blocks.{i}.attn.hook_pattern`` B, H, T, T                            a head x query row
=============  ==============================  =====================================  ==========================

A cell is a boolean mask over the site's cell axes (positions (T,), heads (H,), or heads x queries (H, T)), so one
cell may also be a group (every position of an object, every head of a block).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

POSITION_SITES = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
                  "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}
HEAD_SITES = {"z": "attn.hook_z", "result": "attn.hook_result", "q": "attn.hook_q", "k": "attn.hook_k",
              "v": "attn.hook_v"}
PATTERN_SITES = {"pattern": "attn.hook_pattern"}
SITES = {**POSITION_SITES, **HEAD_SITES, **PATTERN_SITES}
METRICS = ("logit-diff:A,B", "logit", "logit:CLASS", "prob", "prob:CLASS")


def resolve_site(model, site: str) -> str:
    """The short name of ``site`` (``"resid_pre"``, ``"z"``; hook spellings such as ``"attn.hook_z"`` or
    ``"blocks.3.attn.hook_z"`` are accepted); one line listing the valid ones when the model has no such site."""
    s = str(site).strip()
    if s.startswith("blocks."):
        s = s.split(".", 2)[-1] if s.count(".") >= 2 else s
    for short, hook in SITES.items():
        if s in (short, hook, hook.replace("attn.", "")):
            if f"blocks.0.{hook}" not in model.hook_dict:
                break
            return short
    valid = [k for k, h in SITES.items() if f"blocks.0.{h}" in model.hook_dict]
    close = difflib.get_close_matches(s, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"site {site!r} does not exist on this model; valid sites: {', '.join(valid)}{hint}")


def hook_name(site: str, block: int) -> str:
    return f"blocks.{block}.{SITES[site]}"


def site_kind(site: str) -> str:
    """``"position"``, ``"head"`` or ``"pattern"``."""
    return "position" if site in POSITION_SITES else "head" if site in HEAD_SITES else "pattern"


# ----------------------------------------------------------------------------- tokens and cells
@dataclass(frozen=True)
class Token:
    """One token position at a block: its index, what it is (``cls``, ``dist``, ``reg0``..., ``patch``) and, for
    a patch, its (row, col) in the grid."""

    index: int
    kind: str
    row: int | None = None
    col: int | None = None

    @property
    def name(self) -> str:
        return f"patch {self.row},{self.col}" if self.kind == "patch" else self.kind.upper()


def tokens_at(model, block: int, grid: tuple[int, int] | None = None) -> list[Token]:
    """Every token entering ``block`` in sequence order, named through ``model.token_layout`` (late CLS,
    registers and DIST land where the layout says)."""
    from vitscope.analysis.attention.tokens import token_names

    lay = model.token_layout(block, grid)
    cols = lay.grid[1]
    out = []
    for i, name in enumerate(token_names(lay)):
        if name.startswith("patch"):
            p = i - lay.patches.start
            out.append(Token(i, "patch", p // cols, p % cols))
        else:
            out.append(Token(i, name))
    return out


def cell_masks(site: str, n_tokens: int, n_heads: int, device=None) -> torch.Tensor:
    """One cell per position (K=T, T), per head (K=H, H) or per head x query (K=H*T, H, T), as boolean masks."""
    kind = site_kind(site)
    if kind == "position":
        return torch.eye(n_tokens, dtype=torch.bool, device=device)
    if kind == "head":
        return torch.eye(n_heads, dtype=torch.bool, device=device)
    return torch.eye(n_heads * n_tokens, dtype=torch.bool, device=device).reshape(-1, n_heads, n_tokens)


def expand_mask(site: str, mask: torch.Tensor) -> torch.Tensor:
    """Cell masks (K, *cell axes) -> broadcastable over the activation (K, 1, ...) with the batch axis at 1."""
    kind = site_kind(site)
    if kind == "position":                      # act B, T, D
        return mask[:, None, :, None]
    if kind == "head":                          # act B, T, H, X
        return mask[:, None, None, :, None]
    return mask[:, None, :, :, None]            # act B, H, T, T


def cell_labels(site: str, tokens: Sequence[Token], n_heads: int) -> list[dict]:
    """The table columns that name each cell of :func:`cell_masks` (position / token / row / col, head, query)."""
    kind = site_kind(site)
    if kind == "position":
        return [{"position": t.index, "token": t.kind, "row": t.row, "col": t.col} for t in tokens]
    if kind == "head":
        return [{"head": h} for h in range(n_heads)]
    return [{"head": h, "position": t.index, "token": t.kind, "row": t.row, "col": t.col}
            for h in range(n_heads) for t in tokens]


# ----------------------------------------------------------------------------- the metric
def class_names(model) -> list[str] | None:
    """The class names a model carries (``cfg.meta["classes"]`` or ``meta["classes"]``), None when unknown."""
    for meta in (getattr(model.cfg, "meta", None), getattr(model, "meta", None)):
        if isinstance(meta, dict) and meta.get("classes") and len(meta["classes"]) == model.cfg.num_classes:
            return [str(c) for c in meta["classes"]]
    return None


def class_index(model, name: str | int) -> int:
    """A class name (or index) -> its index in the head; one line listing the names when it is not there."""
    C = model.cfg.num_classes
    names = class_names(model) or []
    if isinstance(name, int) or str(name).strip().lstrip("-").isdigit():
        c = int(name)
        if not 0 <= c < C:
            raise ValueError(f"class {c} is not in the head; it has classes 0..{C - 1}")
        return c
    s = str(name).strip()
    if s in names:
        return names.index(s)
    low = [n.lower() for n in names]
    if s.lower() in low:
        return low.index(s.lower())
    if not names:
        raise ValueError(f"class {s!r}: this model carries no class names; give class indices 0..{C - 1}")
    close = difflib.get_close_matches(s, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} classes)" if len(names) > 12 else "")
    raise ValueError(f"class {s!r} is not in the head{hint}; its classes are {shown} (or give an index)")


Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def parse_metric(model, spec) -> tuple[Metric, str]:
    """``spec`` -> (``fn(logits (N, C), labels (N,)) -> (N,)``, a name for the table).

    ``"logit-diff:A,B"`` logit of A minus logit of B; ``"logit"`` / ``"prob"`` the true class's logit / softmax
    probability (the label given, else the clean prediction); ``"logit:CLASS"`` / ``"prob:CLASS"`` a fixed class;
    a callable ``fn(logits) -> (N,)`` or ``fn(logits, labels) -> (N,)``.
    """
    if callable(spec):
        import inspect

        try:
            n_args = len(inspect.signature(spec).parameters)
        except (TypeError, ValueError):
            n_args = 2
        fn = spec if n_args >= 2 else (lambda logits, labels: spec(logits))
        return fn, getattr(spec, "__name__", "custom")
    s = str(spec).strip()
    kind, _, arg = s.partition(":")
    kind = kind.strip().lower()
    if model.cfg.head == "none":
        raise ValueError("this model has no classification head; give a callable metric on its output")
    if kind == "logit-diff":
        parts = [p for p in arg.split(",") if p.strip()]
        if len(parts) != 2:
            raise ValueError(f"metric logit-diff takes two classes, 'logit-diff:A,B', got {s!r}")
        a, b = (class_index(model, p) for p in parts)
        if a == b:
            raise ValueError(f"metric {s!r} compares a class with itself; give two different classes")
        return (lambda logits, labels: logits[:, a] - logits[:, b]), f"logit_diff_{a}_{b}"
    if kind in ("logit", "prob"):
        fixed = class_index(model, arg) if arg.strip() else None

        def fn(logits, labels, fixed=fixed, kind=kind):
            vals = logits if kind == "logit" else logits.float().softmax(-1)
            idx = labels if fixed is None else torch.full_like(labels, fixed)
            return vals.gather(1, idx[:, None].long())[:, 0]
        return fn, kind if fixed is None else f"{kind}_{fixed}"
    raise ValueError(f"unknown metric {s!r}; expected one of {', '.join(METRICS)} or a callable")


def normalise(patched, clean, corrupted, tol: float = 1e-6):
    """``(patched - corrupted) / (clean - corrupted)``: 0 = the corrupted run, 1 = the clean run. Where clean and
    corrupted give the same metric (nothing to recover, e.g. identical inputs) the effect is 0."""
    import numpy as np

    patched, clean, corrupted = (np.asarray(v, dtype=np.float64) for v in (patched, clean, corrupted))
    den = clean - corrupted
    ok = np.abs(den) > tol * np.maximum(1.0, np.maximum(np.abs(clean), np.abs(corrupted)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, (patched - corrupted) / np.where(ok, den, 1.0), 0.0)
