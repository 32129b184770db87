"""ciernik2025's statistics against SciPy: the direction of the one-sided Wilcoxon tests, Table 1's per-dataset tests,
Benjamini-Hochberg over the pairs, the test's independence of the unit of the gains, and the paper's rule."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control, wilcoxon

from vitscope.analysis.probes.stats import denoised_differences, gains, per_dataset_tests, wilcoxon_over_datasets

BASE = "linear:last_cls"


def results(values: dict, split="test"):
    """A tidy results table from ``{(model, dataset, "probe:experiment"): value}``."""
    rows = []
    for (model, dataset, run), v in values.items():
        probe, exp = run.split(":")
        rows.append({"model": model, "dataset": dataset, "experiment": exp, "probe": probe, "layer_set": exp,
                     "split": split, "metric": "balanced_top1", "value": float(v)})
    return pd.DataFrame(rows)


def table(a, b, base, model="m", runs=("attentive:all", "linear:all")):
    vals = {}
    for i, (x, y, z) in enumerate(zip(a, b, base)):
        ds = f"d{i:02d}"
        vals[(model, ds, runs[0])], vals[(model, ds, runs[1])], vals[(model, ds, BASE)] = x, y, z
    return vals


def test_direction_and_p_values_are_scipys():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.7, 12)
    a, b = base + rng.normal(0.05, 0.03, 12), base + rng.normal(0.0, 0.03, 12)
    g = gains(results(table(a, b, base)))
    t = wilcoxon_over_datasets(g, pairs=[("attentive:all", "linear:all"), ("linear:all", "attentive:all")])
    ga, gb = a - base, b - base
    assert t["p"].tolist() == pytest.approx([wilcoxon(ga, gb, alternative="greater").pvalue,
                                             wilcoxon(gb, ga, alternative="greater").pvalue])
    assert t["p"][0] < 0.05 < t["p"][1]                                   # a's gains are the larger ones
    assert t["p_adjusted"].tolist() == pytest.approx(false_discovery_control(t["p"].to_numpy(), method="bh"))
    assert t["mean_gain_a"][0] == pytest.approx(ga.mean()) and t["n_datasets"][0] == 12


def test_a_better_everywhere_hand_worked():
    # 8 datasets, a above b on each: W+ = 36 is the largest of 2^8 equally likely sign patterns -> p = 1/256
    base = np.full(8, 0.5)
    a, b = base + np.arange(1, 9) / 100, base.copy()
    t = wilcoxon_over_datasets(gains(results(table(a, b, base))), pairs=[("attentive:all", "linear:all")])
    assert t["p"][0] == pytest.approx(1 / 256)
    assert bool(t["reject"][0])


def test_per_dataset_tests_against_scipy():
    rng = np.random.default_rng(1)
    runs = ("attentive:all", "linear:all", "attentive:tokens")
    vals = {}
    for m in range(7):
        for ds, shift in (("cifar", (0.06, 0.0, 0.02)), ("svhn", (0.0, 0.01, 0.05))):
            base = rng.uniform(0.4, 0.8)
            vals[(f"m{m}", ds, BASE)] = base
            for run, s in zip(runs, shift):
                vals[(f"m{m}", ds, run)] = base + s + rng.normal(0, 0.02)
    t = per_dataset_tests(gains(results(vals)))
    for ds in ("cifar", "svhn"):
        gain = {r: np.array([vals[(f"m{m}", ds, r)] - vals[(f"m{m}", ds, BASE)] for m in range(7)])
                for r in runs + (BASE,)}
        best = max(gain, key=lambda r: gain[r].mean())
        part = t[t["dataset"] == ds]
        assert set(part["best"]) == {best}
        assert sorted(part["other"]) == sorted(set(gain) - {best})
        for _, row in part.iterrows():
            p = wilcoxon(gain[best], gain[row["other"]], alternative="greater").pvalue
            assert row["p"] == pytest.approx(p)
            assert row["significant"] == (p < 0.05)


# ----------------------------------------------------------------------------- units, equal pairs, the paper's rule
# balanced accuracies k / 200 (what a test set of 200 samples gives): the differences tie exactly in pairs (5 and 5,
# in points), which floats keep in fractions and break in points x 100
BASE9 = np.array([162, 176, 121, 116, 163, 166, 141, 111, 166])
A9 = np.array([151, 115, 113, 141, 168, 140, 184, 100, 142])
B9 = np.array([152, 195, 123, 182, 107, 133, 174, 157, 193])


def test_default_test_does_not_depend_on_the_unit():
    exact = wilcoxon((A9 - B9).astype(float), alternative="greater").pvalue      # integers: exact ties
    pair = [("attentive:all", "linear:all")]
    frac = gains(results(table(A9 / 200, B9 / 200, BASE9 / 200)))
    pts = frac.assign(gain=frac["gain"] * 100)                                     # the paper's unit
    raw = wilcoxon(frac["gain"][frac["run"] == "attentive:all"].to_numpy() * 100,
                   frac["gain"][frac["run"] == "linear:all"].to_numpy() * 100, alternative="greater").pvalue
    assert raw != exact                                     # on raw floats the unit changes SciPy's answer here
    assert wilcoxon_over_datasets(frac, pair)["p"][0] == pytest.approx(exact, abs=0)
    assert wilcoxon_over_datasets(pts, pair)["p"][0] == pytest.approx(exact, abs=0)
    # the paper's rule: its notebook's numbers, gains x 100 on raw floats
    assert wilcoxon_over_datasets(frac, pair, rule="ciernik2025")["p"][0] == raw


def test_denoised_differences():
    a, b = np.array([0.3, 0.5, 0.25, 0.1]), np.array([0.1, 0.5 - 1e-12, 0.05, 0.3])
    assert (a - b)[0] != (a - b)[2]                                   # 0.19999999999999998 and 0.2 in floats
    d = denoised_differences(a, b)
    assert d[1] == 0.0                                                # noise: zero
    assert d[0] == d[2] and abs(d[3]) == d[0] and d[3] < 0            # 0.2, 0.2, -0.2: one tie, signs kept
    np.testing.assert_array_equal(denoised_differences(np.array([1.0, 2.0]), np.array([0.5, 1.0])), [0.5, 1.0])


def test_equal_and_nearly_equal_pairs():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.4, 0.6, 8)
    a = base + rng.uniform(0.01, 0.1, 8)
    vals = {**table(a, base + 0.02, base, runs=("attentive:all", "linear:all")),
            **table(a, a, base, runs=("attentive:all", "attentive:last")),                 # equal everywhere
            **table(a, a - 1e-7 * np.arange(1, 9), base, runs=("attentive:all", "attentive:tokens"))}
    g = gains(results(vals))
    pairs = [("attentive:all", "linear:all"), ("attentive:all", "attentive:last"),
             ("attentive:all", "attentive:tokens")]
    t = wilcoxon_over_datasets(g, pairs)
    assert math.isnan(t["p"][1]) and math.isnan(t["p_adjusted"][1]) and not t["reject"][1]
    # 1e-7 apart is a difference (np.allclose would call it equal): the 8 differences are all positive
    assert t["p"][2] == pytest.approx(1 / 256)
    kept = t["p"][[0, 2]].to_numpy()
    assert t["p_adjusted"][[0, 2]].tolist() == pytest.approx(false_discovery_control(kept, method="bh"))
    # the paper's rule keeps the equal pair with p = 1: three tests corrected together
    paper = wilcoxon_over_datasets(g, pairs, rule="ciernik2025")
    assert paper["p"][1] == 1.0
    assert paper["p_adjusted"].tolist() == pytest.approx(false_discovery_control(paper["p"].to_numpy(), method="bh"))
    with pytest.raises(ValueError, match="rule must be one of"):
        wilcoxon_over_datasets(g, pairs, rule="paper")


def test_per_dataset_tests_paper_rule_reads_the_values_x_100():
    vals = {}
    for m in range(9):
        vals[(f"m{m}", "svhn", BASE)] = BASE9[m] / 200
        vals[(f"m{m}", "svhn", "attentive:all")] = A9[m] / 200
        vals[(f"m{m}", "svhn", "linear:all")] = B9[m] / 200 + 0.1                   # the best on average
    g = gains(results(vals))
    row = per_dataset_tests(g, rule="ciernik2025").set_index("other").loc["attentive:all"]
    best = np.array([vals[(f"m{m}", "svhn", "linear:all")] for m in range(9)]) * 100
    other = np.array([vals[(f"m{m}", "svhn", "attentive:all")] for m in range(9)]) * 100
    assert row["best"] == "linear:all"
    assert row["p"] == wilcoxon(best, other, alternative="greater").pvalue
    default = per_dataset_tests(g).set_index("other").loc["attentive:all"]
    exact = wilcoxon((B9 + 20 - A9).astype(float), alternative="greater").pvalue
    assert default["p"] == pytest.approx(exact, abs=0)
