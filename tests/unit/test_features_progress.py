"""Progress bookkeeping: interval algebra, the batch grid, the rank split; float16 overflow is an error."""
import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.features import extract_features
from vitscope.features.distributed import split_contiguous
from vitscope.features.progress import complement, covered, grid_batches, merge


def test_intervals_and_grid():
    assert merge([[8, 12], [0, 4], [4, 8], [20, 24]]) == [[0, 12], [20, 24]]
    assert complement([[0, 12], [20, 24]], 30) == [[12, 20], [24, 30]]
    assert covered([[0, 4], [2, 6]]) == 6
    # the grid does not depend on where the previous run stopped
    assert grid_batches([[12, 20], [24, 30]], 8) == [(12, 16), (16, 20), (24, 30)]
    assert grid_batches([[0, 30]], 8) == [(0, 8), (8, 16), (16, 24), (24, 30)]
    # every sample exactly once over the ranks, contiguous, balanced
    batches = grid_batches([[0, 37]], 4)
    parts = split_contiguous(batches, 3)
    assert [len(p) for p in parts] == [3, 4, 3]
    rows = [i for p in parts for a, b in p for i in range(a, b)]
    assert rows == list(range(37))


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)), -1, i


def test_float16_overflow_is_an_error_not_inf(tmp_path):
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2, num_classes=3))
    with torch.no_grad():
        m.patch_embed.proj.weight.mul_(1e7)                        # residual stream far beyond 65504
    with pytest.raises(ValueError, match="float16"):
        extract_features(m, Data(), tmp_path / "s", layers="0", sites="resid_pre", tokens="mean",
                         dtype="float16", progress=False)
    s = extract_features(m, Data(), tmp_path / "s32", layers="0", sites="resid_pre", tokens="mean", progress=False)
    assert np.abs(np.asarray(s["resid_pre", 0, "mean"])).max() > 65504
