"""The probes and the class-embedding analyses through the Python API (``evaluate``), the command line and a study
cell give the same table on the same inputs (a tiny model saved in a folder, a small synthetic set)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.frontends import assert_same_values, run_cli, study_cell, values

DATA = "synthetic:n=12,size=32,classes=4,split=test"
TRAIN = "synthetic:n=24,size=32,classes=4,split=train"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 2-block ViT with a 4-class head, saved as a model folder (its label: ``tiny``)."""
    from vitscope import HookedViT, ViTConfig
    from vitscope.models.loading import save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_model(HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4)),
               folder)
    return str(folder)


def _study(model: str, analysis: str, options: str) -> str:
    return (f'study: t\nmodels: ["{model}"]\ndatasets:\n  - {{name: d, data: "{DATA}", train: "{TRAIN}"}}\n'
            f"analyses:\n  - {{name: {analysis}, options: {options}}}\n")


def _load(name):
    from vitscope.runtime import load_model

    return load_model(name)


# ----------------------------------------------------------------------------- with a study adapter
@pytest.mark.slow
def test_logit_lens_python_cli_and_study_agree(tiny, tmp_path):
    from vitscope.analysis.class_embedding.projection import LogitLensOptions, evaluate

    rows, ctx = study_cell(_study(tiny, "logit_lens", "{random_baseline: true}"), "logit_lens", tmp_path / "s")
    api = evaluate({"tiny": _load(tiny)}, DATA, LogitLensOptions(random_baseline=True, mask_rule=None))
    evo = api.table[(api.table["metric"] == "identifiability")]
    assert_same_values(values(evo, ("block", "token")), values([r for r in rows if r["metric"] == "identifiability"],
                                                               ("block", "task")))
    p_values = {(r.block, r.token): r.p_value for r in evo.itertuples()}
    assert_same_values(p_values, values([r for r in rows if r["metric"] == "identifiability_p_value"],
                                        ("block", "task")))
    chance = [r["value"] for r in rows if r["metric"] == "identifiability_chance"]
    assert chance == [pytest.approx(5 / 8)]                                                 # (C + 1) / 2C, C = 4
    run_cli("logit-lens", "-m", tiny, "-d", DATA, "--sites", "resid,attn,mlp", "--permutations", "20", "-o",
            tmp_path / "cli", "-q")
    cli = pd.read_parquet(tmp_path / "cli" / "logit_lens.parquet")
    api = evaluate({"tiny": _load(tiny)}, DATA, sites=("resid", "attn", "mlp"), random_baseline=True,
                   permutations=20)
    keys = ("model", "block", "metric", "site", "token")
    assert_same_values(values(api.table, keys), values(cli, keys))
    assert {"class_minus_context_score", "class_minus_context_attn_change"} <= set(api.table["metric"])
    assert (tmp_path / "cli" / "tiny" / "class_context.png").exists()
    assert "identifiable patch tokens at the last block" in api.summary


@pytest.mark.slow
def test_removal_python_cli_and_study_agree(tiny, tmp_path):
    from vitscope.analysis.class_embedding.removal import RemovalOptions, evaluate

    opts = "{orders: [grads, chefer, probe, random], n_random: 2, step: 4, seed: 3}"
    rows, ctx = study_cell(_study(tiny, "removal", opts), "removal", tmp_path / "s")
    api = evaluate({"tiny": _load(tiny)}, DATA, RemovalOptions(orders=("grads", "chefer", "probe", "random"),
                                                              n_random=2, step=4, seed=3), probe_data=TRAIN)
    aucs = api.table[api.table["metric"] != "accuracy"]
    assert_same_values(values(aucs, ("task", "metric")), values(rows, ("task", "metric")))
    run_cli("removal", "-m", tiny, "-d", DATA, "--probe-data", TRAIN, "--orders", "grads,chefer,probe,random",
            "--random-orders", "2", "--step", "4", "--seed", "3", "-o", tmp_path / "cli", "-q")
    cli = pd.read_parquet(tmp_path / "cli" / "removal_auc.parquet")
    assert_same_values(values(aucs, ("task", "metric")), values(cli, ("task", "metric")))
    curves = pd.read_parquet(tmp_path / "cli" / "removal_curves.parquet")
    keys = ("order", "direction", "seed", "removed")
    assert_same_values(values(api.table[api.table["metric"] == "accuracy"], keys), values(curves, keys))
    assert sorted(curves["removed"].unique()) == [0, 4, 8, 12, 15]
    assert set(api.figures()) == {"removal_tiny"}


