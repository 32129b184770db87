"""The SAEs on the demo model (what docs/sae.md shows): a TopK SAE on a middle block's raw patch tokens reconstructs
well at low L0, and its latents make generating factors of the synthetic benchmark linearly readable that no linear
read-out of the raw stream reaches, but no single latent detects them (recorded as an expected failure); a
Matryoshka SAE of block 4's centred patch tokens has single latents that do."""
import pytest


@pytest.fixture(scope="module")
def demo_table(tmp_path_factory):
    import vitscope as vs
    from vitscope.analysis.sae import SAEOptions, TrainOptions, evaluate, train_saes
    from vitscope.features import extract_features

    tmp_path = tmp_path_factory.mktemp("sae-demo")
    model = vs.load_model("demo-vit")
    extract_features(model, "builtin:demo?n=2048,split=train", tmp_path / "store", layers="3",
                     sites=("resid_post",), tokens=("patches",), progress=False)
    opts = TrainOptions(blocks="3", arch="topk", width=(512,), k=(16,), lr=(1e-3,), steps=600, batch_size=1024,
                        chunk_images=512, warmup=50, dead_after=100_000)
    saes = train_saes(tmp_path / "store", opts, out=tmp_path / "saes")
    res = evaluate(saes, "builtin:demo?n=512,split=test", SAEOptions(limit=512, splice=False), model=model)
    return res.table


@pytest.mark.slow
def test_demo_sae_reconstructs(demo_table):
    t = demo_table
    core = dict(zip(t[t.basis.isna()].metric, t[t.basis.isna()].value))
    assert core["l0"] <= 32 and core["fvu"] < 0.2, core


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "not met on demo-vit (block 3, 512 latents, k=16, 600 steps; FVU 0.019 at L0 16). Best concept per factor, "
    "best single latent / best raw neuron / linear probe on all 64 neurons (held out): shape 0.89 / 0.94 / 1.00, "
    "colour 0.83 / 0.89 / 0.93, object 0.64 / 0.62 / 0.72, part 0.67 / 0.66 / 0.84, position 0.65 / 0.64 / 0.77, "
    "texture 0.58 / 0.58 / 0.65. Object, part, position and texture stay below AUROC 0.9 even for a linear probe on "
    "all the neurons, which bounds a ReLU-type latent (a non-decreasing function of one direction); shape and "
    "colour reach every patch, where the dense neurons are as good as any latent. On block 4's MLP output, where "
    "the three are linear directions (probe 0.96-0.98), the best SAEs found (Matryoshka) reach 0.79-0.84: they "
    "split object, part and position into shape- and colour-specific latents (scripts/sae_factor_search.py "
    "--explain). An SAE of the centred patch tokens meets the criterion: "
    "test_demo_centred_sae_finds_factors_no_neuron_carries; see docs/sae.md"))
def test_demo_sae_finds_factors_no_neuron_carries(demo_table):
    """The issue's criterion, per concept: a latent with AUROC >= 0.9 where the best raw neuron is at least 0.05
    lower, for concepts of at least three factors."""
    t = demo_table
    f = t[t.metric == "factor_best_auroc"].pivot_table(index=["factor", "concept"], columns="basis", values="value")
    wins = f[(f["sae"] >= 0.9) & (f["sae"] - f["neurons"] >= 0.05)]
    assert len(set(wins.index.get_level_values("factor"))) >= 3, f


@pytest.mark.slow
def test_demo_sae_latents_make_factors_linearly_readable(demo_table):
    """What the SAE does find on demo-vit: object, part and position patches are not linearly readable from the
    stream (a linear probe on all 64 raw neurons, or on 64 random directions, stays below AUROC 0.9), but a linear
    probe on at most 32 SAE latents reaches 0.9 for concepts of at least three factors."""
    t = demo_table
    u = t[t.metric == "factor_units_to_0.9"]
    reached = u.groupby(["factor", "concept", "basis"]).value.min().unstack()       # NaN: 64 units do not reach
    sae_only = reached[(reached["sae"] <= 32) & reached["neurons"].isna() & reached["random"].isna()]
    factors = set(sae_only.index.get_level_values("factor"))
    assert len(factors) >= 3, reached
    # the same from the probes' AUROCs: 64 latents read these concepts far above the stream's linear ceiling
    p = t[t.metric == "factor_probe_auroc"].pivot_table(index=["factor", "concept"], columns="basis", values="value")
    above = p[(p["sae"] >= 0.9) & (p["neurons"] <= p["sae"] - 0.1)]
    assert len(set(above.index.get_level_values("factor"))) >= 3, p


@pytest.fixture(scope="module")
def centred_table(tmp_path_factory):
    """The SAE of docs/sae.md that meets the criterion: a Matryoshka SAE on block 4's MLP output at the patch
    tokens, each less its image's mean patch token (``centre="image"``); trained on 4096 images, measured on 512."""
    import vitscope as vs
    from vitscope.analysis.sae import SAEOptions, TrainOptions, evaluate, train_saes
    from vitscope.features import extract_features

    tmp_path = tmp_path_factory.mktemp("sae-demo-centred")
    model = vs.load_model("demo-vit")
    extract_features(model, "builtin:demo?n=4096,split=train", tmp_path / "store", layers="4",
                     sites=("mlp_out",), tokens=("patches",), progress=False)
    opts = TrainOptions(site="mlp_out", blocks="4", centre="image", arch="matryoshka", width=(512,), k=(16,),
                        prefixes=(8, 32, 128), lr=(1e-3,), steps=6000, batch_size=1024, chunk_images=512, warmup=50,
                        dead_after=100_000, aux_k=64)
    saes = train_saes(tmp_path / "store", opts, out=tmp_path / "saes")
    res = evaluate(saes, "builtin:demo?n=512,split=test", SAEOptions(limit=512, splice=False), model=model)
    return res.table


@pytest.mark.slow
def test_demo_centred_sae_finds_factors_no_neuron_carries(centred_table):
    """The criterion in full on one SAE of a middle block's patch tokens: FVU < 0.2 at L0 <= 32, and for concepts of
    at least three generating factors a latent at AUROC >= 0.9 where the best raw neuron is at least 0.05 lower
    (3 or 4 factors with seeds 0, 1, 2). For at least two factors the latent also beats, by the same margin, the best
    neuron of what the SAE reads (the centred tokens), so not all of the gain is the centring's (seed 0 gives 4
    factors, seeds 1 and 2 give 2: shape, and part or position; docs/sae.md)."""
    t = centred_table
    core = dict(zip(t[t.basis.isna()].metric, t[t.basis.isna()].value))
    assert core["l0"] <= 32 and core["fvu"] < 0.2, core
    f = t[t.metric == "factor_best_auroc"].pivot_table(index=["factor", "concept"], columns="basis", values="value")
    wins = f[(f["sae"] >= 0.9) & (f["sae"] - f["neurons"] >= 0.05)]
    assert len(set(wins.index.get_level_values("factor"))) >= 3, f
    strict = wins[wins["sae"] - wins["centred_neurons"] >= 0.05]
    assert len(set(strict.index.get_level_values("factor"))) >= 2, f
