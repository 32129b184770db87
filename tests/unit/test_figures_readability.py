"""Figures stay readable where the defaults of matplotlib fail: bar colours that do not repeat past ten series,
legends outside the bars, titles that do not collide, object contours on DAVIS overlays, chance lines and honest
ranges on per-block accuracy figures."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from vitscope.viz.experiments import plot_probe_gains  # noqa: E402
from vitscope.viz.probes import plot_gains  # noqa: E402
from vitscope.viz.style import distinct_colours  # noqa: E402

rng = np.random.default_rng(0)


def bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]


def extents(fig, *artists):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [a.get_window_extent(r) for a in artists]


def overlap(a, b):
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5


@pytest.mark.parametrize("n", [1, 10, 12, 20, 25])
def test_distinct_colours_never_repeat(n):
    cols = distinct_colours(n)
    assert len(cols) == n and len({tuple(np.round(c, 4)) for c in cols}) == n
    if n <= 10:                                     # the first ten are matplotlib's default cycle
        assert [c[:3] for c in cols] == [to_rgba(f"C{k}")[:3] for k in range(n)]


GAINS = {
    "probes": lambda n: plot_gains([{"model": m, "run": f"run-{r:02d}", "gain": float(rng.normal()) * 0.02}
                                    for m in ("demo-vit", "demo-vit-reg4") for r in range(n)]),
    "experiments": lambda n: plot_probe_gains([{"model": m, "task": f"experiment {t:02d}", "dataset": "a",
                                                "value": float(rng.normal())}
                                               for m in ("demo-vit", "demo-vit-reg4") for t in range(n)]),
}


@pytest.mark.parametrize("figure", sorted(GAINS))
def test_gains_twelve_bars_twelve_colours_and_legend_outside(figure):
    fig = GAINS[figure](12)
    ax = fig.axes[0]
    colours = {tuple(np.round(p.get_facecolor(), 4)) for p in bars(ax)}
    assert len(bars(ax)) == 24 and len(colours) == 12
    leg = ax.get_legend()
    assert len(leg.get_texts()) == 12
    box, lbox = extents(fig, ax, leg)
    assert not overlap(box, lbox), "the legend lies on the axes"
    W, H = fig.canvas.get_width_height()
    assert lbox.x0 >= 0 and lbox.x1 <= W + 0.5, "the legend is cut by the figure's edge"
    plt.close(fig)


def all_titles(fig):
    """Every title drawn: the figure's, each subfigure's and each axes' (centre, left and right)."""
    out = [t for t in [fig._suptitle, *(sf._suptitle for sf in fig.subfigs)] if t is not None]
    for ax in fig.get_axes():
        out += [t for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
    return out


def test_keypoint_titles_with_real_spair_names_do_not_collide():
    from vitscope.viz.downstream_dense import plot_keypoint_matches

    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    kp = rng.random((6, 2)) * 40
    matches = [{"src_image": img, "trg_image": img, "src_kps": kp, "trg_kps": kp + 1, "pred": kp + 9,
                "threshold": 40.0, "pair": f"{k:06d}-2008_000585-2010_004704:pottedplant"} for k in range(3)]
    fig = plot_keypoint_matches(matches, title="demo-vit-reg4 (random), block 11")
    fig.set_dpi(100)
    titles = all_titles(fig)
    assert len(titles) == 1 + 3 + 6
    assert all(any(m["pair"] in t.get_text() for t in titles) for m in matches)      # every pair is named
    boxes = extents(fig, *titles)
    W, H = fig.canvas.get_width_height()
    for t, bb in zip(titles, boxes):
        assert bb.x0 >= -0.5 and bb.x1 <= W + 0.5 and bb.y0 >= -0.5 and bb.y1 <= H + 0.5, t.get_text()
    clash = [(a.get_text(), b.get_text()) for i, (a, ba) in enumerate(zip(titles, boxes))
             for b, bb in list(zip(titles, boxes))[i + 1:] if overlap(ba, bb)]
    assert not clash
    for ax in fig.get_axes():                                   # and no title lies on a picture
        pic = extents(fig, ax)[0]
        assert not [t.get_text() for t, bb in zip(titles, boxes) if overlap(bb, pic)]
    plt.close(fig)


def test_propagation_overlays_draw_each_objects_boundary():
    from matplotlib.contour import ContourSet

    from vitscope.data.tasks.davis import davis_palette
    from vitscope.viz.downstream_dense import plot_propagation

    T, H, W = 3, 24, 40                                          # non-square, as DAVIS frames are
    frames = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    ids = np.zeros((T, H, W), np.uint8)
    ids[:, 4:10, 6:16] = 1                                       # object 1: rows 4-9, columns 6-15
    ids[:, 12:20, 25:33] = 2                                     # object 2: rows 12-19, columns 25-32
    ids[2, 12:20, 25:33] = 0                                     # object 2 is gone in the last frame
    fig = plot_propagation(frames, ids, ids, n_show=3)
    axes = [ax for ax in fig.get_axes() if ax.images]
    assert len(axes) == 6
    pal = np.asarray(davis_palette(), dtype=float).reshape(256, 3) / 255
    for ax, t in zip(axes, [0, 1, 2, 0, 1, 2]):
        sets = [c for c in ax.collections if isinstance(c, ContourSet)]
        assert len(sets) == (2 if t < 2 else 1)
        # the 0.5 level of a box mask runs half a pixel outside its first and last rows and columns
        v = np.concatenate([p.vertices for p in sets[0].get_paths()])
        assert v[:, 0].min() == pytest.approx(5.5) and v[:, 0].max() == pytest.approx(15.5)
        assert v[:, 1].min() == pytest.approx(3.5) and v[:, 1].max() == pytest.approx(9.5)
        np.testing.assert_allclose(sets[0].get_edgecolor()[0][:3], pal[1])
        assert ax.get_xlim() == (-0.5, W - 0.5) and ax.get_ylim() == (H - 0.5, -0.5)   # the picture's extent
    fig = plot_propagation(frames, ids, contours=False)
    assert not [c for ax in fig.get_axes() for c in ax.collections if isinstance(c, ContourSet)]
    plt.close("all")


def per_block_rows(values, models=("demo-vit", "demo-vit (random)")):
    return [{"model": m, "block": b, "metric": "top1_k20", "value": float(v) - 40 * j}
            for j, m in enumerate(models) for b, v in enumerate(values)]


def chance_lines(ax):
    return [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")]


def test_per_block_chance_line_and_percent_range():
    from vitscope.viz.per_block import plot_metric_per_block

    rows = per_block_rows([92.3, 93.2, 92.8])
    fig = plot_metric_per_block(rows, metric="top1_k20", ylabel="top-1 accuracy (%)", chance=10.0)
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 100.0)                      # a percentage spans 0-100, not 92.3-93.2
    (line,) = chance_lines(ax)
    assert line.get_linestyle() == "--" and set(line.get_ydata()) == {10.0}
    assert "chance (10)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


def test_per_block_ranges_on_request_and_without_percent():
    from vitscope.viz.per_block import plot_metric_per_block

    rows = per_block_rows([92.3, 93.2, 92.8])
    fig = plot_metric_per_block(rows, ylabel="top-1 accuracy (%)", ylim="auto")
    lo, hi = fig.axes[0].get_ylim()
    assert 40 < lo < 52.3 and 93.2 < hi < 100 and not chance_lines(fig.axes[0])
    assert plot_metric_per_block(rows, ylabel="top-1 (%)", ylim=(50, 95)).axes[0].get_ylim() == (50, 95)
    # a score that is not a percentage keeps matplotlib's range around its values
    fig = plot_metric_per_block(per_block_rows([0.3, 0.5, 0.4], models=("a",)), ylabel="NMI")
    lo, hi = fig.axes[0].get_ylim()
    assert 0.25 < lo < 0.3 and 0.5 < hi < 0.55
    # values beyond 0-100 (a gain in points can be negative) widen the range instead of being cut
    lo, hi = plot_metric_per_block(per_block_rows([-5.0, 3.0], models=("a",)), ylabel="gain (%)").axes[0].get_ylim()
    assert lo == -5.0 and hi == 100.0
    for bad in ("tight", (5, 5), (1, 2, 3)):
        with pytest.raises(ValueError, match="ylim"):
            plot_metric_per_block(rows, ylabel="top-1 (%)", ylim=bad)
    plt.close("all")


def test_identifiability_figure_draws_its_chance_level():
    from vitscope.viz.experiments import plot_identifiability

    fig = plot_identifiability([{"model": "m", "block": b, "value": v} for b, v in enumerate([0.6, 0.8])])
    (line,) = chance_lines(fig.axes[0])
    assert set(line.get_ydata()) == {0.5}
    assert not chance_lines(plot_identifiability([{"model": "m", "block": 0, "value": 0.7}], chance=None).axes[0])
    plt.close("all")


# ---------------------------------------------------------------------------------------------------------------
# The analyses' own figures: the title's second line names the data and the number of images (and the token mode),
# and accuracy figures draw the chance level of the data's classes.
DATA = "synthetic:n=16,size=32,classes=8,split=test"          # 8 classes: top-1 chance 12.5 %, top-5 62.5 %
TRAIN = "synthetic:n=24,size=32,classes=8,split=train"


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)                     # tiny models: threads only contend on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(one_thread):
    """A random 2-block ViT (32 px, patch 8, width 32) with an 8-class head."""
    import torch

    from vitscope import HookedViT, ViTConfig

    torch.manual_seed(0)
    model = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=8))
    return model.eval()


