"""A tiny saved model and a folder of images (one of them corrupt) for the CLI tests."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitscope import HookedViT, PreprocessConfig, ViTConfig


def make_inputs(root: Path) -> tuple[Path, Path, list[Path]]:
    from vitscope.models.loading import save_model

    rng = np.random.default_rng(0)
    files = []
    for c in ("cat", "dog"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(7):
            p = root / "imgs" / c / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(p)
            files.append(p)
    (root / "imgs" / "cat" / "9_bad.png").write_bytes(b"not a png")
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10,
                            num_registers=1), PreprocessConfig(input_size=32))
    save_model(m, root / "model")
    return root / "model", root / "imgs", files
