"""Ground truth of the synthetic benchmark per patch, and AUROC against scikit-learn."""
import numpy as np
import pytest

from vitscope.analysis.sae.factors import auroc, background_kind, factor_scores, patch_concepts


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=(300, 5)) + y[:, None] * np.arange(5), 1)
    s[:, 0] = np.where(rng.random(300) < 0.7, 0, s[:, 0])          # many ties at zero, as latents have
    got = auroc(s, y)
    np.testing.assert_allclose(got, [roc_auc_score(y, s[:, j]) for j in range(5)], rtol=1e-12)


class _Recorder:
    """A numpy Generator that records what ``integers`` returned (to read the generator's own draw)."""

    def __init__(self, rng):
        self.rng, self.ints = rng, []

    def integers(self, *a, **k):
        v = self.rng.integers(*a, **k)
        self.ints.append(int(v))
        return v

    def __getattr__(self, name):
        return getattr(self.rng, name)


def test_background_kind_is_the_generators_draw():
    from vitscope.data.synthetic import SynthConfig
    from vitscope.data.synthetic.config import SPLITS
    from vitscope.data.synthetic.render import BACKGROUNDS, background

    cfg = SynthConfig(size=32)
    for i in range(12):
        rec = _Recorder(cfg.rng(SPLITS["test"], i))
        background(rec, cfg.size, cfg.texture)
        assert background_kind(cfg, "test", i) == BACKGROUNDS[rec.ints[0]]


def test_patch_concepts_from_the_masks():
    from vitscope.data.synthetic import SynthConfig, SyntheticSource

    src = SyntheticSource(SynthConfig(size=32, difficulty="easy"), 6, "test")
    c = patch_concepts(src, range(6), grid=4)
    obj = c["object"][1].reshape(6, 16)
    for j in range(6):
        m = src.sample(j).mask
        cover = m.reshape(4, 8, 4, 8).mean((1, 3)).ravel()
        assert (obj[j] == (cover >= 0.5)).all()
        name = f"shape={src.classes[src.sample(j).label]}"
        assert (c[name][1].reshape(6, 16)[j] == obj[j]).all()
    # each object patch has exactly one part, one colour and one position
    for f in ("part", "colour", "position"):
        tot = sum(v for k, (ff, v) in c.items() if ff == f)
        assert (tot == c["object"][1]).all()


def test_factor_scores_find_a_planted_unit():
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.2
    s = rng.normal(size=(2000, 10))
    s[:, 4] += 3 * y
    rows = factor_scores({"b": (s, False)}, {"c": ("f", y)}, sizes=(1, 2))
    assert rows[0]["best_unit"] == 4 and rows[0]["best_auroc"] > 0.95 and rows[0]["units_to_0.9"] == 1


def test_units_needed_counts_the_units_a_linear_probe_needs():
    from vitscope.analysis.sae.factors import units_needed

    rng = np.random.default_rng(1)
    n = 4000
    y = rng.random(n) < 0.5
    s = rng.normal(size=(n, 6))
    s[:, 2] += 1.5 * y                   # each alone: AUROC Phi(1.5 / sqrt 2) = 0.86; both: Phi(1.5) = 0.93
    s[:, 5] += 1.5 * y
    assert units_needed(s, y, np.array([2, 5, 0, 1, 3, 4]), sizes=(1, 2, 4)) == 2
    assert np.isnan(units_needed(s, y, np.array([0, 1, 3, 4, 2, 5]), sizes=(1, 2, 4)))


