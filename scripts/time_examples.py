"""Run every example of the README and docs/ that uses the bundled demo models, as written, and time it.

Each command runs in one scratch folder, in the order below (later examples read what earlier ones wrote, as in the
docs), with the CLI on PATH. Prints a markdown table (example, where it is written, wall seconds, exit status) to
paste into docs/benchmarks.md; exits 1 when an example fails.

    PYTHONPATH=src .venv/bin/python scripts/time_examples.py [--only knn,removal] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

D = ("synthetic:size=64,classes=8,difficulty=easy,jitter=0,scale_min=0.1,scale_max=0.2,noise=0.02,clutter=0,"
     "texture=0.15,contrast=0.45,rotation=30,stripes=0,stretch=0.05")

# (name, where it is written, command) in the order the docs give them
EXAMPLES = [
    ("knn", "README", 'vitscope knn -m demo-vit --with-random -d builtin:demo -o runs/knn'),
    ("knn-two-models", "docs/downstream.md",
     f'vitscope knn -m demo-vit -m demo-vit-reg4 --with-random --train "{D},n=1024,split=train" '
     f'--test "{D},n=512,split=test" -o runs/knn2'),
    ("synth-revisited", "docs/downstream.md",
     "vitscope synth runs/synth --difficulty easy --landmarks 24 --formats revisited -q"),
    ("retrieval", "docs/downstream.md",
     "vitscope retrieval -m demo-vit -m demo-vit-reg4 --with-random --root runs/synth/revisited/rsynth "
     "-o runs/retrieval"),
    ("davis", "docs/downstream.md",
     "vitscope davis -m demo-vit --with-random --davis synthetic:videos=4,frames=12 --out runs/davis"),
    ("keypoints", "docs/downstream.md",
     "vitscope keypoints -m demo-vit --with-random --spair synthetic:pairs=40 --out runs/keypoints"),
    ("perturb", "README", "vitscope perturb -m demo-vit -d builtin:demo --tokens all --out runs/perturb"),
    ("logit-lens", "docs/class-embedding.md",
     f'vitscope logit-lens -m demo-vit -d "{D},n=128,split=test" -o runs/logit-lens'),
    ("memories", "docs/class-embedding.md",
     f'vitscope memories -m demo-vit -d "{D},n=128,split=test" -o runs/memories'),
    ("attribution", "README", "vitscope attribution -m demo-vit -o runs/attribution"),
    ("removal", "README",
     'vitscope removal -m demo-vit -d "builtin:demo?n=256" --probe-data "builtin:demo?n=500,split=val" '
     "-o runs/removal"),
    ("probe-tokens", "docs/class-embedding.md",
     f'vitscope probe-tokens -m demo-vit-reg4 --train-data "{D},n=500,split=val" -d "{D},n=256,split=test" '
     "--sites resid_post,attn_out,mlp_out -o runs/probe-tokens"),
    ("extract-probe-train", "docs/probes.md",
     'vitscope extract -m demo-vit -d "builtin:demo?n=400,split=train" -o feats/train -l all -s ln2,ln_final '
     "-t cls,mean,all -q"),
    ("extract-probe-test", "docs/probes.md",
     'vitscope extract -m demo-vit -d "builtin:demo?n=200,split=test" -o feats/test -l all -s ln2,ln_final '
     "-t cls,mean,all -q"),
    ("probe", "docs/probes.md",
     "vitscope probe --store feats/train --test-store feats/test -l last -l all -l tokens --per-layer "
     "--dataset synthetic -o runs/probe"),
    ("probe-stats", "docs/probes.md", "vitscope probe-stats runs/probe -o runs/probe-stats"),
    ("probe-e2e", "README",
     'vitscope probe-e2e -m demo-vit --recipe attentive-frozen -l all -d "builtin:demo?n=160,split=train" '
     '--test-data "builtin:demo?n=80" --steps 100 -b 32 -o runs/e2e'),
    ("explain", "docs/attribution.md",
     'vitscope explain -m demo-vit -d "builtin:demo?n=8" --method rollout --limit 6 -o runs/explain'),
    ("explain-bench", "docs/attribution.md",
     'vitscope explain-bench -m demo-vit -d "builtin:demo?n=64" --limit 16 --sanity --sanity-images 4 '
     "-o runs/explain-bench"),
    ("attention-stats", "docs/figures.md",
     "vitscope attention-stats -m demo-vit -d builtin:demo --limit 16 -o runs/stats"),
    ("sae-extract", "docs/sae.md",
     'vitscope extract -m demo-vit -d "builtin:demo?n=2048,split=train" -o feats/demo-train --layers 3 '
     "--sites resid_post --tokens patches -q"),
    ("sae-train", "docs/sae.md",
     "vitscope sae train --store feats/demo-train --block 3 --tokens patches --arch topk --width 256,512 --k 8,16 "
     "--lr 1e-3 --steps 1500 -o runs/sae"),
    ("sae-eval", "docs/sae.md",
     'vitscope sae eval runs/sae/topk-b3-w512-k16-lr0.001 -d "builtin:demo?n=512,split=test" -o runs/sae-eval'),
    ("sae-browse", "docs/sae.md", "vitscope sae browse runs/sae/topk-b3-w512-k16-lr0.001 -o runs/sae-page"),
    ("study", "README", "vitscope run {repo}/examples/walmer2023_study.yaml --threads 1 --out runs/walmer2023-demo"),
    ("results", "README", "vitscope results runs/walmer2023-demo"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated example names (default: all, in order)")
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (default: a temporary "
                                                            "folder, removed at the end)")
    a = ap.parse_args()
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    unknown = only - {n for n, _, _ in EXAMPLES}
    if unknown:
        ap.error(f"unknown example(s) {', '.join(sorted(unknown))}; known: {', '.join(n for n, _, _ in EXAMPLES)}")
    repo = Path(__file__).resolve().parents[1]
    work = a.keep or Path(tempfile.mkdtemp(prefix="vitscope-examples-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rows, failed = [], 0
    try:
        for name, where, cmd in EXAMPLES:
            if only and name not in only:
                continue
            cmd = cmd.format(repo=repo)
            t = time.perf_counter()
            r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t
            failed += r.returncode != 0
            status = "ok" if r.returncode == 0 else f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}"
            rows.append((name, where, dt, status))
            print(f"{name:<22} {dt:8.1f} s  {status}", file=sys.stderr, flush=True)
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print("| example | where | wall (s) | status |\n|---|---|---|---|")
    for name, where, dt, status in rows:
        print(f"| `{name}` | {where} | {dt:.1f} | {status} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
