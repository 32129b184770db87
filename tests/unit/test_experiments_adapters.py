"""The evaluation adapters of a study (k-NN, retrieval, DAVIS, keypoints, probes, logit lens, removal curves): each
cell's rows equal the library function called directly on the same inputs (the cell's feature stores, or the
dataset's task root)."""
import numpy as np
import pytest
import torch

from vitscope.experiments.analyses import REGISTRY, AnalysisUnavailable, import_or_skip
from vitscope.experiments.cells import expand, store_tokens
from vitscope.experiments.config import ConfigError, parse_study
from vitscope.experiments.context import CellContext

DATA = "synthetic:n=24,size=64,classes=8"
TRAIN = "synthetic:n=48,size=64,classes=8,split=train"
TASKS = 'davis: "synthetic:videos=1,frames=4", spair: "synthetic:pairs=8", revisited: "synthetic:landmarks=3"'
PROBE = ("{experiments: [last, all], per_layer: true, epochs: 2, min_steps: 10, lrs: [0.01], wds: [0.0001], "
         "attn_drops: [0.0], batch_size: 16}")
STUDY = f"""\
study: t
models: [demo-vit]
datasets:
  - {{name: d, data: "{DATA}", train: "{TRAIN}"}}
  - {{name: tasks, {TASKS}}}
analyses:
  - {{name: knn, options: {{k: [3, 10]}}}}
  - {{name: retrieval, options: {{protocols: [medium], preprocess: model}}}}
  - {{name: davis, options: {{resolution: squash, radius: 3, n_last: 2, blocks: "0,-1"}}}}
  - {{name: keypoints, options: {{pairs_per_category: 0, blocks: "2,5"}}}}
  - {{name: probe, options: {PROBE}}}
  - {{name: logit_lens, options: {{random_baseline: true}}}}
  - {{name: removal, options: {{orders: [grads, random], n_random: 2, step: 16}}}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    study = parse_study(STUDY)
    cells = expand(study)
    d = tmp_path_factory.mktemp("study")
    toks = store_tokens(study, cells)

    def ctx(analysis):
        c = next(c for c in cells if c.analysis == analysis)
        return CellContext(c, d, toks, features=study.features)

    return ctx


def by(rows, **match):
    return {(r.get("block"), r.get("task"), r["metric"]): r["value"] for r in rows
            if all(r.get(k) == v for k, v in match.items())}


def test_cells_go_to_the_datasets_that_have_what_they_read():
    cells = expand(parse_study(STUDY))
    where = {c.analysis: c.dataset.name for c in cells}
    assert where == {"knn": "d", "probe": "d", "logit_lens": "d", "removal": "d", "retrieval": "tasks",
                     "davis": "tasks", "keypoints": "tasks"}


def test_knn_equals_knn_accuracy_on_the_cells_stores(setup):
    from vitscope.analysis.knn import knn_accuracy

    ctx = setup("knn")
    rows = REGISTRY["knn"].fn(ctx, ctx.options)
    test, train = ctx.store(0, "cls"), ctx.store(0, "cls", split="train")
    assert sorted({r["block"] for r in rows}) == list(test.layers) == list(range(6))
    got = by(rows)
    for layer in test.layers:
        xtr = torch.from_numpy(np.array(train["resid_post", layer, "cls"], dtype=np.float32))
        xte = torch.from_numpy(np.array(test["resid_post", layer, "cls"], dtype=np.float32))
        for k in (3, 10):
            top1, top5 = knn_accuracy(xtr, torch.from_numpy(np.array(train.labels)), xte,
                                      torch.from_numpy(np.array(test.labels)), k, num_classes=8)
            assert got[(layer, None, f"top1_k{k}")] == pytest.approx(top1)
            assert got[(layer, None, f"top5_k{k}")] == pytest.approx(top5)
    assert len(ctx.stores_extracted) == 2 and (ctx.out / "knn_top1_k3.png").exists()


def test_retrieval_equals_revisited_map_of_the_descriptors(setup):
    from vitscope.analysis.retrieval import image_descriptors, rank_database, revisited_map
    from vitscope.cli.retrieval import revisited_loaders
    from vitscope.data.tasks import load_revisited

    ctx = setup("retrieval")
    rows = REGISTRY["retrieval"].fn(ctx, ctx.options)
    root = ctx.task_root("revisited")
    assert root.parent.parent.parent == ctx.study_dir / "data"              # written once into the study
    gt = load_revisited(root)
    model = ctx.model(0)
    db, q = revisited_loaders(gt, crop=True)
    kw = dict(imsize=64, preprocess="model", tokens="cls")
    fdb = image_descriptors({"m": model}, db, {"m": [0, 5]}, **kw)["m"]
    fq = image_descriptors({"m": model}, q, {"m": [0, 5]}, **kw)["m"]
    got = by(rows)
    assert {m for _, _, m in got} == {"mAP_medium", "mP@1_medium", "mP@5_medium", "mP@10_medium"}
    for b in (0, 5):
        mAP, _ = revisited_map(rank_database(fdb[b], fq[b]), gt.queries, "medium")
        assert got[(b, None, "mAP_medium")] == pytest.approx(100 * mAP, abs=1e-6)


def test_davis_equals_evaluate_davis(setup):
    from vitscope.analysis.video_segmentation import evaluate_davis
    from vitscope.data.tasks import load_davis

    ctx = setup("davis")
    rows = REGISTRY["davis"].fn(ctx, ctx.options)
    res = evaluate_davis(ctx.model(0), list(load_davis(ctx.task_root("davis"))), "0,-1", resolution="squash",
                         n_last=2, radius=3)
    got = by(rows)
    assert sorted({r["block"] for r in rows}) == [0, 5]
    for b in (0, 5):
        for m in ("J&F-Mean", "J-Mean", "F-Mean"):
            assert got[(b, None, m)] == pytest.approx(float(res["global"][b][m]))
    assert (ctx.out / "propagation_synth-000.png").exists()


def test_keypoints_equal_evaluate_spair(setup):
    from vitscope.analysis.correspondence import evaluate_spair
    from vitscope.data.tasks import load_spair

    ctx = setup("keypoints")
    rows = REGISTRY["keypoints"].fn(ctx, ctx.options)
    res = evaluate_spair(ctx.model(0), list(load_spair(ctx.task_root("spair"))), [2, 5])
    assert by(rows) == {(b, None, f"pck@{a:g}"): pytest.approx(v) for b, d in res["pck"].items() for a, v in d.items()}


def test_probe_rows_equal_probe_store_and_the_gain_is_the_difference(setup):
    from vitscope.analysis.probes.experiment import probe_store
    from vitscope.analysis.probes.train import TrainConfig

    ctx = setup("probe")
    rows = REGISTRY["probe"].fn(ctx, ctx.options)
    kw = dict(sites=("ln2", "ln_final"), tokens=("cls", "mean"))
    train, test = ctx.store(0, "cls", "train", **kw), ctx.store(0, "cls", **kw)
    assert set(train.sites) == {"ln2", "ln_final"}
    run = probe_store(train, test, experiments=("last", "all"), per_layer=True, cfg=TrainConfig(epochs=2, min_steps=10,
                      batch_size=16), attn_drops=(0.0,), lrs=(0.01,), wds=(0.0001,))
    got = by(rows)
    base = run.fits[("linear", "last_cls")][0].test_metrics["balanced_top1"]
    for (p, exp), (fit, _) in run.fits.items():
        if exp.startswith("layer_"):
            continue
        bal = fit.test_metrics["balanced_top1"]
        assert got[(None, f"{p}:{exp}", "test_balanced_top1")] == pytest.approx(bal)
        if (p, exp) != ("linear", "last_cls"):
            assert got[(None, f"{p}:{exp}", "gain")] == pytest.approx(100 * (bal - base))
    assert {t for _, t, m in got if m == "gain"} == {"linear:last", "attentive:last", "linear:all", "attentive:all"}
    per_layer = {(b, t): v for (b, t, m), v in got.items() if m == "test_balanced_top1" and b is not None}
    assert sorted(per_layer) == [(b, t) for b in range(7) for t in ("per-layer ap", "per-layer cls")]
    assert per_layer[(3, "per-layer cls")] == pytest.approx(
        run.fits[("linear", "layer_3_cls")][0].test_metrics["balanced_top1"])


def test_logit_lens_identifiability_equals_the_lens(setup):
    from vitscope.analysis import class_embedding as ce

    ctx = setup("logit_lens")
    rows = REGISTRY["logit_lens"].fn(ctx, ctx.options)
    lens = ce.LogitLens(ctx.model(0), sites=("resid",))
    with torch.inference_mode():
        for x, y, idx in ctx.dataset().batches(64):
            lens.update(x, y, indices=idx)
    res = lens.result()
    got = by(rows, metric="identifiability")
    assert len(got) == 12                                                     # 6 blocks x (cls, patches)
    for b in range(6):
        kinds = res.token_kinds(b)
        for kind in ("cls", "patches"):
            want = float(res.mean_score("resid", b)[kinds[kind]].mean())
            assert got[(b, kind, "identifiability")] == pytest.approx(want)
    assert by(rows, metric="identifiability_chance") == {(None, None, "identifiability_chance"): 9 / 16}
    assert len(by(rows, metric="identifiability_p_value")) == 12               # trained vs its random twin


def test_removal_aucs_equal_removal_curves(setup):
    from vitscope.analysis.class_embedding.removal import removal_curves

    ctx = setup("removal")
    rows = REGISTRY["removal"].fn(ctx, ctx.options)
    res = removal_curves(ctx.model(0), ctx.dataset().batches(64), orders=["grads", "random"], n_random=2, step=16)
    assert by(rows) == {(None, f"{o} {d}", m): pytest.approx(v) for (o, d, m), v in res.aucs().items()}
    assert (ctx.out / "removal_curves.csv").exists()


@pytest.mark.parametrize("extra, line, words", [
    ("  - {name: davis}\n", 7, ["davis reads a 'davis' task root", "no dataset of the study has one"]),
    ("  - {name: knn, datasets: [tasks], options: {k: 3}}\n", 7, ["knn reads 'data' (images)", "'tasks'"]),
])
def test_task_analyses_need_a_dataset_with_their_root(tmp_path, extra, line, words):
    text = (f'study: s\nmodels: [demo-vit]\ndatasets:\n  - {{name: d, data: "{DATA}", train: "{DATA}"}}\n'
            f'  - {{name: tasks, spair: synthetic}}\nanalyses:\n{extra}')
    p = tmp_path / "s.yaml"
    p.write_text(text)
    from vitscope.experiments.config import load_study

    with pytest.raises(ConfigError) as e:
        expand(load_study(p))
    assert f"s.yaml:{line}:" in str(e.value) and all(w in str(e.value) for w in words)


@pytest.mark.parametrize("entry, words", [
    ('{name: x, davis: "synthetic:frames=0"}', ["'davis'", "'frames' must be a positive integer"]),
    ('{name: x, spair: "synthetic:videos=2"}', ["unknown synthetic option 'videos'", "pairs"]),
    ("{name: x, revisited: 3}", ["'revisited' must be a folder"]),
    ("{name: x}", ["needs 'data'", "or a task root"]),
])
def test_task_root_errors_name_the_line(entry, words):
    with pytest.raises(ConfigError) as e:
        parse_study(f"study: s\nmodels: [demo-vit]\ndatasets:\n  - {entry}\nanalyses: [attention_distance]\n",
                    "s.yaml")
    assert str(e.value).startswith("s.yaml:4:") and all(w in str(e.value) for w in words), str(e.value)


def test_option_errors_and_scalars_for_lists():
    s = parse_study(f'study: s\nmodels: [demo-vit]\ndatasets: [{{data: "{DATA}", train: "{DATA}"}}]\n'
                    "analyses: [{name: knn, options: {k: 20}}]\n")
    assert s.analyses[0].options["k"] == [20]                                # a single k where a list is taken
    for opts, words in (("{k: [0]}", "'k' takes positive integers"), ("{temperature: 0}", "'temperature' must be"),
                        ("{blocks: 'x'}", "--blocks takes")):
        with pytest.raises(ConfigError, match=words):
            parse_study(f'study: s\nmodels: [demo-vit]\ndatasets: [{{data: "{DATA}"}}]\n'
                        f"analyses:\n  - {{name: knn, options: {opts}}}\n", "s.yaml")


def test_import_or_skip_marks_a_missing_library():
    with pytest.raises(AnalysisUnavailable, match="is not available in this version of vitscope"):
        import_or_skip("vitscope.analysis.not_a_module", "my analysis")
    assert import_or_skip("vitscope.analysis.knn", "k-NN").knn_accuracy


def test_results_figures_read_the_rows_the_adapters_write(setup, tmp_path):
    """knn, logit-lens and probe rows of the cells above, through the runner's table, into the results figures."""
    import datetime as dt

    from vitscope.experiments.figures import write_figures
    from vitscope.experiments.results import make_rows, read_results, write_cell
    from vitscope.viz import experiments as vx

    seen = {}
    real = vx.plot_identifiability

    def spy(table, title=None, chance=0.5, **context):
        seen[title] = chance
        return real(table, title=title, chance=chance, **context)

    vx.plot_identifiability = spy
    try:
        for k, analysis in enumerate(("knn", "logit_lens", "probe")):
            ctx = setup(analysis)
            rows = REGISTRY[analysis].fn(ctx, ctx.options)
            base = {"study": "t", "cell": ctx.cell.id, "model": ctx.label(0), "dataset": ctx.cell.dataset.name,
                    "analysis": analysis, "status": "ok", "options": "{}",
                    "time": dt.datetime(2026, 1, 1, 0, 0, k, tzinfo=dt.timezone.utc)}
            write_cell(tmp_path, ctx.cell.id, make_rows(rows, base))
        paths = {p.relative_to(tmp_path / "f").as_posix() for p in write_figures(read_results(tmp_path), tmp_path / "f")}
    finally:
        vx.plot_identifiability = real
    assert {"per_block/knn__top1_k3__d.png", "per_block/logit_lens__identifiability__d__cls.png",
            "per_block/logit_lens__identifiability__d__patches.png", "probes/probe__gains.png",
            "per_block/probe__test_balanced_top1__d__per-layer_cls.png"} <= paths
    assert not any("p_value" in p for p in paths)
    assert set(seen.values()) == {9 / 16}                                        # (C + 1) / 2C with C = 8


