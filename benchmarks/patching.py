"""Activation patching: the batched block x position grid against one forward pass per cell, and attribution
patching against the full grid (interleaved rounds, min / median / max; the numbers are checked to agree).

    python benchmarks/patching.py                                   # ViT-S/16 (random weights) and demo-vit
    python benchmarks/patching.py --models demo-vit --rounds 3
    python benchmarks/patching.py --patches all --rounds 1          # ViT-S/16: every position (slow on a CPU)

The grid (``vitscope.analysis.patching.activation_patching``) runs both inputs once, then for each block stacks
one copy of the corrupted run's residual stream per cell in the batch and runs the stack from that block
(``HookedViT.forward_from``): the blocks before the patched one are never recomputed. The loop is what one writes
by hand: one ``run_with_hooks`` over the whole model per cell. Site ``resid_pre``, metric: the clean prediction's
logit; clean = a seeded image (ViT-S) or a synthetic image (demo-vit), corrupted = its copy blurred by one patch
width (ViT-S) or with its object swapped (demo-vit).

``--patches`` limits the ViT-S grid to some patch positions (default: the first patch row, 14 positions, at all
12 blocks), so that the loop finishes on a CPU; the ratio does not depend on how many positions
are patched (the work per cell is the same). The full grid's time for the attribution ratio is then the measured
time per cell times the cells of the full grid (printed as such).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def setup(name: str, device: str):
    import torch

    from vitscope.analysis.patching import PatchPairs, synthetic_pairs
    from vitscope.analysis.patching.corrupt import apply_corruption
    from vitscope.models.loading import load_model

    if name == "demo-vit":
        model = load_model("demo-vit").to(device)
        pairs = synthetic_pairs(model, "builtin:demo", n=1)
    else:
        model = load_model(name, pretrained=False, seed=0).to(device)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, *model.cfg.img_size, generator=g)
        pairs = PatchPairs(x, apply_corruption(x, "blur", 1.0, model.cfg.patch_size))
    return model.eval(), pairs.to(device)


def loop_grid(model, pairs, positions: dict[int, list[int]]):
    """{block: (K,) metric} by one run_with_hooks (the whole model) per cell."""
    import torch

    out = {}
    with torch.inference_mode():
        label = pairs.labels if pairs.labels is not None else model(pairs.clean).argmax(-1)
        names = [f"blocks.{b}.hook_resid_pre" for b in positions]
        _, clean = model.run_with_cache(pairs.clean, names_filter=names)
        for b, cells in positions.items():
            name = f"blocks.{b}.hook_resid_pre"
            vals = []
            for p in cells:
                def put(a, hook, p=p, src=clean[name]):
                    a = a.clone()
                    a[:, p] = src[:, p]
                    return a
                logits = model.run_with_hooks(pairs.corrupted, fwd_hooks=[(name, put)])
                vals.append(float(logits[0, label[0]]))
            out[b] = vals
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_small_patch16_224,demo-vit")
    ap.add_argument("--patches", default="0:1,0:14", help="ViT-S patch positions patched ('all' for every one)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import numpy as np
    import torch

    from _spread import header, interleave, ratio_spread, ratio_text, row
    from vitscope.analysis.patching import activation_patching, attribution_patching
    from vitscope.analysis.patching.corrupt import parse_region
    from vitscope.analysis.patching.sites import tokens_at

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, {args.rounds} rounds")
    for name in args.models.split(","):
        model, pairs = setup(name, args.device)
        L = model.cfg.depth
        sel = None if name == "demo-vit" or args.patches == "all" else parse_region(args.patches, model.cfg.grid)
        positions = {b: [t.index for t in tokens_at(model, b)
                         if sel is None or (t.kind == "patch" and sel[t.row, t.col])] for b in range(L)}
        n_cells = sum(len(v) for v in positions.values())
        n_full = sum(len(tokens_at(model, b)) for b in range(L))

        def grid():
            g = activation_patching(model, pairs, "resid_pre", "logit", patches=sel, batch_size=args.batch_size)
            return {b: g.values[b][:, 0] for b in g.blocks}

        def timed(fn, store):
            def run():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                store["out"] = fn()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                return time.perf_counter() - t
            return run

        res: dict[str, dict] = {"loop": {}, "grid": {}, "attribution": {}}
        fns = {"one forward per cell (loop)": timed(lambda: loop_grid(model, pairs, positions), res["loop"]),
               "batched grid": timed(grid, res["grid"]),
               "attribution patching (all cells)": timed(lambda: attribution_patching(model, pairs, "resid_pre"),
                                                         res["attribution"])}
        print(f"\n{name}: {L} blocks, {n_cells} cells patched of {n_full} (site resid_pre, 1 pair)")
        times = interleave(fns, args.rounds)
        diff = max(float(np.max(np.abs(np.asarray(res["loop"]["out"][b]) - res["grid"]["out"][b])))
                   for b in range(L))
        print(header("method", "seconds"))
        for k, v in times.items():
            print(row(k, v))
        loop, grid_t = times["one forward per cell (loop)"], times["batched grid"]
        print(f"batched grid vs loop: {ratio_text(*ratio_spread(loop, grid_t))} faster; largest difference of the "
              f"patched logits {diff:.2e}")
        bound = 2 * L / (L + 1)
        print(f"  (work bound: the loop runs {L} blocks per cell, the grid {L}-b for a cell of block b: "
              f"{bound:.2f}x with no batching gain)")
        full = [t * n_full / n_cells for t in grid_t]
        att = times["attribution patching (all cells)"]
        what = "measured" if sel is None else f"extrapolated from {n_cells} cells"
        print(f"attribution patching vs the full grid ({n_full} cells, {what}): "
              f"{ratio_text(*ratio_spread(full, att))} faster")


if __name__ == "__main__":
    main()
