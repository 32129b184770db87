import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # several test processes share the cores (make test: -n 2): one thread each, and in their subprocesses
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg_kwargs():
    return dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=10)
