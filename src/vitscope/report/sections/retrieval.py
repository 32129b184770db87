"""Instance retrieval per block on the synthetic benchmark's Revisited-style set (easy / medium / hard)."""
from __future__ import annotations

import numpy as np

from vitscope.report.registry import Section, analysis

N_LANDMARKS = 12


def synthetic_config(ctx):
    """The SynthConfig of the report's images when they come from the synthetic benchmark, else None."""
    src = getattr(ctx.dataset, "source", None)
    while src is not None and not hasattr(src, "cfg") and hasattr(src, "base"):
        src = src.base
    return getattr(src, "cfg", None)


def retrieval_rows(ctx, n_landmarks: int = N_LANDMARKS) -> tuple[list[dict], int, int]:
    """Rows of the trained model and its random twin, queries cropped and not; (rows, n_db, n_queries)."""
    from vitscope.analysis.retrieval import RetrievalOptions, evaluate
    from vitscope.data.synthetic import retrieval_set

    rs = retrieval_set(synthetic_config(ctx), n_landmarks=n_landmarks)
    models = {ctx.name: ctx.model, f"{ctx.name} (random)": ctx.random_model}
    opts = RetrievalOptions(tokens="cls" if ctx.model.cfg.class_token else "mean",
                            imsize=int(np.max(ctx.model.cfg.img_size)))
    rows = [r for crop in (True, False) for r in evaluate(models, rs, opts, crop=crop).rows()]
    return rows, len(rs.db_images), len(rs.query_images)


@analysis("retrieval", "Retrieval per block (Revisited protocol)", needs=("images",), order=57)
def retrieval_section(ctx) -> Section:
    """Revisited Oxford/Paris-style retrieval on the synthetic benchmark: each landmark's queries against a database
    of easy, hard and junk views and distractors; cosine ranking of each block's CLS token, mAP and mP@k under the
    easy, medium and hard protocols; queries cropped to their box (the protocol) and uncropped (DINO)."""
    from vitscope.viz.per_block import plot_metric_per_block

    if synthetic_config(ctx) is None:
        return Section.skip("skipped: needs the synthetic benchmark's retrieval set; on real data run "
                            "`vitscope retrieval --root <Revisited folder>`")
    rows, n_db, n_q = ctx.memo("retrieval_rows", lambda: retrieval_rows(ctx))
    sec = Section()
    for crop in (True, False):
        part = [r for r in rows if r["crop"] is crop]
        fig = plot_metric_per_block(part, metric="mAP_medium", ylabel="mAP, medium (%)",
                                    title=f"retrieval, {n_q} {'cropped' if crop else 'full'} queries",
                                    data="synthetic retrieval set", n_images=n_db,
                                    tokens="cls" if ctx.model.cfg.class_token else "mean")
        sec.figure(ctx, fig, f"map_medium_{'crop' if crop else 'full'}", f"mAP (medium protocol) per block, queries "
                   f"{'cropped to their box' if crop else 'uncropped'}; dashed: random weights.")
    last = max(r["block"] for r in rows if r["model"] == ctx.name)
    table = [{"model": r["model"], "queries": "cropped" if r["crop"] else "full", "metric": r["metric"],
              "value": round(r["value"], 1)}
             for r in rows if r["block"] == last and r["metric"].startswith("mAP")]
    sec.table(ctx, table, "last_block", f"mAP (%) at the last block ({last})")
    ctx.save_table(rows, "all")
    return sec
