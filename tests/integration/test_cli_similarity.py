"""`vitscope cka / rsa / cluster` end to end on tiny local models, synthetic images and real feature stores."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.similarity import cka_matrix, rsa_matrix
from vitscope.cli.main import app

SYNTH = "synthetic:n=12,size=32"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from vitscope.features import extract_features
    from vitscope.models.loading import load_model, save_model

    root = tmp_path_factory.mktemp("sim")
    from vitscope.data import open_dataset

    synth = open_dataset(SYNTH)                                     # rendered once, read back as a class folder
    for i in range(len(synth)):
        d = root / "images" / synth.classes[synth.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        synth.load(i).save(d / f"{i:03d}.png")
    data = str(root / "images")
    torch.manual_seed(0)
    a = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10))
    b = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=4, num_classes=10,
                            num_registers=2))
    save_model(a, root / "tinyA")
    save_model(b, root / "tinyB")
    a, b = load_model(root / "tinyA"), load_model(root / "tinyB")                  # named like the CLI names them
    extract_features(a.eval(), data, root / "storeA", sites=("resid_post",), tokens=("cls", "mean"),
                     batch_size=6, progress=False)
    extract_features(b.eval(), data, root / "storeB", sites=("resid_post",), tokens=("cls", "mean"),
                     batch_size=6, progress=False)
    extract_features(a.eval(), data, root / "storeR", sites=("resid_pre", "attn_out", "resid_mid", "mlp_out"),
                     tokens=("all",), batch_size=6, progress=False)
    return root


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


def ok(*args):
    r = run(*args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r


@pytest.mark.slow
def test_cka_one_model_streamed(work):
    DATA = work / "images"
    out = work / "o1"
    ok("cka", work / "tinyA", "--data", DATA, "--batch-size", 6, "--out", out, "--quiet", "--clusters", 2)
    m = np.load(out / "cka_tinyA.matrix.npy")
    meta = json.loads((out / "cka_tinyA.json").read_text())
    assert m.shape == (3, 3) and meta["minibatch"] and meta["n_images"] == 12 and meta["rows"] == ["0", "1", "2"]
    # the same CLS features, extracted into a store, through the loop reference of Nguyen et al. eq. 3 in two
    # batches of 6 (the diagonal is 1 by construction and says nothing)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_cka_minibatch import ref_minibatch_cka
    from vitscope.features import open_store

    s = open_store(work / "storeA")
    feats = [np.asarray(s["resid_post", layer, "cls"], dtype=np.float64) for layer in s.layers]
    batches = [[f[:6] for f in feats], [f[6:] for f in feats]]
    np.testing.assert_allclose(m, ref_minibatch_cka(batches, batches), rtol=1e-4, atol=1e-5)
    assert (out / "cka_tinyA.png").stat().st_size > 1000
    assert np.load(out / "cka_tinyA.clusters.npy").shape == (3,)


@pytest.mark.slow
def test_cka_two_models_full_and_last_layer(work):
    DATA = work / "images"
    out = work / "o2"
    ok("cka", work / "tinyA", work / "tinyB", "--data", DATA, "--out", out, "--quiet", "--full", "--tokens", "mean")
    m = np.load(out / "cka_tinyA_x_tinyB.matrix.npy")
    # full-data CKA from the CLI equals CKA of the arrays that `vitscope extract` stored for the same images
    from vitscope.features import open as open_store

    sa, sb = open_store(work / "storeA"), open_store(work / "storeB")
    ref = cka_matrix([sa["resid_post", i, "mean"] for i in range(3)], [sb["resid_post", i, "mean"] for i in range(2)])
    np.testing.assert_allclose(m, ref, rtol=1e-4, atol=1e-6)
    ok("cka", work / "tinyA", work / "tinyB", "--data", DATA, "--out", out, "--quiet", "--last-layer", "--full",
       "--biased")
    last = np.load(out / "cka_last_layer.matrix.npy")
    assert last.shape == (2, 2) and last[0, 1] > 0
    ok("cka", work / "tinyA", work / "tinyB", "--data", DATA, "--out", out, "--quiet", "--grid", "--batch-size", 6)
    assert (out / "cka_grid.tinyA__tinyB.npy").exists() and (out / "cka_grid.png").exists()
    # a random-init copy of the same architecture (vilas2023's baseline) as the second model
    ok("cka", work / "tinyA", "--with-random", "--data", DATA, "--out", out, "--quiet", "--batch-size", 6)
    meta = json.loads((out / "cka_tinyA_x_tinyA_random.json").read_text())
    assert meta["models"] == ["tinyA", "tinyA (random)"]


@pytest.mark.slow
def test_cka_residual_and_seed002_preset(work):
    DATA = work / "images"
    out = work / "o3"
    ok("cka", work / "tinyA", "--residual", "--data", DATA, "--out", out, "--quiet", "--batch-size", 12)
    rows = (out / "residual_tinyA.csv").read_text().splitlines()
    assert rows[0].startswith("block,cka_attn,cka_mlp") and len(rows) == 4
    # the same from a store holding the 'all' reduction of the four residual sites (one batch = full data)
    ok("cka", "--store", work / "storeR", "--residual", "--out", work / "o3s", "--quiet")
    np.testing.assert_allclose(np.load(work / "o3s" / "residual_tinyA.attn.npy"),
                               np.load(out / "residual_tinyA.attn.npy"), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.load(work / "o3s" / "residual_tinyA.norm_mlp_all.npy"),
                               np.load(out / "residual_tinyA.norm_mlp_all.npy"), rtol=1e-4)
    ok("cka", work / "tinyA", "--preset", "seed002", "--data", DATA, "--out", out, "--quiet", "--batch-size", 6)
    meta = json.loads((out / "cka_tinyA.json").read_text())
    assert meta["minmax"] and meta["token_mode"] == "all" and meta["rows"][:2] == ["0.ln1", "0.ln2"]


@pytest.mark.slow
def test_stores(work):
    out = work / "o4"
    ok("cka", "--store", work / "storeA", "--store2", work / "storeB", "--out", out, "--quiet")
    from vitscope.features import open as open_store

    sa, sb = open_store(work / "storeA"), open_store(work / "storeB")
    f = next(out.glob("cka_*.matrix.npy"))
    ref = cka_matrix([sa["resid_post", i, "cls"] for i in range(3)], [sb["resid_post", i, "cls"] for i in range(2)])
    np.testing.assert_allclose(np.load(f), ref, rtol=1e-12)
    ok("rsa", "--store", work / "storeA", "--out", out, "--quiet", "--clusters", 2, "--tokens", "mean")
    f = next(out.glob("rsa_*.matrix.npy"))
    np.testing.assert_allclose(np.load(f), rsa_matrix([sa["resid_post", i, "mean"] for i in range(3)]), rtol=1e-12)
    ok("cluster", "--store", work / "storeA", "--store", work / "storeB", "--k", 4, "--out", out, "--quiet")
    table = (out / "cluster_cls.csv").read_text().splitlines()
    assert table[0].split(",")[:2] == ["model", "block"] and len(table) == 1 + 3 + 2


@pytest.mark.slow
def test_cluster_models_dense_and_rsa_model(work):
    DATA = work / "images"
    out = work / "o5"
    r = ok("cluster", work / "tinyA", "--data", DATA, "--k", 4, "--out", out, "--tokens", "mean")
    assert "best NMI" in r.output
    ok("cluster", work / "tinyA", "--data", SYNTH, "--dense", "part", "--k", 6, "--out", out, "--quiet")
    assert (out / "cluster_part.png").exists() and (out / "cluster_part.tinyA.nmi.npy").exists()
    ok("rsa", work / "tinyA", "--data", DATA, "--out", out, "--quiet", "--rdm", "euclidean", "--compare", "pearson")
    assert np.load(out / "rsa_tinyA.matrix.npy").shape == (3, 3)


@pytest.mark.parametrize("args,msg", [
    (["cka"], "nothing to compare"),
    (["cka", "--store2", "x"], "--store2 needs --store"),
    (["cka", "M", "--store", "x"], "not both"),
    (["cluster", "--store", "x", "--dense", "cube"], "--dense"),
    (["cka", "--store", "/nonexistent/store"], "not a vitscope feature store"),
])
def test_errors_are_one_line(args, msg):
    r = run(*args)
    assert r.exit_code != 0
    assert isinstance(r.exception, (ValueError, FileNotFoundError)) and msg in str(r.exception)
