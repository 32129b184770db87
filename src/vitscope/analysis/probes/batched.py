"""Many probes trained as one computation: stacked weights, batched matrix products, one data pass per step.

Every configuration of a tuning grid (learning rate x weight decay) and, for single-layer linear probes, every layer
shares the same seed, hence (train.py's random-number protocol) the same initial weights, the same batches and the
same jitter. Training them together is then the same computation as training each alone with
:func:`vitscope.analysis.probes.train.train_probe`: per configuration the weighted cross-entropy, the total-norm
gradient clip, AdamW (the same update as ``torch.optim.AdamW``) and the cosine schedule, with a learning rate and a
weight decay per configuration. Only the data pass and the matrix products are shared.

- :func:`train_linear_grid`: features (L, N, D) of L layers x G configurations -> weights (L, G, C, D), biases (L, G, C).
- :class:`AttentiveGrid`: G attentive probes on the same inputs (N, T, D); the query's scores are computed as
  ``LN(x) . (W_k^T q)``, so keys and values are never formed per configuration (the same numbers, reordered sums).
  Dropout masks are drawn once per step and shared, exactly as each probe alone would draw them.

Three parameters of the attentive probe get no gradient in exact arithmetic: ``norm_k.bias`` (a shift of every
score, removed by the softmax) and, without dropout, ``norm_v.bias`` and ``proj.bias`` (a shift of every sample,
removed by BatchNorm's batch mean). Their float-rounding gradients are amplified by Adam, in ciernik2025's module as
well, so they drift differently under any other summation order (and with them BatchNorm's running mean). Every
other parameter, and the outputs with batch statistics, agree with one-at-a-time training to float tolerance.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitscope.analysis.probes.attentive import AttentiveProbe, head_width
from vitscope.analysis.probes.train import (ProbeTrainConfig, adjust_batch_size, build_seeded, class_weights, jitter,
                                            schedule, seeded)
from vitscope.train.schedule import cosine_lr


# ----------------------------------------------------------------------------- the shared loop
class StackedAdamW:
    """AdamW over parameters whose leading ``nconf`` dims index configurations, each with its own lr and decay."""

    def __init__(self, params: dict[str, torch.Tensor], weight_decay: torch.Tensor, nconf: int,
                 betas=(0.9, 0.999), eps: float = 1e-8,
                 views: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> None:
        """``views[name](t)`` reshapes a per-configuration tensor (lr, weight decay) to broadcast against parameter
        ``name`` when the configuration dims are not its leading dims."""
        self.params, self.wd, self.nconf = params, weight_decay, nconf
        self.views = views or {}
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}
        self.buf: dict[str, torch.Tensor] = {}
        self.t = 0

    def _bc(self, t: torch.Tensor, p: torch.Tensor, name: str | None = None) -> torch.Tensor:
        if name in self.views:
            return self.views[name](t)
        return t.view(*t.shape, *([1] * (p.ndim - self.nconf)))

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        for k, p in self.params.items():
            g = p.grad
            lr_p, wd_p = self._bc(lr, p, k), self._bc(self.wd, p, k)
            p.mul_(1 - lr_p * wd_p)
            self.m[k].lerp_(g, 1 - self.b1)
            self.v[k].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            upd = self.buf.get(k)
            if upd is None:
                upd = self.buf[k] = torch.empty_like(p)
            torch.sqrt(self.v[k], out=upd).div_(math.sqrt(bc2)).add_(self.eps)          # denominator
            torch.div(self.m[k], upd, out=upd).mul_(lr_p / bc1)                          # no temporaries
            p.sub_(upd)


@torch.no_grad()
def clip_per_config(params: dict[str, torch.Tensor], max_norm: float, nconf: int) -> torch.Tensor:
    """``clip_grad_norm_`` for every configuration separately (total 2-norm over its parameters)."""
    sq = None
    for p in params.values():
        s = p.grad.pow(2).flatten(nconf).sum(-1)
        sq = s if sq is None else sq + s
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params.values():
        p.grad.mul_(coef.view(*coef.shape, *([1] * (p.ndim - nconf))))
    return norm


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """logits (..., B, C), y (B,), class weights w (C,) -> PyTorch's weighted mean cross-entropy per config (...)."""
    nll = -logits.log_softmax(-1).gather(-1, y.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)   # ..., B
    wy = w[y]
    return (nll * wy).sum(-1) / wy.sum()


def _batching(n: int, cfg: ProbeTrainConfig, batch_size: int | None) -> tuple[int, int, int]:
    """(batch size, batches per epoch, epochs): ciernik2025's batch-size rule unless ``batch_size`` is given, and the
    1000-step minimum."""
    bs = batch_size or adjust_batch_size(cfg.batch_size, n)
    nb, epochs = schedule(n, bs, cfg.epochs, cfg.min_steps)
    return bs, nb, epochs


