"""Probe benchmarks: tuning linear probes on 13 layers x 21 configurations batched vs one after another, and the
attentive probe's training throughput over 24 inputs.

    python benchmarks/probes.py [--scale 1.0] [--steps 1000] [--rounds 1] [--threads 1] [--sequential-sample K]

Part 1: 13 layers x 21 (lr, weight decay) configurations, N training rows of width 384, 100 classes, the same steps:
``train_linear_grid`` (one computation) against training the 273 probes one after another, two ways:
``train_probe`` (vitscope's one-configuration trainer, same random numbers, so the same accuracies) and a
transcription of ciernik2025's loop (a ``Dataset`` whose transform adds the Gaussian jitter sample by sample, a
shuffling ``DataLoader``, ``nn.Linear``, weighted ``CrossEntropyLoss``, ``AdamW``, the cosine schedule set every
step, ``clip_grad_norm_``; its own random numbers, so accuracies agree only statistically). ``--sequential-sample``
probes of each are timed and scaled to 273; every method gets one untimed warm-up run first.
Part 2: the attentive probe over 24 inputs (width 384) of N rows: training images per second (one configuration,
and the 21-configuration grid batched).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from vitscope.analysis.probes import (AttentiveGrid, ProbeTrainConfig, grid, linear_logits, train_linear_grid,
                                      train_probe)
from vitscope.analysis.probes.train import MIN_LR, build_seeded, class_weights, predict
from vitscope.train.schedule import cosine_lr


class _GaussianNoise:
    """ciernik2025's ``GaussianNoise(mean=0, std=0.05, p=0.5)`` dataset transform, drawn per sample."""

    def __init__(self, std=0.05, p=0.5):
        self.std, self.p = std, p

    def __call__(self, x):
        if torch.rand(1) < self.p:
            return x + torch.randn_like(x) * self.std
        return x


