"""LAMB against timm's own Lamb (golden steps from scripts/make_lamb_golden.py) and against its definition;
repeated augmentation's epoch order against DeiT's RASampler rule."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitscope.train.lamb import Lamb
from vitscope.train.loop import epoch_order

GOLDEN = Path(__file__).resolve().parents[1] / "goldens" / "timm_optim" / "lamb.safetensors"


def test_matches_timm_lamb_step_by_step():
    gold = load_file(GOLDEN)
    steps = 1 + max(int(k.split(".")[0][4:]) for k in gold if k.startswith("step"))
    params = {k: torch.nn.Parameter(gold[f"init.{k}"].clone()) for k in ("w", "b", "z")}
    opt = Lamb([{"params": [params["w"], params["z"]], "weight_decay": 0.05},
                {"params": [params["b"]], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.999), eps=1e-6)
    clipped = 0
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = float(gold[f"step{t}.lr"])
        for k, p in params.items():
            p.grad = gold[f"step{t}.grad.{k}"].clone()
        clipped += int(opt._clip_divisor() > 1)
        opt.step()
        for k, p in params.items():
            torch.testing.assert_close(p.detach(), gold[f"step{t}.param.{k}"], rtol=1e-12, atol=1e-12)
    assert 0 < clipped < steps                    # the golden covers steps with and without global clipping


def test_one_step_from_the_definition():
    """First step by hand: m̂ = g, v̂ = g², so u = g / (|g| + eps) + wd·w, scaled by ‖w‖ / ‖u‖."""
    w0 = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    g = torch.tensor([[0.1, 0.2], [-0.3, 0.05]], dtype=torch.float64)          # ‖g‖ < 1: no clipping
    p = torch.nn.Parameter(w0.clone())
    p.grad = g.clone()
    opt = Lamb([p], lr=0.1, eps=1e-6, weight_decay=0.1)
    opt.step()
    u = g / (g.abs() + 1e-6) + 0.1 * w0
    want = w0 - 0.1 * (w0.norm() / u.norm()) * u
    torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-12)


def test_zero_weights_and_no_decay_take_plain_adam_steps():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))             # ‖w‖ = 0: trust ratio 1
    q = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))              # no weight decay: no trust ratio
    p.grad = torch.tensor([0.2, -0.1, 0.0], dtype=torch.float64)
    q.grad = torch.tensor([0.3, 0.3, -0.3], dtype=torch.float64)
    opt = Lamb([{"params": [p], "weight_decay": 0.1}, {"params": [q], "weight_decay": 0.0}], lr=0.01, eps=1e-6)
    opt.step()
    torch.testing.assert_close(p.detach(), -0.01 * torch.tensor([0.2, -0.1, 0.0]).double() / (
        torch.tensor([0.2, 0.1, 0.0]).double() + 1e-6))
    torch.testing.assert_close(q.detach(), 1 - 0.01 * torch.tensor([1.0, 1.0, -1.0]).double() * 0.3 / (0.3 + 1e-6))


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="betas"):
        Lamb([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 1.0))


@pytest.mark.parametrize("repeats", [1, 3])
def test_epoch_order_repeats_each_image_in_a_row(repeats):
    n = 30
    order = epoch_order(n, seed=2, epoch=5, repeats=repeats)
    assert len(order) == n and 0 <= int(order.min()) and int(order.max()) < n
    heads = order[0::repeats]                                     # one entry per run of R copies
    for r in range(repeats):
        assert torch.equal(order[r::repeats], heads)              # every run is R copies of one image
    assert len(set(heads.tolist())) == len(heads) == n // repeats  # ... and no image has two runs
    assert torch.equal(order, epoch_order(n, seed=2, epoch=5, repeats=repeats))     # seeded
    assert not torch.equal(order, epoch_order(n, seed=2, epoch=6, repeats=repeats))  # reshuffled every epoch


def test_copies_of_an_image_land_on_different_ranks():
    """As DeiT's RASampler: with 3 processes and R = 3 every image of a global batch is seen once per process."""
    n, batch, world = 48, 12, 3
    order = epoch_order(n, seed=0, epoch=0, repeats=3)
    for s in range(n // batch):
        per_rank = [order[s * batch:(s + 1) * batch][r::world].tolist() for r in range(world)]
        assert per_rank[0] == per_rank[1] == per_rank[2]
