"""walmer2023's "all" and "spcpure" average maps and the query-centred maps, against transcriptions of its
``AvgAttentionOnToken`` / ``AvgAlignedAttentionOnToken`` (CLS at index 0, square grid) and slow loops, plus
the overlap-normalised query-centred map (flat for uniform attention)."""
import numpy as np
import pytest
import torch

from vitscope.analysis.attention import stats as S
from vitscope.models.layout import TokenLayout


def layout(grid, n_reg=0):
    N = grid[0] * grid[1]
    return TokenLayout(0, 1 + n_reg + N, 0, None, tuple(range(1, 1 + n_reg)), slice(1 + n_reg, 1 + n_reg + N), grid)


def rand_pattern(B, H, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, T, generator=g, dtype=torch.float64) * 2).softmax(-1)


# ----------------------------------------------------------------------------- walmer2023, transcribed
def seed_avg_att_on_token(attn, mode):
    """attn (B, H, T, T) for one block -> (H, T) summed over images (the seed sums, then divides by the count)."""
    a = attn.clone()[:, None]                                            # B, 1 (block), H, T, T as in the seed
    if mode == "all":
        a = torch.mean(a, dim=3)
    elif mode == "spcpure":
        a = a[:, :, :, 1:, :]
        a[:, :, :, :, 0] = 0
        att_sum = torch.sum(a, dim=4, keepdim=True)
        att_sum += (att_sum == 0).to(att_sum.dtype)
        a = a / att_sum
        a = torch.mean(a, dim=3)
    return torch.sum(a, dim=0)[0] / attn.shape[0]                       # H, T


def seed_aligned(attn):
    """One image per call (B = 1, where the seed's batches x queries divisor is right)."""
    att = attn[:, None, :, 1:, 1:]
    s = torch.sum(att, dim=4, keepdim=True)
    s += (s == 0).to(s.dtype)
    att = att / s
    e = int(np.sqrt(att.shape[3]))
    sq = att.reshape(att.shape[0], 1, att.shape[2], att.shape[3], e, e).numpy()
    acc = np.zeros((1, att.shape[2], 2 * e - 1, 2 * e - 1))
    count = 0
    for idx in range(att.shape[3]):
        cur = sq[:, :, :, idx].sum(0)
        j = idx % e
        i = (idx - j) // e
        acc[:, :, e - i - 1:e - i - 1 + e, e - j - 1:e - j - 1 + e] += cur
        count += 1
    return acc[0] / count


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("mode", ["all", "spcpure"])
def test_average_maps_match_seed002(mode):
    lay = layout((4, 4))
    P = rand_pattern(3, 2, lay.n_tokens)
    P[0, 1, 5] = 0.0
    P[0, 1, 5, 0] = 1.0                                                  # a query with all its mass on CLS
    got = S.average_map(P, lay, mode).mean(0)                            # H, r, c
    want = seed_avg_att_on_token(P, mode)[:, 1:].reshape(2, 4, 4)
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


def test_spcpure_drops_every_prefix_key():
    lay = layout((2, 3), n_reg=2)
    P = rand_pattern(2, 3, lay.n_tokens, seed=4)
    got = S.average_map(P, lay, "spcpure").double().numpy()
    p0, N = lay.patches.start, lay.n_patches
    for b in range(2):
        for h in range(3):
            acc = np.zeros(N)
            for q in range(N):
                row = [float(P[b, h, p0 + q, p0 + k]) for k in range(N)]
                tot = sum(row)
                acc += np.array(row) / (tot if tot else 1.0)
            np.testing.assert_allclose(got[b, h].ravel(), acc / N, rtol=1e-6)
        all_ = S.average_map(P, lay, "all").double().numpy()[b]
        want = P[b][:, :, p0:].double().mean(1).numpy()                   # every query, patch keys
        np.testing.assert_allclose(all_.reshape(3, -1), want, rtol=1e-6)


def test_aligned_queries_norm_matches_seed002_and_overlap_is_flat_for_uniform():
    lay = layout((3, 3))
    P = rand_pattern(1, 2, lay.n_tokens, seed=1)
    np.testing.assert_allclose(S.aligned_attention(P, lay).double().numpy()[0], seed_aligned(P), rtol=1e-6)
    lay2 = layout((3, 5))
    U = torch.full((1, 1, lay2.n_tokens, lay2.n_tokens), 1.0 / lay2.n_tokens)
    flat = S.aligned_attention(U, lay2, norm="overlap")[0, 0]
    np.testing.assert_allclose(flat.numpy(), np.full((5, 9), 1 / 15), rtol=1e-6)
    peaked = S.aligned_attention(U, lay2)[0, 0]                          # walmer2023's division: a pyramid
    assert peaked[2, 4] > 3 * peaked[0, 0]
    with pytest.raises(ValueError, match="norm"):
        S.aligned_attention(U, lay2, norm="count")


def test_overlap_norm_against_a_loop():
    lay = layout((2, 4))
    P = rand_pattern(2, 2, lay.n_tokens, seed=5)
    got = S.aligned_attention(P, lay, norm="overlap").double().numpy()
    rows, cols = lay.grid
    p0 = lay.patches.start
    for b in range(2):
        for h in range(2):
            tot = np.zeros((2 * rows - 1, 2 * cols - 1))
            cnt = np.zeros_like(tot)
            for qi in range(rows):
                for qj in range(cols):
                    q = p0 + qi * cols + qj
                    row = P[b, h, q, p0:].double().numpy()
                    row = row / row.sum()
                    for ki in range(rows):
                        for kj in range(cols):
                            tot[ki - qi + rows - 1, kj - qj + cols - 1] += row[ki * cols + kj]
                            cnt[ki - qi + rows - 1, kj - qj + cols - 1] += 1
            np.testing.assert_allclose(got[b, h], tot / cnt, rtol=1e-6)


def test_accumulator_has_the_new_maps():
    lay = layout((3, 3))
    pats = [rand_pattern(2, 2, lay.n_tokens, seed=s) for s in range(3)]
    acc = S.AttentionStats(1, 2, (3, 3))
    for p in pats:
        acc.update(0, p, lay)
    res = acc.compute()
    allp = torch.cat(pats)
    np.testing.assert_allclose(res["map_all"][0], S.average_map(allp, lay, "all").double().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(res["map_spcpure"][0], S.average_map(allp, lay, "spcpure").double().mean(0).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(res["aligned_overlap"][0],
                               S.aligned_attention(allp, lay, norm="overlap").double().mean(0).numpy(), rtol=1e-6)
