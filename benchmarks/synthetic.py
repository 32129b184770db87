"""How learnable is the synthetic benchmark? A tiny HookedViT trained from scratch per difficulty.

Prints, side by side: generation time, validation accuracy after each epoch and final accuracy, so a
difficulty can be chosen for a few-minute CPU run (the demo) and checked for headroom (hard < easy).

    .venv/bin/python benchmarks/synthetic.py --size 32 --classes 8 --train-per-class 150 --epochs 15
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.data.synthetic import SynthConfig, object_sample


def make_split(cfg: SynthConfig, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs = np.stack([object_sample(cfg, split, i).image for i in range(n)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    x = (x - 0.5) / 0.25
    y = torch.arange(n) % cfg.n_classes
    return x, y


def run(difficulty: str, a) -> dict:
    cfg = SynthConfig(size=a.size, n_classes=a.classes, seed=a.seed, difficulty=difficulty)
    t0 = time.time()
    xtr, ytr = make_split(cfg, "train", a.train_per_class * a.classes)
    xva, yva = make_split(cfg, "val", a.val_per_class * a.classes)
    gen = time.time() - t0
    torch.manual_seed(a.seed)
    model = HookedViT(ViTConfig(img_size=a.size, patch_size=a.patch, embed_dim=a.dim, depth=a.depth,
                                num_heads=a.heads, num_classes=a.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    steps = a.epochs * (len(xtr) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)
    accs = []
    t0 = time.time()
    g = torch.Generator().manual_seed(a.seed)
    for _ in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for b in range(len(xtr) // a.batch):
            idx = perm[b * a.batch:(b + 1) * a.batch]
            xb = xtr[idx]
            flip = torch.rand(len(xb), generator=g) < 0.5  # shapes keep their class under a mirror
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.cross_entropy(model(xb), ytr[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            accs.append(float((model(xva).argmax(-1) == yva).float().mean()))
    return {"gen_s": gen, "train_s": time.time() - t0, "accs": accs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=150)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--difficulties", default="easy,medium,hard")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    chance = 1.0 / a.classes
    print(f"tiny ViT {a.size}px/p{a.patch} dim {a.dim} depth {a.depth}; {a.classes} classes, "
          f"{a.train_per_class}/class train, {a.val_per_class}/class val, {a.epochs} epochs, {a.threads} threads; "
          f"chance {chance:.3f}")
    print(f"{'difficulty':10s} {'gen s':>6s} {'train s':>8s} {'acc':>6s} {'acc/chance':>10s}  accuracy per epoch")
    for d in a.difficulties.split(","):
        r = run(d, a)
        curve = " ".join(f"{v:.2f}" for v in r["accs"])
        acc = r["accs"][-1]
        print(f"{d:10s} {r['gen_s']:6.1f} {r['train_s']:8.1f} {acc:6.3f} {acc / chance:10.1f}  {curve}",
              flush=True)


if __name__ == "__main__":
    main()