def _draws(x: torch.Tensor, cfg: ProbeTrainConfig, batch_axis: int, bs: int, nb: int, epochs: int):
    """Yield ``(step, idx, jittered batch)`` in train.py's random-number protocol (a generator on the data's device
    seeded with ``cfg.seed``): per epoch ``randperm(N)``, per batch ``rand(B) < p`` then
    ``randn(B, *feature_shape) * std``; the jitter is drawn for one sample's feature (the dims after
    ``batch_axis``) and shared by whatever precedes it (layers)."""
    dev = x.device
    n = x.shape[batch_axis]
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen, device=dev)
        for b in range(nb):
            idx = perm[b * bs:(b + 1) * bs]
            yield step, idx, jitter(x.index_select(batch_axis, idx), gen, cfg.jitter_p, cfg.jitter_std, batch_axis)
            step += 1


def run_batched(forward: Callable[[torch.Tensor], torch.Tensor], params: dict[str, torch.Tensor], x: torch.Tensor,
                y: torch.Tensor, lr: torch.Tensor, wd: torch.Tensor, cfg: ProbeTrainConfig, num_classes: int,
                batch_axis: int = 0, batch_size: int | None = None, on_step: Callable[[], None] | None = None,
                progress: Callable[[int], None] | None = None) -> dict:
    """Train stacked ``params`` (leading dims = ``lr.shape``) with ciernik2025's recipe, one data pass per step.

    ``forward(xb)`` -> logits (*lr.shape, B, C). ``x`` holds the samples along ``batch_axis``; the jitter is drawn for
    one sample's feature (the dims after ``batch_axis``) and shared by whatever precedes it (layers).
    """
    dev = x.device
    y = y.to(dev).long()
    bs, nb, epochs = _batching(x.shape[batch_axis], cfg, batch_size)
    total = nb * epochs
    w = class_weights(y, num_classes).to(dev)
    nconf = lr.ndim
    for p in params.values():
        p.requires_grad_(True)
    opt = StackedAdamW(params, wd, nconf)
    with seeded(cfg.seed, dev):
        for step, idx, xb in _draws(x, cfg, batch_axis, bs, nb, epochs):
            now = cosine_lr(step, total, lr, min_lr=cfg.min_lr)
            loss = weighted_ce(forward(xb), y[idx], w).sum()
            for p in params.values():
                p.grad = None
            loss.backward()
            if cfg.grad_clip:
                clip_per_config(params, cfg.grad_clip, nconf)
            opt.step(now)
            if on_step is not None:
                on_step()
            if progress is not None:
                progress(1)
    for p in params.values():
        p.requires_grad_(False)
        p.grad = None
    return {"batch_size": bs, "epochs": epochs, "steps": total}


