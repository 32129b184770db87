"""Every figure function in ``vitscope.viz`` drawn on tiny inputs: no two pieces of text overlap, no text lies on
another panel's picture (titles running into the row above, tick labels under a colour bar), and none is cut by
the figure's edge.

The functions are found by listing the package (every ``plot_*`` of every module), so a new figure function
fails here until it has tiny inputs in ``INPUTS`` below. The check uses matplotlib's own renderer: the figure
is drawn once, the text artists that were actually drawn are recorded (``Text.draw``), and their window
extents (``Text.get_window_extent``) are compared pairwise and with the figure's box.
"""
import importlib
import inspect
import itertools
import pkgutil
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import vitscope.viz  # noqa: E402

rng = np.random.default_rng(0)
IMG = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)        # square, as most inputs are
LONG = "demo-vit-reg4: cls -> patches, block 11"          # titles as long as the commands write them
CONTEXT = dict(data="synthetic:n=64,size=32", n_images=64)


def _sim(m, names=None):
    names = names or [str(i) for i in range(m.shape[0])]
    return SimpleNamespace(matrix=m, rows=names, cols=names, meta={"metric": "cka"})


def _residual():
    L = 6
    ratios = {"all": rng.random(L) + 1, "patches": rng.random(L) + 1, "cls": np.r_[np.nan, np.nan, rng.random(L - 2) + 1]}
    return SimpleNamespace(attn=_sim(rng.random((L, L))), mlp=_sim(rng.random((L, L))),
                           norm_ratios={"attn": ratios, "mlp": {k: v * 2 for k, v in ratios.items()}}, meta={})


def _per_block_table():
    rows = [{"model": m, "block": b, "metric": "accuracy", "value": float(rng.random())}
            for m in ("demo-vit", "demo-vit (random)", "demo-vit-reg4") for b in range(6)]
    return rows


def _matches():
    kp = rng.random((5, 2)) * 40
    return [{"src_image": IMG, "trg_image": IMG, "src_kps": kp, "trg_kps": kp + 2, "pred": kp + 3,
             "threshold": 40.0,
             "pair": f"{k:06d}-2008_000585-2008_004704:aeroplane"} for k in range(2)]


def _ce_rows():
    """Tidy rows as the class-embedding analyses write them (two models, 6 blocks, CLS and patch tokens)."""
    rows = []
    for model in ("demo-vit", "demo-vit-reg4"):
        for tok in ("cls", "patches"):
            for b in range(6):
                v = float(0.5 + 0.4 * rng.random())
                rows.append({"model": model, "token": tok, "block": b, "metric": "identifiability", "value": v,
                             "random": 0.5, "significant": bool(b % 2)})
                for m in ("block_change", "attn_change", "mlp_change"):
                    rows.append({"model": model, "token": tok, "block": b, "metric": m, "value": float(rng.random())})
    for b in range(6):
        for m in ("match_attn", "match_mlp", "match_prev", "composition"):
            rows.append({"model": "demo-vit", "token": "patches", "block": b, "metric": m, "value": float(rng.random())})
    return rows


def _context_rows():
    return [{"block": b, "metric": f"class_minus_context_{m}", "value": float(rng.normal()) * 0.1,
             "p_value": float(rng.random())} for m in ("identifiability", "cls_similarity") for b in range(6)]


def _memory_rows():
    return [{"block": b, "metric": m, "kind": k, "value": float(rng.random()), "random": float(rng.random()) * 0.5,
             "tokens": "all"} for m in ("class_value_agreement", "key_value_agreement", "compositionality")
            for k in ("attn", "mlp") for b in range(6)]


def _perturbation_rows():
    return [{"model": m, "metric": "identifiable_rate", "perturbation": p, "value": float(rng.random()),
             "baseline": float(rng.random()) if p in ("no_context", "no_class") else np.nan}
            for m in ("demo-vit", "demo-vit-reg4") for p in ("none", "self_only", "no_cls", "no_context", "no_class")]


def _removal_curves():
    from vitscope.analysis.class_embedding.removal import RemovalCurves

    removed = np.arange(0, 17, 2)
    correct = {(o, d): np.sort(rng.integers(0, 21, removed.size))[::-1 if d == "negative" else 1].astype(float)
               for o in ("grads", "chefer", "probe") for d in ("negative", "positive")}
    return RemovalCurves(n_patches=16, removed=removed, n_images=20, correct=correct,
                         random_correct=rng.integers(0, 21, (3, removed.size)).astype(float), seeds=[0, 1, 2],
                         orders=["grads", "chefer", "probe"])