def test_probe_auroc_is_the_linear_ceiling_a_logistic_regression_reaches():
    """On a concept that is a direction of the units (no single unit is), the probe's held-out AUROC matches an
    independent linear classifier's (scikit-learn's logistic regression on the same halves) and is far above the
    best unit's; on a concept independent of the units it is at chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from vitscope.analysis.sae.factors import halves, probe_auroc

    rng = np.random.default_rng(3)
    n = 6000
    s = rng.normal(size=(n, 8))
    w = rng.normal(size=8)
    y = s @ w + 0.5 * rng.normal(size=n) > 0
    order = np.arange(8)
    got = probe_auroc(s, y, order)
    tr, te = halves(n)
    lr = LogisticRegression(C=1e4, max_iter=2000).fit(s[tr], y[tr])
    want = roc_auc_score(y[te], lr.decision_function(s[te]))
    best_unit = max(max(a, 1 - a) for a in auroc(s, y))
    assert abs(got - want) < 0.005 and got > 0.97 and best_unit < 0.85, (got, want, best_unit)
    assert abs(probe_auroc(s, rng.random(n) < 0.3, order) - 0.5) < 0.04
    # only the `units` best-ranked units enter: the probe on the two worst-ranked sees little of w
    few = probe_auroc(s, y, np.argsort(np.abs(w)), units=2)
    lr2 = LogisticRegression(max_iter=2000).fit(s[tr][:, np.argsort(np.abs(w))[:2]], y[tr])
    assert abs(few - roc_auc_score(y[te], lr2.decision_function(s[te][:, np.argsort(np.abs(w))[:2]]))) < 0.005


def test_factor_scores_report_the_probe_auroc_per_basis():
    rng = np.random.default_rng(4)
    y = rng.random(3000) < 0.3
    s = rng.normal(size=(3000, 5))
    s[:, 0] += 2 * y
    s[:, 1] += 2 * y
    r = factor_scores({"b": (s, False)}, {"c": ("f", y)}, sizes=(1, 2, 4))[0]
    assert r["probe_auroc"] > r["best_auroc"] > 0.85


def test_concept_split_counts_where_each_latent_fires():
    """A planted split: the concept `object` is carried by one latent per shape, plus a dense latent that fires
    everywhere; the firing fractions against a plain loop over the patches."""
    from vitscope.analysis.sae.factors import concept_split

    rng = np.random.default_rng(0)
    n = 400
    obj = rng.random(n) < 0.3
    shape = rng.integers(0, 2, n)
    concepts = {"object": ("object", obj), "shape=a": ("shape", obj & (shape == 0)),
                "shape=b": ("shape", obj & (shape == 1)), "colour=red": ("colour", obj & (rng.random(n) < 0.5)),
                "texture=x": ("texture", ~obj)}
    z = np.zeros((n, 4))
    z[:, 0] = np.where(obj & (shape == 0), 1 + rng.random(n), 0)       # object of shape a
    z[:, 1] = np.where(obj & (shape == 1) & (rng.random(n) < 0.8), 2.0, 0)
    z[:, 2] = 0.5 + obj + 0.3 * rng.random(n)                            # dense, larger on objects
    z[:, 3] = np.where(rng.random(n) < 0.1, 1.0, 0)                      # unrelated
    t = concept_split(z, concepts, "object", top=3)
    assert list(t.group.unique()) == ["positives", "negatives", "shape=a", "shape=b", "colour=red"]
    assert t.groupby("unit").auroc.first().sort_values(ascending=False).index[0] == 2   # the dense one ranks first
    for _, r in t.iterrows():
        mask = {"positives": obj, "negatives": ~obj}.get(r.group, obj & concepts.get(r.group, (0, obj))[1])
        fires = sum(z[i, r.unit] > 0 for i in range(n) if mask[i]) / sum(mask)
        assert r.fires == pytest.approx(fires) and r.patches == sum(mask)
    f = t.set_index(["unit", "group"]).fires
    assert f[(0, "shape=a")] == 1 and f[(0, "shape=b")] == 0 and f[(2, "negatives")] == 1
    with pytest.raises(ValueError, match="unknown concept 'part=left'"):
        concept_split(z, concepts, "part=left")
    with pytest.raises(ValueError, match="rows of scores"):
        concept_split(z[:10], concepts, "object")


@pytest.mark.parametrize("train_positives", [0, 1])
def test_a_probe_without_two_train_patches_of_a_class_is_nan_and_silent(train_positives):
    """A rare concept (as on a handful of images): with fewer than two positives in the probe's train half there is
    no class covariance to fit; the probe gives NaN instead of a fit on one sample (and scikit-learn's warnings)."""
    import warnings

    from vitscope.analysis.sae.factors import halves, probe_scores

    n = 200
    tr, te = halves(n)
    y = np.zeros(n, bool)
    y[te[:3]] = True
    y[tr[:train_positives]] = True
    s = np.random.default_rng(0).normal(size=(n, 4)) + y[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        needed, got = probe_scores(s, y, np.arange(4), sizes=(1, 2, 4))
    assert np.isnan(needed) and np.isnan(got)
    y[tr[:2]] = True                                  # two train positives: fitted
    assert not np.isnan(probe_scores(s, y, np.arange(4), sizes=(1, 2, 4))[1])