@pytest.fixture(scope="module")
def stores(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    for split, spec in (("train", TRAIN), ("test", DATA)):
        run_cli("extract", "-m", tiny, "-d", spec, "-o", root / split, "-l", "all", "-s", "ln2,ln_final", "-t",
                "cls,mean", "-q")
    return root


PROBE = dict(experiments=("last", "all"), per_layer=True, epochs=1, min_steps=8, lrs=(0.01,), wds=(1e-4,),
             attn_drops=(0.0,), batch_size=16)


@pytest.mark.slow
def test_probe_python_cli_and_study_agree(tiny, stores, tmp_path):
    from vitscope.analysis.probes.experiment import ProbeOptions, evaluate

    opts = ("{experiments: [last, all], per_layer: true, epochs: 1, min_steps: 8, lrs: [0.01], wds: [0.0001], "
            "attn_drops: [0.0], batch_size: 16}")
    rows, ctx = study_cell(_study(tiny, "probe", opts), "probe", tmp_path / "s")
    train = ctx.store(0, "cls", "train", sites=("ln2", "ln_final"), tokens=("cls", "mean"))
    test = ctx.store(0, "cls", sites=("ln2", "ln_final"), tokens=("cls", "mean"))
    api = evaluate(train, test, ProbeOptions(**PROBE))
    assert_same_values(values(api.table, ("block", "task", "metric")), values(rows, ("block", "task", "metric")))
    assert {"gain", "test_balanced_top1", "test_top1"} == set(api.table["metric"])
    run_cli("probe", "--store", stores / "train", "--test-store", stores / "test", "-l", "last", "-l", "all",
            "--per-layer", "--epochs", "1", "--min-steps", "8", "--lrs", "0.01", "--wds", "1e-4", "--attn-drops", "0",
            "-b", "16", "-o", tmp_path / "cli", "-q")
    cli = pd.read_csv(tmp_path / "cli" / "results.csv")
    api = evaluate(stores / "train", stores / "test", ProbeOptions(**PROBE))
    keys = ("experiment", "probe", "split", "metric")
    assert_same_values(values(pd.DataFrame(api.meta["run"].rows), keys), values(cli, keys))
    assert (tmp_path / "cli" / "attention_all.png").exists() and (tmp_path / "cli" / "accuracy_per_layer.png").exists()


# ----------------------------------------------------------------------------- command line and Python only
@pytest.mark.slow
def test_memories_perturbation_and_attribution_python_and_cli_agree(tiny, tmp_path):
    from vitscope.analysis.class_embedding import attribution, memories, perturbation

    model = {"tiny": _load(tiny)}
    for cmd, module, extra, keys in (
            ("memories", memories, {"k": 3, "permutations": 10}, ("block", "metric", "kind", "tokens")),
            ("perturb", perturbation, {"blocks": "0:1"}, ("metric", "perturbation", "tokens")),
            ("attribution", attribution, {"blocks": "-1"}, ("block", "head", "tokens", "metric"))):
        api = module.evaluate(model, DATA, **extra)
        flags = [x for k, v in extra.items() for x in (f"--{k}", str(v))]
        run_cli(cmd, "-m", tiny, "-d", DATA, *flags, "-o", tmp_path / cmd, "-q")
        cli = pd.read_parquet(tmp_path / cmd / f"{api.analysis}.parquet")
        assert_same_values(values(api.table, keys), values(cli, keys))
        assert list(cli.columns[:5]) == ["model", "block", "task", "metric", "value"]
    assert set(perturbation.evaluate(model, DATA, blocks="0:1").table["blocks"].dropna()) == {"0"}   # a slice


@pytest.mark.slow
def test_probe_tokens_python_and_cli_agree(tiny, tmp_path):
    from vitscope.analysis.probes.ridge import evaluate

    api = evaluate({"tiny": _load(tiny)}, DATA, sites="resid_post,attn_out", train_data=TRAIN)
    out = run_cli("probe-tokens", "-m", tiny, "-d", DATA, "--train-data", TRAIN, "--sites", "hs,attn", "-o",
                  tmp_path, "-q").output
    cli = pd.read_parquet(tmp_path / "token_probes.parquet")
    keys = ("site", "block", "position", "metric")
    assert_same_values(values(api.table, keys), values(cli, keys))
    assert "%" in out and "patch tokens" in out                          # the summary speaks in percent
    assert (tmp_path / "probe_tokens_tiny_attn_out.accuracy.npy").exists()


@pytest.mark.slow
def test_probe_stats_python_and_cli_agree(stores, tmp_path):
    from vitscope.analysis.probes.experiment import ProbeOptions
    from vitscope.analysis.probes.experiment import evaluate as probe
    from vitscope.analysis.probes.experiment import save_run
    from vitscope.analysis.probes.stats import evaluate

    for name, seed in (("a", 0), ("b", 1)):
        run = probe(stores / "train", stores / "test", ProbeOptions(**{**PROBE, "per_layer": False}, seed=seed,
                                                                    dataset_name=name)).meta["run"]
        save_run(run, tmp_path / name, save_heads=False)
    api = evaluate([tmp_path / "a", tmp_path / "b"])                   # output folders are read as their results
    run_cli("probe-stats", tmp_path / "a" / "results.csv", tmp_path / "b", "-o", tmp_path / "stats", "-q")
    cli = pd.read_csv(tmp_path / "stats" / "gains.csv")
    assert_same_values(values(api.table, ("dataset", "task")), values(cli.rename(columns={"run": "task",
                                                                                         "value": "v",
                                                                                         "gain": "value"}),
                                                                      ("dataset", "task")))
    assert (tmp_path / "stats" / "gains.png").exists()


@pytest.mark.slow
def test_probe_e2e_python_and_cli_agree(tiny, tmp_path):
    from vitscope.analysis.probes.e2e import evaluate

    common = dict(recipe="finetune", steps=2, batch_size=8, device="cpu")
    api = evaluate({"tiny": _load(tiny)}, TRAIN, test_data=DATA, out=str(tmp_path / "api"), **common)
    out = run_cli("probe-e2e", "-m", tiny, "-d", TRAIN, "--test-data", DATA, "--recipe", "finetune", "--steps", "2",
                  "-b", "8", "--device", "cpu", "-o", tmp_path / "cli").output
    cli = pd.read_csv(tmp_path / "cli" / "results.csv")
    assert_same_values(values(api.table, ("metric",)),
                       values(cli.assign(metric="test_" + cli["metric"]), ("metric",)))
    assert "2/2 steps" in out and "probe-e2e finetune" in out
