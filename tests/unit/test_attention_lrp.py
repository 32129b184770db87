"""Transformer Attribution (Chefer et al., CVPR 2021) against a plain, slow LRP written in this file.

The reference runs its own float64 forward pass from the model's weights, takes the gradient of the class
logit with respect to each block's attention by autograd on that forward, and propagates the relevance with
scalar loops, one rule at a time, as the paper's public code states them: LRP-alpha-beta (alpha 1, beta 0)
through every linear layer, the z-rule through both attention products (each half kept), the rescaled
z-rule at residual additions, sums at copies, identity through LayerNorm / GELU / softmax, the CLS token (or
the mean of the patches) taking the head's relevance; then (mean_heads(clamp(grad * R_A, 0)) + I) multiplied
through the blocks, rows not renormalised.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention import relevance as RV

EPS = 1e-9


def sdiv(a, b):
    if b == 0:
        return 0.0
    den = b + EPS
    if den == 0:
        den = EPS
    return a / den


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=16, patch_size=8, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=3,
                    **kw)
    m = HookedViT(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():                       # larger weights than the init, non-zero biases
            p.copy_(torch.randn_like(p) * 0.5)
        for blk in m.blocks:
            blk.ln1.weight.add_(1.0)
            blk.ln2.weight.add_(1.0)
    return m.double()


# ----------------------------------------------------------------------------- reference forward (float64)
def ref_forward(model, x):
    """Own forward pass; returns logits and, per block, the activations the rules need (patterns keep grad)."""
    cfg = model.cfg
    P = {k: v.detach().double() for k, v in model.named_parameters()}
    x = x.double().requires_grad_(True)
    h = F.conv2d(x, P["patch_embed.proj.weight"], P["patch_embed.proj.bias"], stride=cfg.patch_size)
    h = h.flatten(2).transpose(1, 2) + P["pos_embed"][:, 1:]                        # B, N, D
    pre = [P["cls_token"] + P["pos_embed"][:, :1]]
    if cfg.num_registers:
        pre.append(P["reg_token"])
    h = torch.cat([t.expand(x.shape[0], -1, -1) for t in pre] + [h], 1)
    acts = []
    H, D = cfg.num_heads, cfg.embed_dim
    Dh = D // H
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        a = {"x": h}
        n1 = F.layer_norm(h, (D,), P[p + "ln1.weight"], P[p + "ln1.bias"], cfg.norm_eps)
        qkv = n1 @ P[p + "attn.qkv.weight"].T + P[p + "attn.qkv.bias"]
        B, T, _ = qkv.shape
        q, k, v = qkv.reshape(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)                # B, H, T, Dh each
        A = ((q @ k.transpose(-1, -2)) / math.sqrt(Dh)).float().softmax(-1).double()   # as the model: fp32 softmax
        A.retain_grad()
        z = (A @ v).transpose(1, 2).reshape(B, T, D)
        o = z @ P[p + "attn.proj.weight"].T + P[p + "attn.proj.bias"]
        if cfg.layer_scale_init:
            o = o * P[p + "ls1.gamma"]
        mid = h + o
        n2 = F.layer_norm(mid, (D,), P[p + "ln2.weight"], P[p + "ln2.bias"], cfg.norm_eps)
        g = F.gelu(n2 @ P[p + "mlp.fc1.weight"].T + P[p + "mlp.fc1.bias"])
        m = g @ P[p + "mlp.fc2.weight"].T + P[p + "mlp.fc2.bias"]
        if cfg.layer_scale_init:
            m = m * P[p + "ls2.gamma"]
        a.update(n1=n1, q=q, k=k, v=v, A=A, z=z, o=o, mid=mid, n2=n2, g=g, m=m)
        h = mid + m
        acts.append(a)
    tok = F.layer_norm(h, (D,), P["ln_final.weight"], P["ln_final.bias"], cfg.norm_eps)
    if cfg.global_pool == "token":
        pooled = tok[:, 0]
    else:
        pooled = tok[:, 1 + cfg.num_registers:].mean(1)
    logits = pooled @ P["head.weight"].T + P["head.bias"]
    return logits, acts, tok, pooled, P


# ----------------------------------------------------------------------------- reference rules (loops)
def r_linear(R, X, W):
    """alpha=1, beta=0: only the positive products x_i w_oi carry relevance, shared in proportion."""
    n, nout = R.shape
    nin = X.shape[1]
    out = np.zeros((n, nin))
    for t in range(n):
        for o in range(nout):
            z = 0.0
            for i in range(nin):
                if X[t, i] * W[o, i] > 0:
                    z += X[t, i] * W[o, i]
            s = sdiv(R[t, o], z)
            for i in range(nin):
                if X[t, i] * W[o, i] > 0:
                    out[t, i] += X[t, i] * W[o, i] * s
    return out


def r_add(R, X1, X2):
    a = np.zeros_like(R)
    b = np.zeros_like(R)
    for idx in np.ndindex(R.shape):
        s = sdiv(R[idx], X1[idx] + X2[idx])
        a[idx], b[idx] = X1[idx] * s, X2[idx] * s
    sa, sb, sr = a.sum(), b.sum(), R.sum()
    fa = sdiv(abs(sa), abs(sa) + abs(sb)) * sr
    fb = sdiv(abs(sb), abs(sa) + abs(sb)) * sr
    return a * sdiv(fa, sa), b * sdiv(fb, sb)


def r_clone(R1, R2, X):
    out = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        out[idx] = (R1[idx] + R2[idx]) if X[idx] != 0 else 0.0
    return out


def r_matmul(R, A, V):
    """z-rule through Z = A V for 2-D A (n, m), V (m, p)."""
    n, m = A.shape
    p = V.shape[1]
    RA, RV = np.zeros_like(A), np.zeros_like(V)
    for i in range(n):
        for j in range(p):
            z = sum(A[i, k] * V[k, j] for k in range(m))
            s = sdiv(R[i, j], z)
            for k in range(m):
                RA[i, k] += A[i, k] * V[k, j] * s
                RV[k, j] += A[i, k] * V[k, j] * s
    return RA, RV


def ref_attribution(model, x, target, start=0):
    cfg = model.cfg
    logits, acts, tok, pooled, P = ref_forward(model, x)
    logits[:, target].sum().backward()
    out = []
    H, D = cfg.num_heads, cfg.embed_dim
    Dh = D // H
    npy = lambda t: t.detach().numpy()                                               # noqa: E731
    for s in range(x.shape[0]):
        R = np.zeros((1, cfg.num_classes))
        R[0, target] = 1.0
        R = r_linear(R, npy(pooled[s:s + 1]), npy(P["head.weight"]))[0]           # D
        T = tok.shape[1]
        Rt = np.zeros((T, D))
        t_np = npy(tok[s])
        if cfg.global_pool == "token":
            Rt[0] = [R[d] if t_np[0, d] != 0 else 0.0 for d in range(D)]
        else:
            first = 1 + cfg.num_registers
            N = T - first
            for d in range(D):
                mean = sum(t_np[first + j, d] for j in range(N)) / N
                for j in range(N):
                    Rt[first + j, d] = t_np[first + j, d] / N * sdiv(R[d], mean)
        R = Rt
        cams = {}
        for i in reversed(range(cfg.depth)):
            a = {k: npy(v[s]) for k, v in acts[i].items()}
            p = f"blocks.{i}."
            r_skip, r_m = r_add(R, a["mid"], a["m"])
            r_m = r_linear(r_m, a["g"], npy(P[p + "mlp.fc2.weight"]))
            r_m = r_linear(r_m, a["n2"], npy(P[p + "mlp.fc1.weight"]))
            R = r_clone(r_skip, r_m, a["mid"])
            r_skip, r_o = r_add(R, a["x"], a["o"])
            r_z = r_linear(r_o, a["z"], npy(P[p + "attn.proj.weight"]))           # T, D
            cam = np.zeros((H, T, T))
            r_q, r_k, r_v = np.zeros((H, T, Dh)), np.zeros((H, T, Dh)), np.zeros((H, T, Dh))
            for hh in range(H):
                rz = r_z[:, hh * Dh:(hh + 1) * Dh]
                ra, rv = r_matmul(rz, a["A"][hh], a["v"][hh])
                cam[hh], r_v[hh] = ra / 2, rv / 2
                rq, rkT = r_matmul(cam[hh], a["q"][hh], a["k"][hh].T)
                r_q[hh], r_k[hh] = rq / 2, rkT.T / 2
            cams[i] = cam
            r_qkv = np.zeros((T, 3 * D))
            for t in range(T):
                for which, rr in enumerate((r_q, r_k, r_v)):
                    for hh in range(H):
                        for d in range(Dh):
                            r_qkv[t, which * D + hh * Dh + d] = rr[hh, t, d]
            r_in = r_linear(r_qkv, a["n1"], npy(P[p + "attn.qkv.weight"]))
            R = r_clone(r_skip, r_in, a["x"])
        # rollout: (mean_h clamp(grad * cam, 0) + I), multiplied, no normalisation
        J = np.eye(T)
        for i in range(start, cfg.depth):
            g = acts[i]["A"].grad[s].numpy()
            M = np.zeros((T, T))
            for r in range(T):
                for c in range(T):
                    M[r, c] = sum(max(g[hh, r, c] * cams[i][hh, r, c], 0.0) for hh in range(H)) / H
                M[r, r] += 1.0
            J = M @ J
        out.append((J, cams))
    return out


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kw", [dict(), dict(num_registers=1), dict(global_pool="avg", layer_scale_init=0.7)],
                            ids=["plain", "register", "avgpool-layerscale"])
def test_transformer_attribution_matches_slow_lrp(kw):
    model = make_model(**kw)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ref = ref_attribution(model, x, target=1)
    from vitscope.analysis.attention.lrp import lrp_attention_relevance

    cams = lrp_attention_relevance(model, x, torch.tensor([1, 1]))
    for s in range(2):
        for i in range(model.cfg.depth):
            np.testing.assert_allclose(cams[i][s].numpy(), ref[s][1][i], rtol=1e-7, atol=1e-10)
    res = RV.relevance_from_model(model, x, target=1, method="chefer2021-lrp", normalize=None)
    assert torch.equal(res.targets, torch.tensor([1, 1]))
    for s in range(2):
        np.testing.assert_allclose(res.matrix[s].double().numpy(), ref[s][0], rtol=1e-7, atol=1e-10)
        first = 1 + model.cfg.num_registers
        np.testing.assert_allclose(res.maps[s].flatten().double().numpy(), ref[s][0][0, first:], rtol=2e-4,
                                   atol=1e-6)


def test_transformer_attribution_start_block_and_alias():
    model = make_model(seed=3)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    ref = ref_attribution(model, x, target=2, start=1)
    res = RV.relevance_from_model(model, x, target=2, method="transformer-attribution", start_block=1,
                                  normalize="minmax")
    m = ref[0][0][0, 1:]
    want = (m - m.min()) / (m.max() - m.min())
    np.testing.assert_allclose(res.maps[0].flatten().double().numpy(), want, rtol=1e-7, atol=1e-10)


def test_transformer_attribution_needs_a_linear_head():
    model = make_model(head="none")
    with pytest.raises(ValueError, match="chefer2021-generic"):
        RV.relevance_from_model(model, torch.randn(1, 3, 16, 16, dtype=torch.float64), method="chefer2021-lrp")
