"""Do SAEs on demo-vit (or --model) find latents that detect the synthetic benchmark's generating factors better than any raw
neuron? Trains a grid of SAEs (widths x k) on one block's patch tokens and prints, per SAE and factor, the best
unit's AUROC for the SAE's latents, the raw neurons and random directions, and the held-out AUROC of a linear probe
on the raw neurons (the stream's linear ceiling) and on 64 latents (docs/sae.md, "Features against the generating
factors").

    PYTHONPATH=src .venv/bin/python scripts/sae_factor_search.py --block 1 --out runs/sae-factors
    PYTHONPATH=src .venv/bin/python scripts/sae_factor_search.py --block 3 --arch matryoshka --widths 512 --k 16 \
        --prefixes 8,32,128 --steps 1500
    PYTHONPATH=src .venv/bin/python scripts/sae_factor_search.py --ceilings \
        --data "synthetic:size=64,classes=8,difficulty=easy,jitter=1,scale_min=0.25,scale_max=0.4,texture=0.35"
    PYTHONPATH=src .venv/bin/python scripts/sae_factor_search.py --ceilings --site resid_mid,mlp_out,resid_post
    PYTHONPATH=src .venv/bin/python scripts/sae_factor_search.py --block 4 --site mlp_out --arch matryoshka \
        --widths 512 --k 16,32 --prefixes 8,32,128 --steps 6000 --out runs/sae-factors-mlp
    PYTHONPATH=src .venv/bin/python scripts/sae_factor_search.py --block 4 --site mlp_out --arch matryoshka \
        --widths 512 --k 16 --prefixes 8,32,128 --steps 6000 --explain object,part=right,position=top-left
    PYTHONPATH=src .venv/bin/python scripts/sae_factor_search.py --block 4 --site mlp_out --centre image \
        --arch matryoshka --widths 512 --k 16 --prefixes 8,32,128 --steps 6000

The numbers in docs/sae.md for block 1 come from the defaults below (4096 training images, 2000 steps, widths 512
and 2048, k 8 and 32); the Matryoshka numbers from the second command; the linear ceilings with larger objects from
the third (no SAE: per block, the best raw neuron and a linear probe on all of them, per factor); the ceilings per
site from the fourth; the SAEs on the MLP output from the fifth and its variants in docs/sae.md; where the best
latents of object, part and position fire (per shape and colour) from the sixth; the SAE of the centred patch
tokens that meets the single-latent criterion from the seventh.
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
    ap.add_argument("--arch", default="topk", help="topk, batchtopk, matryoshka (k-sparse: --k), relu or jumprelu "
                    "(--l1)")
    ap.add_argument("--l1", default="1", help="relu: L1 coefficients, jumprelu: L0 coefficients (a grid)")
    ap.add_argument("--prefixes", default="", help="Matryoshka's nested prefix sizes, e.g. 8,32,128")
    ap.add_argument("--out", type=Path, default=Path("runs/sae-factors"))
    ap.add_argument("--ceilings", action="store_true", help="no SAE: the raw neurons' best AUROC and linear probe "
                    "per block and factor on --data")
    ap.add_argument("--data", default="builtin:demo", help="synthetic data for --ceilings (a synthetic: spec)")
    ap.add_argument("--model", default="demo-vit", help="the model whose patch tokens are searched")
    ap.add_argument("--explain", default="", help="concepts (comma-separated, e.g. object,part=right) whose best "
                    "latents are broken down: where each fires among the concept's patches, per shape and colour")
    ap.add_argument("--site", default="resid_post", help="the block site: resid_post, mlp_out, attn_out, resid_mid "
                    "(--ceilings: several, comma-separated)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the SAEs' data order and initialisation")
    ap.add_argument("--centre", default="none", help="none or image: the SAE reads each patch token less its image's "
                    "mean patch token")
    a = ap.parse_args()
    if a.ceilings:
        return ceilings(a.model, a.data, a.test_images, a.site)

    import vitscope as vs
    from vitscope.analysis.sae import SAEOptions, TrainOptions, evaluate, train_saes
    from vitscope.analysis.sae.hooks import block_site
    from vitscope.features import extract_features

    prefixes = tuple(int(p) for p in a.prefixes.split(",") if p)
    opts = TrainOptions(site=a.site, blocks=str(a.block), centre=a.centre, arch=a.arch,  # checked before any work
                        prefixes=prefixes,
                        width=tuple(int(w) for w in a.widths.split(",")),
                        k=tuple(int(k) for k in a.k.split(",")), l1=a.l1, lr=(1e-3,), steps=a.steps, batch_size=1024,
                        chunk_images=512, warmup=50, dead_after=100_000, aux_k=64, seed=a.seed, progress=True)
    eval_opts = SAEOptions(limit=a.test_images, splice=False)                           # checked before any work too
    explain = [c.strip() for c in a.explain.split(",") if c.strip()]
    model = vs.load_model(a.model)
    test_data = f"builtin:demo?n={a.test_images},split=test"
    explained = heldout_concepts(model, test_data, explain) if explain else None    # names checked before any work
    site = block_site(a.site)[0]                                  # "blocks.{i}.mlp.hook_post" -> "mlp.hook_post"
    tag = f"b{a.block}" if site == "resid_post" else f"b{a.block}-{site}"
    store = a.out / f"store-{tag}"
    extract_features(model, f"builtin:demo?n={a.train_images},split=train", store, layers=str(a.block),
                     sites=(a.site,), tokens=("patches",), progress=True)
    tag += ("" if a.centre == "none" else f"-centre-{a.centre}") + (f"-seed{a.seed}" if a.seed else "")
    saes = train_saes(store, opts, out=a.out / f"saes-{tag}-{a.arch}")
    res = evaluate(saes, test_data, eval_opts, model=model)
    res.table.to_csv(a.out / f"factors-{tag}-{a.arch}.csv", index=False)
    res.save(a.out / f"eval-{tag}-{a.arch}")                   # sae.csv and the figures (sae_factors.png: first SAE)
    t = res.table
    print(t[t["basis"].isna()].pivot_table(index="sae", columns="metric", values="value").round(4).to_string())
    for metric in ("factor_best_auroc", "factor_probe_auroc"):
        best = t[t["metric"] == metric].groupby(["sae", "factor", "basis"])["value"].max().unstack()
        print(f"{metric}, best concept per factor:")
        print(best.round(3).to_string())
    if explain:
        explain_concepts(model, saes, a.block, *explained, explain, a.out / f"split-{tag}-{a.arch}.csv")


def heldout_concepts(model, data: str, names: list[str]):
    """(test images, their patch concepts) for --explain, with every name in ``names`` checked before any work."""
    from vitscope.analysis.sae.evaluation import _images
    from vitscope.analysis.sae.factors import patch_concepts

    images, _, ds, idx = _images(model, data, None)
    concepts = patch_concepts(ds.source, idx, model.cfg.img_size[0] // model.cfg.patch_size)
    unknown = [c for c in names if c not in concepts]
    if unknown:
        raise ValueError(f"--explain: unknown concept(s) {', '.join(unknown)}; the data has: "
                         f"{', '.join(sorted(concepts))}")
    return images, concepts


def explain_concepts(model, saes: dict, block: int, images, concepts, names: list[str], out: Path) -> None:
    """Per SAE and concept, the best latents' firing fractions (``factors.concept_split``), printed as a table
    (rows: latent and its AUROC; columns: the concept's positives, negatives, and positives per shape and colour)
    and written to ``out``."""
    import pandas as pd

    from vitscope.analysis.sae.factors import concept_split, factor_bases

    frames = []
    for name, sae in saes.items():
        z = factor_bases(model, sae, images, block)["sae"][0]
        for c in names:
            t = concept_split(z, concepts, c).assign(sae=name)
            frames.append(t)
            print(f"{name}, {c} ({int(concepts[c][1].sum())} of {len(z)} patches): fraction of each group's "
                  "patches on which the best latents fire")
            wide = t.pivot_table(index=["rank", "unit", "auroc"], columns="group", values="fires", sort=False)
            print(wide[list(dict.fromkeys(t.group))].round(2).to_string())
    pd.concat(frames).to_csv(out, index=False)


def ceilings(name: str, data: str, n: int, sites: str = "resid_post") -> None:
    """Per site, block of the model and factor (best concept): the best raw neuron's AUROC and the held-out AUROC of
    a linear probe on all the neurons (64 at most: the probe of ``factor_probe_auroc``), on ``n`` test images of
    ``data``."""
    import numpy as np
    import pandas as pd
    import torch

    import vitscope as vs
    from vitscope.analysis.sae.evaluation import _images
    from vitscope.analysis.sae.factors import auroc, patch_concepts, probe_auroc
    from vitscope.features.plan import BLOCK_SHORT

    if not data.startswith(("synthetic:", "builtin:demo")):
        raise ValueError(f"--data must be a synthetic: spec or builtin:demo (the factors come from the generator), "
                         f"got {data!r}")
    names = [x.strip() for x in sites.split(",") if x.strip()]
    bad = [x for x in names if x not in BLOCK_SHORT]
    if bad or not names:
        raise ValueError(f"--site takes block sites of the stream's width ({', '.join(BLOCK_SHORT)}), got {sites!r}")
    model = vs.load_model(name)
    sep = "," if data.startswith("synthetic:") or "?" in data else "?"
    images, _, ds, idx = _images(model, f"{data}{sep}n={n},split=test", n)
    grid = model.cfg.img_size[0] // model.cfg.patch_size
    concepts = patch_concepts(ds.source, idx, grid)
    hooks = {(site, b): f"blocks.{b}.{BLOCK_SHORT[site]}" for site in names for b in range(model.cfg.depth)}
    wanted = set(hooks.values())
    acts = {h: [] for h in wanted}
    with torch.no_grad():
        for s in range(0, len(images), 64):
            _, cache = model.run_with_cache(images[s:s + 64], names_filter=lambda h: h in wanted)
            for (_, b), h in hooks.items():
                acts[h].append(cache[h][:, model.token_layout(b).patches].reshape(-1, model.cfg.embed_dim))
    rows = []
    for (site, b), h in hooks.items():
        x = torch.cat(acts[h]).numpy()
        for concept, (factor, y) in concepts.items():
            a = auroc(x, y)
            rows.append({"site": site, "block": b, "factor": factor, "concept": concept,
                         "best_neuron": float(np.maximum(a, 1 - a).max()),
                         "probe_all_neurons": probe_auroc(x, y, np.argsort(-np.maximum(a, 1 - a)))})
    t = (pd.DataFrame(rows).groupby(["site", "factor", "block"])[["best_neuron", "probe_all_neurons"]].max()
         .unstack("block"))
    print(t.round(3).to_string())


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, FileNotFoundError) as e:      # bad input: one line, not a traceback
        raise SystemExit(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from None
