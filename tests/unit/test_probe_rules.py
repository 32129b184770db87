"""The pieces of ciernik2025's probe recipe by hand (batches when N is not a multiple of the batch size, the jitter,
the class weights) and the tuning rules: the first of equal validation scores wins (also when every score is 0),
and the chosen configuration is retrained on the whole training set."""
import numpy as np
import pytest
import torch
from torch import nn

import vitscope.analysis.probes.tuning as tuning
from vitscope.analysis.probes import AttentiveProbe, train_probe, tune_attentive, tune_linear
from vitscope.analysis.probes.batched import train_linear_grid
from vitscope.analysis.probes.train import (TrainConfig, adjust_batch_size, build_seeded, class_weights, jitter,
                                            schedule)


# ----------------------------------------------------------------------------- batches, jitter, class weights
def test_schedule_counts_the_last_partial_batch():
    assert schedule(10, 4, 3, min_steps=5) == (3, 3)          # batches of 4, 4, 2; 9 steps >= 5
    assert schedule(10, 4, 1, min_steps=10) == (3, 4)         # 3 steps < 10 -> ceil(10 / 3) = 4 epochs
    assert schedule(2049, 2048, 40) == (2, 500)               # 2 x 40 = 80 < 1000 -> ceil(1000 / 2)
    assert schedule(7, 7, 2, min_steps=1) == (1, 2)


def test_every_sample_is_seen_once_per_epoch():
    n = 10
    x = torch.zeros(n, 3)
    x[:, 0] = torch.arange(n, dtype=torch.float32)           # row i carries its index
    y = torch.arange(n) % 2
    seen = []
    m = build_seeded(lambda: nn.Linear(3, 2), 0)
    m.register_forward_pre_hook(lambda _, inp: seen.append(inp[0][:, 0].long().tolist()))
    cfg = TrainConfig(epochs=2, min_steps=1, batch_size=4, jitter_p=0.0, seed=3)
    info = train_probe(m, x, y, cfg, 2, batch_size=4)
    assert [len(b) for b in seen] == [4, 4, 2, 4, 4, 2]
    assert info["steps"] == 6 and info["epochs"] == 2
    for epoch in (seen[:3], seen[3:]):
        assert sorted(i for b in epoch for i in b) == list(range(n))
    _, _, grid_info = train_linear_grid(x[None], y, [0.1], [0.0], cfg, 2, batch_size=4)
    assert grid_info["steps"] == 6


def test_jitter_by_hand():
    x = torch.zeros(6, 2, 3)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(jitter(x, g, 0.0, 1.0), x)                             # p = 0: never
    assert torch.equal(jitter(x, g, 1.0, 0.0), x)                             # std = 0: nothing added
    every = jitter(x, g, 1.0, 1.0)
    assert (every != 0).all()                                                 # p = 1: every entry of every sample
    # the draws: rand(B) < p, then randn(B, *feature) * std, from the generator given
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = jitter(x + 1, g1, 0.5, 0.05)
    apply = torch.rand(6, generator=g2) < 0.5
    noise = torch.randn(6, 2, 3, generator=g2) * 0.05
    torch.testing.assert_close(got, 1 + noise * apply.view(6, 1, 1).float())
    # per sample: a sample is jittered on its whole feature or not at all; about half of them at p = 0.5
    big = jitter(torch.zeros(4000, 5), torch.Generator().manual_seed(1), 0.5, 0.05)
    changed = (big != 0)
    assert torch.equal(changed.all(1), changed.any(1))
    assert 0.45 < changed.all(1).float().mean() < 0.55
    assert float(big[changed.all(1)].std()) == pytest.approx(0.05, rel=0.03)
    # batch_axis = 1: layers share their sample's noise, the same noise as the sample alone
    xl = torch.randn(3, 8, 4)
    out = jitter(xl, torch.Generator().manual_seed(2), 1.0, 1.0, batch_axis=1)
    alone = jitter(torch.zeros(8, 4), torch.Generator().manual_seed(2), 1.0, 1.0)
    for layer in range(3):
        torch.testing.assert_close(out[layer] - xl[layer], alone)