# module -> function -> callable drawing it on tiny inputs (keyword options the function takes are added below)
INPUTS = {
    "attention": {
        "plot_head_maps": lambda f: f(rng.random((6, 4, 4)), image=IMG, overlay_image=True, title=LONG),
        "plot_block_head_grid": lambda f: f(rng.random((4, 6, 4, 4)), blocks=[8, 9, 10, 11],
                                            title="demo-vit-reg4: cls -> patches (mean over images)"),
        "plot_image_overlays": lambda f: f([IMG, IMG], rng.random((2, 4, 4)), ["cat.jpg (class 3)", "dog.png"],
                                           title="chefer relevance, class of the prediction, block 11"),
        "plot_frames": lambda f: f([IMG, IMG, IMG], ["frame 0", "frame 10", "frame 20"],
                                   title="cls attention, block 11, heads fused by mean"),
    },
    "attention_distance": {
        "plot_attention_distance": lambda f: f(rng.random((12, 6)), "A", title="demo-vit (variant A)",
                                               std=rng.random((12, 6)) * 0.1),
        "plot_attention_distance_models": lambda f: f({"demo-vit": rng.random((12, 6)),
                                                       "demo-vit-reg4": rng.random((8, 6))}, "B",
                                                      title="mean attention distance, variant B"),
    },
    "attention_stats": {
        "plot_block_metric": lambda f: f(rng.random(12), "std over heads", title="std over heads"),
        "plot_head_metric": lambda f: f(rng.random((12, 6)), "position std", title="position std"),
        "plot_block_head_heatmap": lambda f: f(rng.random((12, 7)), title="saliency IoU, cls query (mass 0.6)",
                                               label="IoU", head_labels=[*map(str, range(6)), "sum"]),
        "plot_offsets": lambda f: f(rng.random((12, 6)) - 0.5, rng.random((12, 6)) - 0.5,
                                    "centre of the query-centred maps"),
    },
    "attention_tokens": {
        "plot_token_page": lambda f: f(IMG, rng.random((6, 4, 4)), "reg0", 11),
        "plot_position_similarity": lambda f: f(rng.random((4, 6, 4, 6)) * 2 - 1),
        "plot_patch_filters": lambda f: f(rng.random((14, 8, 8, 3)), title="patch-embedding filters (pca)"),
    },
    "similarity": {
        "plot_cka": lambda f: f(_sim(rng.random((12, 12))), title="CKA demo-vit (cls tokens)", clusters=[0] * 6 + [1] * 6),
        "plot_cka_grid": lambda f: f({("demo-vit", "demo-vit"): rng.random((12, 12)),
                                      ("demo-vit", "demo-vit-reg4"): rng.random((12, 8)),
                                      ("demo-vit-reg4", "demo-vit-reg4"): rng.random((8, 8))},
                                     title="CKA (cls tokens)"),
        "plot_similarity": lambda f: f(_sim(rng.random((12, 12))), title="RSA demo-vit (cls tokens)"),
        "plot_residual": lambda f: f(_residual(), title="residual CKA, demo-vit-reg4"),
        "plot_cluster_curves": lambda f: f({"demo-vit": {m: rng.random(6) for m in ("nmi", "ari", "purity")},
                                            "demo-vit (random)": {m: rng.random(6) for m in ("nmi", "ari", "purity")}},
                                           title="k-means (k = 50), cls tokens"),
    },
    "per_block": {
        "plot_metric_per_block": lambda f: f(_per_block_table(), metric="accuracy", title="k-NN accuracy per block",
                                             ylabel="top-1 accuracy (%)", chance=2.0),
    },
    "probes": {
        "plot_attention_heads": lambda f: f(rng.random((5, 4, 13)), [f"block {i}" for i in range(13)],
                                            title="attentive probe over the CLS tokens of 13 blocks"),
        "plot_gains": lambda f: f([{"model": m, "run": r, "gain": float(rng.normal()) * 0.02}
                                   for m in ("demo-vit", "demo-vit-reg4") for r in ("cls", "all")],
                                  title="gain over the last-layer CLS probe"),
    },
    "downstream_dense": {
        "plot_propagation": lambda f: f(np.stack([IMG] * 5), rng.integers(0, 3, (5, 32, 32)),
                                        rng.integers(0, 3, (5, 32, 32)), title="DAVIS propagation, block 11"),
        "plot_keypoint_matches": lambda f: f(_matches(), title="SPair keypoints, block 11"),
    },
    "class_embedding": {
        "plot_identifiability_evolution": lambda f: f(_ce_rows(), 10, title="demo-vit: class identifiability"),
        "plot_change_rates": lambda f: f(_ce_rows(), title="demo-vit: change rates"),
        "plot_residual_match": lambda f: f(_ce_rows(), title="demo-vit: residual match"),
        "plot_class_context": lambda f: f(_context_rows(), title="demo-vit: class- vs context-labelled tokens"),
        "plot_memories": lambda f: f(_memory_rows(), title="demo-vit: memories"),
        "plot_perturbation": lambda f: f(_perturbation_rows(), title="demo-vit: identifiable tokens (patches)"),
    },
    "experiments": {
        "plot_probe_gains": lambda f: f([{"model": m, "task": t, "dataset": d, "value": float(rng.normal())}
                                         for m in ("demo-vit", "demo-vit-reg4") for t in ("cls+mean", "all blocks")
                                         for d in ("a", "b")], title="probe gains"),
        "plot_identifiability": lambda f: f([{"model": m, "block": b, "value": float(rng.random())}
                                             for m in ("demo-vit", "demo-vit (random)") for b in range(6)],
                                            title="class identifiability"),
    },
    "logit_attribution": {
        "plot_head_attribution": lambda f: f([{"block": b, "head": h, "tokens": t, "value": float(rng.normal())}
                                              for t in ("cls", "patches") for b in range(6) for h in range(8)],
                                             tokens="all", title="demo-vit: direct true-class logit per head"),
    },
    "patching": {
        "plot_position_effects": lambda f: f(rng.random((6, 4, 4)) - 0.3, list(range(6)),
                                             {"cls": rng.random(6), "reg0": np.r_[np.nan, np.nan, rng.random(4)]},
                                             images={"clean": IMG, "corrupted": IMG},
                                             changed=(rng.random((4, 4)) > 0.7).astype(float),
                                             title="demo-vit-reg4: activation patching, resid_pre (denoising, "
                                                   "logit; 1 pair)"),
        "plot_head_effects": lambda f: f(rng.random((6, 9)) - 0.5, list(range(6)), columns=[*map(str, range(8)), "MLP"],
                                         title="demo-vit: mean ablation, true-class logit drop", xlabel="head (and MLP)"),
        "plot_pattern_effects": lambda f: f(rng.random((4, 4, 17)) - 0.5, [0, 1, 2, 3],
                                            title="demo-vit: activation patching, pattern (denoising, logit; 2 pairs)"),
        "plot_agreement": lambda f: f({"resid_pre": (rng.random(40), rng.random(40), 0.42),
                                       "z": (rng.random(24), rng.random(24), -0.1)},
                                      title="demo-vit: attribution vs activation patching"),
        "plot_pruning": lambda f: f([{"model": m, "n_pruned": n, "metric": k, "value": float(rng.random())}
                                     for m in ("demo-vit", "demo-vit-reg4") for n in range(0, 49, 4)
                                     for k in ("accuracy", "logit")], title="iterative head pruning (mean ablation)"),
        "plot_composition": lambda f: f({k: np.where(np.arange(4)[:, None, None, None] < np.arange(4)[None, None, :,
                                                                                                     None],
                                                     rng.random((4, 3, 4, 3)), np.nan) for k in "QKV"},
                                        title="demo-vit: head composition"),
        "plot_block_effects": lambda f: f(rng.random(8) - 0.3, list(range(8)), IMG, (1, 2), (4, 4),
                                          title="resid_pre at patch (1, 2), blur:0.5"),
    },
    "removal": {
        "plot_removal_curves": lambda f: f(_removal_curves(), title="demo-vit: token removal"),
        "plot_token_probe_accuracy": lambda f: f(rng.random((6, 20)), ["cls", "reg0"] + [f"patch{i}" for i in range(18)],
                                                 title="demo-vit: per-token ridge probes, resid_post (test accuracy)"
                                                       "\nsynthetic:n=16,size=32,classes=8,split=test · 16 images",
                                                 blocks=list(range(6)), chance=0.125),
    },
    "attribution_maps": {
        "plot_ranking": lambda f: f(pd.DataFrame(
            [{"method": m, "metric": k, "value": float(rng.random()), "rank": float(r)}
             for r, m in enumerate(("gradcam", "rollout", "saliency", "random"), 1)
             for k in ("deletion_auc", "insertion_auc", "road_combined", "pointing_game")]),
            title="demo-vit, 16 images of builtin:demo"),
        "plot_examples": lambda f: f({"images": rng.random((2, 3, 32, 32)), "masks": rng.random((2, 32, 32)) > 0.5,
                                      "maps": {m: rng.random((2, 32, 32)) for m in ("gradcam", "rollout", "saliency")},
                                      "mean": None, "std": None}, title="demo-vit: maps of 2 images"),
        "plot_method_map": lambda f: f(rng.random((3, 32, 32)), rng.random((32, 32)), mask=rng.random((32, 32)) > 0.5,
                                       title="gradcam, block 4, class 3"),
        "plot_curves": lambda f: f({(m, c): (np.linspace(0, 1, 5), rng.random((5, 3)))
                                    for m in ("gradcam", "saliency") for c in ("deletion", "insertion")},
                                   title="demo-vit, 3 images"),
        "plot_sanity": lambda f: f(pd.DataFrame([{"method": m, "depth": d, "stage": s, "value": float(rng.random())}
                                                 for m in ("saliency", "gradcam")
                                                 for d, s in enumerate(("head", "block 5", "block 4", "all"))]),
                                   title="demo-vit: cascading randomisation, 4 images"),
    },
    "sae": {
        "plot_density": lambda f: f({"topk-512-k16": rng.random(64) * (rng.random(64) > 0.1)}),
        "plot_factors": lambda f: f([{"factor": fa, "basis": b, "best_auroc": 0.5 + 0.5 * float(rng.random())}
                                     for fa in ("shape", "colour", "part") for b in ("sae", "neurons", "random")]),
        "plot_latent_patches": lambda f: f(rng.random((32, 32, 3)), rng.random((4, 4)), title="latent 7"),
        "plot_sparsity_fidelity": lambda f: f(pd.DataFrame(
            [{"sae": n, "metric": m, "value": float(rng.random())} for n in ("a", "b") for m in ("l0", "fvu")])),
    },
}


