"""Do SAEs on demo-vit find latents that detect the synthetic benchmark's generating factors better than any raw
neuron? Trains a grid of TopK SAEs (widths x k) on one block's patch tokens and prints, per SAE and factor, the best
unit's AUROC for the SAE's latents, the raw neurons and random directions (docs/sae.md, "Features against the
generating factors").

    PYTHONPATH=src .venv/bin/python scripts/sae_factor_search.py --block 1 --out runs/sae-factors

The numbers in docs/sae.md for block 1 come from the defaults below (4096 training images, 2000 steps, widths 512
and 2048, k 8 and 32).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--train-images", type=int, default=4096)
    ap.add_argument("--test-images", type=int, default=512)
    ap.add_argument("--widths", default="512,2048")
    ap.add_argument("--k", default="8,32")
    ap.add_argument("--out", type=Path, default=Path("runs/sae-factors"))
    a = ap.parse_args()

    import vitscope as vs
    from vitscope.analysis.sae import SAEOptions, TrainOptions, evaluate, train_saes
    from vitscope.features import extract_features

    model = vs.load_model("demo-vit")
    store = a.out / f"store-b{a.block}"
    extract_features(model, f"builtin:demo?n={a.train_images},split=train", store, layers=str(a.block),
                     sites=("resid_post",), tokens=("patches",), progress=True)
    opts = TrainOptions(blocks=str(a.block), arch="topk", width=tuple(int(w) for w in a.widths.split(",")),
                        k=tuple(int(k) for k in a.k.split(",")), lr=(1e-3,), steps=a.steps, batch_size=1024,
                        chunk_images=512, warmup=50, dead_after=100_000, aux_k=64, progress=True)
    saes = train_saes(store, opts, out=a.out / f"saes-b{a.block}")
    res = evaluate(saes, f"builtin:demo?n={a.test_images},split=test",
                   SAEOptions(limit=a.test_images, splice=False), model=model)
    res.table.to_csv(a.out / f"factors-b{a.block}.csv", index=False)
    t = res.table
    print(t[t["basis"].isna()].pivot_table(index="sae", columns="metric", values="value").round(4).to_string())
    best = t[t["metric"] == "factor_best_auroc"].groupby(["sae", "factor", "basis"])["value"].max().unstack()
    print(best.round(3).to_string())


if __name__ == "__main__":
    main()
