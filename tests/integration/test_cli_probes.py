"""`vitscope probe` and `vitscope probe-stats` end to end on stores extracted with the demo model from the
synthetic benchmark."""
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app

FAST = ["--min-steps", "12", "--epochs", "1", "--lrs", "0.01", "--wds", "1e-4,0.1", "--attn-drops", "0", "-q"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    runner = CliRunner()
    for split, n in (("train", 48), ("test", 32)):
        r = runner.invoke(app, ["extract", "-m", "demo-vit", "-d", f"synthetic:n={n},split={split}", "-o",
                                str(root / split), "-l", "all", "-s", "ln2,ln_final", "-t", "cls,mean,all", "-q"])
        assert r.exit_code == 0, r.output
    return root


def test_probe_and_probe_stats_end_to_end(stores):
    runner = CliRunner()
    outs = []
    for ds, seed in (("a", "0"), ("b", "1")):
        out = stores / f"out_{ds}"
        args = ["probe", "--store", str(stores / "train"), "--test-store", str(stores / "test"), "-l", "last", "-l",
                "all", "--dataset", ds, "--seed", seed, "-o", str(out)] + FAST + (["--per-layer"] if ds == "a" else [])
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        outs.append(out)
    res = pd.read_csv(outs[0] / "results.csv")
    assert list(res.columns) == ["model", "dataset", "experiment", "probe", "layer_set", "split", "metric", "value"]
    assert {"last_cls", "last", "all", "layer_0_cls", "layer_final_ap"} <= set(res["experiment"])
    assert (outs[0] / "accuracy_per_layer.png").exists() and (outs[0] / "attention_all.png").exists()
    mean = np.load(outs[0] / "attention_all.mean.npy")
    assert mean.shape == (12, 12) and np.allclose(mean.sum(-1), 1, atol=1e-4)     # 6 blocks -> 12 inputs = 12 heads
    meta = json.loads((outs[0] / "heads" / "linear_last_cls.json").read_text())
    assert meta["kind"] == "linear" and meta["inputs"] == [{"site": "ln_final", "layer": None, "reduction": "cls"}]
    from vitscope.analysis.probes import load_linear_head
    w, b, _ = load_linear_head(outs[0] / "heads" / "linear_last_cls")
    assert w.shape == (8, 64) and b.shape == (8,)
    logits = np.load(outs[0] / "logits" / "attentive_all.npy")
    assert logits.shape == (32, 8)
    r = runner.invoke(app, ["probe-stats", *[str(o / "results.csv") for o in outs], "-o", str(stores / "stats")])
    assert r.exit_code == 0, r.output
    tests = pd.read_csv(stores / "stats" / "wilcoxon_over_datasets.csv")
    assert set(tests["a"]) == {"attentive:all", "linear:all"} and (tests["p_adjusted"] >= tests["p"] - 1e-12).all()
    assert (stores / "stats" / "gains.png").exists()


def test_probe_bad_input_is_one_line(stores):
    runner = CliRunner()
    r = runner.invoke(app, ["probe", "--store", str(stores / "train"), "-l", "evrything", "-o",
                            str(stores / "bad")] + FAST)
    assert r.exit_code == 1 and isinstance(r.exception, ValueError)
    msg = str(r.exception)
    assert "unknown layer set" in msg and "\n" not in msg


def test_probe_e2e_end_to_end(tmp_path):
    import torch

    from vitscope import HookedViT, ViTConfig
    from vitscope.analysis.probes.attentive import load_attentive_probe
    from vitscope.models.loading import load_model, save_model

    torch.manual_seed(0)
    save_model(HookedViT(ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=8)),
               tmp_path / "tiny")
    runner = CliRunner()
    common = ["-m", str(tmp_path / "tiny"), "-d", "synthetic:n=24,size=16,split=train", "--test-data",
              "synthetic:n=16,size=16,split=test", "--steps", "4", "-b", "8", "--dataset", "synth"]
    r = runner.invoke(app, ["probe-e2e", "--recipe", "attentive-frozen", "-l", "all", "--save-every", "2",
                            "-o", str(tmp_path / "a")] + common)
    assert r.exit_code == 0, r.output
    assert "probe-e2e attentive-frozen" in r.output and "4/4 steps" in r.output and "test balanced top-1" in r.output
    res = pd.read_csv(tmp_path / "a" / "results.csv")
    assert set(res["probe"]) == {"attentive-frozen"} and set(res["split"]) == {"test"}
    assert set(res["dataset"]) == {"synth"}
    probe, meta = load_attentive_probe(tmp_path / "a" / "probe")
    assert probe.num_heads == 4 and len(meta["inputs"]) == 4                  # blocks 1 + final, CLS and AP
    assert np.load(tmp_path / "a" / "logits.npy").shape == (16, 8)
    assert np.load(tmp_path / "a" / "attention.mean.npy").shape == (4, 4)
    r = runner.invoke(app, ["probe-e2e", "--recipe", "finetune", "-o", str(tmp_path / "b"), "-q"] + common)
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "b" / "backbone").cfg.embed_dim == 32 and (tmp_path / "b" / "head.json").exists()
    again = runner.invoke(app, ["probe-e2e", "--recipe", "finetune", "-o", str(tmp_path / "b"), "--resume"] + common)
    assert again.exit_code == 0 and "4/4 steps" in again.output                  # finished: evaluated, not retrained
    bad = runner.invoke(app, ["probe-e2e", "--recipe", "fine-tune", "-o", str(tmp_path / "c")] + common)
    assert bad.exit_code == 1 and "unknown end-to-end recipe" in str(bad.exception)
    assert "\n" not in str(bad.exception)


