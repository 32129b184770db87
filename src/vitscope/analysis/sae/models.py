"""Sparse-autoencoder architectures, stacked: every parameter has a leading axis ``G`` of configurations.

One :class:`SAE` holds ``G`` autoencoders of one architecture and one width (they may differ in ``k``, the sparsity
coefficient and the learning rate, and read different blocks); a single SAE is ``G = 1``. Training a grid then costs
one batched matrix product per layer instead of ``G`` small ones, and every configuration shares the batch read.

Notation (per configuration): input ``x`` (d), pre-encoder bias ``b_dec`` (d), ``pre = (x - b_dec) W_enc + b_enc``
(w), latents ``z = f(pre)``, reconstruction ``x_hat = z W_dec + b_dec``. ``W_dec`` rows are the dictionary atoms.

Architectures (``arch``) and their papers:

* ``relu``       ``z = ReLU(pre)``; loss ``||x - x_hat||^2 + l1 * sum_i z_i ||W_dec_i||`` (Anthropic, "Towards
                 Monosemanticity" and its April 2024 update: the L1 scaled by decoder norms, decoder unconstrained);
                 dead latents are resampled.
* ``topk``       ``z = TopK_k(ReLU(pre))`` per token, unit-norm decoder, AuxK loss on dead latents (Gao et al. 2024).
* ``batchtopk``  the ``k * B`` largest activations over the whole batch are kept (Bussmann et al. 2024); at
                 inference ``z = ReLU(pre) * 1[pre > theta]`` with ``theta`` the running mean of the smallest kept
                 activation.
* ``jumprelu``   ``z = pre * H(pre - theta)``, ``theta = exp(log_threshold)`` per latent; loss ``||x - x_hat||^2 +
                 l1 * ||z||_0``, the threshold learnt through straight-through pseudo-derivatives with a rectangle
                 kernel of bandwidth ``bandwidth`` (Rajamanoharan et al. 2024, Gemma Scope); unit-norm decoder.
* ``matryoshka`` BatchTopK latents, loss summed over nested prefixes ``m_1 < ... < m_n = w`` of the dictionary
                 (Bussmann et al. 2025, "Learning multi-level features with Matryoshka SAEs"); unit-norm decoder.

Centring (``centre``, patch-token SAEs only): ``"none"`` reads each patch token as it is; ``"image"`` reads it less
its image's mean patch token (``hooks.centre_tokens``), and the splice adds that mean back to the reconstruction. In
a ViT most of a patch token's variance is shared by the patches of its image (95 % of demo-vit's block-4 MLP output);
an SAE of the raw tokens spends its active latents on that image-level part, one of the centred tokens on what is
local to the patch. The image's mean itself is what an SAE with ``tokens="mean"`` reads.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
UNIT_NORM = {"relu": False, "topk": True, "batchtopk": True, "jumprelu": True, "matryoshka": True}
USES_K = ("topk", "batchtopk", "matryoshka")
CENTRES = ("none", "image")                # what an SAE subtracts from its patch tokens (hooks.centre_tokens)


def check_centre(centre: str, tokens: str) -> None:
    """A one-line ValueError unless ``centre`` is one of :data:`CENTRES` and, when it centres, ``tokens`` is
    ``patches`` (an image's mean is taken over its patch tokens)."""
    if centre not in CENTRES:
        raise ValueError(f"centre must be one of {', '.join(CENTRES)}, got {centre!r}")
    if centre != "none" and tokens != "patches":
        raise ValueError(f"centre {centre!r} centres an image's patch tokens; use it with tokens 'patches', not "
                         f"{tokens!r}")


@dataclass
class SAEConfig:
    """What one stack of SAEs is. Per-configuration values (``k``, ``l1``, ``block``) are tuples of length G."""

    d_in: int
    width: int
    arch: str = "topk"
    k: tuple[int, ...] = (32,)
    l1: tuple[float, ...] = (0.0,)
    block: tuple[int, ...] = (0,)
    site: str = "resid_post"
    tokens: str = "patches"
    bandwidth: float = 0.001                # JumpReLU's kernel width (on normalised inputs)
    threshold_init: float = 0.001           # JumpReLU's initial threshold
    prefixes: tuple[int, ...] = ()          # Matryoshka's nested sizes (the last is the width)
    aux_k: int = 0                          # AuxK latents (0: d_in // 2)
    aux_coef: float = 1 / 32
    threshold_rate: float = 0.01            # BatchTopK: EMA rate of the inference threshold
    centre: str = "none"                    # "image": patch tokens less their image's mean patch token
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.k, self.l1, self.block = (tuple(v) for v in (self.k, self.l1, self.block))
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if isinstance(self.width, bool) or int(self.width) < 1:
            raise ValueError(f"width must be a positive number of latents, got {self.width}")
        if int(self.d_in) < 1:
            raise ValueError(f"d_in must be positive, got {self.d_in}")
        check_centre(self.centre, self.tokens)
        g = max(len(self.k), len(self.l1), len(self.block))
        self.k, self.l1, self.block = (v * g if len(v) == 1 else v for v in (self.k, self.l1, self.block))
        if not len(self.k) == len(self.l1) == len(self.block):
            raise ValueError(f"k, l1 and block must have one value per configuration (or one for all), got "
                             f"{len(self.k)}, {len(self.l1)}, {len(self.block)}")
        if self.arch in USES_K:
            bad = [k for k in self.k if not 1 <= int(k) <= self.width]
            if bad:
                raise ValueError(f"k must be between 1 and the width ({self.width}), got {bad[0]}; lower --active-latents or "
                                 f"raise --width")
        if self.arch == "matryoshka":
            p = tuple(int(m) for m in (self.prefixes or _default_prefixes(self.width)))
            if p[-1] != self.width:
                p = p + (self.width,)
            if any(b <= a for a, b in zip(p, p[1:])) or p[0] < 1:
                raise ValueError(f"matryoshka prefixes must increase from >= 1 to the width {self.width}, got {p}")
            self.prefixes = p

    @property
    def n(self) -> int:
        return len(self.k)

    def member(self, i: int) -> "SAEConfig":
        d = asdict(self)
        d.update(k=(self.k[i],), l1=(self.l1[i],), block=(self.block[i],))
        return SAEConfig(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def _default_prefixes(width: int) -> tuple[int, ...]:
    """Doubling group sizes: w/16, w/8, w/4, w/2, w (at least one latent each)."""
    out = sorted({max(1, width // 2 ** j) for j in range(4, -1, -1)})
    return tuple(out)


# ----------------------------------------------------------------------------- JumpReLU's straight-through functions
def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel K(u) = 1[|u| < 1/2]."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z = x * H(x - theta); d z / d x = H(x - theta); d z / d theta = -(theta / eps) K((x - theta) / eps)."""

    @staticmethod
    def forward(ctx, x, theta, eps):
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return x * (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        eps = ctx.eps
        gx = g * (x > theta).to(x.dtype)
        gt = -(theta / eps) * rectangle((x - theta) / eps) * g
        return gx, _sum_to(gt, theta.shape), None


class _Step(torch.autograd.Function):
    """H(x - theta); d / d x = 0; d / d theta = -(1 / eps) K((x - theta) / eps)."""

    @staticmethod
    def forward(ctx, x, theta, eps):
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, theta = ctx.saved_tensors
        eps = ctx.eps
        gt = -(1.0 / eps) * rectangle((x - theta) / eps) * g
        return torch.zeros_like(x), _sum_to(gt, theta.shape), None


def _sum_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (leading dims, then dims of size 1)."""
    while t.ndim > len(shape):
        t = t.sum(0) if len(shape) == 0 else t.sum(-len(shape) - 1)
    for i, s in enumerate(shape):
        if s == 1 and t.shape[i] != 1:
            t = t.sum(i, keepdim=True)
    return t


def jumprelu(x: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    return _JumpReLU.apply(x, theta, eps)


def step(x: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    return _Step.apply(x, theta, eps)


# ----------------------------------------------------------------------------- stacked products
def stacked_addmm(bias: torch.Tensor | None, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``bias + x @ w`` per member: (G, 1, n) + (G, B, m) @ (G, m, n). One member goes through ``addmm`` / ``mm``,
    which the CPU runs faster than a batched product of one (``torch.baddbmm``: 0.80x of saev's plain loop)."""
    if x.shape[0] == 1:
        out = torch.mm(x[0], w[0]) if bias is None else torch.addmm(bias[0], x[0], w[0])
        return out.unsqueeze(0)
    if bias is None:
        return torch.bmm(x, w)
    if x.device.type == "cpu":          # the CPU's baddbmm is slower than bmm and an add (docs/benchmarks-sae.md)
        return torch.bmm(x, w).add_(bias)
    return torch.baddbmm(bias, x, w)


class _SparseDecode(torch.autograd.Function):
    """``sum_j vals[g, b, j] * W_dec[g, idx[g, b, j]]``: the forward pass gathers the k rows per token
    (``embedding_bag``, B k d multiply-adds instead of B w d); the backward pass uses the dense products, which the
    CPU runs faster than scattered row updates."""

    @staticmethod
    def forward(ctx, vals, idx, W_dec):
        g, b, k = idx.shape
        w, d = W_dec.shape[1:]
        flat = (idx + torch.arange(g, device=idx.device).view(g, 1, 1) * w).reshape(g * b, k)
        out = torch.nn.functional.embedding_bag(flat, W_dec.reshape(g * w, d), mode="sum",
                                                per_sample_weights=vals.reshape(g * b, k))
        ctx.save_for_backward(vals, idx, W_dec)
        return out.view(g, b, d)

    @staticmethod
    def backward(ctx, grad):
        vals, idx, W_dec = ctx.saved_tensors
        g_vals = g_w = None
        if ctx.needs_input_grad[0]:
            g_vals = stacked_addmm(None, grad, W_dec.transpose(1, 2)).gather(-1, idx)
        if ctx.needs_input_grad[2]:
            z = vals.new_zeros(*idx.shape[:2], W_dec.shape[1]).scatter_add_(-1, idx, vals)   # pads add zero
            g_w = stacked_addmm(None, z.transpose(1, 2), grad)
        return g_vals, None, g_w


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """The decoder product of k-sparse latents: (G, B, k) values at latent indices ``idx`` (G, B, k) and atoms
    (G, w, d) -> (G, B, d), without building the dense (G, B, w) latents in the forward pass."""
    return _SparseDecode.apply(vals, idx, W_dec)


# ----------------------------------------------------------------------------- k-sparse activations (stacked)
def topk_values(pre: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, B, w) pre-activations -> (values, indices) (G, B, max k) of the ``k[g]`` largest of ReLU(pre) per token,
    in no particular order. A member with a smaller k selects only its own k (a selection costs with k) and is
    padded with zero values at latent 0, so consumers add, never overwrite (``scatter_add_``)."""
    ks = k.tolist()
    kmax = max(ks)
    if len(set(ks)) == 1:
        vals, idx = pre.topk(kmax, dim=-1, sorted=False)
        return vals.relu(), idx
    with torch.no_grad():                       # the selection; the values are gathered below, with their gradient
        idx = torch.zeros(*pre.shape[:2], kmax, dtype=torch.long, device=pre.device)
        for g, kg in enumerate(ks):
            idx[g, :, :kg] = pre[g].topk(kg, dim=-1, sorted=False).indices
    keep = torch.arange(kmax, device=pre.device) < k.view(-1, 1, 1)
    return pre.gather(-1, idx).relu() * keep, idx


def topk_per_token(pre: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(G, B, w) pre-activations -> the ``k[g]`` largest of ReLU(pre) per token kept, the rest zero."""
    vals, idx = topk_values(pre, k)
    return torch.zeros_like(pre).scatter_add_(-1, idx, vals)      # in place: no copy of the zeros


def topk_per_batch(pre: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchTopK: the ``k[g] * B`` largest of ReLU(pre) over the batch kept. Returns (latents, the smallest kept
    positive activation per configuration, NaN when none is positive)."""
    g, b, w = pre.shape
    flat = pre.relu().reshape(g, b * w)
    kk = (k * b).clamp(max=b * w)
    kmax = int(kk.max())
    vals, idx = flat.topk(kmax, dim=-1, sorted=True)
    keep = torch.arange(kmax, device=pre.device) < kk.view(-1, 1)
    kept = vals * keep
    z = torch.zeros_like(flat).scatter_(-1, idx, kept).reshape(g, b, w)
    pos = torch.where(keep & (vals > 0), vals, torch.full_like(vals, float("inf"))).amin(-1)
    return z, torch.where(torch.isinf(pos), torch.full_like(pos, float("nan")), pos)


# ----------------------------------------------------------------------------- the module
class SAE(nn.Module):
    """``G`` sparse autoencoders of one architecture and width (see the module docstring).

    Inputs are in the SAE's normalised units: ``x * scale`` where ``scale`` (G,) makes the mean squared norm of the
    training activations equal to ``d_in``; :meth:`normalise` / :meth:`denormalise` convert, and
    :meth:`reconstruct` takes and returns raw activations.
    """

    def __init__(self, cfg: SAEConfig, dtype=torch.float32) -> None:
        super().__init__()
        self.cfg = cfg
        g, d, w = cfg.n, cfg.d_in, cfg.width
        self.W_enc = nn.Parameter(torch.zeros(g, d, w, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(g, w, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(g, w, d, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(g, d, dtype=dtype))
        if cfg.arch == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((g, w), float(torch.tensor(cfg.threshold_init).log()),
                                                         dtype=dtype))
        self.register_buffer("scale", torch.ones(g, dtype=dtype))
        self.register_buffer("threshold", torch.zeros(g, dtype=dtype))       # BatchTopK's inference threshold
        self.register_buffer("k", torch.tensor(cfg.k, dtype=torch.long))
        self.register_buffer("l1", torch.tensor(cfg.l1, dtype=dtype))
        self.register_buffer("prefixes", torch.tensor(cfg.prefixes or (w,), dtype=torch.long))

    # ------------------------------------------------------------------ basics
    @property
    def n(self) -> int:
        return self.cfg.n

    @property
    def arch(self) -> str:
        return self.cfg.arch

    def member(self, i: int) -> "SAE":
        """Configuration ``i`` as a one-member SAE (a copy)."""
        out = SAE(self.cfg.member(i), dtype=self.W_enc.dtype)
        out.load_state_dict({k: v[i:i + 1].clone() if v.ndim and k != "prefixes" else v.clone()
                             for k, v in self.state_dict().items()})
        return out

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations (G, B, d) or (B, d) for G = 1 -> SAE units."""
        return x * self.scale.view(-1, *([1] * (x.ndim - 1))) if x.ndim == 3 else x * self.scale[0]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale.view(-1, *([1] * (x.ndim - 1))) if x.ndim == 3 else x / self.scale[0]

    def _stack(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if x.ndim == 2:
            if self.n != 1:
                raise ValueError(f"this SAE stacks {self.n} configurations: give inputs (G, B, d)")
            return x.unsqueeze(0), True
        return x, False

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm dictionary atoms (rows of W_dec)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component parallel to each unit-norm atom (Gao et al. 2024)."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec
        self.W_dec.grad.sub_((self.W_dec.grad * w).sum(-1, keepdim=True) * w)

    # ------------------------------------------------------------------ forward
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """(G, B, d) normalised inputs -> (G, B, w) encoder pre-activations."""
        return stacked_addmm(self.b_enc.unsqueeze(1), x - self.b_dec.unsqueeze(1), self.W_enc)

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Pre-activations -> latents. ``training`` selects BatchTopK's batch rule (else its threshold)."""
        a = self.arch
        if a == "relu":
            return pre.relu()
        if a == "topk":
            return topk_per_token(pre, self.k)
        if a in ("batchtopk", "matryoshka"):
            if training:
                return topk_per_batch(pre, self.k)[0]
            th = self.threshold.view(-1, 1, 1)
            return pre.relu() * (pre > th).to(pre.dtype)
        theta = self.log_threshold.exp().unsqueeze(1)
        return jumprelu(pre, theta, self.cfg.bandwidth)

    def encode(self, x: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Latents of raw activations (or of SAE-unit inputs with ``normalised=True``)."""
        x, single = self._stack(x)
        if not normalised:
            x = self.normalise(x)
        z = self.activate(self.pre_acts(x))
        return z[0] if single else z

    def decode(self, z: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Latents -> reconstruction (raw units unless ``normalised``)."""
        z, single = self._stack(z)
        xh = stacked_addmm(self.b_dec.unsqueeze(1), z, self.W_dec)
        if not normalised:
            xh = self.denormalise(xh)
        return xh[0] if single else xh

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations -> raw reconstruction (inference rule)."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    def hooks(self, model, block: int | None = None, tokens: str | None = None, keep_error: bool = False):
        """Context manager splicing this SAE into ``model`` at its site (``blocks.{block}.hook_resid_post``, ...)
        with hook points ``blocks.{block}.sae.hook_latents`` / ``hook_recons`` (:mod:`vitscope.analysis.sae.hooks`)."""
        from vitscope.analysis.sae.hooks import spliced

        return spliced(model, self, block, tokens, keep_error)

    # ------------------------------------------------------------------ training loss
    def loss(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training losses on normalised inputs (G, B, d): ``{"loss": (G,), "mse": (G,), "sparsity": (G,),
        "aux": (G,), "x_hat": reconstruction, "fired": (G, w) bool}`` plus the latents ``"z"`` (G, B, w), except
        for TopK, which decodes its k values per token sparsely, builds no dense latents and returns ``"l0"`` (G,)
        instead. ``mse`` is the squared error summed over the input dims, averaged over tokens;
        ``dead`` (G, w) bool marks dead latents for AuxK (TopK-family archs)."""
        a = self.arch
        pre = self.pre_acts(x)
        zero = x.new_zeros(self.n)
        out = {}
        if a == "topk":
            vals, idx = topk_values(pre, self.k)
            x_hat = sparse_decode(vals, idx, self.W_dec) + self.b_dec.unsqueeze(1)
            with torch.no_grad():
                on = (vals > 0).to(pre.dtype)
                out["fired"] = pre.new_zeros(self.n, pre.shape[-1]).scatter_add_(
                    -1, idx.flatten(1), on.flatten(1)) > 0
                out["l0"] = on.sum(-1).mean(-1)
        else:
            if a in ("batchtopk", "matryoshka"):
                z, kept_min = topk_per_batch(pre, self.k)
                self._last_min = kept_min.detach()
            else:
                z = self.activate(pre, training=True)
            x_hat = stacked_addmm(self.b_dec.unsqueeze(1), z, self.W_dec)
            with torch.no_grad():
                out["fired"] = z.amax(1) > 0                       # latents are >= 0: one pass, no mask
            out["z"] = z
        if a == "matryoshka":
            mse = zero
            ends = self.prefixes.tolist()
            start, partial = 0, self.b_dec.unsqueeze(1).expand_as(x)
            for end in ends:
                partial = partial + torch.bmm(z[..., start:end], self.W_dec[:, start:end])
                mse = mse + (x - partial).pow(2).sum(-1).mean(-1)
                start = end
        else:
            mse = (x - x_hat).pow(2).sum(-1).mean(-1)
        sparsity = zero
        if a == "relu":
            sparsity = (z * self.W_dec.norm(dim=-1).unsqueeze(1)).sum(-1).mean(-1)
        elif a == "jumprelu":
            theta = self.log_threshold.exp().unsqueeze(1)
            sparsity = step(pre, theta, self.cfg.bandwidth).sum(-1).mean(-1)
        aux = zero
        if a in USES_K and dead is not None and bool(dead.any()):
            aux = auxk_loss(pre, dead, (x - x_hat).detach(), self.W_dec, self.cfg.aux_k or max(1, x.shape[-1] // 2))
        loss = mse + self.l1 * sparsity + self.cfg.aux_coef * aux
        return {**out, "loss": loss, "mse": mse, "sparsity": sparsity, "aux": aux, "x_hat": x_hat}

    @torch.no_grad()
    def update_threshold(self) -> None:
        """BatchTopK: move the inference threshold towards the smallest activation kept in the last batch."""
        m = getattr(self, "_last_min", None)
        if m is None:
            return
        r = self.cfg.threshold_rate
        first = self.threshold == 0
        new = torch.where(first, m, (1 - r) * self.threshold + r * m)
        self.threshold.copy_(torch.where(torch.isnan(m), self.threshold, new))


def auxk_loss(pre: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor, W_dec: torch.Tensor,
              k_aux: int) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the ``k_aux`` largest pre-activations among dead latents reconstruct the residual
    ``e = x - x_hat``; loss = mean ||e_hat - e||^2 / mean ||e - mean(e)||^2 per configuration (G,)."""
    g, b, w = pre.shape
    k_aux = min(k_aux, w)
    masked = torch.where(dead.unsqueeze(1), pre, torch.full_like(pre, float("-inf")))
    vals, idx = masked.topk(k_aux, dim=-1)
    vals = torch.where(torch.isinf(vals), torch.zeros_like(vals), vals).relu()
    e_hat = sparse_decode(vals, idx, W_dec)
    num = (e_hat - residual).pow(2).sum(-1).mean(-1)
    den = (residual - residual.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1).clamp_min(1e-12)
    any_dead = dead.any(-1).to(pre.dtype)
    return num / den * any_dead


# ----------------------------------------------------------------------------- initialisation from data
def geometric_median(x: torch.Tensor, iters: int = 100, eps: float = 1e-8, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of ``x`` (N, d)."""
    y = x.mean(0)
    for _ in range(iters):
        d = (x - y).norm(dim=-1).clamp_min(eps)
        w = 1.0 / d
        new = (w.unsqueeze(-1) * x).sum(0) / w.sum()
        if (new - y).norm() <= tol * max(1.0, float(y.norm())):
            y = new
            break
        y = new
    return y


@torch.no_grad()
def init_from_data(sae: SAE, sample: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator],
                   b_dec_init: str = "geometric_median", relu_dec_norm: float = 0.1) -> None:
    """Initialise from a sample of normalised inputs (G, N, d): ``b_dec`` = geometric median (or mean, or zeros)
    of the sample; atoms random directions (unit norm; ``relu_dec_norm`` for the ReLU SAE, Anthropic's 0.05-1);
    the encoder the decoder's transpose (tied init); ``b_enc`` zero. ``generator``: one for the stack, or one per
    member (so that a member's start does not depend on the grid it is trained in)."""
    g, w, d = sae.W_dec.shape
    if b_dec_init == "geometric_median":
        sae.b_dec.copy_(torch.stack([geometric_median(s) for s in sample]))
    elif b_dec_init == "mean":
        sae.b_dec.copy_(sample.mean(1))
    elif b_dec_init == "zeros":
        sae.b_dec.zero_()
    else:
        raise ValueError(f"b_dec_init must be geometric_median, mean or zeros, got {b_dec_init!r}")
    gens = list(generator) if isinstance(generator, (list, tuple)) else None
    if gens is None:
        atoms = torch.randn(g, w, d, generator=generator, dtype=sae.W_dec.dtype)
    else:
        atoms = torch.stack([torch.randn(w, d, generator=gm, dtype=sae.W_dec.dtype) for gm in gens])
    atoms /= atoms.norm(dim=-1, keepdim=True)
    if sae.arch == "relu":
        atoms *= relu_dec_norm
    sae.W_dec.copy_(atoms)
    sae.W_enc.copy_(atoms.transpose(1, 2))
    sae.b_enc.zero_()


def scale_factor(sample: torch.Tensor) -> torch.Tensor:
    """Per configuration (G,): the factor that makes the mean squared norm of the sample (G, N, d) equal to d."""
    d = sample.shape[-1]
    return (d / sample.pow(2).sum(-1).mean(-1).clamp_min(1e-12)).sqrt()


def stack_members(saes: Sequence[SAE]) -> SAE:
    """One-member SAEs of the same architecture and width -> one stacked SAE."""
    cfg = saes[0].cfg
    d = cfg.to_dict()
    d.update(k=tuple(s.cfg.k[0] for s in saes), l1=tuple(s.cfg.l1[0] for s in saes),
             block=tuple(s.cfg.block[0] for s in saes))
    out = SAE(SAEConfig(**d), dtype=saes[0].W_enc.dtype)
    sd = {k: (torch.cat([s.state_dict()[k] for s in saes]) if k != "prefixes" else v)
          for k, v in saes[0].state_dict().items()}
    out.load_state_dict(sd)
    return out
