"""ciernik2025's attentive probe: one learnable query cross-attends over the inputs (layers or tokens).

Input x (B, N, D). ``query_token`` (1, 1, D) ~ N(0, 0.02^2); separate LayerNorms ``norm_q`` (query), ``norm_k`` and
``norm_v`` (inputs); ``q``, ``k``, ``v`` linear maps D -> A without bias, A = H * Dh with **Dh = 2 * floor(D / H)**;
scores scaled by Dh^-0.5, softmax over the N inputs per head, attention dropout; heads concatenated, output
projection ``proj`` (A -> D, with bias), projection dropout; no residual, no MLP. The query's output goes through
``BatchNorm1d(D)`` (affine, running statistics) and a linear ``classifier``.

The parameter names are ciernik2025's (``query_token``, ``attn_block.norm_{q,k,v}``, ``attn_block.cross_attn.{q,k,v,
proj}``, ``bn``, ``classifier``), so a state dict saved by ciernik2025's code loads with ``strict=True``. Modules are
built in ciernik2025's order (attention block, BatchNorm, classifier, then the query), so the same seed gives the same
initial weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def head_width(dim: int, num_heads: int) -> int:
    """ciernik2025's head width: twice CAE's ``dim // num_heads``."""
    return 2 * (dim // num_heads)


def default_heads(n_inputs: int, all_tokens: bool = False) -> int:
    """Heads = number of inputs for multi-layer sets, 8 for all-token inputs."""
    return 8 if all_tokens else max(1, int(n_inputs))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim // num_heads < 1:
            raise ValueError(f"attentive probe: {num_heads} heads is more than the width {dim}; use at most {dim} heads")
        self.num_heads = num_heads
        self.head_dim = head_width(dim, num_heads)
        all_dim = self.head_dim * num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, all_dim, bias=False)
        self.k = nn.Linear(dim, all_dim, bias=False)
        self.v = nn.Linear(dim, all_dim, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(all_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.record_attention = False
        self.attn_rec: list[torch.Tensor] = []          # (B, H, 1, N) per forward while recording

    def forward(self, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor) -> torch.Tensor:
        B, Nq, _ = xq.shape
        N = xk.shape[1]
        H = self.num_heads
        q = self.q(xq).reshape(B, Nq, H, -1).transpose(1, 2)                          # B, H, Nq, Dh
        k = self.k(xk).reshape(B, N, H, -1).transpose(1, 2)                           # B, H, N, Dh
        v = self.v(xv).reshape(B, N, H, -1).transpose(1, 2)                           # B, H, N, Dh
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)               # B, H, Nq, N
        if self.record_attention:
            self.attn_rec.append(attn.detach().cpu())
        attn = self.attn_drop(attn)
        out = (attn @ v).transpose(1, 2).reshape(B, Nq, -1)                           # B, Nq, A
        return self.proj_drop(self.proj(out))                                          # B, Nq, D


class AttentiveBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_k = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)

    def forward(self, xq: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.cross_attn(self.norm_q(xq), self.norm_k(x), self.norm_v(x))


class AttentiveProbe(nn.Module):
    """``AttentiveProbe(dim, num_heads, num_classes)``: (B, N, dim) -> logits (B, num_classes).

    ``attn_drop`` / ``proj_drop``: dropout on the attention weights / after the output projection (ciernik2025's
    ``--attention_dropout PROJ ATTN``). Set ``record_attention = True`` to keep the softmax weights of every forward
    (``attention_weights()`` returns them as (B, H, N)).
    """

    def __init__(self, dim: int, num_heads: int, num_classes: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim, self.num_heads, self.num_classes = int(dim), int(num_heads), int(num_classes)
        self.attn_block = AttentiveBlock(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        self.bn = nn.BatchNorm1d(dim, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)
        self.classifier = nn.Linear(dim, num_classes)
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.query_token, std=0.02)

    @property
    def record_attention(self) -> bool:
        return self.attn_block.cross_attn.record_attention

    @record_attention.setter
    def record_attention(self, on: bool) -> None:
        self.attn_block.cross_attn.record_attention = bool(on)
        if on:
            self.attn_block.cross_attn.attn_rec = []

    def attention_weights(self) -> torch.Tensor:
        """The recorded softmax weights of the query, (B_total, H, N)."""
        rec = self.attn_block.cross_attn.attn_rec
        if not rec:
            raise RuntimeError("no attention recorded: set probe.record_attention = True before the forward passes")
        return torch.cat(rec)[:, :, 0]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"attentive probe expects inputs (B, N, {self.dim}), got {tuple(x.shape)}")
        q = self.query_token.expand(x.shape[0], -1, -1)                               # B, 1, D
        feat = self.bn(self.attn_block(q, x)[:, 0])                                    # B, D
        logits = self.classifier(feat)
        return (logits, feat) if return_features else logits


@torch.no_grad()
def attention_over_inputs(probe: AttentiveProbe, x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, C) and the query's attention weights (B, H, N) of a trained probe in eval mode."""
    probe.eval()
    probe.record_attention = True
    try:
        logits = torch.cat([probe(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        weights = probe.attention_weights()
    finally:
        probe.record_attention = False
        probe.attn_block.cross_attn.attn_rec = []
    return logits, weights


def pad_stack(features: list[torch.Tensor], dim: int | None = None) -> torch.Tensor:
    """Inputs (N, D_i) or (N, T_i, D_i) -> (N, sum T_i, dim): zero-padded on the right to ``dim`` (default the largest
    width), vectors stacked as one token each, token maps concatenated along the token axis."""
    width = dim or max(f.shape[-1] for f in features)
    parts = []
    for f in features:
        f = f[:, None] if f.ndim == 2 else f
        if f.shape[-1] > width:
            raise ValueError(f"input width {f.shape[-1]} is larger than the shared width {width}")
        parts.append(F.pad(f, (0, width - f.shape[-1])))
    return torch.cat(parts, dim=1)


def save_attentive_probe(path, probe: AttentiveProbe, meta: dict | None = None) -> list:
    """``path.safetensors`` (ciernik2025's state-dict keys) + ``path.json`` (dim, heads, classes, dropout, meta)."""
    from vitscope.analysis.probes.linear import save_tensors

    ca = probe.attn_block.cross_attn
    m = {"kind": "attentive", "dim": probe.dim, "num_heads": probe.num_heads, "num_classes": probe.num_classes,
         "attn_drop": ca.attn_drop.p, "proj_drop": ca.proj_drop.p, **(meta or {})}
    return save_tensors(path, dict(probe.state_dict()), m)


def load_attentive_probe(path) -> tuple[AttentiveProbe, dict]:
    """An :class:`AttentiveProbe` (eval mode) and its metadata from :func:`save_attentive_probe`."""
    from vitscope.analysis.probes.linear import load_tensors

    t, meta = load_tensors(path)
    if meta.get("kind") != "attentive":
        raise ValueError(f"{path} is not an attentive probe (kind={meta.get('kind')!r})")
    probe = AttentiveProbe(meta["dim"], meta["num_heads"], meta["num_classes"], meta.get("attn_drop", 0.0),
                           meta.get("proj_drop", 0.0))
    probe.load_state_dict(t, strict=True)
    return probe.eval(), meta