TORCHRUN_JOB = '''
import sys, torch
torch.set_num_threads(1)
from vitscope import HookedViT, ViTConfig
from vitscope.analysis.probes.e2e import E2EConfig, train_e2e
torch.manual_seed(0)
m = HookedViT(ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5))
cfg = E2EConfig(recipe="finetune", steps=6, batch_size=8, jitter_p=0.0, lr=1e-2, backbone_lr_scale=0.1)
train_e2e(m, "synthetic:n=22,size=16,classes=4,split=train", "synthetic:n=12,size=16,classes=4,split=test", cfg,
          out=sys.argv[1], device="cpu")
'''


@pytest.mark.slow
def test_probe_e2e_finetune_two_processes_match_one(tmp_path):
    """torchrun, 2 gloo processes: each takes half of every global batch (22 images: 8, 8, 6); without jitter the
    fine-tuned backbone, head and test logits equal a single process's (the loss is the global weighted mean)."""
    import os
    import subprocess
    import sys

    from vitscope.analysis.probes.linear import load_linear_head
    from vitscope.models.loading import load_model

    job = tmp_path / "job.py"
    job.write_text(TORCHRUN_JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(job), str(tmp_path / "one")], check=True, env=env, timeout=300)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(job),
                        str(tmp_path / "two")], env=env, timeout=300, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    a = load_model(tmp_path / "one" / "backbone").state_dict()
    b = load_model(tmp_path / "two" / "backbone").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    wa, _, _ = load_linear_head(tmp_path / "one" / "head")
    wb, _, meta = load_linear_head(tmp_path / "two" / "head")
    assert float((wa - wb).abs().max()) < 1e-5
    np.testing.assert_allclose(np.load(tmp_path / "one" / "logits.npy"), np.load(tmp_path / "two" / "logits.npy"),
                               atol=1e-4)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


def test_probe_reads_two_stores_of_a_late_cls_model(tmp_path):
    """demo-vit-reg4 (CLS from block 6 of 8): `extract -t cls` over blocks 6:8 and `-t mean` over all blocks, then
    `probe --store A --store B -l all`."""
    runner = CliRunner()
    data = "synthetic:n=96"
    for name, layers, tok in (("cls", "6:8", "cls"), ("ap", "all", "mean")):
        r = runner.invoke(app, ["extract", "-m", "demo-vit-reg4", "-d", data, "-o", str(tmp_path / name), "-l", layers,
                                "-s", "ln2,ln_final", "-t", tok, "-q"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["extract", "-m", "demo-vit-reg4", "-d", data, "-o", str(tmp_path / "bad"), "-l", "all",
                            "-s", "ln2", "-t", "cls", "-q"])
    assert r.exit_code == 1 and "enters at block 6" in str(r.exception)
    out = tmp_path / "out"
    r = runner.invoke(app, ["probe", "--store", str(tmp_path / "cls"), "--store", str(tmp_path / "ap"), "-l", "all",
                            "-p", "attentive", "-o", str(out)] + FAST)
    assert r.exit_code == 0, r.output
    mean = np.load(out / "attention_all.mean.npy")
    assert mean.shape == (11, 11)                      # AP of blocks 1-7, CLS of 6-7, final CLS and AP: 11 inputs
