"""The results table (one parquet file per cell, one schema) and the figures drawn from it alone."""
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from vitscope.experiments.figures import summary_text, write_figures
from vitscope.experiments.results import (COLUMNS, cell_status, make_rows, read_results, set_aside, write_cell)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _base(cell, model, analysis, k=0, **kw):
    return {"study": "s", "cell": cell, "model": model, "weights_hash": "ab" * 32, "dataset": "shapes",
            "analysis": analysis, "options": "{}", "status": "ok", "error": None, "vitscope_version": "0.1.0",
            "time": T0 + dt.timedelta(seconds=k), "seconds": 1.0, **kw}


def _write_study(d):
    """A table as the runner writes it, with every kind of row the figures read."""
    rng = np.random.default_rng(0)
    models = ["vit-a", "vit-a (random)", "vit-b"]
    k = 0
    for m in models:                                         # per-block metrics, per head and per block
        rows = [{"block": b, "metric": "nmi", "value": float(rng.random())} for b in range(4)]
        rows += [{"block": b, "head": h, "metric": "nmi", "value": 0.5} for b in range(4) for h in range(2)]
        write_cell(d, f"cluster__{m}", make_rows(rows, _base(f"cluster__{m}", m, "cluster", k)))
        k += 1
        rows = [{"block": b, "metric": "identifiability", "task": "cls", "value": 0.5 + 0.1 * b} for b in range(3)]
        write_cell(d, f"ident__{m}", make_rows(rows, _base(f"ident__{m}", m, "class_embedding", k)))
        k += 1
    mats = {}
    for i, a in enumerate(models):                           # CKA: unordered pairs, as the runner writes them
        for b in models[i:]:
            m = rng.random((4, 3 if b == "vit-b" else 4))
            mats[(a, b)] = m
            rows = [{"block": r, "block2": c, "model2": b, "metric": "cka", "value": float(m[r, c])}
                    for r in range(m.shape[0]) for c in range(m.shape[1])]
            write_cell(d, f"cka__{a}+{b}", make_rows(rows, _base(f"cka__{a}+{b}", a, "cka", k, model2=b)))
            k += 1
    for m in ("vit-a", "vit-b"):                             # probe gains on two datasets, two experiments
        for ds in ("d1", "d2"):
            rows = [{"task": t, "metric": "gain", "value": g} for t, g in (("all-blocks linear", 1.0),
                                                                         ("all-blocks attentive", 2.5))]
            write_cell(d, f"probes__{m}__{ds}", make_rows(rows, _base(f"probes__{m}__{ds}", m, "probes", k,
                                                                     dataset=ds)))
            k += 1
    err = {**_base("cluster__broken", "vit-c", "cluster", k), "status": "error", "error": "ValueError: boom"}
    write_cell(d, "cluster__broken", [{**{c: None for c in COLUMNS}, **err}])
    return mats


def test_table_reads_with_one_line_of_pandas(tmp_path):
    _write_study(tmp_path)
    df = pd.read_parquet(tmp_path / "results")                # the documented one line
    assert list(df.columns) == COLUMNS
    assert len(df) == 3 * (4 + 8 + 3) + (16 + 16 + 12 + 16 + 12 + 12) + 8 + 1
    assert str(df["time"].dtype).startswith("datetime64") and df["value"].dtype == float
    assert cell_status(tmp_path, "cluster__vit-a") == "ok" and cell_status(tmp_path, "cluster__broken") == "error"
    assert cell_status(tmp_path, "nothing") is None
    ok = read_results(tmp_path, status="ok")
    assert (ok["status"] == "ok").all() and "vit-c" not in set(ok["model"])
    assert list(dict.fromkeys(ok["model"]))[:3] == ["vit-a", "vit-a (random)", "vit-b"]   # in the order they ran


