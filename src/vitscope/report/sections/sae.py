"""A small sparse autoencoder on a middle block's patch tokens of a bundled demo model: reconstruction, sparsity,
the model with the SAE spliced in, and (on the synthetic benchmark) latents against the generating factors."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis

N_TRAIN = 128          # images whose patch tokens train the SAE (after the evaluation images when there are enough)
N_EVAL = 64            # images it is measured on (the first of the dataset)
TRAIN = dict(arch="topk", width=(128,), k=(8,), lr=(2e-3,), steps=150, batch_size=256, chunk_images=64, warmup=15,
             init_rows=2048)


@analysis("sae", "Sparse autoencoder on a middle block", needs=("images",), order=78)
def sae_section(ctx) -> Section:
    """A TopK SAE (128 latents, k = 8, 150 steps) trained on the patch tokens of the middle block's residual stream
    of images of the report's dataset, then measured on other images: L0, FVU, the model with the SAE spliced in,
    and the best latent per generating factor against the best raw neuron. Bundled demo models only (seconds
    there); for other models train SAEs with `vitscope sae train` (docs/sae.md)."""
    import tempfile
    from pathlib import Path

    from vitscope.analysis.sae import SAEOptions, TrainOptions, evaluate, train_saes
    from vitscope.bundled import is_bundled
    from vitscope.features import extract_features

    if not is_bundled(ctx.model):
        return Section.skip("skipped: the report trains an SAE only on the bundled demo models (seconds there); for "
                            "this model train SAEs with `vitscope sae train` and measure them with `vitscope sae eval`")
    ds = ctx.dataset
    block = ctx.model.cfg.depth // 2
    n_eval = min(N_EVAL, len(ds))
    start = n_eval if len(ds) - n_eval >= N_TRAIN // 2 else 0
    train_idx = list(range(start, min(len(ds), start + N_TRAIN)))
    with tempfile.TemporaryDirectory() as tmp:
        store = extract_features(ctx.model, ds.subset(train_idx), Path(tmp) / "store", layers=(block,),
                                 sites=("resid_post",), tokens=("patches",), batch_size=ctx.batch_size, progress=False)
        saes = train_saes(store, TrainOptions(blocks=str(block), **TRAIN), provenance={"model": ctx.name})
    res = evaluate(saes, ds, SAEOptions(limit=n_eval, batch_size=ctx.batch_size), model=ctx.model)
    res.set_context(data=ctx.data_label)
    t = res.table
    core = t[t["basis"].isna()] if "basis" in t else t
    sec = Section()
    where = "other images" if start else "the same images (the dataset is small)"
    sec.add_text(f"A TopK SAE ({TRAIN['width'][0]} latents, k = {TRAIN['k'][0]}, {TRAIN['steps']} steps) on the "
                 f"patch tokens of block {block}'s residual stream, trained on {len(train_idx)} images and measured on "
                 f"{n_eval} {where}. {res.summary}. Spliced: the block's patch tokens replaced by the reconstruction "
                 f"(zero and mean ablation as bounds).")
    for name, fig in res.figures().items():
        fig = fig[0] if isinstance(fig, tuple) else fig
        caption = {"sae_density": "How often each latent fires (log10 of its firing frequency).",
                   "sae_sparsity_fidelity": "Sparsity (L0) against reconstruction error (FVU).",
                   "sae_factors": "Per generating factor: the best SAE latent's AUROC against the best raw neuron "
                                  "and the best random direction; the black tick is a linear probe on all the raw "
                                  "neurons (the stream's linear ceiling)."}.get(name, "")
        sec.figure(ctx, fig, name, caption)
    sec.table(ctx, core.to_dict("records"), "sae_metrics", "The SAE's metrics (spliced variants: sae, zero, mean)",
              columns=["block", "metric", "value"])
    if "basis" in t and t["basis"].notna().any():
        f = t[t["metric"] == "factor_best_auroc"].pivot_table(index=["factor", "concept"], columns="basis",
                                                               values="value")
        probe = t[(t["metric"] == "factor_probe_auroc") & (t["basis"] == "neurons")]
        f["neuron probe"] = probe.set_index(["factor", "concept"])["value"].reindex(f.index)
        f = f.reset_index()
        sec.table(ctx, f.to_dict("records"), "sae_factors", "Best AUROC per concept: SAE latents, raw neurons, "
                  "random directions; and a linear probe on the raw neurons (held out)",
                  columns=[c for c in ("factor", "concept", "sae", "neurons", "random", "neuron probe")
                           if c in f.columns])
    ctx.save_table(t.to_dict("records"), "sae_all")
    return sec
