"""Expansion of a study into cells: one per model (or pair of models) x dataset x analysis, stable hashes."""
from vitscope.experiments.cells import Cell, expand, store_tokens
from vitscope.experiments.config import parse_study

STUDY = """\
study: s
models:
  - {name: demo-vit, with_random: true}
  - demo-vit-reg4
datasets:
  - {name: a, data: "synthetic:n=16"}
  - {name: b, data: "synthetic:n=8,seed=1"}
analyses:
  - attention_distance
  - {name: cka, options: {tokens: cls}}
  - {name: cluster, options: {k: 4, tokens: mean}, datasets: [a], models: [demo-vit]}
"""


def test_expansion_counts_and_order():
    cells = expand(parse_study(STUDY))
    per = {}
    for c in cells:
        per.setdefault(c.analysis, []).append(c)
    assert len(per["attention_distance"]) == 3 * 2                       # models x datasets
    assert len(per["cka"]) == (3 * 4 // 2) * 2                           # unordered pairs with self, x datasets
    pairs = {tuple(c.model_labels) for c in per["cka"] if c.dataset.name == "a"}
    assert pairs == {("demo-vit", "demo-vit"), ("demo-vit", "demo-vit (random)"), ("demo-vit", "demo-vit-reg4"),
                     ("demo-vit (random)", "demo-vit (random)"), ("demo-vit (random)", "demo-vit-reg4"),
                     ("demo-vit-reg4", "demo-vit-reg4")}
    # 'models: [demo-vit]' selects by name: the trained model and its random twin; datasets: [a] only
    assert sorted((c.model_labels[0], c.dataset.name) for c in per["cluster"]) == [
        ("demo-vit", "a"), ("demo-vit (random)", "a")]
    assert [c.analysis for c in cells] == sorted([c.analysis for c in cells],
                                                 key=["attention_distance", "cka", "cluster"].index)
    assert len({c.id for c in cells}) == len(cells)


def test_hash_is_stable_and_follows_options():
    a = {c.id: c for c in expand(parse_study(STUDY))}
    b = {c.id: c for c in expand(parse_study(STUDY))}
    assert a.keys() == b.keys()                                            # same file, same cells
    changed = {c.id for c in expand(parse_study(STUDY.replace("k: 4", "k: 5")))}
    only_old = set(a) - changed
    assert only_old and all(a[i].analysis == "cluster" for i in only_old)   # only the cluster cells are new
    # spelling out a default does not make a new cell; the site of the features does (for store analyses)
    same = {c.id for c in expand(parse_study(STUDY.replace("k: 4,", "k: 4, n_init: 10,")))}
    assert same == set(a)
    site = {c.id for c in expand(parse_study(STUDY + "features: {site: ln2}\n"))}
    assert {a[i].analysis for i in set(a) - site} == {"cka", "cluster"}


def test_cell_round_trip_and_store_tokens():
    study = parse_study(STUDY)
    cells = expand(study)
    for c in cells:
        assert Cell.from_dict(c.to_dict()) == c
    toks = store_tokens(study, cells)
    assert toks["demo-vit|a"] == ["cls", "mean"]                           # cka (cls) and cluster (mean) share it
    assert toks["demo-vit|b"] == ["cls"] and toks["demo-vit-reg4|a"] == ["cls"]
    assert "demo-vit|b" in toks and not any(k.endswith("|c") for k in toks)
