"""The SAE on the demo model (what docs/sae.md shows): a TopK SAE on a middle block's patch tokens reconstructs
well at low L0, and finds features of the synthetic benchmark's generating factors that no raw neuron carries."""
import pytest


@pytest.mark.slow
def test_demo_sae_reconstructs_and_finds_factors(tmp_path):
    import vitscope as vs
    from vitscope.analysis.sae import SAEOptions, TrainOptions, evaluate, train_saes
    from vitscope.features import extract_features

    model = vs.load_model("demo-vit")
    extract_features(model, "builtin:demo?n=2048,split=train", tmp_path / "store", layers="3",
                     sites=("resid_post",), tokens=("patches",), progress=False)
    opts = TrainOptions(blocks="3", arch="topk", width=(512,), k=(16,), lr=(1e-3,), steps=600, batch_size=1024,
                        chunk_images=512, warmup=50, dead_after=100_000)
    saes = train_saes(tmp_path / "store", opts, out=tmp_path / "saes")
    res = evaluate(saes, "builtin:demo?n=512,split=test", SAEOptions(limit=512, splice=False), model=model)
    t = res.table
    core = dict(zip(t[t.basis.isna()].metric, t[t.basis.isna()].value))
    assert core["l0"] <= 32 and core["fvu"] < 0.2, core
    f = t[t.metric == "factor_best_auroc"].groupby(["factor", "basis"]).value.max().unstack()
    wins = f[(f["sae"] >= 0.9) & (f["sae"] - f["neurons"] >= 0.05)]
    assert len(wins) >= 3, f
