"""`vitscope knn` end to end on the synthetic benchmark with the bundled demo model: from models and from stores."""
import numpy as np
import pandas as pd
from typer.testing import CliRunner

from vitscope.cli.main import app
from vitscope.report.demo import DEMO_DATA

TRAIN = f"{DEMO_DATA},n=64,split=train"
TEST = f"{DEMO_DATA},n=32,split=test"


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


def test_knn_models_and_stores_agree(tmp_path):
    from vitscope.features import extract_features
    from vitscope.models.loading import load_model

    r = run("knn", "-m", "demo-vit", "--with-random", "--train", TRAIN, "--test", TEST, "--k", "5,20",
            "-o", tmp_path / "m", "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "k-NN of 2 model(s) on 64 train / 32 test images" in r.output
    for f in ("knn.csv", "knn.parquet", "knn_top1_k20.png", "knn_top1_k20.csv", "knn_top5_k20.png"):
        assert (tmp_path / "m" / f).exists(), f
    df = pd.read_parquet(tmp_path / "m" / "knn.parquet")
    assert {"model", "block", "task", "metric", "value", "k"} <= set(df.columns)
    assert set(df["model"]) == {"demo-vit", "demo-vit (random)"} and set(df["block"]) == set(range(6))
    top1 = df[df.metric == "top1_k20"].groupby("model").value.max()
    assert top1["demo-vit"] > top1["demo-vit (random)"] + 30

    m = load_model("demo-vit").eval()
    extract_features(m, TRAIN, tmp_path / "tr", layers="all", tokens=("cls",), progress=False)
    extract_features(m, TEST, tmp_path / "te", layers="all", tokens=("cls",), progress=False)
    r = run("knn", "--train-store", tmp_path / "tr", "--test-store", tmp_path / "te", "--k", "5,20", "--blocks",
            "3:6", "-o", tmp_path / "s", "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    ds = pd.read_csv(tmp_path / "s" / "knn.csv")
    assert sorted(set(ds.block)) == [3, 4, 5]
    a = df[(df.model == "demo-vit") & (df.block >= 3)].sort_values(["block", "metric"]).value.to_numpy()
    b = ds.sort_values(["block", "metric"]).value.to_numpy()
    np.testing.assert_allclose(a, b)                                  # same features, same scores


def test_knn_data_split_and_bad_input(tmp_path):
    r = run("knn", "-m", "demo-vit", "--random", "--data", f"{DEMO_DATA},n=30", "--blocks", "-1", "--k", "3",
            "-o", tmp_path, "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    df = pd.read_csv(tmp_path / "knn.csv")
    assert set(df.block) == {5} and set(df.n_test) == {6} and set(df.n_train) == {24}
    r = run("knn", "-m", "demo-vit", "--random", "--data", f"{DEMO_DATA},n=30", "--k", "100", "-o", tmp_path)
    assert isinstance(r.exception, ValueError) and "larger than the 24 training rows" in str(r.exception)
    r = run("knn", "-m", "demo-vit", "--train", TRAIN, "-o", tmp_path)
    assert isinstance(r.exception, ValueError) and "--train SPEC --test SPEC" in str(r.exception)
    r = run("knn", "--train-store", tmp_path, "-o", tmp_path)
    assert isinstance(r.exception, ValueError) and "pairs" in str(r.exception)
    r = run("knn", "-m", "demo-vit-reg4", "--random", "--data", f"{DEMO_DATA},n=30", "--blocks", "2", "-o", tmp_path)
    assert isinstance(r.exception, ValueError) and "no CLS token" in str(r.exception)
