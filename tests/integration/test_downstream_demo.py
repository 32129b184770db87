"""The bundled demo model against its random-weight twin on the synthetic benchmark: k-NN and retrieval, through
the report sections `vitscope demo` runs."""
import pandas as pd
import pytest

from vitscope.report.registry import run_analyses


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from vitscope.models.loading import load_model
    from vitscope.report.context import ReportContext
    from vitscope.report.demo import held_out_spec

    return ReportContext(load_model("demo-vit"), held_out_spec(256), out_dir=tmp_path_factory.mktemp("rep"),
                         name="demo-vit", n_eval=256, progress=False)


def best(rows, **where):
    df = pd.DataFrame(rows)
    for k, v in where.items():
        df = df[df[k] == v]
    return df.groupby(["model", "metric"]).value.max().unstack(0)


def test_sections_run(ctx):
    from vitscope.report.sections.retrieval import retrieval_rows

    ctx.memo("retrieval_rows", lambda: retrieval_rows(ctx, n_landmarks=24))      # what the section shows, larger
    secs = {s.key: s for s in run_analyses(ctx, ["knn", "retrieval"], progress=False)}
    assert secs["knn"].status == "ok" and secs["retrieval"].status == "ok", (secs["knn"].error, secs["retrieval"].error)
    assert len(secs["knn"].figures) == 2 and len(secs["retrieval"].figures) == 2


def test_knn_trained_beats_random(ctx):
    from vitscope.report.sections.knn import knn_rows

    rows, n_tr, n_te, mode = knn_rows(ctx)
    assert (n_tr, n_te, mode) == (128, 128, "cls")
    t = best(rows)
    for metric, row in t.iterrows():                     # every k, top-1 and top-5, best block of each
        assert row["demo-vit"] >= row["demo-vit (random)"] + 25, metric


def test_retrieval_trained_beats_random(ctx):
    from vitscope.report.sections.retrieval import retrieval_rows

    rows, n_db, n_q = ctx.memo("retrieval_rows", lambda: retrieval_rows(ctx, n_landmarks=24))
    assert (n_db, n_q) == (276, 72)                       # 24 landmarks x (3 easy, 6 hard, 2 junk) + 12; 3 queries each
    for crop, hard in ((True, 1.3), (False, 1.5)):        # queries cropped to their box (the protocol) and not (DINO)
        t = best(rows, crop=crop)
        assert len(t) == 12                               # mAP, mP@1/5/10 x easy, medium, hard
        for metric, row in t.iterrows():
            demo, rand = row["demo-vit"], row["demo-vit (random)"]
            if metric.endswith("_hard"):                  # values of 5-15%, noisier: a smaller margin
                assert demo >= hard * rand and demo >= rand + 2, (crop, metric, demo, rand)
            else:
                assert demo >= 2 * rand and demo >= rand + 4, (crop, metric, demo, rand)
