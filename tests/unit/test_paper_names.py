"""Option values name the papers (walmer2023, ciernik2025, vilas2023); the old "seed00x" spellings are still accepted
and give the same numbers, in the library and on the command line."""
import importlib

import numpy as np
import pandas as pd
import pytest
import torch

from vitscope.analysis.attention import saliency as SA
from vitscope.analysis.class_embedding.metrics import residual_match
from vitscope.analysis.similarity import compare as C
from vitscope.models import HookedViT, TokenLayout, ViTConfig

K = importlib.import_module("vitscope.analysis.similarity.cka")      # the package re-exports a function named cka


def test_current_names_carry_no_seed_numbers():
    for values in (SA.MERGE_RULES, K.BANDWIDTHS, tuple(C.PRESETS)):
        assert not [v for v in values if v.startswith("seed")], values
    assert set(SA.MERGE_RULE_ALIASES.values()) <= set(SA.MERGE_RULES)
    assert set(K.BANDWIDTH_ALIASES.values()) <= set(K.BANDWIDTHS)
    assert set(C.PRESET_ALIASES.values()) <= set(C.PRESETS)


def test_merge_rule_old_spelling_is_the_same_rule():
    lay = TokenLayout(0, 17, 0, None, (), slice(1, 17), (4, 4))           # CLS + 4 x 4 patches
    # peaked attention whose CLS mass on the patches differs between heads: the two rules then disagree
    g = torch.Generator().manual_seed(0)
    pattern = (torch.randn(2, 3, 17, 17, generator=g, dtype=torch.float64) * 3).softmax(-1)
    new = SA.binarize_attention(pattern, lay, "cls", merge=True, merge_rule="walmer2023")
    old = SA.binarize_attention(pattern, lay, "cls", merge=True, merge_rule="seed002")
    assert torch.equal(new, old)
    assert not torch.equal(new, SA.binarize_attention(pattern, lay, "cls", merge=True, merge_rule="sum"))
    with pytest.raises(ValueError, match="merge_rule must be one of"):
        SA.binarize_attention(pattern, lay, "cls", merge=False, merge_rule="seed003")


def test_cka_bandwidth_and_presets_old_spellings():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 5, generator=g), torch.randn(20, 7, generator=g)
    new = K.cka(x, y, kernel="rbf", bandwidth="ciernik2025")
    assert K.cka(x, y, kernel="rbf", bandwidth="seed000") == new
    assert new != K.cka(x, y, kernel="rbf", bandwidth="kornblith")
    assert C.preset_options("seed000") == C.preset_options("ciernik2025")
    assert C.preset_options("seed002") == C.preset_options("walmer2023")
    assert C.preset_options("walmer2023")["minmax"] and C.preset_options("ciernik2025")["normalize"]
    with pytest.raises(ValueError, match="preset must be one of"):
        C.preset_options("seed001")


def test_vilas2023_composition_under_both_names():
    o, a, m, p = (np.array(v) for v in ([1, 2, 3, 4], [1, 5, 6, 7], [8, 2, 6, 4], [9, 9, 3, 7]))
    got = residual_match(o, a, m, p)
    # top-1 differs from the previous block's and from the attention output's: tokens 1 and 3
    assert got["composition_vilas2023"] == got["composition_seed001"] == pytest.approx(2 / 4)


@pytest.mark.slow
def test_saliency_command_takes_both_spellings(tmp_path):
    from tests.frontends import run_cli

    from vitscope.models.loading import save_model

    torch.manual_seed(0)
    save_model(HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4)),
               tmp_path / "tiny")
    tables = {}
    for rule in ("walmer2023", "seed002"):
        run_cli("saliency", "--data", "synthetic:n=4,size=32", "--model", tmp_path / "tiny", "--queries", "cls",
                "--merge-rule", rule, "--out", tmp_path / rule, "--quiet")
        tables[rule] = pd.read_csv(tmp_path / rule / "saliency_iou.csv")
    pd.testing.assert_frame_equal(tables["walmer2023"], tables["seed002"])
