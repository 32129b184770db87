"""Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021, "Transformer Interpretability Beyond Attention
Visualization"): LRP relevance of every block's attention, weighted by its gradient, rolled out.

The relevance of the explained class (a one-hot vector at the logits) is propagated back to the input of
every block with the rules of that paper's public code:

- **linear layers** (head, ``proj``, ``qkv``, ``fc1``, ``fc2``): LRP-αβ with α = 1, β = 0 (biases ignored):
  ``R_in = x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻)`` with ``S = R / (x⁺ W⁺ᵀ + x⁻ W⁻ᵀ)``;
- **the two matrix products** of attention (``A V`` and ``Q Kᵀ``): the z-rule on both operands, each half
  kept (``R_A = A ⊙ (S Vᵀ) / 2``, ``R_V = V ⊙ (Aᵀ S) / 2`` with ``S = R / (A V)``; likewise for Q and K);
- **residual additions** ``y = x₁ + x₂``: the z-rule, then each branch rescaled so that its share of the
  total is ``|ΣR₁| / (|ΣR₁| + |ΣR₂|)`` of ``ΣR`` (sums over one sample; the public code sums over the batch,
  the same for one image);
- **copies** of the stream (the skip and the branch): the two relevances add;
- **LayerNorm, GELU, softmax, LayerScale, dropout**: relevance passes unchanged;
- **pooling**: the CLS token takes the head's relevance (``global_pool="token"``); mean pooling spreads it
  over the patches by the z-rule.

Division is the public code's ``safe_divide``: ``a / (b + 1e-9)``, and 0 where ``b == 0``. The relevance of
the attention probabilities of block b, ``R_A`` (B, H, T, T), times the gradient of the class score with
respect to them, clamped at 0 and averaged over heads, plus the identity, is multiplied through the blocks
(no row normalisation): ``J_n = (Ā_n + I) · J_{n-1}``. The CLS row over the patches is the map.

Tokens that enter at a later block lose their relevance where they are inserted (they are constants), and
the rollout embeds the matrices as :mod:`~vitscope.analysis.attention.rollout` does.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from vitscope.analysis.attention.rollout import _blocks, rollout_matrices
from vitscope.analysis.attention.tokens import index_map
from vitscope.models.layout import TokenLayout

EPS = 1e-9


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (b + 1e-9)``, 0 where ``b == 0`` (the public code's stabiliser, sign-independent)."""
    den = b.clamp(min=EPS) + b.clamp(max=EPS)
    den = den + (den == 0).to(den.dtype) * EPS
    return a / den * (b != 0).to(b.dtype)


