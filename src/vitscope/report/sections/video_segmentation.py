"""DAVIS-style label propagation per block on a synthetic clip (``vitscope.analysis.video_segmentation``)."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis

# the synthetic settings of the demo models' data; the clip is twice the model's input size
SYNTH = dict(n_classes=8, difficulty="easy", jitter=0, scale_min=0.1, scale_max=0.2, noise=0.02, clutter=0,
             texture=0.15, contrast=0.45, rotation=30, stripes=0, stretch=0.05)


def synthetic_davis(ctx, videos: int = 1, frames: int = 6):
    from vitscope.data.synthetic import write
    from vitscope.data.synthetic.config import SynthConfig
    from vitscope.data.tasks import load_davis

    root = ctx.path("synthetic_davis")
    if not (root / "davis").is_dir():
        cfg = SynthConfig(size=int(ctx.model.cfg.img_size[0]), **SYNTH)
        write(root, cfg, formats=["davis"], videos=videos, frames=frames)
    return load_davis(root / "davis")


@analysis("davis", "Video object segmentation (DAVIS-style label propagation)", order=72,
          aliases=("video_segmentation",))
def video_segmentation_section(ctx) -> Section:
    """Label propagation from the first frame's mask (DINO's protocol: 7 previous frames, neighbourhood 12,
    top-5, temperature 0.1) on a synthetic clip, scored by the DAVIS-2017 J&F, per block; the random-weight twin
    for reference."""
    from vitscope.analysis.video_segmentation import DavisOptions, evaluate
    from vitscope.viz.downstream_dense import plot_propagation
    from vitscope.viz.per_block import plot_metric_per_block

    if min(ctx.model.cfg.img_size) < 32:
        return Section.skip("skipped: the synthetic data needs a model input of at least 32 px")
    ds = synthetic_davis(ctx)
    models = {ctx.name: ctx.model, f"{ctx.name} (random)": ctx.random_model}
    result = evaluate(models, ds, DavisOptions(short_side=2 * int(ctx.model.cfg.img_size[0])))
    sec = Section()
    fig = plot_metric_per_block(result.table, metric="J&F-Mean", title=f"J&F per block, {len(ds)} synthetic clip(s)",
                                ylim=(0.0, 1.0), **result.context())                    # J&F in [0, 1]
    sec.figure(ctx, fig, "jf", "DAVIS-2017 J&F-Mean of label propagation from each block's patch tokens "
               "(dashed: random weights).")
    seq, (last, ids) = result.arrays["sequence"], result.arrays["predictions"][ctx.name]
    fig = plot_propagation(seq.frames(), ids, seq.masks(), title=f"block {last}: propagated (top) and ground truth "
                                                                 f"(bottom)")
    sec.figure(ctx, fig, "frames", "Masks propagated from frame 0 by the last block's features.")
    rows = [r for r in result.rows() if r["metric"] in ("J&F-Mean", "J-Mean", "F-Mean")]
    sec.table(ctx, [{k: (round(r[k], 4) if k == "value" else r[k]) for k in ("model", "block", "metric", "value")}
                    for r in rows], "per_block", "J and F per block")
    best = result.table[result.table["metric"] == "J&F-Mean"].groupby("model", sort=False)["value"].max()
    sec.add_text("Best J&F over blocks: " + ", ".join(f"{m} {v:.3f}" for m, v in best.items()) + ".")
    return sec
