"""Patching, ablations and composition scores: options validate themselves with one message style, and the Python
API, the command line and a study cell give the same numbers on the same inputs."""
import pandas as pd
import pytest

from tests.frontends import assert_same_values, run_cli, study_cell, values
from vitscope.analysis.api import OptionError
from vitscope.analysis.patching import PatchOptions, evaluate
from vitscope.analysis.patching import ablation, composition

DATA = "builtin:demo?n=16"


@pytest.mark.parametrize("kw, words", [
    (dict(site="resid"), "`site` must be one of resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, result, q, k, "
                         "v, pattern, got 'resid' (did you mean 'resid_pre'?)"),
    (dict(metric="logits"), "`metric` must be logit-diff:A,B, logit[:CLASS], prob[:CLASS] or a callable"),
    (dict(direction="denoise"), "`direction` must be one of denoising, noising, got 'denoise'"),
    (dict(method="gradient"), "`method` must be one of activation, attribution, both, got 'gradient'"),
    (dict(corrupt="blur:-1"), "`corrupt`: blur strength must be positive"),
    (dict(corrupt="fog"), "`corrupt`: unknown corruption 'fog'"),
    (dict(region="1:x,2"), "`region` takes patch rows and columns as 'r0:r1,c0:c1' or 'r,c'"),
    (dict(patches="3:1,0"), "`patches` '3:1,0': rows 3..0 outside the patch grid"),
    (dict(receivers="logits", method="both"), "`method` must be activation with receivers"),
    (dict(batch_size=0), "`batch_size` must be a positive integer, got 0"),
    (dict(limit=0), "`limit` must be a positive integer, got 0"),
    (dict(blocks="x"), "--blocks takes 'all', '0,3,-1' or '4:8'"),
])
def test_options_say_what_was_expected(kw, words):
    with pytest.raises(OptionError) as e:
        PatchOptions(**kw)
    assert str(e.value).startswith(words), str(e.value)
    assert "\n" not in str(e.value)


def test_site_aliases_and_callable_metrics():
    assert PatchOptions(site="attn.hook_z").site == "z" and PatchOptions(site="hook_mlp_out").site == "mlp_out"
    assert PatchOptions(metric=lambda logits: logits[:, 0]).metric is not None
    assert composition.CompositionOptions(modes="q, v").modes == "Q,V"
    with pytest.raises(OptionError, match="`modes` takes Q, K and V"):
        composition.CompositionOptions(modes="X")


@pytest.mark.slow
def test_patching_python_cli_and_study_give_the_same_table(tmp_path):
    from vitscope.models.loading import load_model

    study = (f'study: t\nmodels: [demo-vit]\ndatasets:\n  - {{name: d, data: "{DATA}"}}\n'
             "analyses:\n  - {name: patching, options: {corrupt: edit, limit: 2, site: resid_pre}}\n")
    rows, _ = study_cell(study, "patching", tmp_path / "study")
    api = evaluate({"demo-vit": load_model("demo-vit")}, DATA, PatchOptions(corrupt="edit", limit=2))
    run_cli("patch", "-m", "demo-vit", "-d", DATA, "--corrupt", "edit", "--limit", "2", "-o", tmp_path / "cli", "-q")
    cli = pd.read_parquet(tmp_path / "cli" / "patching.parquet")
    keys = ("block", "metric", "position")
    assert_same_values(values(api.table, keys), values(cli, keys))
    per_block = api.table[api.table["position"].isna()]
    assert_same_values(values(per_block), values(rows))
    assert {r["metric"] for r in rows} == {"effect_max", "changed_share"}
    assert set(api.figures()) == {"patching_resid_pre"} and (tmp_path / "cli" / "patching_resid_pre.png").exists()


@pytest.mark.slow
def test_ablation_and_composition_python_cli_and_study_agree(tmp_path):
    from vitscope.models.loading import load_model

    study = (f'study: t\nmodels: [demo-vit]\ndatasets:\n  - {{name: d, data: "{DATA}"}}\n'
             "analyses:\n  - {name: ablation, options: {method: resample, limit: 12, blocks: '4:6'}}\n"
             "  - {name: composition, options: {modes: 'K'}}\n")
    rows, _ = study_cell(study, "ablation", tmp_path / "study")
    model = load_model("demo-vit")
    api = ablation.evaluate({"demo-vit": model}, DATA, ablation.AblateOptions(method="resample", limit=12,
                                                                              blocks="4:6"))
    run_cli("ablate", "-m", "demo-vit", "-d", DATA, "--method", "resample", "--limit", "12", "--blocks", "4:6",
            "-o", tmp_path / "cli", "-q")
    cli = pd.read_parquet(tmp_path / "cli" / "ablation.parquet")
    keys = ("block", "metric", "head")
    assert_same_values(values(api.table, keys), values(cli, keys))
    assert_same_values(values(api.table, keys), values(rows, keys))
    assert sorted(set(api.table["block"].dropna())) == [4, 5]

    rows, _ = study_cell(study, "composition", tmp_path / "study2")
    api = composition.evaluate({"demo-vit": model}, modes="K")
    run_cli("composition", "-m", "demo-vit", "--modes", "K", "-o", tmp_path / "cli2")
    cli = pd.read_parquet(tmp_path / "cli2" / "composition.parquet")
    keys = ("block", "head", "block2", "head2")
    assert_same_values(values(api.table, keys), values(cli, keys))
    study_vals = {(r["block"], r["head"], r["block2"], int(r["task"].split()[-1])): r["value"] for r in rows}
    assert_same_values(values(api.table, keys), study_vals)
