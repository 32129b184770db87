"""SPair-style keypoint correspondence per block on synthetic pairs (``vitscope.analysis.correspondence``)."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis
from vitscope.report.sections.video_segmentation import SYNTH


@analysis("correspondence", "Keypoint correspondence (SPair-style PCK)", order=74)
def correspondence_section(ctx) -> Section:
    """Nearest-neighbour keypoint transfer between two views of a synthetic figure of four shapes, keypoints at
    the parts' centres (walmer2023's protocol: letterbox, per-token normalisation, bilinear upsampling), PCK@0.1 of
    the target box per block; the random-weight twin for reference."""
    import pandas as pd

    from vitscope.analysis.correspondence import evaluate_spair, sample_pairs, spair_rows
    from vitscope.data.synthetic import write
    from vitscope.data.synthetic.config import SynthConfig
    from vitscope.data.tasks import load_spair
    from vitscope.viz.downstream_dense import plot_keypoint_matches
    from vitscope.viz.per_block import plot_metric_per_block

    if min(ctx.model.cfg.img_size) < 32:
        return Section.skip("skipped: the synthetic data needs a model input of at least 32 px")
    root = ctx.path("synthetic_spair")
    if not (root / "spair").is_dir():
        write(root, SynthConfig(size=int(ctx.model.cfg.img_size[0]), **SYNTH), formats=["spair"], pairs=16)
    pairs = sample_pairs(load_spair(root / "spair"), per_category=2)
    rows, res = [], None
    for who, model in (("trained", ctx.model), ("random", ctx.random_model)):
        r = evaluate_spair(model, pairs, keep_matches=3 if who == "trained" else 0)
        rows += spair_rows(r, ctx.name if who == "trained" else f"{ctx.name} (random)")
        res = res or r
    table = pd.DataFrame(rows)
    sec = Section()
    fig = plot_metric_per_block(table, metric="pck@0.1", ylabel="PCK@0.1 (%)",
                                title=f"keypoint transfer, {len(pairs)} synthetic pairs")
    sec.figure(ctx, fig, "pck", "PCK@0.1 per block (dashed: random weights).")
    fig = plot_keypoint_matches(res["matches"], n_show=3, title=f"block {max(res['pck'])}")
    sec.figure(ctx, fig, "matches", "Source keypoints, target ground truth (circles) and predictions (crosses).")
    sec.table(ctx, [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
              "per_block", "PCK per block")
    return sec
