"""Start-up time of the command line: wall time of a few commands in fresh processes, and the slowest imports.

    python benchmarks/startup.py [--rounds 5] [--top 15]

Each command runs in a new Python process (as a user types it), in interleaved rounds with the order rotating;
printed per command: min / median / max wall seconds over the rounds, the median CPU seconds of the process
(user + system, which a loaded machine inflates much less than wall time) and whether the median wall time is
under the target (1.5 s). The commands: ``python -m vitscope --help``, ``vitscope attention --help`` and an error case
(``vitscope attention missing.jpg -m demo-vit``, which must fail fast with one line). Then
``python -X importtime -m vitscope --help`` once: the modules with the largest cumulative import time.
``vitscope`` is run as ``python -m vitscope`` with this interpreter, so no installed entry point is needed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import re
import resource
import subprocess
import sys
import time

from _spread import header, interleave, row  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

TARGET_S = 1.5
COMMANDS = {
    "vitscope --help": ["--help"],
    "vitscope attention --help": ["attention", "--help"],
    "vitscope attention missing.jpg -m demo-vit": ["attention", "missing.jpg", "-m", "demo-vit"],
}


CPU: dict[str, list[float]] = {}


def run_once(args: list[str], expect_ok: bool, name: str = "") -> float:
    """Wall seconds of one run; its CPU seconds (user + system of the child) go to ``CPU[name]``."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vitscope", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(name, []).append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    if (p.returncode == 0) != expect_ok:
        raise SystemExit(f"`vitscope {' '.join(args)}` exited {p.returncode}: {(p.stderr or p.stdout)[-400:]}")
    return dt


def import_times(top: int) -> list[tuple[float, str]]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "vitscope", "--help"], capture_output=True,
                       text=True)
    rows = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s?(.*)$", line)
        if m:
            rows.append((int(m.group(2)) / 1e6, m.group(3).rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top", type=int, default=15, help="import-time entries to print")
    a = ap.parse_args()
    run_once(["--help"], True)                                   # warm the file-system cache once
    fns = {name: (lambda args=args, name=name: run_once(args, "missing" not in name, name)) for name, args in COMMANDS.items()}
    t = interleave(fns, a.rounds)
    print(f"python {sys.version.split()[0]}, {a.rounds} interleaved rounds, {os.cpu_count()} CPUs; target {TARGET_S} s")
    print(header("command (wall seconds)", "s", 46, f"{'CPU s median':>14}{'median < target':>17}"))
    for name, v in t.items():
        ok = statistics.median(v) < TARGET_S
        print(row(name, v, 46, "10.2f", f"{statistics.median(CPU[name]):14.2f}{'yes' if ok else 'NO':>17}"))
    print("(CPU s: user + system time of the process; on a loaded machine wall time is several times larger)")
    print(f"\nslowest imports (cumulative seconds, `python -X importtime -m vitscope --help`, one run):")
    for s, name in import_times(a.top):
        print(f"  {s:7.3f}  {name}")


if __name__ == "__main__":
    main()