def figure_functions():
    """(module name, function name, function) for every ``plot_*`` defined in a module of ``vitscope.viz``."""
    out = []
    for info in pkgutil.iter_modules(vitscope.viz.__path__):
        try:
            mod = importlib.import_module(f"vitscope.viz.{info.name}")
        except ImportError as e:                                    # an optional extra that is not installed
            pytest.skip(f"vitscope.viz.{info.name} needs {e.name}")
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if name.startswith("plot_") and fn.__module__ == mod.__name__:
                out.append((info.name, name, fn))
    return out


def draw(fig):
    """Draw ``fig`` and return the text artists drawn, with their extents in display pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):                  # pyplot-free figures: give them a renderer
        FigureCanvasAgg(fig)
    drawn = []
    orig = Text.draw

    def record(self, renderer):
        orig(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    Text.draw = record
    try:
        fig.canvas.draw()
    finally:
        Text.draw = orig
    renderer = fig.canvas.get_renderer()
    return [(t, t.get_window_extent(renderer)) for t in dict.fromkeys(drawn)]


def overlaps(a, b, tol=0.5):
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w > tol and h > tol


def describe(t):
    return f"{t.get_text()!r}"


def panels(fig):
    """The axes that show something: visible, and with their frame on or a picture in them."""
    return [ax for ax in fig.get_axes() if ax.get_visible() and (ax.axison or ax.images)]


def allowed_inside(ax):
    """Texts that belong inside ``ax``: its annotations (values written in cells) and its own legend."""
    inside = set(map(id, ax.texts))
    leg = ax.get_legend()
    if leg is not None:
        inside |= set(map(id, leg.get_texts())) | {id(leg.get_title())}
    return inside


CASES = [(m, n, f) for m, n, f in figure_functions()]


def test_every_figure_function_has_inputs():
    missing = [f"{m}.{n}" for m, n, _ in CASES if n not in INPUTS.get(m, {})]
    assert not missing, f"add tiny inputs for {missing} to INPUTS in {__file__}"


@pytest.mark.parametrize("module,name", [(m, n) for m, n, _ in CASES])
def test_no_text_overlaps_or_is_clipped(module, name):
    fn = dict(((m, n), f) for m, n, f in CASES)[(module, name)]
    if name not in INPUTS.get(module, {}):
        pytest.skip("no inputs (reported by test_every_figure_function_has_inputs)")
    params = inspect.signature(fn).parameters
    extra = {k: v for k, v in CONTEXT.items() if k in params}
    fig = INPUTS[module][name](lambda *a, **kw: fn(*a, **{**extra, **kw}))
    fig.set_dpi(100)
    texts = draw(fig)
    assert texts, "the figure draws no text at all"
    W, H = fig.canvas.get_width_height()
    clipped = [describe(t) for t, bb in texts if bb.x0 < -0.5 or bb.y0 < -0.5 or bb.x1 > W + 0.5 or bb.y1 > H + 0.5]
    assert not clipped, f"{module}.{name}: text cut by the figure edge: {clipped}"
    clash = [f"{describe(a)} / {describe(b)}" for (a, ba), (b, bb) in itertools.combinations(texts, 2)
             if overlaps(ba, bb)]
    assert not clash, f"{module}.{name}: overlapping text: {clash[:8]}"
    renderer = fig.canvas.get_renderer()
    on_panel = []
    for ax in panels(fig):
        box, inside = ax.get_window_extent(renderer), allowed_inside(ax)
        on_panel += [f"{describe(t)} on the panel titled {ax.get_title()!r}" for t, bb in texts
                     if id(t) not in inside and overlaps(bb, box, tol=1.0)]
    assert not on_panel, f"{module}.{name}: text drawn over a panel: {on_panel[:8]}"
    import matplotlib.pyplot as plt

    plt.close(fig)