def test_probe_all_layers_of_a_late_cls_model(tmp_path):
    """demo-vit-reg4's CLS enters before block 6 of 8: the cell reads a CLS store (blocks 6, 7) and an AP store
    (every block) together; layer set `all` has AP at every block and CLS from block 6 on."""
    from vitscope.analysis.probes.inputs import layer_set

    torch.set_num_threads(1)
    text = STUDY.replace("models: [demo-vit]", "models: [demo-vit-reg4]")
    study = parse_study(text)
    cells = expand(study)
    c = next(c for c in cells if c.analysis == "probe")
    ctx = CellContext(c, tmp_path, store_tokens(study, cells), features=study.features)
    rows = REGISTRY["probe"].fn(ctx, ctx.options)
    got = by(rows)
    assert {t for _, t, m in got if m == "gain"} == {"linear:last", "attentive:last", "linear:all", "attentive:all"}
    per_layer = {(b, t) for (b, t, m) in got if m == "test_balanced_top1" and b is not None}
    assert per_layer == {(b, "per-layer ap") for b in range(9)} | {(b, "per-layer cls") for b in (6, 7, 8)}
    assert len(layer_set("all", 8, cls_from=6)) == 7 + 2 + 2                  # AP 1..7, CLS 6..7, final CLS + AP
