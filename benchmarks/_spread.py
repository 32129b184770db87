"""Interleaved rounds and their spread: every benchmark prints min / median / max per row, so a reader can tell a
difference from noise on a shared machine.

``interleave({name: fn}, rounds)`` calls each ``fn()`` once per round, rotating the order every round so that
no method always runs first (or right after a heavy one); each ``fn`` returns its measurement (seconds, or a
rate). ``ratio_spread`` gives, per round, the ratio of two methods measured in that round, so the spread of a
ratio is read from rounds that shared the same machine load.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence


def interleave(fns: Mapping[str, Callable[[], float]], rounds: int, verbose: bool = False) -> dict[str, list[float]]:
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out[name].append(float(fns[name]()))
            if verbose:
                print(f"  round {r + 1}/{rounds}: {name:<36} {out[name][-1]:10.4g}", flush=True)
    return out


def spread(xs: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(xs), statistics.median(xs), max(xs)


def ratio_spread(num: Sequence[float], den: Sequence[float]) -> tuple[float, float, float]:
    """min / median / max over rounds of num[r] / den[r]."""
    return spread([a / b for a, b in zip(num, den)])


def header(label: str, unit: str, width: int = 36, extra: str = "") -> str:
    return f"{label:<{width}}{unit + ' min':>12}{'median':>10}{'max':>10}{extra}"


def row(name: str, xs: Sequence[float], width: int = 36, fmt: str = "10.2f", extra: str = "") -> str:
    lo, med, hi = spread(xs)
    return f"{name:<{width}}{lo:>12{fmt[2:]}}{med:{fmt}}{hi:{fmt}}{extra}"


def ratio_text(lo: float, med: float, hi: float) -> str:
    return f"{med:.2f}x ({lo:.2f}-{hi:.2f})"
