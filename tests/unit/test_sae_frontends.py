"""The SAE's study adapter and report section: a study cell gives the numbers `vitscope sae train` + `vitscope sae
eval` give on the same store and images, and the report section runs on the demo model."""
import pandas as pd
import pytest

from tests.frontends import run_cli, study_cell

DATA = "synthetic:n=24,size=64,classes=4"
OPTIONS = ("{blocks: '2', width: [64], k: [4], steps: 20, batch_size: 128, chunk_images: 8, warmup: 5, "
           "eval_limit: 12}")


def _study() -> str:
    return (f'study: t\nmodels: [demo-vit]\ndatasets:\n  - {{name: d, data: "{DATA}"}}\n'
            f"analyses:\n  - {{name: sae, options: {OPTIONS}}}\n")


@pytest.mark.slow
def test_study_rows_equal_the_cli(tmp_path):
    rows, ctx = study_cell(_study(), "sae", tmp_path / "s")
    store, _, _ = ctx.store_path(0, "patches", "test", sites=("resid_post",), tokens=("patches",))
    run_cli("sae", "train", "--store", store, "-o", tmp_path / "cli", "--block", "2", "--width", "64", "--k", "4",
            "--steps", "20", "--batch-size", "128", "--chunk-images", "8", "--warmup", "5", "-q")
    name = "topk-b2-w64-k4-lr0.0004"
    run_cli("sae", "eval", tmp_path / "cli" / name, "-m", "demo-vit", "-d", DATA, "--limit", "12",
            "-o", tmp_path / "ev", "-q")
    cli = pd.read_csv(tmp_path / "ev" / "sae.csv")
    expected = {}
    for _, r in cli.iterrows():
        task = " ".join([name] + [f"{k}={r[k]}" for k in ("basis", "concept") if not pd.isna(r[k])])
        expected[(task, int(r["block"]), r["metric"])] = float(r["value"])
    got = {(r["task"], r["block"], r["metric"]): r["value"] for r in rows}
    assert set(got) == set(expected) and {"l0", "fvu", "sae_kl", "factor_best_auroc"} <= {k[2] for k in got}
    for key, v in expected.items():
        assert got[key] == pytest.approx(v, rel=1e-6, abs=1e-9, nan_ok=True), key


def test_study_rejects_bad_options(tmp_path):
    from vitscope.experiments.analyses import REGISTRY

    with pytest.raises(ValueError, match="'eval_limit'"):
        REGISTRY["sae"].validate({"eval_limit": 0})
    with pytest.raises(ValueError, match="'k'"):
        REGISTRY["sae"].validate({"k": [99], "width": [64]})


@pytest.mark.slow
def test_report_section_on_the_demo_model(tmp_path):
    from vitscope.report.context import ReportContext
    from vitscope.report.registry import ANALYSES
    from vitscope.runtime import load_model

    import vitscope.report.sections  # noqa: F401  (registers)

    ctx = ReportContext(load_model("demo-vit"), "builtin:demo", out_dir=tmp_path, name="demo-vit", n_images=32,
                        n_eval=64, progress=False)
    sec = ANALYSES["sae"].fn(ctx)
    assert not getattr(sec, "skipped", None), sec
    assert any(p.suffix == ".png" for p in ctx.out_dir.rglob("*")), list(ctx.out_dir.rglob("*"))
    table = pd.read_csv(next(ctx.out_dir.rglob("*sae_metrics*.csv")))
    core = table.set_index("metric").value
    assert 0 < core["l0"] <= 8 and 0 <= core["fvu"] < 1
