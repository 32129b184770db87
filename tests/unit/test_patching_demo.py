"""Done when: on the bundled demo-vit, for clean / corrupted synthetic pairs that differ in one object, the patched
positions with the largest effect at block 0 lie on that object (the synthetic masks say where it is)."""
import numpy as np
import pytest
import torch

from vitscope.analysis.patching import PatchPairs, activation_patching, evaluate, synthetic_pairs
from vitscope.data.synthetic.edits import edited_pair
from vitscope.data.synthetic.config import config_from_options
from vitscope.data.spec import parse_spec
from vitscope.models.bundled import DEMO_DATA

N = 8


@pytest.fixture(scope="module")
def setup():
    from vitscope.models.loading import load_model

    m = load_model("demo-vit")
    return m, synthetic_pairs(m, "builtin:demo", n=N)


def test_edited_copies_differ_only_on_the_objects():
    cfg, _ = config_from_options(parse_spec(DEMO_DATA)[2])
    for i in range(12):
        p = edited_pair(cfg, "test", i)
        differ = (p.clean.image != p.corrupted.image).any(-1)
        assert differ.any() and not (differ & ~p.changed).any()
        assert p.corrupted.label == (p.clean.label + 1) % 8 and p.corrupted.box != (0, 0, 0, 0)


def test_the_pairs_flip_the_demo_models_prediction(setup):
    m, pairs = setup
    with torch.no_grad():
        clean, corr = m(pairs.clean).argmax(-1), m(pairs.corrupted).argmax(-1)
    assert (clean == pairs.labels).all() and (corr != pairs.labels).all()


@pytest.mark.parametrize("site, top", [("resid_pre", 3), ("attn_out", 1), ("mlp_out", 1)])
def test_largest_block0_effects_lie_on_the_changed_object(site, top, setup):
    m, pairs = setup
    for i in range(N):
        one = PatchPairs(pairs.clean[i:i + 1], pairs.corrupted[i:i + 1], pairs.labels[i:i + 1])
        grid = activation_patching(m, one, site, "logit", blocks=[0])
        maps, _ = grid.position_maps()
        e = maps[0].ravel()
        on_object = pairs.changed[i].ravel() > 0
        assert np.abs(e).max() > 1e-5                                     # something moved (not float noise)
        largest = np.argsort(-np.abs(e), kind="stable")[:top]
        assert on_object[largest].all(), (site, i, largest, np.nonzero(on_object)[0])


def test_evaluate_reports_the_share_on_the_object(setup):
    m, pairs = setup
    one = PatchPairs(pairs.clean[:1], pairs.corrupted[:1], pairs.labels[:1], pairs.changed[:1])
    t = evaluate(m, one, site="resid_pre").table
    share = t[(t["metric"] == "changed_share")].set_index("block")["value"]
    assert share[0] == pytest.approx(1.0)                                 # block 0: only the object's embeddings differ
    assert len(share) == m.cfg.depth
