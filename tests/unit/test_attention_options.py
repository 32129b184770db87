"""The attention analyses' options: every bad value is one line that names the option, says what was expected
and what came, before any model or image is read; on the command line the option is named by its flag."""
import subprocess
import sys

import pytest

from vitscope.analysis.api import OptionError
from vitscope.analysis.attention.distance import AttentionDistanceOptions
from vitscope.analysis.attention.maps import AttentionMapOptions
from vitscope.analysis.attention.posembed import PosEmbedOptions
from vitscope.analysis.attention.relevance import RolloutOptions
from vitscope.analysis.attention.saliency import SaliencyOptions
from vitscope.analysis.attention.stats import AttentionStatsOptions
from vitscope.analysis.attention.token_pages import TokenPagesOptions
from vitscope.analysis.attention.video import VideoOptions

LIMIT = "`limit` must be a positive number of images, got 0"


@pytest.mark.parametrize("cls, kw, message", [
    (AttentionMapOptions, dict(limit=0), LIMIT),
    (RolloutOptions, dict(limit=0), LIMIT),
    (AttentionDistanceOptions, dict(limit=0), LIMIT),
    (AttentionStatsOptions, dict(limit=0), LIMIT),
    (SaliencyOptions, dict(limit=0), LIMIT),
    (TokenPagesOptions, dict(limit=0), LIMIT),
    (AttentionMapOptions, dict(limit=-3), "`limit` must be a positive number of images, got -3"),
    (AttentionMapOptions, dict(heads="a"), "`heads` takes comma-separated head indices (e.g. 0,3,5), got 'a'"),
    (AttentionMapOptions, dict(threshold=1.5), "`threshold` must be in (0, 1], got 1.5"),
    (AttentionMapOptions, dict(threshold=0), "`threshold` must be in (0, 1], got 0"),
    (AttentionMapOptions, dict(fusion="avg"), "`fusion` must be one of mean, max, min, sum, got 'avg'"),
    (AttentionMapOptions, dict(query="clss"), "`query`: unknown query 'clss'"),
    (AttentionMapOptions, dict(opacity=2), "`opacity` must be in [0, 1], got 2"),
    (AttentionMapOptions, dict(cmap="infern"), "`cmap` must be a Matplotlib colour map (inferno, viridis, gray, "
                                               "...), got 'infern' (did you mean 'inferno'?)"),
    (AttentionMapOptions, dict(batch_size=0), "`batch_size` must be a positive integer, got 0"),
    (RolloutOptions, dict(method="chefr"), "`method`: method must be one of rollout, grad-rollout"),
    (RolloutOptions, dict(discard_rule="x"), "`discard_rule` must be one of exclude-cls, spare-cls, all, "
                                             "vit-explain, got 'x'"),
    (RolloutOptions, dict(discard_ratio=1.0), "`discard_ratio` must be in [0, 1), got 1.0"),
    (RolloutOptions, dict(normalize="l2"), "`normalize` must be one of max, minmax, none, got 'l2'"),
    (RolloutOptions, dict(target=-1), "`target` must be an integer >= 0, got -1"),
    (RolloutOptions, dict(head_fusion="sum"), "`head_fusion` must be one of mean, max, min, got 'sum'"),
    (AttentionDistanceOptions, dict(variants="A,C"), "`variants` takes A and/or B; got 'A,C'"),
    (AttentionDistanceOptions, dict(variants=[]), "`variants` takes A and/or B; got []"),
    (SaliencyOptions, dict(queries="cls,top"), "`queries` takes cls, mean, centre; got 'cls,top'"),
    (SaliencyOptions, dict(mass=0), "`mass` must be in (0, 1], got 0"),
    (SaliencyOptions, dict(mask_rule="bogus"), "`mask_rule` must be one of bicubic, bicubic-union, any, majority, "
                                               "got 'bogus'"),
    (SaliencyOptions, dict(merge_rule="mean"), "`merge_rule` must be one of sum, walmer2023, got 'mean'"),
    (TokenPagesOptions, dict(absent="ignore"), "`absent` must be one of error, skip, got 'ignore'"),
    (PosEmbedOptions, dict(grid="3"), "`grid` takes 'rows,cols' (two positive integers), got '3'"),
    (PosEmbedOptions, dict(grid="0,4"), "`grid` takes 'rows,cols' (two positive integers), got '0,4'"),
    (PosEmbedOptions, dict(filters=0), "`filters` must be a positive integer, got 0"),
    (PosEmbedOptions, dict(filter_mode="ica"), "`filter_mode` must be one of pca, raw, got 'ica'"),
    (VideoOptions, dict(step=0), "`step` must be a positive integer, got 0"),
    (VideoOptions, dict(max_frames=0), "`max_frames` must be a positive integer, got 0"),
    (VideoOptions, dict(short_side=0), "`short_side` must be a positive integer, got 0"),
    (VideoOptions, dict(fps=0), "`fps` must be positive, got 0"),
    (VideoOptions, dict(layout="grid"), "`layout` must be one of overlay, side, got 'grid'"),
    (VideoOptions, dict(video="out.avi.txt"), "`video` must end in .mp4, .mov, .mkv, .avi or .gif, got 'out.avi.txt'"),
])
def test_bad_option_values_are_one_line(cls, kw, message):
    with pytest.raises(OptionError) as e:
        cls(**kw)
    assert str(e.value).startswith(message), str(e.value)
    assert e.value.field == next(iter(kw)) and "\n" not in str(e.value)


