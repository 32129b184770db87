"""Probes on a model whose CLS token enters late: the named layer sets keep AP only before the entry block, and a
CLS store plus an AP store of the same samples are read as one (StoreGroup)."""
import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.probes.experiment import probe_store
from vitscope.analysis.probes.inputs import ProbeInput, StoreGroup, layer_set, load_input, load_inputs
from vitscope.analysis.probes.train import TrainConfig
from vitscope.features import extract_features

TINY = dict(img_size=16, patch_size=8, embed_dim=16, depth=4, num_heads=2, num_classes=4, cls_block=2)
DATA = "synthetic:n=40,size=16,classes=4"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    torch.manual_seed(0)
    model = HookedViT(ViTConfig(**TINY)).eval()
    root = tmp_path_factory.mktemp("late")
    kw = dict(sites="ln2,ln_final", progress=False)
    cls = extract_features(model, DATA, root / "cls", layers="2:4", tokens=("cls",), **kw)
    ap = extract_features(model, DATA, root / "ap", layers="all", tokens=("mean",), **kw)
    return cls, ap


def test_named_sets_have_no_cls_before_the_entry_block():
    got = {i.name for i in layer_set("all", 4, cls_from=2)}
    assert got == {"ln2.1.mean", "ln2.2.mean", "ln2.3.mean", "ln2.2.cls", "ln2.3.cls", "ln_final.cls",
                   "ln_final.mean"}
    assert len(layer_set("all", 4)) == 8 and layer_set("all", 4, cls_from=0) == layer_set("all", 4)


def test_a_late_cls_store_alone_says_how_to_add_the_ap_store(stores):
    cls, _ = stores
    with pytest.raises(ValueError, match="no layer 1 .*CLS enters at block 2.*--store CLS_STORE --store AP_STORE"):
        load_input(cls, ProbeInput("ln2", 1, "mean"))


def test_group_reads_each_input_from_the_store_that_holds_it(stores):
    cls, ap = stores
    g = StoreGroup([cls, ap])
    assert g.layers == [0, 1, 2, 3] and set(g.reductions) == {"cls", "mean"} and g.n == 40
    for inp, src in ((ProbeInput("ln2", 1, "mean"), ap), (ProbeInput("ln2", 3, "cls"), cls),
                     (ProbeInput("ln_final", None, "mean"), ap), (ProbeInput("ln_final", None, "cls"), cls)):
        np.testing.assert_array_equal(load_input(g, inp), load_input(src, inp))
    feats, y = load_inputs(g, layer_set("all", 4, cls_from=2))
    assert len(feats) == 7 and (y == np.asarray(cls.labels)).all()


def test_group_refuses_stores_of_other_samples(stores, tmp_path):
    cls, _ = stores
    torch.manual_seed(0)
    other = extract_features(HookedViT(ViTConfig(**TINY)).eval(), "synthetic:n=40,size=16,classes=4,seed=3",
                             tmp_path / "o", layers="all", sites="ln2,ln_final", tokens=("mean",), progress=False)
    with pytest.raises(ValueError, match="different samples"):
        StoreGroup([cls, other])


def test_probe_all_layers_of_a_late_cls_model(stores):
    cls, ap = stores
    cfg = TrainConfig(epochs=1, min_steps=5, batch_size=16)
    run = probe_store([cls, ap], experiments=("all",), probes=("linear", "attentive"), per_layer=True, cfg=cfg,
                      lrs=(0.01,), wds=(1e-4,), attn_drops=(0.0,))
    _, inputs = run.fits[("attentive", "all")]
    assert {i.name for i in inputs} == {"ln2.1.mean", "ln2.2.mean", "ln2.3.mean", "ln2.2.cls", "ln2.3.cls",
                                        "ln_final.cls", "ln_final.mean"}
    per_layer = {k[1] for k in run.fits if k[1].startswith("layer_")}
    assert {"layer_0_ap", "layer_1_ap", "layer_2_cls", "layer_3_cls", "layer_final_cls"} <= per_layer
    assert "layer_1_cls" not in per_layer and "layer_0_cls" not in per_layer
