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

# (name, the page, how its command starts there): each command is read from its page as written, in this order
# (later examples read what earlier ones wrote, as in the docs)
EXAMPLES = [
    ("knn", "README.md", "vitscope knn -m demo-vit --with-random"),
    ("knn-two-models", "docs/downstream.md", "vitscope knn -m demo-vit -m demo-vit-reg4"),
    ("synth-revisited", "docs/downstream.md", "vitscope synth runs/synth"),
    ("retrieval", "docs/downstream.md", "vitscope retrieval -m demo-vit"),
    ("davis", "docs/downstream.md", "vitscope davis -m demo-vit"),
    ("keypoints", "docs/downstream.md", "vitscope keypoints -m demo-vit"),
    ("perturb", "README.md", "vitscope perturb -m demo-vit"),
    ("logit-lens", "docs/class-embedding.md", "vitscope logit-lens -m demo-vit"),
    ("memories", "docs/class-embedding.md", "vitscope memories -m demo-vit"),
    ("attribution", "README.md", "vitscope attribution -m demo-vit"),
    ("removal", "README.md", "vitscope removal -m demo-vit"),
    ("probe-tokens", "docs/class-embedding.md", "vitscope probe-tokens -m demo-vit-reg4"),
    ("extract-probe-train", "docs/probes.md", "vitscope extract -m demo-vit -d \"builtin:demo?n=400,split=train\""),
    ("extract-probe-test", "docs/probes.md", "vitscope extract -m demo-vit -d \"builtin:demo?n=200,split=test\""),
    ("probe", "docs/probes.md", "vitscope probe --store feats/train --test-store feats/test"),
    ("probe-stats", "docs/probes.md", "vitscope probe-stats runs/probe"),
    ("probe-e2e", "README.md", "vitscope probe-e2e -m demo-vit"),
    ("explain-bench", "docs/attribution.md", "vitscope explain-bench -m demo-vit"),
    ("attention-stats", "docs/figures.md", "vitscope attention-stats -m demo-vit"),
    ("sae-extract", "docs/sae.md", "vitscope extract -m demo-vit"),
    ("sae-train", "docs/sae.md", "vitscope sae train"),
    ("sae-eval", "docs/sae.md", "vitscope sae eval"),
    ("sae-browse", "docs/sae.md", "vitscope sae browse"),
    ("study", "README.md", "vitscope run examples/walmer2023_study.yaml"),
    ("results", "README.md", "vitscope results runs/walmer2023-demo"),
]


def page_commands(path: Path) -> list[str]:
    """The shell commands of a page's ```bash blocks: continuation lines joined, comments dropped, the page's
    ``NAME="..."`` variables expanded."""
    import re
    import shlex

    out, vars_, block, pending = [], {}, False, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        m = re.fullmatch(r'([A-Z_]+)="([^"]*)"', line)
        if m:
            vars_[m.group(1)] = m.group(2)
            continue
        try:
            words = shlex.split(line, comments=True, posix=False)
        except ValueError:
            continue
        cmd = " ".join(words)
        for k, v in vars_.items():
            cmd = cmd.replace("${" + k + "}", v).replace("$" + k, v)
        if cmd:
            out.append(cmd)
    return out


def find(repo: Path, page: str, start: str) -> str:
    """The first command of ``page`` that starts with ``start`` (ValueError when none does)."""
    for cmd in page_commands(repo / page):
        if cmd.startswith(start):
            return cmd
    raise ValueError(f"{page} has no command starting with {start!r}")


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
    shutil.copytree(repo / "examples", work / "examples", dirs_exist_ok=True)    # the study file, as in a checkout
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rows, failed = [], 0
    try:
        for name, where, start in EXAMPLES:
            if only and name not in only:
                continue
            cmd = find(repo, where, start)
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
