"""vilas2023's findings reproduced on the bundled demo model, on the held-out split of the data it was trained on
(docs/demo-model.md): patch-token identifiability rises over the blocks and ends far above the random-weight
model; self_only attention in every block collapses it while no_cls barely moves it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitscope.analysis.class_embedding as ce
from vitscope.data import open_dataset
from vitscope.models.loading import load_model
from vitscope.models.preprocess import Preprocessor
from vitscope.report.demo import held_out_spec


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    model = load_model("demo-vit").eval()
    ds = open_dataset(held_out_spec(128), transform=Preprocessor(model.preprocess_cfg))
    batches = [(x, y) for x, y, _ in ds.batches(64)]
    return model, batches


def test_patch_identifiability_rises_and_ends_far_above_random_weights(demo):
    from scipy.stats import spearmanr

    model, batches = demo
    random = load_model("demo-vit", pretrained=False, seed=0).eval()
    res = ce.logit_lens(model, batches, sites=("resid",), topk=1, record=True)
    rres = ce.logit_lens(random, batches, sites=("resid",), topk=1, record=True)
    rows = [r for r in ce.evolution_rows(res, rres) if r["token"] == "patches"]
    scores = np.array([r["value"] for r in rows])
    assert scores[-1] > scores[0] + 0.2                                           # measured: 0.58 -> 0.90
    assert spearmanr(np.arange(len(scores)), scores).statistic > 0.8
    assert rows[-1]["p_value"] < 1e-10 and rows[-1]["random"] < 0.6
    assert res.token_rate() > 0.5 and res.token_rate() > 4 * rres.token_rate()  # measured: 66% vs 11%


def test_self_only_collapses_identifiability_while_no_cls_barely_moves_it(demo):
    model, batches = demo
    rows = ce.attention_perturbation_rows(model, batches)
    rate = {r["perturbation"]: r["value"] for r in rows if r["metric"] == "identifiable_rate"}
    assert rate["none"] > 0.5
    assert rate["self_only"] < 0.35 * rate["none"] and rate["self_only"] < 0.2   # chance: 1/8 = 12.5%
    assert abs(rate["no_cls"] - rate["none"]) < 0.08
