"""Write tests/goldens/timm_optim/lamb.safetensors: timm's own ``Lamb`` run for a few steps, which
tests/unit/test_lamb.py checks vitscope's LAMB against.

Runs in the golden-file virtual environment ``goldens-venv`` (see scripts/make_timm_goldens.py), never in the
project's .venv:

    goldens-venv/bin/python scripts/make_lamb_golden.py

Generated with timm 1.0.31, torch 2.15.0, CPU, float64. Two parameter groups (weight decay 0.05 and 0.0, as
``param_groups`` makes them), a weight matrix, a bias and a vector with a zero entry; gradients drawn per step,
scaled so that timm's global gradient clipping (max_grad_norm 1.0) is active on some steps and not on others.
Saved: the initial parameters, every step's gradients and learning rate, and the parameters after each step.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.optim import Lamb

OUT = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "timm_optim" / "lamb.safetensors"
STEPS = 6


def main() -> None:
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(5, 4, generator=g, dtype=torch.float64),
            "b": torch.randn(5, generator=g, dtype=torch.float64),
            "z": torch.tensor([0.0, 1.5, -2.0], dtype=torch.float64)}
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = Lamb([{"params": [params["w"], params["z"]], "weight_decay": 0.05},
                {"params": [params["b"]], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.999), eps=1e-6,
               foreach=False)
    out = {f"init.{k}": v for k, v in init.items()}
    for t in range(STEPS):
        scale = 0.05 if t % 2 else 3.0                           # global norm below / above max_grad_norm = 1
        lr = 1e-2 * (1 - t / STEPS)
        for group in opt.param_groups:
            group["lr"] = lr
        for k, p in params.items():
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
            out[f"step{t}.grad.{k}"] = p.grad.clone()
        out[f"step{t}.lr"] = torch.tensor(lr, dtype=torch.float64)
        opt.step()
        for k, p in params.items():
            out[f"step{t}.param.{k}"] = p.detach().clone()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT),
              metadata={"timm": __import__("timm").__version__, "torch": torch.__version__, "steps": str(STEPS)})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
