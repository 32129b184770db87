"""ciernik2025's probe training recipe, shared by the linear and the attentive probe.

- loss: class-weighted cross-entropy, ``w_c = N / (K n_c)`` with ``K`` = largest label + 1 and ``w_c = 0`` for labels
  without samples (PyTorch's weighted mean over a batch);
- AdamW (default betas / eps) with weight decay on **all** parameters;
- cosine schedule without warm-up (:func:`vitscope.train.schedule.cosine_lr`, the schedule of every trainer): before
  step ``s`` (0-based) ``lr = min + (base - min)(1 + cos(pi s / S)) / 2``, ``min = 1e-6``, ``S`` = epochs x batches
  per epoch (the last step uses ``s = S - 1``);
- at least 1,000 steps: when batches x epochs < 1000, epochs := ceil(1000 / batches);
- total gradient-norm clip 5;
- Gaussian jitter: each training sample gets N(0, 0.05^2) noise on its whole feature with probability 0.5;
- batch 2048 lowered by ciernik2025's rule (:func:`adjust_batch_size`).

Random numbers (vitscope's protocol, the same for every trainer in this package, so that the batched trainers equal
training each configuration alone): the module is built after ``torch.manual_seed(seed)`` inside a forked RNG (the
caller's global RNG is untouched); data order and jitter come from a ``torch.Generator`` on the data's device seeded
with ``seed``: per epoch ``randperm(N)``, per batch ``rand(B) < p`` then ``randn(B, *feature_shape) * std``. Dropout
draws from the forked global RNG, re-seeded with ``seed`` when training starts.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from vitscope.train.schedule import cosine_lr as schedule_lr
from vitscope.train.step import optimizer_step

MIN_LR = 1e-6
LR_GRID = (0.1, 0.01, 0.001)
WD_GRID = tuple(10.0 ** e for e in range(-6, 1))                       # np.logspace(-6, 0, 7)


@dataclass(frozen=True)
class ProbeTrainConfig:
    """One probe training: ciernik2025's defaults for feature probes (``vitscope train``'s options are
    :class:`vitscope.train.TrainConfig`)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 40
    batch_size: int = 2048
    min_steps: int = 1000
    grad_clip: float | None = 5.0
    jitter_std: float = 0.05
    jitter_p: float = 0.5
    min_lr: float = MIN_LR
    seed: int = 0

    def with_(self, **kw) -> "ProbeTrainConfig":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


TrainConfig = ProbeTrainConfig          # the old name, kept for old code


def grid(lrs=LR_GRID, wds=WD_GRID) -> list[tuple[float, float]]:
    """The tuning grid in ciernik2025's order: lr outer (0.1, 0.01, 0.001), weight decay inner (ascending)."""
    return [(float(lr), float(wd)) for lr in lrs for wd in wds]


