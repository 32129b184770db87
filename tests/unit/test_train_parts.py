"""Training building blocks against independent references: torch's schedulers and losses, loops from the
definitions, and pixel-level checks of the augmentations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope.train import augment as A
from vitscope.train.data import split_indices
from vitscope.train.distill import distillation_loss
from vitscope.train.loop import param_groups
from vitscope.train.schedule import cosine_lr


def test_cosine_schedule_matches_torch_schedulers():
    base, floor, warm, total = 0.1, 1e-4, 5, 40
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / warm),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm, eta_min=floor)], milestones=[warm])
    for step in range(total):
        assert cosine_lr(step, total, base, warm, floor) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9,
                                                                          abs=1e-12)
        opt.step()
        sched.step()
    assert cosine_lr(total + 3, total, base, warm, floor) == pytest.approx(floor)


def test_soft_targets_cross_entropy_equals_torch_label_smoothing():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 7, generator=g), torch.randint(0, 7, (16,), generator=g)
    for eps in (0.0, 0.1, 0.3):
        ours = A.soft_cross_entropy(logits, A.soft_targets(y, 7, eps))
        assert float(ours) == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=eps)), rel=1e-6)


def test_distillation_losses_from_their_definitions():
    g = torch.Generator().manual_seed(1)
    B, C, tau, alpha = 6, 5, 2.0, 0.3
    cls, dist, teacher = (torch.randn(B, C, generator=g) for _ in range(3))
    y = torch.randint(0, C, (B,), generator=g)
    t = A.soft_targets(y, C, 0.0)
    ce = -sum(math.log(torch.softmax(cls[i], 0)[y[i]]) for i in range(B)) / B
    kl = 0.0
    for i in range(B):
        pt, ps = torch.softmax(teacher[i] / tau, 0), torch.softmax(dist[i] / tau, 0)
        kl += float((pt * (pt.log() - ps.log())).sum())
    soft, _ = distillation_loss(cls, dist, t, teacher, kind="soft", alpha=alpha, tau=tau)
    assert float(soft) == pytest.approx((1 - alpha) * ce + alpha * tau ** 2 * kl / B, rel=1e-5)
    hard_ce = -sum(math.log(torch.softmax(dist[i], 0)[int(teacher[i].argmax())]) for i in range(B)) / B
    hard, _ = distillation_loss(cls, dist, t, teacher, kind="hard", alpha=alpha)
    assert float(hard) == pytest.approx((1 - alpha) * ce + alpha * hard_ce, rel=1e-5)
    # no teacher: both heads learn the labels
    none, parts = distillation_loss(cls, dist, t, None, kind="hard")
    ce_d = -sum(math.log(torch.softmax(dist[i], 0)[y[i]]) for i in range(B)) / B
    assert float(none) == pytest.approx((ce + ce_d) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="distillation token"):
        distillation_loss(cls, None, t, teacher, kind="soft")


def test_crop_boxes_respect_scale_ratio_and_bounds():
    H, W = 40, 56
    boxes = A.sample_crop_boxes(2000, H, W, scale=(0.2, 0.6), ratio=(0.5, 2.0),
                                g=torch.Generator().manual_seed(0))
    t, l, h, w = boxes.T
    assert (t >= 0).all() and (l >= 0).all() and (t + h <= H).all() and (l + w <= W).all()
    frac = (h * w).double() / (H * W)
    # rounding of h and w moves the area a little; the draws fill the range
    assert frac.min() > 0.2 * 0.8 and frac.max() < 0.6 * 1.2
    assert frac.min() < 0.25 and frac.max() > 0.55
    r = w.double() / h.double()
    assert r.min() > 0.5 * 0.8 and r.max() < 2.0 * 1.25
    # impossible request -> centre crop with the ratio clamped
    fb = A.sample_crop_boxes(3, 10, 40, scale=(1.0, 1.0), ratio=(1.0, 1.0), g=torch.Generator().manual_seed(0))
    assert fb.tolist() == [[0, 15, 10, 10]] * 3


def test_random_resized_crop_takes_the_drawn_box():
    # pixel values encode their coordinates, so the crop reveals where it came from
    H = W = 24
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    img = torch.stack([ys, xs, ys * 0]).expand(4, 3, H, W).contiguous()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    boxes = A.sample_crop_boxes(4, H, W, (0.3, 0.9), (0.75, 1.33), g=g1)
    out = A.random_resized_crop(img, (H, W), (0.3, 0.9), (0.75, 1.33), g=g2)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        # linear ramps survive bilinear resizing: the mean coordinate is the box centre
        assert float(out[i, 0].mean()) == pytest.approx(t + (h - 1) / 2, abs=0.3)
        assert float(out[i, 1].mean()) == pytest.approx(l + (w - 1) / 2, abs=0.3)
        assert float(out[i, 0].min()) >= t - 1e-4 and float(out[i, 0].max()) <= t + h - 1 + 1e-4
    same = A.random_resized_crop(img, (H, W), (1.0, 1.0), (1.0, 1.0), g=torch.Generator().manual_seed(0))
    assert torch.equal(same, img)


def test_flip_and_mixup_cutmix():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    f = A.random_flip(x, 0.5, g=torch.Generator().manual_seed(1))
    flipped = [bool(torch.equal(f[i], x[i].flip(-1))) for i in range(64)]
    kept = [bool(torch.equal(f[i], x[i])) for i in range(64)]
    assert all(a or b for a, b in zip(flipped, kept)) and 15 < sum(flipped) < 49
    t = A.soft_targets(torch.arange(64) % 5, 5, 0.1)
    xm, tm, info = A.mixup_cutmix(x, t, mixup_alpha=0.8, g=torch.Generator().manual_seed(2))
    lam = info["lam"]
    assert info["kind"] == "mixup" and 0 < lam < 1
    assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(tm.sum(-1), torch.ones(64))
    for seed in range(5):
        xc, tc, info = A.mixup_cutmix(x, t, cutmix_alpha=1.0, g=torch.Generator().manual_seed(seed))
        assert info["kind"] == "cutmix"
        pasted = (xc != x).any(1)[0].float().mean()                       # share of pixels from the partner
        assert float(pasted) == pytest.approx(1 - info["lam"], abs=1e-6)
        assert torch.allclose(tc, info["lam"] * t + (1 - info["lam"]) * t.flip(0))


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    tr, va = split_indices(labels, 0.1, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100
    assert np.bincount(labels[va]).tolist() == [1, 2, 3, 4]
    assert np.array_equal(va, split_indices(labels, 0.1, seed=0)[1])
    assert not np.array_equal(va, split_indices(labels, 0.1, seed=1)[1])


def test_no_weight_decay_on_norms_biases_tokens():
    from vitscope.models import HookedViT, ViTConfig

    m = HookedViT(ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3,
                            num_registers=2))
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "reg_token", "pos_embed", "blocks.0.ln1.weight", "blocks.0.attn.qkv.bias"} <= nd
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in m.named_parameters() if n not in nd}
    assert "blocks.0.attn.qkv.weight" not in nd and decay["weight_decay"] == 0.05


def test_patch_dropout_keeps_prefix_registers_and_an_ordered_subset_of_patches():
    from vitscope.models import ViTConfig
    from vitscope.models.layout import token_layout

    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=8, depth=2, num_heads=2, num_registers=2,
                    register_location="end")
    lay = token_layout(cfg, 0)                                      # CLS, 16 patches, 2 registers
    B, T = 5, lay.n_tokens
    tokens = torch.arange(T, dtype=torch.float32)[None, :, None].expand(B, T, 3).clone()   # value = position
    out = A.patch_dropout(tokens, lay, 0.25, g=torch.Generator().manual_seed(0))
    assert out.shape == (B, 1 + 12 + 2, 3)
    codes = out[..., 0]
    assert (codes[:, 0] == lay.cls).all() and (codes[:, -2:] == torch.tensor(lay.registers)).all()
    mid = codes[:, 1:-2]
    assert ((mid >= lay.patches.start) & (mid < lay.patches.stop)).all()
    assert (mid[:, 1:] > mid[:, :-1]).all()                          # order kept, no repeats
    assert len({tuple(r.tolist()) for r in mid}) > 1                 # each image draws its own subset
    assert torch.equal(A.patch_dropout(tokens, lay, 0.0), tokens)