def test_options_normalise_what_they_accept():
    assert AttentionMapOptions(heads="0, 3,-1").heads == (0, 3, -1) and AttentionMapOptions(heads="").heads is None
    assert AttentionMapOptions(query=(2, 5)).query == "2,5" and AttentionMapOptions(query=" CLS").query == "cls"
    assert AttentionDistanceOptions(variants="b,a,B").variants == ("B", "A")
    assert SaliencyOptions(queries=["mean", "cls", "mean"]).queries == ("mean", "cls")
    assert RolloutOptions(method="chefer").method == "chefer2021-generic"
    assert RolloutOptions(method="grad_rollout").method == "grad-rollout"
    assert PosEmbedOptions(grid=[3, 5]).grid == (3, 5)
    with pytest.raises(OptionError, match="unknown option `variant` \\(did you mean `variants`\\?\\)"):
        AttentionDistanceOptions.from_mapping({"variant": ["A"]})


def test_study_defaults_are_the_dataclass_defaults():
    """A study's attention options come from the dataclasses (and keep their former values)."""
    from vitscope.experiments.analyses import REGISTRY

    assert REGISTRY["attention_distance"].defaults == {"variants": ["A"], "batch_size": 32}
    assert REGISTRY["saliency"].defaults == {"queries": ["cls"], "mass": 0.6, "mask_rule": "bicubic",
                                             "batch_size": 32}
    with pytest.raises(ValueError, match="'variants' takes A and/or B"):
        REGISTRY["attention_distance"].validate({"variants": ["C"], "batch_size": 32})


def _model_checks():
    import torch

    from vitscope import HookedViT, ViTConfig

    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10,
                               class_token=False, global_pool="avg")).eval()


def test_checks_that_need_the_model_name_the_option():
    import torch

    from vitscope.analysis.attention import maps, relevance, saliency, token_pages

    torch.manual_seed(0)
    from vitscope import HookedViT, ViTConfig

    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    for call, field, words in [
        (lambda: maps.evaluate(m, x, block=2), "block", "`block` 2 does not exist in a model of depth 2 (use 0..1"),
        (lambda: maps.evaluate(m, x, block=-3), "block", "`block` -3 does not exist"),
        (lambda: maps.evaluate(m, x, heads="0,4"), "heads", "`heads`: head 4 does not exist; the model has 4 heads"),
        (lambda: relevance.evaluate(m, x, start_block=1, end_block=0), "start_block", "`start_block` 1 comes after"),
        (lambda: token_pages.evaluate(m, x, block=5), "block", "`block` 5 does not exist"),
    ]:
        with pytest.raises(OptionError) as e:
            call()
        assert e.value.field == field and str(e.value).startswith(words), str(e.value)
    gap = _model_checks()
    with pytest.raises(OptionError, match="this model has no CLS token; use `queries` mean,centre"):
        saliency.evaluate(gap, [], queries="cls")
    with pytest.raises(ValueError, match="the CLS token enters|this model has no CLS token"):
        maps.evaluate(gap, x, query="cls")
    with pytest.raises(ValueError, match="neither a CLS token nor registers"):
        token_pages.evaluate(gap, x)
    with pytest.raises(ValueError, match="runs one model at a time"):
        maps.evaluate({"a": m, "b": m}, x)


@pytest.mark.slow
@pytest.mark.parametrize("args, line", [
    (("attention", "-m", "demo-vit", "--limit", "0"), "error: --limit must be a positive number of images, got 0"),
    (("rollout", "-m", "demo-vit", "--discard-rule", "x"), "error: --discard-rule must be one of exclude-cls"),
    (("saliency", "-m", "demo-vit", "-d", "synthetic:n=4", "--mask-rule", "bogus"),
     "error: --mask-rule must be one of bicubic, bicubic-union, any, majority, got 'bogus'"),
    (("video", "clip.mp4", "-m", "demo-vit", "-o", "x.txt"), "error: --out must end in .mp4, .mov, .mkv, .avi or "
                                                             ".gif, got 'x.txt'"),
    (("attention", "-m", "demo-vit", "-d", "synthetic:n=2", "--block", "9"),
     "error: --block 9 does not exist in a model of depth 6 (use 0..5, or -1 for the last)"),
])
def test_command_line_names_the_flag(args, line, tmp_path):
    import os
    from pathlib import Path

    import vitscope

    src = str(Path(vitscope.__file__).resolve().parents[1])               # this checkout's package, from any folder
    env = {**os.environ, "VITSCOPE_DEBUG": "", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "vitscope", *args], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=env)
    errors = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert r.returncode == 1 and len(errors) == 1 and errors[0].startswith(line), r.stderr