# ----------------------------------------------------------------------------- the pieces of the recipe
def class_weights(targets: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """``w_c = N / (K n_c)`` (K = largest label + 1), 0 for labels without samples; padded with 0 to ``num_classes``."""
    targets = torch.as_tensor(targets).long()
    n = torch.bincount(targets).double()
    k = len(n)
    w = torch.where(n > 0, len(targets) / (k * n.clamp_min(1)), torch.zeros_like(n))
    if num_classes is not None and num_classes > k:
        w = torch.cat([w, w.new_zeros(num_classes - k)])
    return w.float()


def adjust_batch_size(batch_size: int, n: int, min_batches: int = 5) -> int:
    """ciernik2025's rule: keep ``batch_size`` if it gives >= 5 full batches and a last batch that is empty or at least
    half full; else the largest size from ``n // m + 1`` down to 17 (``m = max(5, full batches)``) that gives m full
    batches and such a last batch; 1 if none."""
    def ok(rem: int, b: int) -> bool:
        return rem == 0 or rem >= 0.5 * b

    full = n // batch_size
    if full >= min_batches and ok(n % batch_size, batch_size):
        return batch_size
    m = max(min_batches, full)
    for b in range(n // m + 1, 16, -1):
        if n // b >= m and ok(n % b, b):
            return b
    return 1


def split_batch_size(batch_size: int, n: int) -> int:
    """The tuning loaders' size: ``batch_size`` (+1 when it would leave a last batch of one sample)."""
    return batch_size + 1 if n % batch_size == 1 else batch_size


def schedule(n: int, batch_size: int, epochs: int, min_steps: int = 1000) -> tuple[int, int]:
    """(batches per epoch, epochs) after the 1000-step minimum."""
    nb = math.ceil(n / batch_size)
    if nb * epochs < min_steps:
        epochs = math.ceil(min_steps / nb)
    return nb, epochs


def cosine_lr(base: float, step: int, total: int, min_lr: float = MIN_LR) -> float:
    """Deprecated argument order (``base`` first), kept for old code: the schedule is
    :func:`vitscope.train.schedule.cosine_lr` ``(step, total, base, min_lr=...)``."""
    warnings.warn("vitscope.analysis.probes.cosine_lr(base, step, total) is deprecated; use "
                  "vitscope.train.schedule.cosine_lr(step, total, base, min_lr=...)", DeprecationWarning, stacklevel=2)
    return schedule_lr(step, total, base, min_lr=min_lr)


def make_optimizer(groups) -> torch.optim.AdamW:
    """The recipe's optimiser: ``torch.optim.AdamW`` (default betas / eps) with weight decay on every parameter of
    a group; ``groups`` is a parameter list or ``[{"params", "lr", "weight_decay"}, ...]`` (the fine-tuning recipe's
    backbone and head groups)."""
    return torch.optim.AdamW(groups)


def set_cosine_lrs(opt: torch.optim.Optimizer, bases: list[float], step: int, total: int,
                   min_lr: float = MIN_LR) -> list[float]:
    """Set each group's lr for 0-based ``step``: the cosine schedule from its base, with several groups ending at
    ``min_g = min_lr * base_g / max(base)`` (ciernik2025's rule: 1e-6 for the head, 1e-9 for a 1000x smaller backbone)."""
    top = max(bases)
    lrs = []
    for g, base in zip(opt.param_groups, bases):
        lo = min_lr if base == top else min_lr * base / top
        g["lr"] = schedule_lr(step, total, base, min_lr=lo)
        lrs.append(g["lr"])
    return lrs


def jitter(x: torch.Tensor, gen: torch.Generator, p: float, std: float, batch_axis: int = 0) -> torch.Tensor:
    """Per sample (along ``batch_axis``), with probability p, add N(0, std^2) to the whole feature (padded zeros
    included); dims before ``batch_axis`` (layers of a batched grid) share the sample's noise."""
    b, feat = x.shape[batch_axis], tuple(x.shape[batch_axis + 1:])
    apply = torch.rand(b, generator=gen, device=x.device) < p
    noise = torch.randn((b, *feat), generator=gen, device=x.device, dtype=x.dtype) * std
    noise = noise * apply.view(-1, *([1] * len(feat))).to(x.dtype)
    return x + noise.view(*([1] * batch_axis), *noise.shape)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None):
    """A forked global RNG seeded with ``seed`` (also the device's, for CUDA); the caller's RNG is restored after."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` after ``torch.manual_seed(seed)``, without touching the caller's RNG."""
    with seeded(seed):
        return factory()


# ----------------------------------------------------------------------------- one probe
def check_training_data(x: torch.Tensor, y: torch.Tensor, what: str = "training features") -> None:
    if len(x) != len(y):
        raise ValueError(f"{what}: {len(x)} rows but {len(y)} labels; features and labels must come from the same store")
    if len(y) == 0:
        raise ValueError(f"{what}: no labelled samples")
    if int(y.min()) < 0:
        raise ValueError(f"{what}: labels must be >= 0 (unlabelled samples have label -1; drop them first)")
    if len(torch.unique(y)) < 2:
        raise ValueError(f"{what}: only one class ({int(y[0])}) among the labels; a probe needs at least two classes")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: features contain NaN or Inf; re-extract them (e.g. with --dtype float32) or drop those rows")


def train_probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ProbeTrainConfig, num_classes: int,
                batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """Train ``model`` in place on features ``x`` (N, ...) and labels ``y`` (N,) with ciernik2025's recipe.

    ``batch_size`` overrides ciernik2025's rule (the tuning loaders pass theirs). Returns what was run: batch size,
    epochs, steps and the last loss.
    """
    dev = x.device
    y = y.to(dev).long()
    n = len(x)
    bs = batch_size or adjust_batch_size(cfg.batch_size, n)
    nb, epochs = schedule(n, bs, cfg.epochs, cfg.min_steps)
    total = nb * epochs
    w = class_weights(y, num_classes).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer([{"params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}])
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    model.train()
    step, loss = 0, torch.tensor(float("nan"))
    with seeded(cfg.seed, dev):
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen, device=dev)
            for b in range(nb):
                idx = perm[b * bs:(b + 1) * bs]
                xb = jitter(x[idx], gen, cfg.jitter_p, cfg.jitter_std)
                set_cosine_lrs(opt, [cfg.lr], step, total, cfg.min_lr)
                loss = F.cross_entropy(model(xb), y[idx], weight=w)
                optimizer_step(opt, loss, params, cfg.grad_clip)
                step += 1
                if progress is not None:
                    progress(1)
    model.eval()
    return {"batch_size": bs, "epochs": epochs, "steps": total, "loss": float(loss.detach())}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Logits of ``model`` in eval mode, in chunks."""
    model.eval()
    return torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else torch.empty(0)
