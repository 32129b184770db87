"""Bad input to the probes and the class-embedding analyses is one line that names the option (in Python: the field;
on the command line: the flag), before any long work starts; the study keeps its defaults; the removal curves'
stacked passes count like one pass per curve; the probe progress bar knows its total."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from vitscope.analysis.api import OptionError
from vitscope.analysis.class_embedding.attribution import AttributionOptions
from vitscope.analysis.class_embedding.memories import MemoriesOptions
from vitscope.analysis.class_embedding.perturbation import PerturbationOptions
from vitscope.analysis.class_embedding.projection import LogitLensOptions
from vitscope.analysis.class_embedding.removal import RemovalOptions
from vitscope.analysis.probes.e2e import E2EOptions
from vitscope.analysis.probes.experiment import ProbeOptions
from vitscope.analysis.probes.ridge import TokenProbeOptions
from vitscope.analysis.probes.stats import ProbeStatsOptions

DATA = "synthetic:n=8,size=32,classes=4,split=test"


@pytest.mark.parametrize("cls, kw, words", [
    (MemoriesOptions, dict(k=0), "`k` must be a positive integer, got 0"),
    (LogitLensOptions, dict(mask_rule="bogus"), "`mask_rule` must be one of majority, any, bicubic, got 'bogus'"),
    (PerturbationOptions, dict(mask_rule="bogus"), "`mask_rule` must be one of majority, any, bicubic, got 'bogus'"),
    (LogitLensOptions, dict(topk=0), "`topk` must be a positive integer, got 0"),
    (LogitLensOptions, dict(per_class=0), "`per_class` must be a positive integer, got 0"),
    (LogitLensOptions, dict(limit=0), "`limit` must be a positive number of images, got 0"),
    (LogitLensOptions, dict(sites="resid,mpl"), "`sites` takes resid, attn, mlp, got 'resid,mpl'"),
    (RemovalOptions, dict(step=0), "`step` must be a positive integer, got 0"),
    (RemovalOptions, dict(n_random=0), "`n_random` must be at least 1 (or leave random out of the orders), got 0"),
    (RemovalOptions, dict(orders="grads,saliency"), "`orders`: unknown order(s) ['saliency']"),
    (RemovalOptions, dict(limit=0), "`limit` must be a positive number of images, got 0"),
    (ProbeOptions, dict(epochs=0), "`epochs` must be a positive integer, got 0"),
    (ProbeOptions, dict(min_steps=-1), "`min_steps` must be an integer >= 0, got -1"),
    (ProbeOptions, dict(heads=0), "`heads` must be a positive integer, got 0"),
    (ProbeOptions, dict(heads=-1), "`heads` must be a positive integer, got -1"),
    (ProbeOptions, dict(experiments=("evrything",)), "`experiments` are layer sets"),
    (ProbeOptions, dict(experiments=(), per_layer=False), "nothing to probe"),
    (ProbeOptions, dict(probes="linear,mlp"), "`probes` takes linear, attentive, got 'linear,mlp'"),
    (ProbeOptions, dict(lrs="0.1,x"), "`lrs` takes a list of numbers, got '0.1,x'"),
    (ProbeOptions, dict(test_fraction=1.0), "`test_fraction` must be in (0, 1), got 1.0"),
    (TokenProbeOptions, dict(alpha=0), "`alpha` must be positive, got 0"),
    (TokenProbeOptions, dict(sites="hs,foo"), "`sites`: unknown probe site 'foo'"),
    (PerturbationOptions, dict(attention="self_only,bogus"), "`attention` takes self_only, no_cls"),
    (PerturbationOptions, dict(blocks="x"), "--blocks takes 'all', '0,3,-1' or '4:8', got 'x'"),
    (AttributionOptions, dict(batch_size=0), "`batch_size` must be a positive integer, got 0"),
    (E2EOptions, dict(recipe="fine-tune"), "unknown end-to-end recipe 'fine-tune'"),
    (E2EOptions, dict(save_every=0), "`save_every` must be a positive integer, got 0"),
    (ProbeStatsOptions, dict(baseline="linear"), "`baseline` is probe:experiment"),
    (ProbeStatsOptions, dict(pairs="a-b"), "`pairs` items are a>b, got 'a-b'"),
])
def test_options_say_what_was_expected(cls, kw, words):
    with pytest.raises(OptionError) as e:
        cls(**kw)
    assert str(e.value).startswith(words), str(e.value)
    assert e.value.field == next(k for k in kw if k != "per_layer") and "\n" not in str(e.value)


def test_options_normalise_what_the_command_line_and_a_study_give():
    o = ProbeOptions(experiments=["last", "ln2.3.cls,ln_final.ap"], probes="linear", attn_drops="0,0.1", lrs=[0.1])
    assert o.experiments == ("last", "ln2.3.cls,ln_final.ap") and o.probes == ("linear",)
    assert o.attn_drops == (0.0, 0.1) and o.lrs == (0.1,) and o.wds is None
    assert TokenProbeOptions(sites="hs,attn").sites == ("resid_post", "attn_out")         # vilas2023's names
    assert PerturbationOptions(attention="none,no_cls", blocks=[0, -1]).attention == ("no_cls",)
    assert LogitLensOptions(sites=["mlp", "resid", "mlp"]).sites == ("mlp", "resid")
    assert ProbeStatsOptions(pairs="a>b, c>d").pairs == (("a", "b"), ("c", "d"))
    assert '"record_dir"' not in LogitLensOptions(record_dir="x").as_json()


def test_the_study_keeps_its_defaults():
    """The study's option names and defaults (and so its cells' hashes) are the ones they were."""
    from vitscope.experiments.analyses import REGISTRY

    assert REGISTRY["logit_lens"].defaults == {"sites": ["resid"], "topk": 5, "prescale": False,
                                               "random_baseline": False, "per_class": None, "batch_size": 64,
                                               "seed": 0}
    assert REGISTRY["removal"].defaults == {"orders": ["grads", "chefer", "random"], "n_random": 10, "seed": 0,
                                            "step": 1, "batch_size": 64}
    assert REGISTRY["probe"].defaults == {
        "experiments": ["last", "all"], "probes": ["linear", "attentive"], "reductions": ["cls", "ap"],
        "per_layer": False, "site": "ln2", "heads": None, "attn_drops": [0.0, 0.1, 0.3], "lrs": None, "wds": None,
        "epochs": 40, "min_steps": 1000, "batch_size": 2048, "token_norm": "token", "normalize": True,
        "clean_val": False, "seed": 0, "test_fraction": 0.25}


def test_the_report_takes_the_old_name_of_the_logit_lens():
    from vitscope.report.registry import available

    assert [a.name for a in available(["identifiability", "logit_lens"])] == ["logit_lens"]


# ----------------------------------------------------------------------------- models and stores
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vitscope import HookedViT, ViTConfig
    from vitscope.models.loading import save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_model(HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4)),
               folder)
    return str(folder)


def test_random_twin_is_the_seeded_random_model(tiny):
    from vitscope.runtime import load_model, random_twin

    for seed in (0, 3):
        a, b = random_twin(load_model(tiny), seed), load_model(tiny, random=True, seed=seed)
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(random_twin(load_model(tiny), 0).blocks[0].attn.qkv.weight,
                           random_twin(load_model(tiny), 1).blocks[0].attn.qkv.weight)


def _error(monkeypatch, capsys, *args) -> str:
    from vitscope.cli.main import main

    monkeypatch.setattr(sys, "argv", ["vitscope", *[str(a) for a in args]])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), lines
    return lines[-1]


@pytest.mark.parametrize("args, words", [
    (["memories", "--k", "0"], "error: --k must be a positive integer, got 0"),
    (["logit-lens", "--mask-rule", "bogus"], "error: --mask-rule must be one of majority, any, bicubic, got 'bogus'"),
    (["perturb", "--mask-rule", "bogus"], "error: --mask-rule must be one of majority, any, bicubic, got 'bogus'"),
    (["logit-lens", "--topk", "0"], "error: --topk must be a positive integer, got 0"),
    (["logit-lens", "--per-class", "0"], "error: --per-class must be a positive integer, got 0"),
    (["logit-lens", "--limit", "0"], "error: --limit must be a positive number of images, got 0"),
    (["removal", "--limit", "0"], "error: --limit must be a positive number of images, got 0"),
    (["removal", "--step", "999"], "error: --step must be at most 14 for 16 patch tokens"),
    (["removal", "--random-orders", "0"], "error: --n-random must be at least 1"),
    (["attribution", "--blocks=-99"], "error: block -99 does not exist in a model of depth 2"),
    (["perturb", "--blocks", "9:"], "error: --blocks selects no block"),
])
def test_bad_input_is_one_line_naming_the_flag(tiny, args, words, monkeypatch, capsys, tmp_path):
    line = _error(monkeypatch, capsys, *args, "-m", tiny, "-d", DATA, "-o", tmp_path, "-q")
    assert line.startswith(words), line


def test_topk_above_the_classes_is_said(tiny):
    from vitscope.analysis.class_embedding.projection import evaluate
    from vitscope.runtime import load_model

    r = evaluate(load_model(tiny), DATA, topk=99, mask_rule=None)
    assert any("topk 99 is more than the 4 classes" in n for n in r.meta["notes"])


@pytest.fixture(scope="module")
def store(tiny, tmp_path_factory):
    from tests.frontends import run_cli

    root = tmp_path_factory.mktemp("store")
    run_cli("extract", "-m", tiny, "-d", "synthetic:n=40,size=32,classes=4", "-o", root, "-l", "all", "-s",
            "ln2,ln_final", "-t", "cls,mean,all", "-q")
    return root


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0", "--min-steps", "0"], "error: --epochs must be a positive integer, got 0"),
    (["--heads", "-1"], "error: --heads must be a positive integer, got -1"),
    (["-l", "ln2.99.cls"], "error: the store"),
])
def test_probe_bad_input_is_one_line_before_training(store, args, words, monkeypatch, capsys, tmp_path):
    line = _error(monkeypatch, capsys, "probe", "--store", store, *args, "-o", tmp_path)   # with the progress bar
    assert line.startswith(words), line


def test_a_missing_layer_is_found_before_any_step(store):
    from vitscope.analysis.probes.experiment import probe_store
    from vitscope.analysis.probes.train import TrainConfig
    from vitscope.features import open as open_store

    ticks = []
    with pytest.raises(ValueError, match="has no layer 99"):
        probe_store(open_store(store), experiments=("last", "ln2.99.cls"), cfg=TrainConfig(epochs=1, min_steps=5),
                    progress=ticks.append)
    assert ticks == []


@pytest.mark.slow
def test_the_probe_progress_total_is_the_steps_taken(store):
    """planned_steps (the bar's total, from the store's shapes) equals the optimiser steps probe_store takes."""
    from vitscope.analysis.probes.experiment import probe_store
    from vitscope.analysis.probes.train import TrainConfig
    from vitscope.features import open as open_store

    ticks, total = [], []
    probe_store(open_store(store), experiments=("last", "tokens"), per_layer=True, lrs=(0.01, 0.1), wds=(1e-4,),
                attn_drops=(0.0, 0.1), cfg=TrainConfig(epochs=1, min_steps=2, batch_size=16), progress=ticks.append,
                total=total.append, memory_budget=3e4)                      # a small budget: the grid in chunks
    assert total == [sum(ticks)] and sum(ticks) > 0


def test_probe_stats_reads_output_folders_and_says_what_it_cannot_read(tmp_path):
    from vitscope.analysis.probes.stats import read_results

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder without results.csv"):
        read_results([tmp_path / "empty"])
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read the results table .*bad.parquet") as e:
        read_results([tmp_path / "bad.parquet"])
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- removal curves, stacked
@pytest.mark.slow
def test_stacked_removal_passes_count_like_one_pass_per_curve(tiny):
    """correct_after_removals (every curve of a step in one stacked pass, here cut into small passes) equals
    correct_after_removal called per curve (itself checked against masking the removed tokens in every block)."""
    from vitscope.analysis.class_embedding.removal import correct_after_removal, correct_after_removals
    from vitscope.runtime import load_model

    m = load_model(tiny)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = m(x).argmax(-1)
    y[0] = (y[0] + 1) % 4
    per_image = torch.stack([torch.randperm(16, generator=g) for _ in range(5)])
    curves = [(per_image, "negative"), (per_image, "positive"), (torch.randperm(16, generator=g), "negative")]
    removed = [0, 1, 6, 15]
    ticks = []
    got = correct_after_removals(m, x, y, curves, removed, max_tokens=40, step_done=lambda: ticks.append(1))
    want = torch.stack([correct_after_removal(m, x, y, o, removed, d) for o, d in curves])
    assert got.shape == (3, 4, 5) and torch.equal(got, want) and len(ticks) == 4


def test_removal_says_how_much_work_there_is(tiny):
    from vitscope.analysis.class_embedding.removal import evaluate, removal_work
    from vitscope.runtime import load_model

    w = removal_work(8, 16, ("grads", "chefer", "random"), 10, 4)
    assert w == {"images": 8, "patch_counts": 5, "curves": 14, "image_passes": 8 * 5 * 14}
    lines = []
    evaluate(load_model(tiny), DATA, orders="grads,random", n_random=2, step=4, log=lines.append)
    assert lines == ["removal curves of tiny: 8 images x 5 patch counts x 4 curves = 160 image passes"]
    assert np.isfinite(w["image_passes"])
