"""The evaluation API: options validate themselves with one message style; k-NN through the Python API, the
command line and a study cell gives the same table on the same inputs."""
import subprocess
import sys

import pandas as pd
import pytest

from tests.frontends import assert_same_values, run_cli, study_cell, values
from vitscope.analysis.api import OptionError, tidy_table
from vitscope.analysis.knn import KNNOptions, evaluate

DATA = "synthetic:n=24,size=64,classes=8"
TRAIN = "synthetic:n=48,size=64,classes=8,split=train"


@pytest.mark.parametrize("kw, words", [
    (dict(k=(0,)), "`k` takes positive integers, got (0,)"),
    (dict(k="3,x"), "`k` takes comma-separated integers"),
    (dict(temperature=0), "`temperature` must be positive, got 0"),
    (dict(test_fraction=1.5), "`test_fraction` must be in (0, 1), got 1.5"),
    (dict(tokens="clss"), "`tokens` must be one of cls, mean, got 'clss' (did you mean 'cls'?)"),
    (dict(batch_size=0), "`batch_size` must be a positive integer, got 0"),
    (dict(num_classes=1), "`num_classes` must be an integer >= 2, got 1"),
    (dict(limit=True), "`limit` must be an integer, got True"),
])
def test_options_say_what_was_expected(kw, words):
    with pytest.raises(OptionError) as e:
        KNNOptions(**kw)
    assert str(e.value) == words or str(e.value).startswith(words)
    assert e.value.field == next(iter(kw))


def test_options_from_a_mapping_and_defaults():
    o = KNNOptions.from_mapping({"k": [5, 20], "temperature": 0.1})
    assert o.k == (5, 20) and o.temperature == 0.1 and o.tokens == "cls"
    assert KNNOptions(k="10,20").k == (10, 20)
    with pytest.raises(OptionError, match="unknown option `temprature` \\(did you mean `temperature`\\?\\)"):
        KNNOptions.from_mapping({"temprature": 0.1})
    assert '"device"' not in KNNOptions(device="cpu").as_json()


def test_tidy_table_puts_the_study_columns_first():
    df = tidy_table([{"model": "m", "block": 2, "metric": "acc", "value": 1.0, "k": 5}], "knn", KNNOptions(),
                    dataset="d", weights={"m": "abc"})
    assert list(df.columns)[:8] == ["model", "weights", "dataset", "analysis", "block", "metric", "value", "options"]
    assert df.loc[0, "weights"] == "abc" and df.loc[0, "k"] == 5 and df["block"].dtype == "int64"


def test_cli_names_the_flag_of_a_bad_option(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vitscope", "knn", "-m", "demo-vit", "--k", "0", "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: --k takes positive integers, got '0'")


@pytest.mark.slow
def test_knn_python_cli_and_study_give_the_same_table(tmp_path):
    study = (f'study: t\nmodels: [demo-vit]\ndatasets:\n  - {{name: d, data: "{DATA}", train: "{TRAIN}"}}\n'
             "analyses:\n  - {name: knn, options: {k: [3, 10], temperature: 0.1}}\n")
    rows, ctx = study_cell(study, "knn", tmp_path / "study")
    train, test = ctx.store(0, "cls", split="train"), ctx.store(0, "cls")
    api = evaluate({"demo-vit": (train, test)}, None, KNNOptions(k=(3, 10), temperature=0.1))
    run_cli("knn", "--train-store", train.path, "--test-store", test.path, "--k", "3,10", "--temperature", "0.1",
            "-o", tmp_path / "cli", "-q")
    cli = pd.read_parquet(tmp_path / "cli" / "knn.parquet")
    assert_same_values(values(api.table), values(rows))
    assert_same_values(values(api.table), values(cli))
    assert set(api.table["temperature"]) == {0.1} and len(api.table) == 6 * 2 * 2
    assert "best top-1" in api.summary and set(api.figures()) == {"knn_top1_k3", "knn_top5_k3"}   # k = 20, else the first k
