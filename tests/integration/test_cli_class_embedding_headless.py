"""The class-embedding commands on models without a classifier (`--class-embeddings`, `--head`) and
`vitscope attribution`, end to end, against plain computations written here."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from vitscope.cli.main import app
from vitscope.report.demo import held_out_spec

runner = CliRunner()
DATA = held_out_spec(16)


def run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def records(folder, key):
    """A per-image array the logit lens appended under ``folder`` (raw file + index.json)."""
    meta = json.loads((folder / "index.json").read_text())[key]
    return np.fromfile(folder / f"{key}.bin", dtype=np.dtype(meta["dtype"])).reshape(meta["n"], *meta["shape"])


def images_of(model, spec):
    from vitscope.analysis.similarity.compare import preprocess_config
    from vitscope.data.spec import open_dataset
    from vitscope.models.preprocess import Preprocessor

    ds = open_dataset(spec, transform=Preprocessor(preprocess_config(model)))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return x, np.array([ds[i][1] for i in range(len(ds))]), list(ds.classes)


@pytest.fixture(scope="module")
def clip_tiny(tmp_path_factory):
    """A random CLIP-like model (no classifier; a bias-free projection to width 16) saved as a model folder."""
    from vitscope.models import HookedViT, ViTConfig
    from vitscope.models.loading import save_model

    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=4, head="clip_proj",
                            num_classes=16, pre_norm=True, act="quick_gelu", patch_bias=False)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    root = tmp_path_factory.mktemp("clip")
    save_model(m, root / "clip-tiny")
    W = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
    np.save(root / "text.npy", W)
    return root, W


def test_logit_lens_with_class_embeddings_after_the_clip_projection(clip_tiny, tmp_path):
    from vitscope.models.loading import load_model

    root, W = clip_tiny
    model = load_model(root / "clip-tiny")
    x, y, classes = images_of(model, DATA)
    (tmp_path / "names.txt").write_text("\n".join(classes) + "\n")
    out = run("logit-lens", "-m", root / "clip-tiny", "-d", DATA, "--class-embeddings", root / "text.npy",
              "--class-names", tmp_path / "names.txt", "-o", tmp_path / "ll", "-q", "--permutations", "5")
    assert "accuracy of the class embeddings" in out and "random weights" in out
    # a plain computation: final norm -> CLIP projection -> W x, at the last block's CLS
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter="blocks.1.hook_resid_post")
        h = cache["blocks.1.hook_resid_post"][:, 0]
        ln = model.ln_final
        want = (F.layer_norm(h, (32,), ln.weight, ln.bias, ln.eps) @ model.head.weight.T @ torch.from_numpy(W).T)
    want = want.numpy()
    rec = tmp_path / "ll" / "clip-tiny" / "records"
    order = records(rec, "index")
    np.testing.assert_allclose(records(rec, "true_resid_1")[:, 0], want[order, y[order]], rtol=1e-4, atol=1e-4)
    assert np.array_equal(records(rec, "top_resid_1")[:, 0, 0], want[order].argmax(1))
    df = pd.read_csv(tmp_path / "ll" / "logit_lens.csv")
    acc = df[(df.metric == "accuracy") & (df.model == "clip-tiny")]
    assert acc.site.tolist() == ["class_embeddings"]
    assert acc.value.iloc[0] == pytest.approx(float((want.argmax(1) == y).mean()))


def test_logit_lens_with_a_saved_linear_head(tmp_path):
    """A head fitted by scikit-learn on the demo model's L2-normalised final-norm CLS (the probe's recipe), saved
    by save_linear_head: the lens's top-1 at the last block's CLS is the head's own prediction."""
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression
    from vitscope.analysis.probes.linear import save_linear_head
    from vitscope.models.loading import load_model

    model = load_model("demo-vit")

    def feats(spec):
        x, y, classes = images_of(model, spec)
        with torch.no_grad():
            _, cache = model.run_with_cache(x, names_filter="ln_final.hook_normalized")
        f = cache["ln_final.hook_normalized"][:, 0].numpy()
        return f / np.linalg.norm(f, axis=1, keepdims=True), y, classes

    ftr, ytr, classes = feats("builtin:demo?n=48,split=train")
    clf = LogisticRegression(max_iter=3000, C=10.0).fit(ftr, ytr)
    save_linear_head(tmp_path / "probe" / "heads" / "linear_last_cls", torch.from_numpy(clf.coef_).float(),
                     torch.from_numpy(clf.intercept_).float(),
                     {"model": "demo-vit", "classes": classes, "normalize": "l2 per sample and input",
                      "inputs": [{"site": "ln_final", "layer": None, "reduction": "cls"}]})
    out = run("logit-lens", "-m", "demo-vit", "-d", DATA, "--head", tmp_path / "probe", "-o", tmp_path / "ll",
              "-q", "--sites", "resid", "--no-random-baseline", "--permutations", "5")
    assert "accuracy of the class embeddings" in out
    fte, yte, _ = feats(DATA)
    rec = tmp_path / "ll" / "demo-vit" / "records"
    order = records(rec, "index")
    last = model.cfg.depth - 1
    assert np.array_equal(records(rec, f"top_resid_{last}")[:, 0, 0], clf.predict(fte)[order])
    assert np.array_equal(records(rec, "pred"), clf.predict(fte)[order])
    df = pd.read_csv(tmp_path / "ll" / "logit_lens.csv")
    assert df[df.metric == "accuracy"].value.iloc[0] == pytest.approx(clf.score(fte, yte))


