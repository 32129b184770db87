"""`vitscope sae train | eval | browse` on a tiny model and store: the CLI and the Python API give the same table,
bad input is one line with nothing written, and the browser page renders (in Chromium when it is installed)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from frontends import assert_same_values, run_cli, values

DATA = "synthetic:size=32,classes=4,n=40,split=test"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vitscope import HookedViT, PreprocessConfig, ViTConfig
    from vitscope.features import extract_features
    from vitscope.models.loading import save_model

    root = tmp_path_factory.mktemp("sae-cli")
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=4,
                            meta={"classes": ["circle", "square", "triangle", "cross"]}),
                  PreprocessConfig(input_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3))
    save_model(m, root / "model")
    extract_features(m, DATA, root / "store", layers=(1, 2), sites=("resid_post", "mlp_out"),
                     tokens=("patches", "cls"), progress=False)
    return root


def _train(root, out, *extra):
    return run_cli("sae", "train", "--store", root / "store", "-o", out, "--block", "1", "--width", "64",
                   "--k", "4", "--steps", "30", "--batch-size", "64", "--chunk-images", "10", "--warmup", "5",
                   "-q", *extra)


def test_train_eval_browse(setup, tmp_path):
    root = setup
    r = _train(root, tmp_path / "saes", "--width", "32,64", "--block", "1,2")
    assert "trained 4 SAE(s) in one pass" in r.output
    sae_dir = tmp_path / "saes" / "topk-b1-w64-k4-lr0.0004"
    assert (sae_dir / "sae.safetensors").exists() and (sae_dir / "config.json").exists()
    assert (tmp_path / "saes" / "training_log.csv").exists()

    run_cli("sae", "eval", sae_dir, "-m", root / "model", "-d", DATA, "--limit", "24", "-o", tmp_path / "ev", "-q")
    import pandas as pd

    cli = pd.read_csv(tmp_path / "ev" / "sae.csv")
    assert {"l0", "fvu", "cosine", "dead_fraction", "sae_top1_agreement", "zero_kl", "mean_kl",
            "factor_best_auroc"} <= set(cli["metric"])
    assert (tmp_path / "ev" / "sae_factors.png").exists() and (tmp_path / "ev" / "sae_density.png").exists()
    assert cli.loc[cli.metric == "l0", "value"].iloc[0] <= 4

    from vitscope.analysis.sae import SAEOptions, evaluate
    from vitscope.runtime import load_model

    api = evaluate([sae_dir], DATA, SAEOptions(limit=24), model=load_model(str(root / "model")))
    keys = ("block", "metric", "basis", "concept")
    assert_same_values(values(api.table, keys), values(cli, keys))

    r = run_cli("sae", "browse", sae_dir, "-m", root / "model", "-d", DATA, "--limit", "24", "--latents", "6",
                "-o", tmp_path / "page", "-q")
    page = tmp_path / "page" / "index.html"
    text = page.read_text()
    assert text.count("class='latent'") >= 1 and "<img " in text and "logit effect" in text
    for src in __import__("re").findall(r"src='([^']+)'", text):
        assert (tmp_path / "page" / src).exists()


@pytest.mark.slow
def test_a_centred_sae_in_the_cli(setup, tmp_path):
    """`--centre image`: the SAE remembers it, eval measures it on the centred patch tokens (the same table as the
    Python API, with the centred neurons as a basis), and browse writes its page, which says what the SAE reads."""
    from vitscope.analysis.sae import SAEOptions, evaluate, load_sae
    from vitscope.runtime import load_model

    root = setup
    _train(root, tmp_path / "saes", "--centre", "image")
    sae_dir = tmp_path / "saes" / "topk-b1-w64-k4-lr0.0004"
    assert load_sae(sae_dir).cfg.centre == "image"
    run_cli("sae", "eval", sae_dir, "-m", root / "model", "-d", DATA, "--limit", "24", "-o", tmp_path / "ev", "-q")
    import pandas as pd

    cli = pd.read_csv(tmp_path / "ev" / "sae.csv")
    assert "centred_neurons" in set(cli["basis"].dropna()) and set(cli["centre"]) == {"image"}
    api = evaluate([sae_dir], DATA, SAEOptions(limit=24), model=load_model(str(root / "model")))
    keys = ("block", "metric", "basis", "concept")
    assert_same_values(values(api.table, keys), values(cli, keys))
    run_cli("sae", "browse", sae_dir, "-m", root / "model", "-d", DATA, "--limit", "24", "--latents", "4",
            "-o", tmp_path / "page", "-q")
    page = (tmp_path / "page" / "index.html").read_text()
    assert "class='latent'" in page and "patches tokens less their image's mean" in __import__("html").unescape(page)


def test_an_mlp_out_sae_is_measured_on_the_mlp_output(setup, tmp_path):
    """`sae train --site mlp_out` then `sae eval`: the reconstruction metrics are those of the block's MLP output
    (its patch tokens read here with a plain forward hook), not of the residual stream."""
    import pandas as pd

    from vitscope.analysis.sae import load_sae
    from vitscope.analysis.sae.evaluation import _images
    from vitscope.analysis.sae.metrics import activation_metrics
    from vitscope.runtime import load_model

    root = setup
    _train(root, tmp_path / "saes", "--site", "mlp_out")
    sae_dir = tmp_path / "saes" / "topk-b1-w64-k4-lr0.0004"
    run_cli("sae", "eval", sae_dir, "-m", root / "model", "-d", DATA, "--limit", "24", "-o", tmp_path / "ev", "-q")
    t = pd.read_csv(tmp_path / "ev" / "sae.csv")
    assert set(t["site"]) == {"mlp_out"}
    model = load_model(str(root / "model"))
    images = _images(model, DATA, 24)[0]
    seen = []
    h = model.blocks[1].hook_mlp_out.register_forward_hook(lambda mod, i, o: seen.append(o[:, 1:].reshape(-1, 32)))
    with torch.no_grad():
        model(images)
    h.remove()
    want, _ = activation_metrics(load_sae(sae_dir), [torch.cat(seen)])
    got = t[t["basis"].isna()].set_index("metric")["value"]
    assert got["fvu"] == pytest.approx(want["fvu"], rel=1e-4) and got["l0"] == pytest.approx(want["l0"])


def test_browser_page_in_chromium(setup, tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_report_browser import check_page, find_chromium

    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    _train(setup, tmp_path / "s")
    run_cli("sae", "browse", tmp_path / "s" / "topk-b1-w64-k4-lr0.0004", "-m", setup / "model", "-d", DATA,
            "--limit", "24", "--latents", "4", "-o", tmp_path / "page", "-q")
    res = check_page(tmp_path / "page" / "index.html")
    assert res["images"] >= 4 and res["broken"] == [] and res["errors"] == [] and res["external"] == 0


def test_resume_continues_in_the_cli(setup, tmp_path):
    _train(setup, tmp_path / "a")
    r = _train(setup, tmp_path / "a")          # a finished run resumes at its end: nothing retrained
    assert "trained 1 SAE(s)" in r.output


def _run(*args):
    return subprocess.run([sys.executable, "-m", "vitscope", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _one_line(r, needle):
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("extra, needle", [
    (("--site", "ln2"), "holds sites"), (("--block", "0"), "holds blocks"), (("--tokens", "all"), "reductions"),
    (("--width", "0"), "--width"), (("--k", "99", "--width", "64"), "--k"),
    (("--site", "ln_final"), "takes a block site"), (("--site", "nowhere"), "takes a block site"),
    (("--centre", "image", "--tokens", "cls"), "--centre"), (("--centre", "patch"), "--centre"),
])
def test_bad_train_input(setup, tmp_path, extra, needle):
    out = tmp_path / "o"
    r = _run("sae", "train", "--store", setup / "store", "-o", out, "--width", "64", "--steps", "3", *extra)
    _one_line(r, needle)
    assert not out.exists()


@pytest.mark.slow
def test_sae_of_another_width(setup, tmp_path):
    from vitscope.analysis.sae import SAE, SAEConfig, save_sae

    save_sae(SAE(SAEConfig(d_in=48, width=8, arch="topk", k=(2,), block=(1,))), tmp_path / "s48")
    out = tmp_path / "ev"
    _one_line(_run("sae", "eval", tmp_path / "s48", "-m", setup / "model", "-d", DATA, "-o", out), "width 32")
    assert not out.exists()


@pytest.mark.slow
def test_a_second_writer_of_an_output_folder_is_refused(setup, tmp_path):
    """`sae train`, `eval` and `browse` into a folder another process is writing: one line naming that process, and
    nothing of theirs in it (the holder is a plain `output_lock` in another process)."""
    import os
    import textwrap

    from vitscope.analysis.sae import TrainOptions, train_saes
    from vitscope.outlock import OutputLockedError

    _train(setup, tmp_path / "saes")
    sae = next(p for p in (tmp_path / "saes").iterdir() if (p / "config.json").exists())
    busy = tmp_path / "busy"
    holder = textwrap.dedent("""
        import sys, time
        from vitscope.outlock import output_lock
        with output_lock(sys.argv[1], "another writer"):
            print("locked", flush=True)
            time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", holder, str(busy)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        for cmd in (("sae", "train", "--store", setup / "store", "-o", busy, "--block", "1", "--width", "64",
                     "--k", "4", "--steps", "30", "--batch-size", "64", "-q"),
                    ("sae", "eval", sae, "-m", setup / "model", "-d", DATA, "--limit", "8", "-o", busy, "-q"),
                    ("sae", "browse", sae, "-m", setup / "model", "-d", DATA, "--limit", "8", "-o", busy, "-q")):
            _one_line(_run(*cmd), f"pid {p.pid}")
        with pytest.raises(OutputLockedError, match=f"pid {p.pid}"):
            train_saes(setup / "store", TrainOptions(blocks="1", width=(64,), k=(4,), steps=5, batch_size=64),
                       out=busy)
        assert sorted(os.listdir(busy)) == [".vitscope-lock"]
    finally:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_browse_and_eval_on_data_without_a_usable_image_write_nothing(setup, tmp_path):
    _train(setup, tmp_path / "saes")
    sae = next(p for p in (tmp_path / "saes").iterdir() if (p / "config.json").exists())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not a png")
    for cmd in ("browse", "eval"):
        out = tmp_path / cmd
        _one_line(_run("sae", cmd, sae, "-m", setup / "model", "-d", tmp_path / "bad", "-o", out, "-q"),
                  "no usable image")
        assert not out.exists()