class _Features(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def seed_loop(x, y, lr, wd, steps, bs, C, seed=0, device="cpu"):
    """One linear probe trained the way ciernik2025's ``LinearProbe.train`` does it (see the module docstring):
    features in host memory, each batch moved to ``device``."""
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], C).to(device)
    loader = torch.utils.data.DataLoader(_Features(x, y, _GaussianNoise()), batch_size=bs, shuffle=True)
    crit = nn.CrossEntropyLoss(weight=class_weights(y, C).to(device))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    epochs = -(-steps // len(loader))
    total, step = epochs * len(loader), 0
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, lr, min_lr=MIN_LR)
            loss = crit(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
    return model


def _data(L, n, d, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(L, c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = centers[:, y] * 0.15 + torch.randn(L, n, d, generator=g)
    x = x / x.norm(dim=-1, keepdim=True)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="share of the 10,000 rows used")
    ap.add_argument("--steps", type=int, default=1000, help="optimiser steps per probe")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sequential-sample", type=int, default=273, help="probes timed one after another (scaled to 273)")
    ap.add_argument("--skip-attentive", action="store_true")
    ap.add_argument("--skip-seed", action="store_true", help="leave out the transcription of ciernik2025's loop")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (features on the device; ciernik2025's loop keeps "
                                                    "them in host memory and moves each batch, as its code does)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    L, D, C = 13, 384, 100
    n = int(10000 * a.scale)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available; run on a GPU machine or use --device cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    x, y = _data(L, n + 2000, D, C)
    xtr_host, ytr_host = x[:, :n].contiguous(), y[:n]
    xtr, ytr, xte, yte = x[:, :n].to(dev), y[:n].to(dev), x[:, n:].to(dev), y[n:].to(dev)
    configs = grid()
    lrs, wds = [c[0] for c in configs], [c[1] for c in configs]
    bs = 2048 if n >= 10240 else max(17, n // 5)
    nb = -(-n // bs)
    cfg = ProbeTrainConfig(epochs=max(1, a.steps // nb), min_steps=a.steps, batch_size=bs)
    print(f"linear: {L} layers x {len(configs)} configs, {n} rows x {D}, {C} classes, batch {bs}, "
          f">= {a.steps} steps, {a.threads} thread(s), {dev}")
    k = min(a.sequential_sample, L * len(configs))
    pairs = [(l, g) for l in range(L) for g in range(len(configs))]
    pick = pairs[:: max(1, len(pairs) // k)][:k]
    warm = cfg.with_(min_steps=3, epochs=1)                       # untimed first runs (lazy initialisation)
    train_linear_grid(xtr[:, :bs], ytr[:bs], lrs, wds, warm, C, batch_size=bs)
    train_probe(build_seeded(lambda: nn.Linear(D, C), 0).to(dev), xtr[0, :bs], ytr[:bs], warm, C, batch_size=bs)
    seed_loop(xtr_host[0, :bs], ytr_host[:bs], 0.01, 0.0, 3, bs, C, device=dev)
    sync()
    t_b, t_s, t_seed = [], [], []
    diffs, diffs_seed = [], []
    for _ in range(a.rounds):                                   # interleaved rounds
        t0 = time.perf_counter()
        W, b, info = train_linear_grid(xtr, ytr, lrs, wds, cfg, C, batch_size=bs)
        sync()
        t_b.append(time.perf_counter() - t0)
        acc_b = (linear_logits(xte, W, b).argmax(-1) == yte).float().mean(-1)          # L, G
        t0 = time.perf_counter()
        for l, g in pick:
            m = build_seeded(lambda: nn.Linear(D, C), cfg.seed).to(dev)
            train_probe(m, xtr[l], ytr, cfg.with_(lr=lrs[g], weight_decay=wds[g]), C, batch_size=bs)
            acc = float((predict(m, xte[l]).argmax(-1) == yte).float().mean())
            diffs.append(abs(acc - float(acc_b[l, g])))
        t_s.append((time.perf_counter() - t0) * len(pairs) / len(pick))
        if a.skip_seed:
            continue
        t0 = time.perf_counter()
        for l, g in pick:
            m = seed_loop(xtr_host[l], ytr_host, lrs[g], wds[g], info["steps"], bs, C, device=dev)
            acc = float((predict(m, xte[l]).argmax(-1) == yte).float().mean())
            diffs_seed.append(abs(acc - float(acc_b[l, g])))
        t_seed.append((time.perf_counter() - t0) * len(pairs) / len(pick))
    fmt = lambda v: f"min {min(v):.1f} s, median {statistics.median(v):.1f} s, max {max(v):.1f} s"
    scaled = f"  ({len(pick)} timed, scaled)" if k < len(pairs) else ""
    print(f"  batched (1 computation):          {fmt(t_b)}  ({info['steps']} steps)")
    print(f"  vitscope train_probe x{len(pairs)}:       {fmt(t_s)}{scaled}")
    print(f"  speed-up vs train_probe one after another: {statistics.median(t_s) / statistics.median(t_b):.1f}x "
          f"(rounds: {', '.join(f'{s_ / b_:.1f}x' for s_, b_ in zip(t_s, t_b))}); test accuracy difference: max "
          f"{100 * max(diffs):.3f} points over {len(pick)} probes; batched mean accuracy {100 * float(acc_b.mean()):.1f}%")
    if t_seed:
        print(f"  ciernik2025's loop x{len(pairs)}:            {fmt(t_seed)}{scaled}")
        print(f"  speed-up vs ciernik2025's loop one after another: {statistics.median(t_seed) / statistics.median(t_b):.1f}x "
              f"(rounds: {', '.join(f'{s_ / b_:.1f}x' for s_, b_ in zip(t_seed, t_b))}); test accuracy difference "
              f"(different random numbers): mean {100 * sum(diffs_seed) / len(diffs_seed):.2f}, max "
              f"{100 * max(diffs_seed):.2f} points")
    if a.skip_attentive:
        return
    T = 24
    xa = (_data(1, n, D, C, seed=1)[0][0][:, None].expand(n, T, D).contiguous() + 0.05 * torch.randn(n, T, D)).to(dev)
    steps = max(20, a.steps // 20)
    cfg_a = ProbeTrainConfig(epochs=1, min_steps=steps, batch_size=bs)
    for G in (1, len(configs)):
        g = AttentiveGrid(D, T, C, G, seed=0, device=dev)
        t0 = time.perf_counter()
        info = g.fit(xa, ytr, lrs[:G], wds[:G], cfg_a, batch_size=bs)
        sync()
        dt = time.perf_counter() - t0
        imgs = info["steps"] * bs
        print(f"attentive, {T} inputs x {D}, {T} heads, {G} config(s): {info['steps']} steps of {bs} in {dt:.1f} s -> "
              f"{imgs / dt:,.0f} images/s ({imgs * G / dt:,.0f} probe-images/s)")


if __name__ == "__main__":
    main()
