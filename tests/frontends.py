"""Helpers for the front-end agreement tests: the same analysis through the Python API (``evaluate``), the command
line and a study cell must give the same numbers on the same inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
from typer.testing import CliRunner


def run_cli(*args) -> pd.DataFrame | None:
    """Run ``vitscope ARGS`` in-process; raise with the output when it fails."""
    from vitscope.cli.main import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exit_code != 0:
        raise AssertionError(f"vitscope {' '.join(map(str, args))} failed: {r.output}\n{r.exception!r}")
    return r


def study_cell(study_yaml: str, analysis: str, work_dir):
    """``(rows, ctx)`` of the first cell of ``analysis`` in a study, run by its adapter as the runner would."""
    from vitscope.experiments.analyses import REGISTRY
    from vitscope.experiments.cells import expand, store_tokens
    from vitscope.experiments.config import parse_study
    from vitscope.experiments.context import CellContext

    study = parse_study(study_yaml)
    cells = expand(study)
    cell = next(c for c in cells if c.analysis == analysis)
    ctx = CellContext(cell, work_dir, store_tokens(study, cells), features=study.features)
    return REGISTRY[analysis].fn(ctx, ctx.options), ctx


def values(table, keys=("block", "metric")) -> dict:
    """``{(block, metric, ...): value}`` of a table (DataFrame or rows), for comparing front ends."""
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    return {tuple(None if pd.isna(r[k]) else r[k] for k in keys): float(r["value"]) for _, r in df.iterrows()}


def assert_same_values(a: dict, b: dict, rtol: float = 1e-6) -> None:
    assert set(a) == set(b), (sorted(set(a) ^ set(b), key=str)[:5])
    keys = sorted(a, key=str)
    np.testing.assert_allclose([a[k] for k in keys], [b[k] for k in keys], rtol=rtol, atol=1e-9)
