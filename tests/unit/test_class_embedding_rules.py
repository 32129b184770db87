"""vilas2023's class- vs context-labelled tests and token dropping, by hand: the permutation test on discrete values
with ties (p counts strictly greater differences only), one seed per block, and token dropping with masks that cover
every patch or none (left out by default; kept as vilas2023's code keeps them with ``keep="vilas2023"``)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vitscope.analysis.class_embedding as ce
from vitscope.models.config import ViTConfig
from vitscope.models.vit import HookedViT


# ----------------------------------------------------------------------------- permutation test with ties
def test_permutation_test_counts_strictly_greater_differences_hand_worked():
    # class [1, 1], context [1, 0, 0]: diff = 1 - 1/3 = 2/3, the largest any split of the pooled values reaches, and
    # 3 of the 10 splits reach it exactly: none is strictly greater, p = 0 (a ">=" would give about 0.3)
    v = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    c = np.array([True, True, False, False, False])
    diff, p, null = ce.permutation_test(v, c, 2000, seed=0)
    assert diff == pytest.approx(2 / 3) and p == 0.0
    assert 0.25 < np.mean(np.isclose(null, 2 / 3)) < 0.35
    # constant values: every permuted difference is 0 = diff, none greater
    assert ce.permutation_test(np.full(6, 0.25), np.r_[np.ones(2, bool), np.zeros(4, bool)], 100)[1] == 0.0
    # class [0, 0], context [1, 1, 0]: diff = -2/3, the smallest; a split is strictly greater unless both class
    # values are 0, which 3 of the 10 splits give: p = 7/10
    v = np.array([0.0, 0.0, 1.0, 1.0, 0.0])
    p = ce.permutation_test(v, c, 4000, seed=1)[1]
    assert p == pytest.approx(0.7, abs=0.03)


class FakeLens:
    """The parts of a LensResult that class_context_rows reads: the same values at every block."""

    def __init__(self, values, masks, depth=4):
        self.depth, self.masks, self._v = depth, masks, values
        self.layouts = [SimpleNamespace(patches=slice(1, 1 + values.shape[1]))] * depth

    def scores(self, site, b):
        return np.concatenate([np.zeros((len(self._v), 1)), self._v], 1)           # CLS column, then patches


def test_class_context_rows_seed_each_block_on_its_own():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 3, (6, 8)).astype(float)                             # discrete scores with many ties
    masks = rng.random((6, 8)) < 0.4
    rows = ce.class_context_rows(FakeLens(v, masks), n_permutations=300, seed=5)
    assert [r["block"] for r in rows] == [0, 1, 2, 3]
    for r in rows:                                                           # block b draws with seed + b
        assert r["p_value"] == ce.permutation_test(v, masks, 300, 5 + r["block"])[1]
        assert r["value"] == pytest.approx(v[masks].mean() - v[~masks].mean())
    assert len({r["p_value"] for r in rows}) > 1                             # the same values, different nulls
    shifted = ce.class_context_rows(FakeLens(v, masks), n_permutations=300, seed=6)
    assert [r["p_value"] for r in shifted[:3]] == [r["p_value"] for r in rows[1:]]


# ----------------------------------------------------------------------------- token dropping
def tiny():
    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2,
                               num_classes=7)).eval().requires_grad_(False)


def ref_rank0(logits, y):
    return [int(sum(1 for c in range(len(lg)) if lg[c] > lg[y]) == 0) for lg in logits]


def reference_drop(model, x, y, masks, images):
    """vilas2023's loop: one image at a time, tokens [CLS] + the kept patches (CLS alone when none is kept); per image
    the share of rank-0 tokens (patch tokens, or all), averaged over the images that have one; the baseline pools
    the unperturbed patches of that kind over ``images``. -> {tokens: {kind: (value, baseline, images counted)}}"""
    from vitscope.hooks import drop_patches

    name = f"blocks.{model.cfg.depth - 1}.hook_resid_post"
    with torch.no_grad():
        _, full = model.run_with_cache(x, names_filter=name)
    unperturbed = model.project_to_logits(full[name])[:, 1:].numpy()
    out = {"all": {}, "patches": {}}
    for kind, keep_class in (("no_context", True), ("no_class", False)):
        shares, base = {"all": [], "patches": []}, []
        for i in images:
            sel = masks[i] if keep_class else ~masks[i]
            with torch.no_grad(), model.hooks(drop_patches(model, (~sel).nonzero().flatten().tolist())):
                _, cache = model.run_with_cache(x[i:i + 1], names_filter=name)
            lg = model.project_to_logits(cache[name])[0].numpy()
            for tokens, counted in (("all", lg), ("patches", lg[1:])):
                if len(counted):
                    shares[tokens].append(np.mean(ref_rank0(counted, int(y[i]))))
            base += ref_rank0(unperturbed[i][sel.numpy()], int(y[i]))
        for tokens in out:
            out[tokens][kind] = (np.mean(shares[tokens]), np.mean(base), len(shares[tokens]))
    return out


@pytest.fixture(scope="module")
def batch():
    model = tiny()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 16, 16, generator=g)
    y = torch.randint(0, 7, (6,), generator=g)
    masks = torch.rand(6, 16, generator=g) < 0.3
    masks[1] = True                                                          # the object covers every patch
    masks[4] = False                                                         # no object
    return model, x, y, masks


def test_masks_covering_everything_or_nothing_are_left_out_by_default(batch):
    model, x, y, masks = batch
    mixed = [0, 2, 3, 5]
    refs = reference_drop(model, x, y, masks, mixed)
    for tokens in ("patches", "all"):
        rows = {r["perturbation"]: r for r in ce.token_drop_rows(model, [(x, y, masks)], tokens=tokens)}
        only = {r["perturbation"]: r for r in ce.token_drop_rows(model, [(x[mixed], y[mixed], masks[mixed])],
                                                                 tokens=tokens)}
        assert rows == only
        ref = refs[tokens]
        for kind in ("no_context", "no_class"):
            assert (rows[kind]["value"], rows[kind]["baseline"]) == pytest.approx(ref[kind][:2])
            assert rows[kind]["n_images"] == 4


def test_vilas2023_keeps_every_image(batch):
    model, x, y, masks = batch
    refs = reference_drop(model, x, y, masks, list(range(6)))
    for tokens, counted in (("all", {"no_context": 6, "no_class": 6}),          # CLS alone still counts
                            ("patches", {"no_context": 5, "no_class": 5})):     # nothing left to count: out
        rows = {r["perturbation"]: r for r in ce.token_drop_rows(model, [(x[:3], y[:3], masks[:3]),
                                                                         (x[3:], y[3:], masks[3:])],
                                                                 tokens=tokens, keep="vilas2023")}
        ref = refs[tokens]
        for kind in ("no_context", "no_class"):
            assert rows[kind]["value"] == pytest.approx(ref[kind][0])
            assert rows[kind]["baseline"] == pytest.approx(ref[kind][1])
            assert rows[kind]["n_images"] == ref[kind][2] == counted[kind]
    with pytest.raises(ValueError, match="keep must be one of"):
        ce.token_drop_rows(model, [(x, y, masks)], keep="all")