def lrp_linear(R: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """LRP-αβ (α = 1, β = 0) through ``y = x Wᵀ``: R (..., out), x (..., in), W (out, in) -> (..., in)."""
    pw, nw = w.clamp(min=0), w.clamp(max=0)
    px, nx = x.clamp(min=0), x.clamp(max=0)
    s = safe_divide(R, px @ pw.T + nx @ nw.T)
    return px * (s @ pw) + nx * (s @ nw)


def lrp_add(R: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of ``y = x1 + x2`` split between the two inputs, each rescaled per sample (see module doc)."""
    s = safe_divide(R, x1 + x2)
    a, b = x1 * s, x2 * s
    dims = tuple(range(1, R.ndim))
    sa, sb, sr = a.sum(dims, keepdim=True), b.sum(dims, keepdim=True), R.sum(dims, keepdim=True)
    tot = sa.abs() + sb.abs()
    fa, fb = safe_divide(sa.abs(), tot) * sr, safe_divide(sb.abs(), tot) * sr
    return a * safe_divide(fa, sa), b * safe_divide(fb, sb)


def lrp_clone(r1: torch.Tensor, r2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Relevance of a tensor used twice: the sum of both, 0 where the tensor is 0."""
    return (r1 + r2) * (x != 0).to(x.dtype)


def lrp_matmul(R: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z-rule through ``Z = a @ b`` (batched): R like Z -> (R_a, R_b), before the halving."""
    s = safe_divide(R, a @ b)
    return a * (s @ b.transpose(-1, -2)), b * (a.transpose(-1, -2) @ s)


def _hook_names(model) -> list[str]:
    depth = model.cfg.depth
    names = ["hook_pooled", "hook_logits"] + (["ln_final.hook_normalized"] if model.ln_final is not None else [])
    for i in range(depth):
        p = f"blocks.{i}."
        names += [p + n for n in ("hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
                                  "attn.hook_v", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
                                  "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_post", "hook_mlp_out",
                                  "hook_resid_post")]
    return names


def check_supported(model) -> None:
    cfg = model.cfg
    if cfg.head not in ("linear", "clip_proj"):
        raise ValueError(f"Transformer Attribution (chefer2021-lrp) propagates a class relevance from a linear "
                         f"classification head; this model's head is {cfg.head!r}. Use --method chefer2021-generic")
    if cfg.global_pool not in ("token", "avg"):
        raise ValueError(f"Transformer Attribution needs token or mean pooling, got {cfg.global_pool!r}")
    if cfg.global_pool == "token" and not cfg.class_token:
        raise ValueError("Transformer Attribution with token pooling needs a CLS token")


@torch.no_grad()
def lrp_attention_relevance(model, x: torch.Tensor, targets: torch.Tensor, dtype=torch.float64
                            ) -> dict[int, torch.Tensor]:
    """LRP relevance of every block's attention probabilities for class ``targets`` (B,) -> {block: (B, H, T, T)}."""
    check_supported(model)
    cfg = model.cfg
    depth = cfg.depth
    was = model.training
    model.eval()
    try:
        _, c = model.run_with_cache(x, names_filter=_hook_names(model))
    finally:
        model.train(was)
    c = {k: v.to(dtype) for k, v in c.items()}

    def w(lin) -> torch.Tensor:
        return lin.weight.detach().to(dtype)

    grid = (x.shape[-2] // cfg.patch_size, x.shape[-1] // cfg.patch_size)
    B = x.shape[0]
    pooled = c["hook_pooled"]                                                         # B, D
    R = torch.zeros(B, c["hook_logits"].shape[-1], dtype=dtype, device=pooled.device)
    R[torch.arange(B), targets.to(pooled.device)] = 1.0                               # B, C one-hot
    R = lrp_linear(R, pooled, w(model.head))                                          # B, D
    last = c[f"blocks.{depth - 1}.hook_resid_post"]                                   # B, T, D (fc_norm / ln: identity)
    tokens = c["ln_final.hook_normalized"] if model.ln_final is not None else last
    Rt = torch.zeros_like(tokens)
    if cfg.global_pool == "token":
        Rt[:, 0] = R * (tokens[:, 0] != 0).to(dtype)
    else:
        lay = model.token_layout(depth, grid)
        pt = tokens[:, lay.patches]                                                   # B, N, D
        s = safe_divide(R, pt.mean(1))                                                # B, D
        Rt[:, lay.patches] = pt * s[:, None] / pt.shape[1]
    R = Rt
    cams: dict[int, torch.Tensor] = {}
    for i in reversed(range(depth)):
        p = f"blocks.{i}."
        blk = model.blocks[i]
        # second residual: resid_post = resid_mid + mlp_out
        r_skip, r_mlp = lrp_add(R, c[p + "hook_resid_mid"], c[p + "hook_mlp_out"])
        r_mlp = lrp_linear(r_mlp, c[p + "mlp.hook_post"], w(blk.mlp.fc2))              # B, T, Dm
        r_mlp = lrp_linear(r_mlp, c[p + "ln2.hook_normalized"], w(blk.mlp.fc1))        # B, T, D
        R = lrp_clone(r_skip, r_mlp, c[p + "hook_resid_mid"])
        # first residual: resid_mid = resid_pre + attn_out
        r_skip, r_att = lrp_add(R, c[p + "hook_resid_pre"], c[p + "hook_attn_out"])
        z = c[p + "attn.hook_z"]                                                      # B, T, H, Dh
        Bz, T, H, Dh = z.shape
        r_att = lrp_linear(r_att, z.reshape(Bz, T, H * Dh), w(blk.attn.proj))          # B, T, D
        r_att = r_att.reshape(Bz, T, H, Dh).transpose(1, 2)                           # B, H, T, Dh
        A = c[p + "attn.hook_pattern"]                                                # B, H, T, T
        q, k, v = (c[p + f"attn.hook_{n}"].transpose(1, 2) for n in "qkv")           # B, H, T, Dh
        r_a, r_v = lrp_matmul(r_att, A, v)
        r_a, r_v = r_a / 2, r_v / 2
        cams[i] = r_a
        r_q, r_k = lrp_matmul(r_a, q, k.transpose(-1, -2))                            # softmax: identity
        r_q, r_k = r_q / 2, r_k.transpose(-1, -2) / 2
        r_qkv = torch.stack([r_q, r_k, r_v], dim=2)                                   # B, H, 3, T, Dh
        r_qkv = r_qkv.permute(0, 3, 2, 1, 4).reshape(Bz, T, 3 * H * Dh)              # B, T, (3 H Dh)
        r_in = lrp_linear(r_qkv, c[p + "ln1.hook_normalized"], w(blk.attn.qkv))       # B, T, D
        R = lrp_clone(r_skip, r_in, c[p + "hook_resid_pre"])
        if i > 0:                                                                     # drop tokens inserted at i
            where = index_map(model.token_layout(i - 1, grid), model.token_layout(i, grid))
            R = R[:, where]
    return cams


def transformer_attribution(cams: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                            gradients: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                            layouts: Mapping[int, TokenLayout] | Sequence[TokenLayout], start_block: int = 0,
                            end_block: int | None = None) -> torch.Tensor:
    """``J_n = (mean_heads(clamp(∇A ⊙ R_A, 0)) + I) · J_{n-1}`` -> (B, T_end, T_end), rows not renormalised."""
    cams_d, blocks = _blocks(cams, start_block, end_block)
    grads = dict(gradients) if isinstance(gradients, Mapping) else dict(enumerate(gradients))
    lays = dict(layouts) if isinstance(layouts, Mapping) else dict(enumerate(layouts))
    mats = {}
    for b in blocks:
        if b not in grads or grads[b].shape != cams_d[b].shape:
            raise ValueError(f"block {b}: gradient missing or of a different shape than its relevance")
        a = (grads[b].to(cams_d[b].dtype) * cams_d[b]).clamp(min=0).mean(1)            # B, T, T
        mats[b] = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return rollout_matrices(mats, lays, blocks)
