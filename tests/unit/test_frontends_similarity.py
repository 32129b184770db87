"""CKA, RSA and clustering through the Python API (``evaluate``), the command line and a study cell: the same table on
the same inputs (a study's feature stores of the demo model and its random twin); and their options' checks."""
import numpy as np
import pandas as pd
import pytest
import torch

from tests.frontends import assert_same_values, run_cli, study_cell, values
from vitscope.analysis.api import OptionError

DATA = "synthetic:n=24,size=64,classes=4"
STUDY = f"""\
study: t
models: [{{name: demo-vit, with_random: true}}]
datasets: [{{name: d, data: "{DATA}"}}]
analyses:
  - {{name: cka, options: {{tokens: cls}}}}
  - {{name: rsa, options: {{tokens: mean}}}}
  - {{name: cluster, options: {{k: 4}}}}
"""


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("study")
    return {a: study_cell(STUDY, a, d) for a in ("cka", "rsa", "cluster")}


def _table(path):
    return pd.read_parquet(path)


@pytest.mark.slow
def test_cka_python_cli_and_study_give_the_same_table(cells, tmp_path):
    from vitscope.analysis.similarity.cka import CKAOptions, evaluate

    rows, ctx = cells["cka"]
    store = ctx.store(0, "cls")
    api = evaluate({ctx.label(0): store}, None, CKAOptions(tokens="cls"))
    run_cli("cka", "--store", store.path, "--tokens", "cls", "-o", tmp_path, "-q")
    keys = ("block", "block2", "metric")
    assert_same_values(values(api.table, keys), values(rows, keys))
    assert_same_values(values(api.table, keys), values(_table(tmp_path / "cka.parquet"), keys))
    assert len(api.table) == 36 and set(api.table["model2"]) == {"demo-vit"}
    assert (tmp_path / "cka_demo-vit.matrix.npy").exists() and "adjacent layers" in api.summary


@pytest.mark.slow
def test_rsa_python_cli_and_study_give_the_same_table(cells, tmp_path):
    from vitscope.analysis.similarity.rsa import RSAOptions, evaluate

    rows, ctx = cells["rsa"]
    store = ctx.store(0, "mean")
    api = evaluate({ctx.label(0): store}, None, RSAOptions(tokens="mean"))
    run_cli("rsa", "--store", store.path, "--tokens", "mean", "-o", tmp_path, "-q")
    keys = ("block", "block2", "metric")
    assert_same_values(values(api.table, keys), values(rows, keys))
    assert_same_values(values(api.table, keys), values(_table(tmp_path / "rsa.parquet"), keys))
    from vitscope.analysis.similarity.rsa import rsa_matrix

    ref = rsa_matrix([np.asarray(store["resid_post", b, "mean"]) for b in store.layers])
    np.testing.assert_allclose(api.arrays["result"].matrix, ref, rtol=1e-12)


@pytest.mark.slow
def test_cluster_python_cli_and_study_give_the_same_table(cells, tmp_path):
    from vitscope.analysis.cluster import ClusterOptions, evaluate

    rows, ctx = cells["cluster"]
    store = ctx.store(0, "cls")
    api = evaluate({ctx.label(0): store}, None, ClusterOptions(k=4))
    run_cli("cluster", "--store", store.path, "--k", 4, "-o", tmp_path, "-q")
    assert_same_values(values(api.table), values(rows))
    assert_same_values(values(api.table), values(_table(tmp_path / "cluster.parquet")))
    assert set(api.table["metric"]) == {"nmi", "ari", "purity"} and len(api.table) == 6 * 3
    assert (tmp_path / "cluster_cls.csv").exists()