def _as_grid(lrs, wds, shape: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
    lr = torch.as_tensor(lrs, dtype=torch.float32, device=device).expand(shape).contiguous()
    wd = torch.as_tensor(wds, dtype=torch.float32, device=device).expand(shape).contiguous()
    return lr, wd


# ----------------------------------------------------------------------------- linear probes
def train_linear_grid(x: torch.Tensor, y: torch.Tensor, lrs, wds, cfg: ProbeTrainConfig, num_classes: int,
                      batch_size: int | None = None, progress=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Linear probes for L layers x G configurations as one computation.

    ``x``: (L, N, D) float32 features of L inputs with one width; ``lrs`` / ``wds``: (G,) or (L, G) learning rates and
    weight decays. Returns weights (L, G, C, D), biases (L, G, C) and the run info. Each probe equals
    ``train_probe(nn.Linear(D, C) built after manual_seed(cfg.seed), x[l], y, cfg.with_(lr=.., weight_decay=..))``.

    The gradient is written out rather than taken by autograd: the logits of every probe come from one
    ``baddbmm`` per step into a buffer that is turned into the weighted cross-entropy's gradient in place
    (``(softmax - onehot) w_y / sum w_y``), and the weights' gradient is one ``bmm`` with the batch. Weights are kept
    as (L, D, G, C) so that neither product copies them.
    """
    if x.ndim != 3:
        raise ValueError(f"train_linear_grid expects features (layers, N, D), got {tuple(x.shape)}")
    L, n, D = x.shape
    G = torch.as_tensor(lrs, dtype=torch.float32).shape[-1]
    lr, wd = _as_grid(lrs, wds, (L, G), x.device)
    init = build_seeded(lambda: nn.Linear(D, num_classes), cfg.seed)
    C = num_classes
    dev = x.device
    W = init.weight.detach().to(dev, x.dtype).t().reshape(1, D, 1, C).expand(L, D, G, C).contiguous()
    b = init.bias.detach().to(dev, x.dtype).reshape(1, 1, C).expand(L, G, C).contiguous()
    params = {"w": W, "b": b}
    views = {"w": lambda t: t.view(L, 1, G, 1), "b": lambda t: t.view(L, G, 1)}
    opt = StackedAdamW(params, wd, 2, views=views)
    y = y.to(dev).long()
    bs, nb, epochs = _batching(n, cfg, batch_size)
    total = nb * epochs
    w = class_weights(y, num_classes).to(dev, x.dtype)
    size = L * min(bs, n) * G * C
    zbuf, pbuf = torch.empty(size, device=dev, dtype=x.dtype), torch.empty(size, device=dev, dtype=x.dtype)
    gw = torch.empty_like(W)                                                              # reused every step
    with torch.no_grad(), seeded(cfg.seed, dev):
        for step, idx, xb in _draws(x, cfg, 1, bs, nb, epochs):                           # xb: L, B, D
            B = len(idx)
            yb = y[idx]
            logits = zbuf[:L * B * G * C].view(L, B, G, C)
            torch.baddbmm(b.view(L, 1, G * C), xb, W.view(L, D, G * C), out=logits.view(L, B, G * C))
            z = pbuf[:L * B * G * C].view(L, B, G, C)
            torch.ops.aten._softmax.out(logits, -1, False, out=z)                         # F.softmax, no new buffer
            z[:, torch.arange(B, device=dev), :, yb] -= 1                                 # - onehot
            wy = w[yb]
            z.mul_((wy / wy.sum()).view(1, B, 1, 1))                                      # d loss / d logits
            torch.bmm(xb.transpose(1, 2), z.view(L, B, G * C), out=gw.view(L, D, G * C))
            gb = z.sum(1)                                                                 # L, G, C
            if cfg.grad_clip:
                norm = torch.linalg.vector_norm(gw, dim=(1, 3)).square_().add_(gb.square().sum(-1)).sqrt_()  # L, G
                coef = (cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
                gw.mul_(coef.view(L, 1, G, 1))
                gb.mul_(coef.view(L, G, 1))
            W.grad, b.grad = gw, gb
            opt.step(cosine_lr(step, total, lr, min_lr=cfg.min_lr))
            if progress is not None:
                progress(1)
    W.grad = b.grad = None
    return W.permute(0, 2, 3, 1).contiguous(), b, {"batch_size": bs, "epochs": epochs, "steps": total}


@torch.no_grad()
def linear_logits(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (L, M, D), W (L, G, C, D), b (L, G, C) -> logits (L, G, M, C)."""
    return torch.einsum("lmd,lgcd->lgmc", x, W) + b[:, :, None, :]


# ----------------------------------------------------------------------------- attentive probes
_KEYS = {  # stacked name -> ciernik2025's state-dict key
    "query": "query_token", "nq_w": "attn_block.norm_q.weight", "nq_b": "attn_block.norm_q.bias",
    "nk_w": "attn_block.norm_k.weight", "nk_b": "attn_block.norm_k.bias",
    "nv_w": "attn_block.norm_v.weight", "nv_b": "attn_block.norm_v.bias",
    "wq": "attn_block.cross_attn.q.weight", "wk": "attn_block.cross_attn.k.weight",
    "wv": "attn_block.cross_attn.v.weight", "proj_w": "attn_block.cross_attn.proj.weight",
    "proj_b": "attn_block.cross_attn.proj.bias", "bn_w": "bn.weight", "bn_b": "bn.bias",
    "cls_w": "classifier.weight", "cls_b": "classifier.bias",
}


class AttentiveGrid:
    """G attentive probes (one per learning rate / weight decay) on the same inputs, trained as one computation.

    ``AttentiveGrid(dim, num_heads, num_classes, G, seed, attn_drop, proj_drop)``; :meth:`fit` trains them,
    :meth:`logits` evaluates them (eval mode: BatchNorm running statistics), :meth:`probe` returns configuration g as
    an :class:`AttentiveProbe` with the same weights.
    """

    def __init__(self, dim: int, num_heads: int, num_classes: int, n_configs: int, seed: int = 0,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, device="cpu") -> None:
        self.dim, self.H, self.C, self.G = dim, num_heads, num_classes, n_configs
        self.Dh = head_width(dim, num_heads)
        self.attn_drop, self.proj_drop = attn_drop, proj_drop
        self.seed = seed
        init = build_seeded(lambda: AttentiveProbe(dim, num_heads, num_classes), seed)
        sd = init.state_dict()
        G = n_configs
        self.params = {}
        for k, key in _KEYS.items():
            t = sd[key].detach().float().to(device)
            if k == "query":
                t = t.reshape(dim)
            self.params[k] = t.expand(G, *t.shape).contiguous()
        self.running_mean = sd["bn.running_mean"].float().to(device).expand(G, dim).contiguous()
        self.running_var = sd["bn.running_var"].float().to(device).expand(G, dim).contiguous()
        self.num_batches_tracked = 0

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """x (B, N, D) -> logits (G, B, C)."""
        p = self.params
        G, H, Dh, D = self.G, self.H, self.Dh, self.dim
        B, N, _ = x.shape
        xh = F.layer_norm(x, (D,))                                                     # B, N, D (no affine)
        qn = F.layer_norm(p["query"], (D,)) * p["nq_w"] + p["nq_b"]                    # G, D
        q = torch.einsum("gd,gad->ga", qn, p["wq"]).view(G, H, Dh)                     # G, H, Dh
        u = torch.einsum("ghe,ghed->ghd", q, p["wk"].view(G, H, Dh, D)) * Dh ** -0.5   # G, H, D: W_k^T q (scaled)
        uk = (u * p["nk_w"][:, None]).reshape(G * H, D)                                # G*H, D
        ck = (u * p["nk_b"][:, None]).sum(-1).reshape(G * H)                           # G*H
        scores = (xh.reshape(B * N, D) @ uk.t()).view(B, N, G * H) + ck                # B, N, G*H
        attn = scores.softmax(dim=1).transpose(1, 2)                                   # B, G*H, N
        if train and self.attn_drop > 0:
            mask = F.dropout(torch.ones(B, H, 1, N, device=x.device, dtype=x.dtype), self.attn_drop)   # B, H, 1, N
            attn = (attn.view(B, G, H, N) * mask.view(B, 1, H, N)).view(B, G * H, N)
        z = torch.bmm(attn, xh)                                                        # B, G*H, D: sum_n a LN(x_n)
        s = attn.sum(-1, keepdim=True)                                                 # B, G*H, 1 (1 without dropout)
        z = z.view(B, G, H, D) * p["nv_w"][None, :, None] + s.view(B, G, H, 1) * p["nv_b"][None, :, None]
        zh = z.permute(1, 2, 0, 3).reshape(G * H, B, D)                                # G*H, B, D
        wv = p["wv"].view(G, H, Dh, D).reshape(G * H, Dh, D)
        o = torch.bmm(zh, wv.transpose(1, 2)).view(G, H, B, Dh)                        # G, H, B, Dh
        o = o.permute(0, 2, 1, 3).reshape(G, B, H * Dh)                                # G, B, A
        o = torch.baddbmm(p["proj_b"][:, None], o, p["proj_w"].transpose(1, 2))       # G, B, D
        if train and self.proj_drop > 0:
            o = o * F.dropout(torch.ones(B, D, device=x.device, dtype=x.dtype), self.proj_drop)[None]
        if train:
            mean = o.mean(1)                                                           # G, D
            var = o.var(1, unbiased=False)
            with torch.no_grad():
                m = 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * B / max(B - 1, 1))
        else:
            mean, var = self.running_mean, self.running_var
        on = (o - mean[:, None]) / torch.sqrt(var[:, None] + 1e-5) * p["bn_w"][:, None] + p["bn_b"][:, None]
        return torch.baddbmm(p["cls_b"][:, None], on, p["cls_w"].transpose(1, 2))    # G, B, C

    def fit(self, x: torch.Tensor, y: torch.Tensor, lrs, wds, cfg: ProbeTrainConfig, batch_size: int | None = None,
            progress=None) -> dict:
        """Train all G probes on x (N, T, D), y (N,); ``lrs`` / ``wds`` of length G."""
        lr, wd = _as_grid(lrs, wds, (self.G,), x.device)

        def tick() -> None:
            self.num_batches_tracked += 1

        return run_batched(lambda xb: self.forward(xb, train=True), self.params, x, y, lr, wd,
                           cfg.with_(seed=self.seed), self.C, batch_axis=0, batch_size=batch_size, on_step=tick,
                           progress=progress)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Eval-mode logits (G, M, C)."""
        return torch.cat([self.forward(x[i:i + chunk], train=False) for i in range(0, len(x), chunk)], dim=1)

    def probe(self, g: int) -> AttentiveProbe:
        """Configuration g as an :class:`AttentiveProbe` (ciernik2025's keys)."""
        m = AttentiveProbe(self.dim, self.H, self.C, attn_drop=self.attn_drop, proj_drop=self.proj_drop)
        sd = {key: self.params[k][g].detach().clone().view_as(m.state_dict()[key]) for k, key in _KEYS.items()}
        sd["bn.running_mean"] = self.running_mean[g].clone()
        sd["bn.running_var"] = self.running_var[g].clone()
        sd["bn.num_batches_tracked"] = torch.tensor(self.num_batches_tracked)
        m.load_state_dict(sd, strict=True)
        return m.to(self.running_mean.device).eval()
