"""SPair-style keypoint correspondence per block on synthetic pairs (``vitscope.analysis.correspondence``)."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis
from vitscope.report.sections.video_segmentation import SYNTH


@analysis("keypoints", "Keypoint correspondence (SPair-style PCK)", order=74, aliases=("correspondence",))
def correspondence_section(ctx) -> Section:
    """Nearest-neighbour keypoint transfer between two views of a synthetic figure of four shapes, keypoints at
    the parts' centres (walmer2023's protocol: letterbox, per-token normalisation, bilinear upsampling), PCK@0.1 of
    the target box per block; the random-weight twin for reference."""
    from vitscope.analysis.correspondence import KeypointsOptions, evaluate
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
    models = {ctx.name: ctx.model, f"{ctx.name} (random)": ctx.random_model}
    result = evaluate(models, load_spair(root / "spair"), KeypointsOptions(pairs_per_category=2, keep_matches=3))
    n_pairs = len(result.meta["pairs"])
    sec = Section()
    fig = plot_metric_per_block(result.table, metric="pck@0.1", ylabel="PCK@0.1 (%)",
                                title=f"keypoint transfer, {n_pairs} synthetic pairs", **result.context())
    sec.figure(ctx, fig, "pck", "PCK@0.1 per block (dashed: random weights).")
    last, matches, _ = result.arrays["matches"][ctx.name]
    fig = plot_keypoint_matches(matches, n_show=3, title=f"block {last}")
    sec.figure(ctx, fig, "matches", "Source keypoints, target ground truth (circles) and predictions (crosses).")
    sec.table(ctx, [{k: (round(r[k], 2) if k == "value" else r[k]) for k in ("model", "block", "metric", "value")}
                    for r in result.rows()], "per_block", "PCK per block")
    return sec