def title_text(fig) -> str:
    return "\n".join(t.get_text() for t in all_titles(fig))


def assert_context(fig, data: str, n: int, tokens: str | None = None):
    text = title_text(fig)
    assert data in text and f"{n} images" in text, text
    if tokens:
        assert f"{tokens} tokens" in text, text
    assert_titles_inside(fig)


def assert_titles_inside(fig):
    """No title runs off the figure (the context line makes titles longer)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig.canvas, "get_renderer"):                # a pyplot-free Figure: give it a renderer
        FigureCanvasAgg(fig)
    fig.set_dpi(100)
    titles = all_titles(fig)
    W, H = fig.canvas.get_width_height()
    for t, bb in zip(titles, extents(fig, *titles)):
        assert bb.x0 >= -0.5 and bb.x1 <= W + 0.5 and bb.y1 <= H + 0.5, f"cut by the figure's edge: {t.get_text()!r}"


def test_knn_figures_name_the_data_and_draw_the_chance_level(tiny):
    from vitscope.analysis.knn import KNNOptions, evaluate

    result = evaluate({"tiny": tiny}, DATA, KNNOptions(k=(5,), test_fraction=0.5))
    figs = result.figures()
    for name, chance in (("knn_top1_k5", 100 / 8), ("knn_top5_k5", 500 / 8)):
        fig = figs[name]
        assert_context(fig, DATA, 16, "cls")
        (line,) = chance_lines(fig.axes[0])
        np.testing.assert_allclose(line.get_ydata(), chance)
    plt.close("all")


def test_knn_chance_counts_the_classes_the_labels_do_not_reach(tiny):
    """Chance is 1 / C of the classes the data has, also where the first images hold only some of them."""
    from vitscope.analysis.knn import KNNOptions, evaluate

    result = evaluate({"tiny": tiny}, (TRAIN, DATA), KNNOptions(k=(3,), limit=4))     # labels 0-3 of 8 classes
    assert result.meta["num_classes"] == {"tiny": 8}
    (line,) = chance_lines(result.figures()["knn_top1_k3"].axes[0])
    np.testing.assert_allclose(line.get_ydata(), 100 / 8)
    result = evaluate({"tiny": tiny}, (TRAIN, DATA), KNNOptions(k=(3,), num_classes=10, limit=8))
    fig = result.figures()["knn_top1_k3"]
    (line,) = chance_lines(fig.axes[0])
    np.testing.assert_allclose(line.get_ydata(), 10.0)
    assert_context(fig, "split=train /", 16) and assert_context(fig, "split=test", 16)
    W, _ = fig.canvas.get_width_height()
    (box,) = extents(fig, fig.axes[0].title)            # two long specs are broken over lines, not cut by the edge
    assert box.x0 >= 0 and box.x1 <= W + 0.5
    plt.close("all")


def test_context_lines_break_where_they_would_not_fit():
    from vitscope.viz.titles import context_line

    assert context_line("builtin:demo", 64, "cls") == "builtin:demo · 64 images · cls tokens"
    long = f"{TRAIN} / {DATA}"
    lines = context_line(long, 40, "cls").split("\n")
    assert all(len(line) <= 60 for line in lines) and len(lines) > 1
    assert "".join(lines).replace(" · ", "").replace(" ", "") == (long + "40 images" + "cls tokens").replace(" ", "")


def test_probe_per_layer_figure_names_the_data_and_draws_the_chance_level(tiny, tmp_path):
    from vitscope.analysis.probes.experiment import ProbeOptions, evaluate
    from vitscope.features.extract import extract_features

    for split, n in (("train", 24), ("test", 12)):                     # 4 classes: tuning holds out 5 of 24
        extract_features(tiny, f"synthetic:n={n},size=32,classes=4,split={split}", tmp_path / split,
                         sites=("ln2", "ln_final"), tokens=("cls", "mean"), batch_size=16, progress=False,
                         fsync=False)
    result = evaluate(tmp_path / "train", tmp_path / "test",
                      ProbeOptions(experiments=(), probes=("linear",), per_layer=True, epochs=1, min_steps=2,
                                   lrs=(0.01,), wds=(1e-4,), batch_size=16))
    fig = result.figures()["accuracy_per_layer"]
    assert_context(fig, "synthetic train (24 images, 4 classes", 36)
    (line,) = chance_lines(fig.axes[0])
    np.testing.assert_allclose(line.get_ydata(), 1 / 4)                   # balanced top-1 as a fraction
    assert fig.axes[0].get_ylim() == (0.0, 1.0)
    plt.close("all")


def test_probe_tokens_figure_names_the_data_and_marks_chance_on_its_colour_bar(tiny):
    from vitscope.analysis.probes.ridge import evaluate

    result = evaluate({"tiny": tiny}, DATA, sites="resid_post", train_data=TRAIN)
    fig = result.figures()["probe_tokens_tiny_resid_post"]
    assert_context(fig, DATA, 16)
    bar = fig.axes[-1]                                                    # the colour bar's axes
    (line,) = chance_lines(bar)
    np.testing.assert_allclose(line.get_ydata(), 1 / 8)
    plt.close("all")


def test_retrieval_figures_name_the_set_and_its_images(tiny):
    from vitscope.analysis.retrieval import RetrievalOptions, evaluate

    result = evaluate({"tiny": tiny}, "synthetic:size=32,landmarks=2", RetrievalOptions(protocols=("medium",)))
    fig = result.figures()["retrieval_mAP_medium"]
    assert_context(fig, "rsynth", 34, "cls")
    assert "6 cropped queries" in title_text(fig)
    assert not chance_lines(fig.axes[0])                                  # mAP has no simple chance level
    plt.close("all")


CLASS_SPACE = {       # module, options, {figure: chance level drawn on each panel (None: none)}
    "logit_lens": ("vitscope.analysis.class_embedding.projection", {"random_baseline": False, "mask_rule": None},
                   {"tiny/identifiability_evolution": (8 + 1) / (2 * 8), "tiny/change_rates": None}),
    "memories": ("vitscope.analysis.class_embedding.memories", {"permutations": 10}, {"tiny/memories": None}),
    "perturbation": ("vitscope.analysis.class_embedding.perturbation", {"token_drop": False},
                     {"tiny/perturbation": 100 / 8}),                  # % of tokens whose true class ranks first
    "attribution": ("vitscope.analysis.class_embedding.attribution", {}, {"tiny/head_attribution": None}),
    "removal": ("vitscope.analysis.class_embedding.removal", {"orders": ("random",), "n_random": 1, "step": 8},
                {"removal_tiny": 1 / 8}),                              # accuracy as a fraction
}


@pytest.mark.parametrize("analysis", sorted(CLASS_SPACE))
def test_class_embedding_figures_name_the_data_and_the_images(tiny, analysis):
    import importlib

    module, options, expected = CLASS_SPACE[analysis]
    result = importlib.import_module(module).evaluate({"tiny": tiny}, DATA, limit=12, **options)
    figs = result.figures()
    for name, chance in expected.items():
        assert_context(figs[name], DATA, 12)
        if chance is not None:
            for ax in figs[name].axes:
                (line,) = chance_lines(ax)
                np.testing.assert_allclose(line.get_ydata(), chance)
    plt.close("all")



def test_davis_and_keypoint_figures_name_the_set_and_its_images(tiny):
    from vitscope.analysis import correspondence, video_segmentation

    result = video_segmentation.evaluate({"tiny": tiny}, "synthetic:size=32,videos=1,frames=3",
                                         video_segmentation.DavisOptions(resolution="squash", radius=3, n_last=1))
    fig = result.figures()["davis_J_F-Mean"]
    assert_context(fig, "DAVIS", 3)                                       # one video of three frames
    assert not chance_lines(fig.axes[0]) and fig.axes[0].get_ylim() == (0.0, 1.0)     # J&F on its whole range
    result = correspondence.evaluate({"tiny": tiny}, "synthetic:size=32,pairs=4",
                                     correspondence.KeypointsOptions(pairs_per_category=0))
    pairs = correspondence.spair_sample("synthetic:size=32,pairs=4", result.options)[0]
    n = len({p for pair in pairs for p in (pair.src_path, pair.trg_path)})
    assert n == 8                                                         # two views per pair
    assert_context(result.figures()["keypoints_pck_0.1"], "SPair", n)
    plt.close("all")


def test_sae_figures_name_the_data_the_images_and_the_tokens(tiny):
    from vitscope.analysis.sae import SAEOptions, evaluate
    from vitscope.analysis.sae.models import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=32, width=64, arch="relu", block=(1,), tokens="patches"))
    result = evaluate({"relu": sae}, DATA, SAEOptions(limit=6, splice=False), model=tiny)
    figs = result.figures()
    assert {"sae_density", "sae_sparsity_fidelity", "sae_factors"} <= set(figs)
    for fig in figs.values():
        assert_context(fig, DATA, 6, "patch")
    plt.close("all")


def test_patching_and_ablation_figures_name_the_data(tiny):
    from vitscope.analysis.patching import PatchOptions, ablation, evaluate

    result = evaluate({"tiny": tiny}, DATA, PatchOptions(corrupt="blur:1", limit=2, method="both"))
    figs = result.figures()
    assert {"patching_resid_pre", "patching_resid_pre_agreement"} <= set(figs)
    for fig in figs.values():
        text = title_text(fig)
        assert "2 pairs" in text and "synthetic test (16 images, 8 classes" in text, text
        assert_titles_inside(fig)
    result = ablation.evaluate({"tiny": tiny}, DATA, ablation.AblateOptions(limit=12, prune=True, prune_step=2,
                                                                            prune_images=6))
    figs = result.figures()
    assert_context(figs["ablation_accuracy_drop"], DATA, 12)
    assert_context(figs["ablation_pruning"], DATA, 6)
    (line,) = chance_lines(figs["ablation_pruning"].axes[0])              # accuracy in %
    np.testing.assert_allclose(line.get_ydata(), 100 / 8)
    plt.close("all")


def test_attribution_benchmark_figures_name_the_data_and_the_images(tiny):
    from vitscope.analysis.attribution_maps import ExplainOptions, evaluate

    result = evaluate({"tiny": tiny}, DATA, ExplainOptions(methods=("saliency", "random"), metrics=("deletion",),
                                                           limit=4, sanity=True, sanity_methods=("saliency",),
                                                           sanity_images=2, target="predicted"))
    figs = result.figures()
    assert_context(figs["attribution_ranking"], DATA, 4)
    assert_context(figs["attribution_curves"], DATA, 4)
    assert_context(figs["attribution_sanity"], DATA, 2)
    assert DATA in title_text(figs["attribution_examples"])
    plt.close("all")


def test_probe_gain_figure_names_its_dataset_or_counts_them():
    import pandas as pd

    from vitscope.analysis.probes.stats import evaluate

    def table(datasets):
        return pd.DataFrame([{"model": m, "dataset": d, "experiment": e, "probe": p, "layer_set": e, "split": "test",
                              "metric": "balanced_top1", "value": float(rng.random())}
                             for m in ("a", "b") for d in datasets
                             for p, e in (("linear", "last_cls"), ("attentive", "all"))])

    fig = evaluate(table([DATA])).figures()["gains"]
    assert DATA in title_text(fig)
    assert_titles_inside(fig)
    fig = evaluate(table(["x", "y", "z"])).figures()["gains"]
    assert "mean over 3 datasets" in title_text(fig)
    plt.close("all")


def test_study_figures_name_the_dataset_and_give_percentages_their_range(monkeypatch, tmp_path):
    """``vitscope results`` draws from the table alone: the dataset goes on the context line, and a metric the
    analyses write in percent (k-NN top-1) spans 0-100."""
    import pandas as pd

    import vitscope.viz.save as save
    from vitscope.experiments.figures import metric_label, write_figures

    drawn = {}
    real = save.save_figure
    monkeypatch.setattr(save, "save_figure", lambda fig, stem, *a, **k: (drawn.__setitem__(stem.name, fig),
                                                                         real(fig, stem, *a, **k))[1])
    rows = [{"status": "ok", "analysis": "knn", "dataset": "shapes", "task": None, "model": m, "block": b,
             "head": None, "model2": None, "block2": None, "metric": "top1_k20", "value": v}
            for m in ("a", "b") for b, v in enumerate((92.3, 93.2))]
    write_figures(pd.DataFrame(rows), tmp_path)
    ax = drawn["knn__top1_k20__shapes"].axes[0]
    assert ax.get_title().split("\n")[1] == "shapes" and ax.get_ylim() == (0.0, 100.0)
    assert metric_label("mAP_medium") == "mAP_medium (%)" and metric_label("nmi") == "nmi"
    plt.close("all")
