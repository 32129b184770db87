"""A feature extraction run as its own process (killed, resumed and launched by torchrun in the tests).

usage: python _extract_job.py OUT [--delay S] [--batch B] [--images N] [--crash-at I] [--quiet]
The model and images are deterministic (seeded), so every process computes the same thing.
"""
import argparse
import json
import time

import numpy as np
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.features import extract_features


class SlowData(torch.utils.data.Dataset):
    def __init__(self, n, delay, bad=(), crash_at=None):
        self.n, self.delay, self.bad, self.crash_at = n, delay, set(bad), crash_at
        self.labels = np.arange(n) % 5
        self.ids = [f"s{i}" for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        time.sleep(self.delay)
        if self.crash_at is not None and i >= self.crash_at:
            raise SystemExit(3)
        if i in self.bad:
            return None, -1, i
        return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), int(self.labels[i]), i


REQUEST = dict(layers="all", sites="resid_post,ln2", tokens="cls,mean,registers")


def model():
    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10,
                               num_registers=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--crash-at", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = SlowData(a.images, a.delay, bad=(5, 17), crash_at=a.crash_at)
    store = extract_features(model(), data, a.out, **REQUEST, batch_size=a.batch, progress=not a.quiet,
                             num_workers=0)
    print(json.dumps({k: v for k, v in store.run.items() if k != "seconds"}))