def test_rows_are_checked_and_writes_are_atomic(tmp_path):
    with pytest.raises(ValueError, match="may only set"):
        make_rows([{"block": 0, "metric": "m", "value": 1.0, "colour": "red"}], _base("c", "m", "a"))
    with pytest.raises(ValueError, match="needs 'metric' and 'value'"):
        make_rows([{"block": 0, "value": 1.0}], _base("c", "m", "a"))
    write_cell(tmp_path, "c", make_rows([{"block": 0, "metric": "m", "value": 1.0}], _base("c", "m", "a")))
    write_cell(tmp_path, "c", make_rows([{"block": 1, "metric": "m", "value": 2.0}], _base("c", "m", "a")))
    files = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert files == ["c.parquet"]                              # replaced, no temporary file left
    assert pd.read_parquet(tmp_path / "results")["value"].tolist() == [2.0]


def test_superseded_cells_are_set_aside_and_restored(tmp_path):
    for c in ("keep", "old"):
        write_cell(tmp_path, c, make_rows([{"metric": "m", "value": 1.0}], _base(c, "m", "a")))
    assert set_aside(tmp_path, {"keep"}) == (1, 0)
    assert set(pd.read_parquet(tmp_path / "results")["cell"]) == {"keep"}
    assert (tmp_path / "superseded" / "old.parquet").exists()
    assert set_aside(tmp_path, {"keep", "old"}) == (0, 1)
    assert set(pd.read_parquet(tmp_path / "results")["cell"]) == {"keep", "old"}


def test_figures_from_a_written_table(tmp_path):
    mats = _write_study(tmp_path)
    df = read_results(tmp_path)
    text = summary_text(df)
    assert text.splitlines()[0].startswith("study s: 17 cells (1 error, 16 ok), 137 rows")
    assert "error: cluster__broken: ValueError: boom" in text
    written = write_figures(df, tmp_path / "figures")
    names = sorted(p.relative_to(tmp_path / "figures").as_posix() for p in written)
    assert names == ["cka/cka__shapes.png", "per_block/class_embedding__identifiability__shapes__cls.png",
                     "per_block/cluster__nmi__shapes.png", "probes/probes__gains.png"]
    for p in written:
        assert p.stat().st_size > 1000
    # per-block numbers beside the figure: the per-block rows only (no per-head rows)
    nmi = pd.read_csv(tmp_path / "figures/per_block/cluster__nmi__shapes.csv")
    assert len(nmi) == 3 * 4
    src = df[(df["analysis"] == "cluster") & df["head"].isna() & (df["status"] == "ok")]
    assert np.allclose(nmi.sort_values(["model", "block"])["value"], src.sort_values(["model", "block"])["value"])
    # CKA grid: every ordered pair, the mirrored ones transposed
    meta = json.loads((tmp_path / "figures/cka/cka__shapes.json").read_text())
    assert len(meta["pairs"]) == 9
    for (a, b), m in mats.items():
        key = next(k for k, v in meta["arrays"].items() if v == [a, b])
        assert np.allclose(np.load(tmp_path / f"figures/cka/cka__shapes.{key}.npy"), m)
        if a != b:
            key = next(k for k, v in meta["arrays"].items() if v == [b, a])
            assert np.allclose(np.load(tmp_path / f"figures/cka/cka__shapes.{key}.npy"), m.T)
    gains = pd.read_csv(tmp_path / "figures/probes/probes__gains.csv")
    assert len(gains) == 8 and set(gains["task"]) == {"all-blocks linear", "all-blocks attentive"}


def test_figures_of_an_empty_kind_are_not_drawn(tmp_path):
    write_cell(tmp_path, "c", make_rows([{"block": 0, "metric": "m", "value": 1.0}], _base("c", "m", "a")))
    written = write_figures(read_results(tmp_path), tmp_path / "figures")
    assert [p.name for p in written] == ["a__m__shapes.png"]
    assert not (tmp_path / "figures" / "cka").exists() and not (tmp_path / "figures" / "probes").exists()
