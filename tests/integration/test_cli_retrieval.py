"""`vitscope retrieval` end to end on the synthetic benchmark's Revisited-style set (written by `vitscope synth`)."""
import pickle

import pandas as pd
import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app


@pytest.fixture(scope="module")
def rsynth(tmp_path_factory):
    from vitscope.data.synthetic import SynthConfig, write

    root = tmp_path_factory.mktemp("rsynth")
    write(root, SynthConfig(size=64), formats=["revisited"], landmarks=4)
    return root / "revisited" / "rsynth"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_retrieval_models(rsynth, tmp_path):
    r = run("retrieval", "-m", "demo-vit", "--with-random", "--root", rsynth, "-o", tmp_path, "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "retrieval of 2 model(s) on Revisited rsynth (56 images, 12 queries)" in r.output
    for f in ("retrieval.csv", "retrieval.parquet", "retrieval_mAP_medium.png", "retrieval_mAP_hard.csv"):
        assert (tmp_path / f).exists(), f
    df = pd.read_parquet(tmp_path / "retrieval.parquet")
    assert {"model", "block", "task", "metric", "value", "protocol", "crop"} <= set(df.columns)
    assert len(df) == 2 * 6 * 3 * 4 and df["crop"].all()
    assert df.value.between(0, 100).all()

    r = run("retrieval", "-m", "demo-vit", "--root", rsynth, "--no-crop", "--multiscale", "--blocks", "-1",
            "--protocols", "medium", "-o", tmp_path / "ms", "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    df = pd.read_csv(tmp_path / "ms" / "retrieval.csv")
    assert set(df.block) == {5} and set(df.protocol) == {"medium"} and not df["crop"].any() and df.multiscale.all()


def test_retrieval_from_stores_equals_models(rsynth, tmp_path):
    from vitscope.data.tasks import load_revisited
    from vitscope.data.folders import FileSource
    from vitscope.data.datasets import ImageDataset
    from vitscope.features import extract_features
    from vitscope.models.loading import load_model
    from vitscope.models.preprocess import Preprocessor

    gt = load_revisited(rsynth)
    m = load_model("demo-vit").eval()
    tf = Preprocessor(m.preprocess_cfg)
    extract_features(m, ImageDataset(FileSource(gt.image_paths()), transform=tf), tmp_path / "db", tokens=("cls",),
                     progress=False)
    extract_features(m, gt.query_dataset(transform=tf, crop=False), tmp_path / "q", tokens=("cls",),
                     progress=False)
    r = run("retrieval", "--db-store", tmp_path / "db", "--query-store", tmp_path / "q", "--root", rsynth,
            "-o", tmp_path / "s", "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    # --imsize 96: no image is larger (queries are 96 px), so no thumbnail before the model's transform, as in the stores
    r = run("retrieval", "-m", "demo-vit", "--root", rsynth, "--preprocess", "model", "--no-crop", "--imsize", 96,
            "-o", tmp_path / "m", "-q")
    assert r.exit_code == 0, (r.output, r.exception)
    a = pd.read_csv(tmp_path / "s" / "retrieval.csv").sort_values(["block", "metric"]).value.to_numpy()
    b = pd.read_csv(tmp_path / "m" / "retrieval.csv").sort_values(["block", "metric"]).value.to_numpy()
    assert a == pytest.approx(b, abs=1e-6)


def test_retrieval_refuses_unsafe_gnd(tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1",))

    (tmp_path / "jpg").mkdir()
    with open(tmp_path / "gnd_bad.pkl", "wb") as f:
        pickle.dump({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "junk": Evil()}]}, f)
    r = run("retrieval", "-m", "demo-vit", "--root", tmp_path, "-o", tmp_path / "o")
    assert r.exit_code != 0 and "builtins.eval" in str(r.exception)
