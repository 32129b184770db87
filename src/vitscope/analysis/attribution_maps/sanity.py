"""Model-parameter randomisation test of Adebayo et al. (2018, "Sanity Checks for Saliency Maps"), cascading.

Starting from the top, the parameters are replaced by a fresh random initialisation (the model's own: truncated
normal 0.02, zero biases, unit LayerNorms), one stage more at a time: ``head`` (the head and the final norm), then
``block L-1``, ..., ``block 0``, then ``embedding`` (patch and position embeddings, CLS / registers). At each stage the
maps of the same images for the same classes (those of the trained model) are compared with the trained model's
maps by Spearman's rank correlation, per image. ``trained`` compares the trained model's maps with a second run of
the same method (seed + 1: a new draw for SmoothGrad / VarGrad; identical for deterministic methods). A method
that passes the check loses its correlation as the model is randomised. A map that is constant (e.g. a CAM whose
ReLU removed everything) has no ranking: its correlation counts as 0.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from vitscope.analysis.attribution_maps.metrics import spearman


def randomization_stages(model) -> list[tuple[str, list]]:
    """[(stage, modules randomised at this stage)] from the top of the model down."""
    top = [m for m in (getattr(model, "head", None), getattr(model, "head_dist", None),
                       getattr(model, "ln_final", None), getattr(model, "fc_norm", None)) if m is not None]
    stages = [("head", top)] if top else []
    for b in reversed(range(model.cfg.depth)):
        stages.append((f"block {b}", [model.blocks[b]]))
    return stages


def _random_twin(model, seed: int):
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        twin.init_weights()
    return twin


def cascading_randomization(model, x: torch.Tensor, targets: torch.Tensor, method: str, options=None,
                            absolute: bool = False, seed: int = 0) -> list[dict]:
    """Rows ``{stage, depth (0 = trained), image, spearman}`` for ``method`` (see the module doc)."""
    from vitscope.analysis.attribution_maps.explain import explain
    from vitscope.analysis.attribution_maps.options import ExplainOptions

    opts = options or ExplainOptions()
    ref = explain(model, x, targets, method, options=opts)
    again = explain(model, x, targets, method, options=opts.replace(seed=opts.seed + 1))
    rows = [{"stage": "trained", "depth": 0, "image": i, "spearman": float(v)}
            for i, v in enumerate(np.nan_to_num(spearman(ref.maps, again.maps, absolute)))]
    twin = _random_twin(model, seed)
    work = copy.deepcopy(model)
    names = dict(work.named_modules())
    rnames = dict(twin.named_modules())
    inv = {id(m): n for n, m in model.named_modules()}
    for d, (stage, mods) in enumerate(randomization_stages(model), start=1):
        with torch.no_grad():
            for m in mods:
                n = inv[id(m)]
                names[n].load_state_dict(rnames[n].state_dict())
        r = explain(work, x, targets, method, options=opts)
        rows += [{"stage": stage, "depth": d, "image": i, "spearman": float(v)}
                 for i, v in enumerate(np.nan_to_num(spearman(ref.maps, r.maps, absolute)))]
    return rows


def summarize(rows: list[dict]) -> dict[str, float]:
    """{stage: mean Spearman over images} in cascade order."""
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r["stage"], []).append(r["spearman"])
    return {k: float(np.nanmean(v)) for k, v in out.items()}
