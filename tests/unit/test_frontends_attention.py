"""The attention analyses through their front ends: the command line, a study cell (where the analysis has one),
the app's view and the Python API (``evaluate``) give the same numbers on the same inputs."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.frontends import assert_same_values, run_cli, study_cell, values
from vitscope.analysis.attention import distance, maps, posembed, relevance, saliency, stats, token_pages, video
from vitscope.runtime import load_model

DATA = "synthetic:n=6,size=64,classes=4"
MAP_KEYS = ("image", "head", "row", "col", "metric")


def _study(analysis: str, options: str) -> str:
    return (f'study: t\nmodels: [demo-vit]\ndatasets:\n  - {{name: d, data: "{DATA}"}}\n'
            f"analyses:\n  - {{name: {analysis}, options: {options}}}\n")


@pytest.fixture(scope="module")
def demo():
    return load_model("demo-vit")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        a = np.clip(rng.normal(120, 50, (70, 90, 3)), 0, 255).astype(np.uint8)
        a[20:50, 30:60] = [230, 200, 20]
        paths.append(str(d / f"photo{k}.png"))
        Image.fromarray(a).save(paths[-1])
    return paths


def _parquet(folder, name):
    return pd.read_parquet(folder / f"{name}.parquet")


# ----------------------------------------------------------------------------- with a study adapter
@pytest.mark.slow
def test_attention_distance_python_cli_and_study_agree(demo, tmp_path):
    rows, _ = study_cell(_study("attention_distance", "{variants: [A, B]}"), "attention_distance", tmp_path / "s")
    api = distance.evaluate({"demo-vit": demo}, DATA, variants="A,B")
    run_cli("attention-distance", "-m", "demo-vit", "-d", DATA, "-o", tmp_path / "cli", "-q")
    keys = ("block", "head", "metric")
    assert_same_values(values(api.table, keys), values(rows, keys))
    assert_same_values(values(api.table, keys), values(_parquet(tmp_path / "cli", "attention_distance"), keys))
    assert len(api.table) == 2 * 6 * (8 + 1) and set(api.table["n_images"]) == {6}
    # the per-block row is the mean over the heads; the per-model CSV of the command holds the per-head rows
    t = api.table[api.table["metric"] == "attention_distance_A"]
    per_block = t[t["head"].isna()].set_index("block")["value"]
    np.testing.assert_allclose(per_block, t[t["head"].notna()].groupby("block")["value"].mean(), rtol=1e-12)
    legacy = pd.read_csv(tmp_path / "cli" / "demo-vit_distance.csv")
    assert len(legacy) == 2 * 6 * 8 and list(legacy.columns)[:5] == ["model", "variant", "block", "head",
                                                                      "mean_distance"]


@pytest.mark.slow
def test_saliency_python_cli_and_study_agree(demo, tmp_path):
    rows, ctx = study_cell(_study("saliency", "{queries: [cls, mean], mask_rule: majority}"), "saliency",
                           tmp_path / "s")
    api = saliency.evaluate(demo, DATA, queries=("cls", "mean"), mask_rule="majority")
    run_cli("saliency", "-m", "demo-vit", "-d", DATA, "--queries", "cls,mean", "--mask-rule", "majority",
            "-o", tmp_path / "cli", "-q")
    keys = ("block", "head", "metric")
    assert_same_values(values(api.table, keys), values(rows, keys))
    assert_same_values(values(api.table, keys), values(_parquet(tmp_path / "cli", "saliency"), keys))
    # the command's summary CSV (iou_mean per query, merged or not, block and head) holds the same numbers
    summ = pd.read_csv(tmp_path / "cli" / "saliency_iou.csv")
    for _, r in summ.iterrows():
        head = None if r["merged"] else int(r["head"])
        got = api.table[(api.table["metric"] == f"saliency_iou_{r['query']}") & (api.table["block"] == r["block"])
                        & (api.table["head"].map(lambda h: h == head if head is not None else h is None))]
        np.testing.assert_allclose(got["value"], r["iou_mean"], rtol=1e-12)
    assert (ctx.out / "iou_cls.mean.npy").exists() and (ctx.out / "iou_mean.png").exists()


@pytest.mark.slow
def test_attention_stats_python_cli_and_study_agree(demo, tmp_path):
    rows, _ = study_cell(_study("attention_stats", "{}"), "attention_stats", tmp_path / "s")
    api = stats.evaluate(demo, DATA)
    run_cli("attention-stats", "-m", "demo-vit", "-d", DATA, "-o", tmp_path / "cli", "-q")
    keys = ("block", "head", "metric")
    assert_same_values(values(api.table, keys), values(rows, keys))
    assert_same_values(values(api.table, keys), values(_parquet(tmp_path / "cli", "attention_stats"), keys))
    assert set(api.table["metric"]) == {"head_std", *stats.HEAD_METRICS}


# ----------------------------------------------------------------------------- command line, app and Python
@pytest.mark.slow
def test_attention_maps_python_cli_and_app_agree(demo, photos, tmp_path):
    from vitscope.app.views import attention_view

    api = maps.evaluate(demo, photos, block=3, query="2,5", heads="0,-1", threshold=0.5)
    run_cli("attention", *photos, "-m", "demo-vit", "--block", "3", "--query", "2,5", "--heads", "0,-1",
            "--threshold", "0.5", "-o", tmp_path, "-q")
    assert_same_values(values(api.table, MAP_KEYS), values(_parquet(tmp_path, "attention"), MAP_KEYS))
    np.testing.assert_array_equal(np.load(tmp_path / "0001_photo1_block3_r2c5.maps.npy"), api.arrays["maps"][1])
    view = attention_view(demo, Image.open(photos[1]), block=3, head="mean", query=(2, 5))
    np.testing.assert_allclose(view.arrays["maps"][[0, -1]], api.arrays["maps"][1], atol=1e-6)
    assert set(api.table["metric"]) == {"attention", "attention_mean", "mass_mask"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rollout", "chefer2021-generic"])
def test_rollout_python_cli_and_app_agree(demo, photos, tmp_path, method):
    from vitscope.app.views import rollout_view

    api = relevance.evaluate(demo, photos, method=method, discard_ratio=0.2, head_fusion="max")
    run_cli("rollout", *photos, "-m", "demo-vit", "--method", method, "--discard-ratio", "0.2", "--head-fusion",
            "max", "-o", tmp_path, "-q")
    keys = ("image", "row", "col", "metric")
    assert_same_values(values(api.table, keys), values(_parquet(tmp_path, "rollout"), keys))
    view = rollout_view(demo, Image.open(photos[0]), method=method, discard_ratio=0.2, head_fusion="max")
    np.testing.assert_allclose(view.arrays["map"], api.arrays["maps"][0], atol=1e-5)
    if method != "rollout":
        assert view.meta["target"] == int(api.arrays["targets"][0]) == int(api.table["target"].iloc[0])


@pytest.mark.slow
def test_token_pages_python_cli_and_app_agree(photos, tmp_path):
    from vitscope.app.views import tokens_view

    reg4 = load_model("demo-vit-reg4")
    api = token_pages.evaluate(reg4, photos[:1])
    run_cli("tokens-pdf", photos[0], "-m", "demo-vit-reg4", "-o", tmp_path, "-q")
    keys = ("image", "token", "head", "row", "col", "metric")
    assert_same_values(values(api.table, keys), values(_parquet(tmp_path, "token_pages"), keys))
    assert [p.name for p in tmp_path.glob("*.pdf")] == ["0000_photo0_block7.pdf"]
    view = tokens_view(reg4, Image.open(photos[0]), block=-1)
    for t in ("cls", "reg3"):
        np.testing.assert_allclose(view.arrays[f"maps_{t}"], api.arrays["maps"][t][0], atol=1e-6)


@pytest.mark.slow
def test_pos_embed_python_and_cli_agree(demo, tmp_path):
    api = posembed.evaluate(demo, grid="4,6", filters=5)
    run_cli("pos-embed", "-m", "demo-vit", "--grid", "4,6", "--filters", "5", "-o", tmp_path)
    keys = ("row", "col", "row2", "col2", "metric")
    assert_same_values(values(api.table, keys), values(_parquet(tmp_path, "position_embedding"), keys))
    np.testing.assert_array_equal(np.load(tmp_path / "patch_filters.filters.npy"), api.arrays["filters"])
    # the table is the cosine similarity of the resampled position embeddings, pair by pair
    pe = posembed.patch_position_embeddings(demo, (4, 6)).double()
    pe = pe / pe.norm(dim=-1, keepdim=True)
    r = api.table.iloc[37]
    i, j = int(r["row"]) * 6 + int(r["col"]), int(r["row2"]) * 6 + int(r["col2"])
    assert r["value"] == pytest.approx(float(pe[i] @ pe[j]), abs=1e-12)


@pytest.mark.slow
def test_video_python_and_cli_agree(demo, tmp_path):
    rng = np.random.default_rng(1)
    src = video.write_video([rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(4)],
                            tmp_path / "clip.gif", fps=4)
    api = video.evaluate(demo, src, query="mean", fusion="max", step=2)
    run_cli("video", src, "-m", "demo-vit", "--query", "mean", "--fusion", "max", "--step", "2",
            "-o", tmp_path / "out" / "heat.gif", "-q")
    keys = ("frame", "row", "col", "metric")
    assert_same_values(values(api.table, keys), values(_parquet(tmp_path / "out", "video"), keys))
    assert api.meta["n_frames"] == 2 and api.arrays["maps"].shape == (2, 8, 13)          # 64 x 104 px frames
    assert (tmp_path / "out" / "heat.gif").exists()


# ----------------------------------------------------------------------------- random twins
@pytest.mark.slow
def test_random_twins_are_seeded_the_same_way_everywhere(photos, tmp_path):
    """`--random --seed S` in a command is runtime.load_model(..., random=True, seed=S): same seed, same maps."""
    for s in (0, 3):
        run_cli("attention", photos[0], "-m", "demo-vit", "--random", "--seed", s, "-o", tmp_path / str(s), "-q")
    twin = load_model("demo-vit", random=True, seed=3)
    api = maps.evaluate(twin, photos[:1])
    np.testing.assert_array_equal(np.load(tmp_path / "3" / "0000_photo0_block5_cls.maps.npy"), api.arrays["maps"][0])
    assert not np.allclose(np.load(tmp_path / "0" / "0000_photo0_block5_cls.maps.npy"), api.arrays["maps"][0])
    assert set(api.table["model"]) == {"demo-vit (random)"}


def test_old_alpha_spelling_is_the_opacity(photos, tmp_path):
    import json

    run_cli("rollout", photos[0], "-m", "demo-vit", "--alpha", "0.3", "-o", tmp_path, "-q")
    options = json.loads(_parquet(tmp_path, "rollout")["options"].iloc[0])
    assert "opacity" not in options and options["method"] == "rollout"       # drawing options stay out of it
    assert relevance.RolloutOptions(opacity=0.3).as_json() == relevance.RolloutOptions().as_json()


def test_report_patterns_give_what_images_give(demo):
    """The report hands evaluate its patterns; the images themselves give the same numbers."""
    from vitscope.analysis.attention.common import AttentionPatterns, collect_patterns

    x = demo.preprocess([Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (80, 64), (10, 90, 200))])
    given = AttentionPatterns(collect_patterns(demo, x), images=x)
    for mod, kw in ((stats, {}), (maps, {"block": 2, "query": "mean"}), (relevance, {"method": "grad-rollout"}),
                    (distance, {"variants": "A,B"})):
        a, b = mod.evaluate(demo, given, **kw).table, mod.evaluate(demo, x, **kw).table
        keys = [k for k in ("image", "block", "head", "row", "col", "metric") if k in a]
        assert_same_values(values(a, keys), values(b, keys), rtol=1e-5)
