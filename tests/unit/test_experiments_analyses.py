"""Analysis adapters: their rows against independent references computed from the model directly."""
import numpy as np
import pytest
import torch

from vitscope.experiments.analyses import REGISTRY
from vitscope.experiments.cells import expand, store_tokens
from vitscope.experiments.config import parse_study
from vitscope.experiments.context import CellContext, load_study_model

DATA = "synthetic:n=24,size=64,classes=4"
STUDY = f"""\
study: t
models: [{{name: demo-vit, with_random: true}}]
datasets: [{{name: d, data: "{DATA}", train: "{DATA},split=train"}}]
analyses:
  - {{name: attention_distance, options: {{variants: [A]}}}}
  - {{name: cka, options: {{tokens: cls}}}}
  - {{name: cluster, options: {{k: 4, tokens: cls}}}}
  - {{name: knn, options: {{k: 5}}}}
  - {{name: saliency, options: {{queries: [cls]}}}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    study = parse_study(STUDY)
    cells = expand(study)
    d = tmp_path_factory.mktemp("study")
    toks = store_tokens(study, cells)

    def ctx(analysis, labels):
        c = next(c for c in cells if c.analysis == analysis and c.model_labels == labels)
        return CellContext(c, d, toks)

    return ctx


def _images_labels(model):
    import vitscope as vs
    from vitscope.models.preprocess import Preprocessor

    ds = vs.open_dataset(DATA, transform=Preprocessor(model.preprocess_cfg))
    xs, ys = zip(*[(x, y) for x, y, _ in ds.batches(64)])
    return torch.cat(xs), torch.cat(ys).numpy()


def _cls_features(model, x):
    with torch.inference_mode():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
    return [cache[f"blocks.{b}.hook_resid_post"][:, 0].double().numpy() for b in range(model.cfg.depth)]


def _unbiased_linear_cka(x, y):
    """Song et al. (2012) unbiased HSIC with linear kernels, written from the formula."""
    def hsic(k, l):
        n = k.shape[0]
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cluster_rows_match_sklearn_on_model_features(setup):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    ctx = setup("cluster", ["demo-vit"])
    rows = REGISTRY["cluster"].fn(ctx, ctx.options)
    model = load_study_model(ctx.cell.models[0])
    x, y = _images_labels(model)
    feats = _cls_features(model, x)
    nmi = {r["block"]: r["value"] for r in rows if r["metric"] == "nmi"}
    assert sorted(nmi) == list(range(6)) and {r["metric"] for r in rows} == {"nmi", "ari", "purity"}
    for b, f in enumerate(feats):
        pred = KMeans(4, random_state=0, n_init=10).fit(f.astype(np.float32)).labels_
        assert nmi[b] == pytest.approx(normalized_mutual_info_score(y, pred), abs=1e-6)
    assert ctx.stores_extracted                                    # the first cell of the pair extracted the store


def test_cka_pair_rows_match_the_formula(setup):
    ctx = setup("cka", ["demo-vit", "demo-vit (random)"])
    rows = REGISTRY["cka"].fn(ctx, ctx.options)
    m1, m2 = (load_study_model(m) for m in ctx.cell.models)
    x, _ = _images_labels(m1)
    f1, f2 = _cls_features(m1, x), _cls_features(m2, x)
    assert len(rows) == 36 and all(r["model2"] == "demo-vit (random)" for r in rows)
    for r in rows[::5]:
        assert r["value"] == pytest.approx(_unbiased_linear_cka(f1[r["block"]], f2[r["block2"]]), abs=1e-5)
    # the trained model's store was reused (extracted by the cluster cell), only the random twin's was new
    assert len(ctx.stores_extracted) == 1 and "random" in ctx.stores_extracted[0]


def test_attention_distance_rows_match_a_loop(setup):
    from vitscope.analysis.attention.maps import collect_patterns

    ctx = setup("attention_distance", ["demo-vit"])
    rows = REGISTRY["attention_distance"].fn(ctx, ctx.options)
    model = load_study_model(ctx.cell.models[0])
    x, _ = _images_labels(model)
    pats = collect_patterns(model, x[:24])
    rows_, cols_ = model.cfg.grid
    coords = np.array([(r / (rows_ - 1), c / (cols_ - 1)) for r in range(rows_) for c in range(cols_)])
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    per_head = {(r["block"], r["head"]): r["value"] for r in rows if "head" in r}
    per_block = {r["block"]: r["value"] for r in rows if "head" not in r}
    for b in (0, 5):
        lay = model.token_layout(b)
        a = pats[b][:, :, lay.patches, lay.patches].double().numpy()          # images, heads, N, N
        for h in (0, 7):
            vals = []
            for img in range(a.shape[0]):
                q = [(a[img, h, i] / a[img, h, i].sum()) @ dist[i] for i in range(a.shape[2])]
                vals.append(np.mean(q))
            assert per_head[(b, h)] == pytest.approx(np.mean(vals), abs=1e-5)
        assert per_block[b] == pytest.approx(np.mean([per_head[(b, h)] for h in range(8)]), abs=1e-12)
    assert (ctx.out / "distance_A.png").exists()


def test_saliency_rows_are_the_mean_iou_per_block(setup):
    ctx = setup("saliency", ["demo-vit"])
    rows = REGISTRY["saliency"].fn(ctx, ctx.options)
    blocks = [r for r in rows if "head" not in r]
    assert [r["block"] for r in blocks] == list(range(6))
    assert all(0 <= r["value"] <= 1 for r in rows) and {r["metric"] for r in rows} == {"saliency_iou_cls"}
    table = np.load(ctx.out / "iou_cls.mean.npy")                       # L, H + 1 (summed heads last)
    assert np.allclose([r["value"] for r in blocks], table[:, -1])