def test_attribution_command(clip_tiny, tmp_path):
    from vitscope.analysis.class_embedding.attribution import attribution_table, head_logit_attribution
    from vitscope.models.loading import load_model

    spec = held_out_spec(8)
    out = run("attribution", "-m", "demo-vit", "-d", spec, "-o", tmp_path / "a", "-q", "--batch-size", "3")
    assert "largest direct share" in out and "over 8 images" in out
    assert (tmp_path / "a" / "demo-vit" / "head_attribution.png").exists()
    df = pd.read_parquet(tmp_path / "a" / "attribution.parquet")
    assert list(df.columns[:5]) == ["model", "block", "task", "metric", "value"]
    model = load_model("demo-vit")
    x, y, _ = images_of(model, spec)
    want = {(r["block"], r["head"], r["tokens"]): r["value"]
            for r in attribution_table(head_logit_attribution(model, x, torch.from_numpy(y)), model)}
    got = {(r.block, r.head, r.tokens): r.value for r in df.itertuples()}
    assert got.keys() == want.keys()
    assert np.allclose([got[k] for k in want], list(want.values()), atol=1e-5)
    root, _ = clip_tiny                                   # a headless model with class embeddings
    run("attribution", "-m", root / "clip-tiny", "-d", spec, "--class-embeddings", root / "text.npy", "-o",
        tmp_path / "b", "-q", "--blocks", "-1")
    df = pd.read_csv(tmp_path / "b" / "attribution.csv")
    assert set(df.block) == {1} and df.value.notna().all()


def test_memories_and_perturb_with_class_embeddings(clip_tiny, tmp_path):
    root, _ = clip_tiny
    emb = ["--class-embeddings", root / "text.npy"]
    run("memories", "-m", root / "clip-tiny", "-d", held_out_spec(8), *emb, "-o", tmp_path / "m", "-q",
        "--permutations", "5")
    df = pd.read_csv(tmp_path / "m" / "memories.csv")
    assert set(df.metric) == {"class_value_agreement", "key_value_agreement", "compositionality"}
    run("perturb", "-m", root / "clip-tiny", "-d", held_out_spec(8), *emb, "-o", tmp_path / "p", "-q",
        "--no-token-drop")
    df = pd.read_csv(tmp_path / "p" / "perturbation.csv")
    assert set(df.perturbation) == {"none", "self_only", "no_cls"} and set(df.metric) == {"identifiable_rate"}


def _error_line(args, capsys):
    from vitscope.cli.main import main

    old = sys.argv
    sys.argv = ["vitscope", *[str(a) for a in args]]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = old
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.strip().count("\n") == 0, err
    return err


def test_bad_input_is_one_line(clip_tiny, tmp_path, capsys):
    from vitscope.analysis.probes.linear import save_linear_head

    root, W = clip_tiny
    m = ["-m", root / "clip-tiny", "-d", held_out_spec(8), "-o", tmp_path / "o"]
    for cmd in ("logit-lens", "memories", "perturb", "attribution"):
        err = _error_line([cmd, *m], capsys)
        assert "has no classifier" in err and "--class-embeddings" in err and "--head" in err
    np.save(tmp_path / "narrow.npy", W[:, :10])
    np.save(tmp_path / "five.npy", W[:5])
    save_linear_head(tmp_path / "mid", torch.ones(8, 32), None,
                     {"inputs": [{"site": "ln2", "layer": 0, "reduction": "cls"}]})
    cases = [
        (["--class-embeddings", root / "text.npy", "--head", tmp_path / "mid"], "not both"),
        (["--class-names", tmp_path / "names.txt"], "--class-names names the rows of --class-embeddings"),
        (["--class-embeddings", tmp_path / "narrow.npy"], "width 10 fit neither the model width 32"),
        (["--class-embeddings", tmp_path / "five.npy"], "have 5 classes"),
        (["--head", tmp_path / "mid"], "needs a linear head on the last layer"),
        (["--head", tmp_path], "no linear head in"),
        (["--class-embeddings", tmp_path / "absent.npy"], "does not exist"),
    ]
    for extra, msg in cases:
        assert msg in _error_line(["logit-lens", *m, *extra], capsys)