def test_class_weights_against_scikit_learn_balanced():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 1, 2, 2, 2, 2, 1, 0, 3])                        # 11 samples, uneven classes
    ref = compute_class_weight("balanced", classes=np.arange(4), y=y)      # n / (K n_c), every class present
    np.testing.assert_allclose(class_weights(torch.as_tensor(y)).numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(class_weights(torch.as_tensor(y), num_classes=6).numpy(), list(ref) + [0, 0],
                               rtol=1e-6)


# ----------------------------------------------------------------------------- tuning rules
def fake_scores(monkeypatch, scores):
    """Validation scores in grid order (configurations of each dropout, dropouts in order), whatever the chunks."""
    flat = [float(s) for s in np.ravel(scores)]

    def scorer(logits, targets):
        n = int(np.prod(logits.shape[:-2]))
        out = torch.tensor([flat.pop(0) for _ in range(n)], dtype=logits.dtype)
        return out.view(logits.shape[:-2])

    monkeypatch.setattr(tuning, "batched_balanced_top1", scorer)
    return flat


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, 4, generator=g).numpy()
    y = np.arange(40) % 2
    return x, y, x[:10], y[:10]


CFG = TrainConfig(epochs=1, min_steps=3, batch_size=8, seed=1)
LRS, WDS = (0.1, 0.01), (1e-3, 0.1)        # grid: (0.1, 1e-3), (0.1, 0.1), (0.01, 1e-3), (0.01, 0.1)


def test_tune_attentive_keeps_the_first_of_equal_scores(monkeypatch, small):
    left = fake_scores(monkeypatch, [[0.2, 0.5, 0.5, 0.1],               # attention dropout 0
                                     [0.5, 0.3, 0.5, 0.5]])              # dropout 0.1: ties, never better
    fit = tune_attentive(*small, num_heads=2, cfg=CFG, lrs=LRS, wds=WDS, attn_drops=(0.0, 0.1))
    assert not left
    assert (fit.lr, fit.weight_decay, fit.attn_drop) == (0.1, 0.1, 0.0)
    assert [r["val_balanced_top1"] for r in fit.val_grid] == pytest.approx([0.2, 0.5, 0.5, 0.1, 0.5, 0.3, 0.5, 0.5])


def test_tune_attentive_with_every_score_zero_takes_the_first_configuration(monkeypatch, small):
    fake_scores(monkeypatch, np.zeros(8))
    fit = tune_attentive(*small, num_heads=2, cfg=CFG, lrs=LRS, wds=WDS, attn_drops=(0.1, 0.3))
    assert (fit.lr, fit.weight_decay, fit.attn_drop) == (0.1, 1e-3, 0.1)


def test_tune_linear_keeps_the_first_of_equal_scores_per_layer(monkeypatch, small):
    x, y, xt, yt = small
    fake_scores(monkeypatch, [[0.1, 0.7, 0.7, 0.2],                       # layer 0: the first of two 0.7
                              [0.0, 0.0, 0.0, 0.0]])                      # layer 1: all 0 -> the first
    fits = tune_linear([x[:, 0], x[:, 1]], y, [xt[:, 0], xt[:, 1]], yt, cfg=CFG, lrs=LRS, wds=WDS)
    assert [(f.lr, f.weight_decay) for f in fits] == [(0.1, 0.1), (0.1, 1e-3)]


NULL_GRAD = {"attn_block.norm_k.bias", "attn_block.norm_v.bias", "attn_block.cross_attn.proj.bias",
             "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}


def test_chosen_configuration_is_retrained_on_the_whole_training_set(small):
    x, y, xt, yt = small
    # linear: the tuned head equals one probe trained alone on all 40 rows with the chosen lr / weight decay
    fit = tune_linear([x[:, 0]], y, [xt[:, 0]], yt, cfg=CFG, lrs=LRS, wds=WDS)[0]
    assert fit.info["steps"] == np.prod(schedule(40, adjust_batch_size(8, 40), 1, 3))
    m = build_seeded(lambda: nn.Linear(4, 2), CFG.seed)
    train_probe(m, torch.as_tensor(x[:, 0]), torch.as_tensor(y), CFG.with_(lr=fit.lr, weight_decay=fit.weight_decay),
                2)
    torch.testing.assert_close(fit.head[0], m.weight.detach(), atol=2e-5, rtol=0)
    torch.testing.assert_close(fit.head[1], m.bias.detach(), atol=2e-5, rtol=0)
    # attentive: the same with the chosen attention dropout
    fit = tune_attentive(x, y, xt, yt, num_heads=2, cfg=CFG, lrs=LRS, wds=WDS, attn_drops=(0.0, 0.1))
    m = build_seeded(lambda: AttentiveProbe(4, 2, 2, attn_drop=fit.attn_drop), CFG.seed)
    train_probe(m, torch.as_tensor(x), torch.as_tensor(y), CFG.with_(lr=fit.lr, weight_decay=fit.weight_decay), 2)
    a, b = m.state_dict(), fit.head.state_dict()
    for key in a:
        if key not in NULL_GRAD:
            torch.testing.assert_close(b[key].float(), a[key].float(), atol=1e-4, rtol=0, msg=key)