def test_in_memory_features_equal_the_formula():
    """CKA and clustering of features in memory (what the report passes): unbiased linear CKA written from the
    formula, and scikit-learn's k-means + NMI."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from vitscope.analysis.cluster import ClusterOptions
    from vitscope.analysis.cluster import evaluate as cluster
    from vitscope.analysis.similarity.cka import evaluate as cka

    rng = np.random.default_rng(0)
    feats = {str(b): rng.normal(size=(30, 8)) + b for b in range(3)}
    labels = np.repeat(np.arange(3), 10)
    feats["2"][:, 0] += 4 * labels

    def hsic(k, l):
        n = k.shape[0]
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))

    res = cka({"m": feats}, None).table
    for _, r in res.iterrows():
        x, y = feats[str(r["block"])], feats[str(r["block2"])]
        k, l = x @ x.T, y @ y.T
        assert r["value"] == pytest.approx(hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l)), abs=1e-9)
    got = cluster({"m": feats}, labels, ClusterOptions(k=3, seed=1, n_init=3)).table
    nmi = got[got["metric"] == "nmi"].set_index("block")["value"]
    for b in range(3):
        pred = KMeans(3, random_state=1, n_init=3).fit(feats[str(b)]).labels_
        assert nmi[b] == pytest.approx(normalized_mutual_info_score(labels, pred))


@pytest.mark.parametrize("cls, kw, words", [
    ("cka", dict(comparison="last-layer", tokens="clss"), "`tokens` must be one of cls, mean, all, patches"),
    ("cka", dict(kernel="gauss"), "`kernel` must be one of linear, rbf"),
    ("cka", dict(sigma=0.0), "`sigma` must be positive, got 0.0"),
    ("cka", dict(sites="ln3"), "unknown site 'ln3'"),
    ("cka", dict(limit=0), "`limit` must be a positive integer, got 0"),
    ("rsa", dict(rdm="manhattan"), "`rdm` must be one of correlation, cosine, euclidean"),
    ("rsa", dict(batch_size=0), "`batch_size` must be a positive integer, got 0"),
    ("cluster", dict(k=0), "`k` must be a positive integer, got 0"),
    ("cluster", dict(dense="cube"), "`dense` must be one of object, part, got 'cube'"),
    ("cluster", dict(limit=0), "`limit` must be a positive integer, got 0"),
])
def test_options_say_what_was_expected(cls, kw, words):
    from vitscope.analysis.cluster import ClusterOptions
    from vitscope.analysis.similarity.cka import CKAOptions
    from vitscope.analysis.similarity.rsa import RSAOptions

    with pytest.raises(OptionError, match=words.replace("(", r"\(")):
        {"cka": CKAOptions, "rsa": RSAOptions, "cluster": ClusterOptions}[cls](**kw)


def test_cka_presets_and_defaults():
    from vitscope.analysis.similarity.cka import CKAOptions

    assert CKAOptions().token_mode == "cls" and CKAOptions(comparison="residual").token_mode == "all"
    assert CKAOptions(comparison="last-layer").comparison == "last_layer"
    o = CKAOptions.from_preset("seed002", minibatch=False)
    assert o.minmax and o.tokens == "all" and not o.minibatch and o.sites == ("ln1.hook_normalized",
                                                                              "ln2.hook_normalized")
    assert CKAOptions.from_preset(None, kernel=None).kernel == "linear"
    with pytest.raises(OptionError, match="`preset` must be one of"):
        CKAOptions.from_preset("seed009")
    from vitscope.analysis.cluster import ClusterOptions

    assert ClusterOptions().clusters == 50 and ClusterOptions(dense="part").clusters == 80


def test_study_defaults_keep_their_values():
    """The study's defaults (and so its cell hashes) are those it had before the options dataclasses."""
    from vitscope.experiments.analyses import REGISTRY

    assert REGISTRY["cka"].defaults == {"tokens": "cls", "kernel": "linear", "unbiased": True, "normalize": False}
    assert REGISTRY["cluster"].defaults == {"tokens": "cls", "k": 50, "seed": 0, "n_init": 10}
    assert REGISTRY["retrieval"].defaults == {"tokens": "cls", "protocols": ["easy", "medium", "hard"], "imsize": None,
                                              "preprocess": "thumbnail", "multiscale": False, "crop": True,
                                              "blocks": "all", "batch_size": 32, "name": None}
    assert REGISTRY["davis"].defaults == {"blocks": "all", "split": "val", "sequences": None, "limit": None,
                                          "resolution": "dino", "short_side": 480, "tile": None, "n_last": 7,
                                          "radius": 12, "topk": 5, "temperature": 0.1, "batch_size": 8}
    assert REGISTRY["keypoints"].defaults == {"blocks": "all", "split": "test", "pairs_per_category": 20, "seed": 42,
                                              "with_replacement": False, "size": None, "batch_size": 16}


def test_cli_flags_name_the_option(tmp_path):
    from typer.testing import CliRunner

    from vitscope.cli.main import app

    for args, words in ((["cluster", "--store", "x", "--dense", "cube"], "--dense must be one of object, part"),
                        (["cka", "--store", "x", "--rbf-threshold", "0"], "--rbf-threshold must be positive"),
                        (["rsa", "--store", "x", "--limit", "0"], "--limit must be a positive integer, got 0"),
                        (["cluster", "--store", "x", "--k", "0"], "--k must be a positive integer, got 0")):
        r = CliRunner().invoke(app, args + ["-o", str(tmp_path)])
        assert r.exit_code != 0 and words in str(r.exception), (args, r.exception)


def test_results_cka_grid_uses_the_tables_block_numbers():
    """A late-CLS model's CKA rows cover blocks 6 and 7: the results grid names them so, not 0 and 1."""
    from vitscope.experiments.figures import _cka_pairs
    from vitscope.viz.similarity import plot_cka_grid

    rows = [{"model": "reg4", "model2": m2, "block": b, "block2": c, "value": 0.5 + 0.1 * (b == c)}
            for m2 in ("reg4", "reg4 (random)") for b in (6, 7) for c in (6, 7)]
    pairs = _cka_pairs(pd.DataFrame(rows))
    assert pairs[("reg4", "reg4")].rows == ["6", "7"] and pairs[("reg4 (random)", "reg4")].cols == ["6", "7"]
    fig = plot_cka_grid(pairs)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["6", "7"]
    np.testing.assert_allclose(pairs[("reg4", "reg4")].matrix, [[0.6, 0.5], [0.5, 0.6]])
