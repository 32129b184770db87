"""Results tables, gains and ciernik2025's statistics.

The tidy results table has the columns ``model, dataset, experiment, probe, layer_set, split, metric, value``
(value in [0, 1]). A *run* is one (probe, experiment), written ``probe:experiment`` (``attentive:all``).

- :func:`gains`: test balanced top-1 minus the last-layer CLS linear probe of the same model and dataset (``linear:
  last_cls``; another baseline per model, e.g. the AP linear probe for MAE, with ``baseline_for``).
- :func:`wilcoxon_over_datasets`: per model, each pair of runs compared with a one-sided paired Wilcoxon signed-rank
  test (``scipy.stats.wilcoxon(a, b, alternative="greater")``) over the datasets (sorted by name) on the gains;
  every p-value of the call adjusted together with Benjamini-Hochberg, rejected where adjusted p < alpha.
- :func:`per_dataset_tests`: per dataset, the run with the highest mean over the models against every other run,
  one-sided paired Wilcoxon over the models, no correction.

Both tests take ``rule``:

- ``"vitscope"`` (default): the test does not depend on the unit of the gains. The differences a - b are freed of
  the float noise of the subtractions first: a difference within 1e-9 of the pair's largest |gain| is zero, and
  differences whose sizes lie within that of each other are tied. SciPy then sees the ties and zeros the exact
  numbers have, so fractions and percentage points give the same p-value (on raw floats SciPy can switch between
  its exact and its approximate test with the unit). A pair whose differences are all zero has no test: p = NaN,
  left out of the Benjamini-Hochberg family. (Leaving it out is valid independent filtering: under the null the
  signs of the differences are independent of their sizes, and an all-zero pair is chosen by its sizes alone.)
- ``"ciernik2025"``: ciernik2025's notebooks as they run: ``scipy.stats.wilcoxon(a, b, alternative="greater")`` on
  the numbers x 100 (gains for Figure 2, test balanced top-1 for Table 1), every pair kept; a pair equal on every
  dataset gets SciPy's p = 1 and stays in the Benjamini-Hochberg family.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitscope.analysis.api import Options, OptionError, Result, tidy_table

COLUMNS = ["model", "dataset", "experiment", "probe", "layer_set", "split", "metric", "value"]
BASELINE = ("linear", "last_cls")
FIGURE2_PAIRS = (("attentive:all", "attentive:last"), ("linear:all", "linear:last"),
                 ("attentive:all", "linear:all"), ("attentive:all", "attentive:tokens"))


def results_rows(fit, model: str, dataset: str, experiment: str, layer_set: str | None = None) -> list[dict]:
    """Tidy rows of one :class:`~vitscope.analysis.probes.tuning.ProbeFit`: train / test metrics, best validation."""
    base = {"model": model, "dataset": dataset, "experiment": experiment, "probe": fit.kind,
            "layer_set": layer_set if layer_set is not None else experiment}
    rows = [{**base, "split": split, "metric": k, "value": float(v)}
            for split, m in (("train", fit.train_metrics), ("test", fit.test_metrics)) for k, v in m.items()]
    rows.append({**base, "split": "val", "metric": "balanced_top1", "value": float(fit.best_val)})
    return rows


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control(p, method="bh")``): p_(i) n / i,
    made monotone from the largest down, capped at 1."""
    from scipy.stats import false_discovery_control

    return false_discovery_control(np.asarray(p, dtype=float), method="bh")


def _df(table):
    import pandas as pd

    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"a probe results table needs the columns {COLUMNS}; missing {sorted(missing)}")
    return df


def gains(table, metric: str = "balanced_top1", split: str = "test", baseline: tuple[str, str] = BASELINE,
          baseline_for: dict[str, tuple[str, str]] | None = None):
    """Per (model, dataset, run): value, the baseline's value and the gain (value - baseline), in [0, 1] units."""
    df = _df(table)
    df = df[(df["metric"] == metric) & (df["split"] == split)].copy()
    if df.empty:
        raise ValueError(f"no {split} {metric} rows in the results table")
    df["run"] = df["probe"] + ":" + df["experiment"]
    out = []
    for (model, dataset), part in df.groupby(["model", "dataset"], sort=True):
        bp, be = (baseline_for or {}).get(model, baseline)
        base = part[(part["probe"] == bp) & (part["experiment"] == be)]
        if base.empty:
            raise ValueError(f"no baseline run {bp}:{be} for model {model!r} on {dataset!r}; run `vitscope probe "
                             f"--layer-set last --reductions cls --probe linear` (experiment last_cls) first")
        b = float(base["value"].iloc[0])
        for _, r in part.iterrows():
            out.append({"model": model, "dataset": dataset, "run": r["run"], "value": float(r["value"]),
                        "baseline": b, "gain": float(r["value"]) - b})
    import pandas as pd

    return pd.DataFrame(out)


def _paired(g, key: str, a: str, b: str, over: str, column: str = "gain"):
    pa = g[g["run"] == a].set_index(over)[column]
    pb = g[g["run"] == b].set_index(over)[column]
    common = sorted(set(pa.index) & set(pb.index))
    return pa.loc[common].to_numpy(), pb.loc[common].to_numpy(), common


RULES = ("vitscope", "ciernik2025")
NOISE = 1e-9                      # relative to the pair's largest |gain|: differences closer than this are equal


def _check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return rule


def denoised_differences(a: np.ndarray, b: np.ndarray, rtol: float = NOISE) -> np.ndarray:
    """``a - b`` with float noise removed: differences within ``tol = rtol x max(|a|, |b|)`` of zero become 0, and
    in increasing order of size, a difference whose size lies within ``tol`` of the smallest size of its run takes
    that size, so that ties and zeros are those of the exact numbers, whatever their unit."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
    tol = rtol * scale
    mag = np.where(np.abs(d) <= tol, 0.0, np.abs(d))
    order = np.argsort(mag, kind="stable")
    anchor = None
    for i in order:
        if anchor is not None and mag[i] - anchor <= tol:
            mag[i] = anchor
        else:
            anchor = mag[i]
    return np.sign(d) * mag


def _wilcoxon_greater(a: np.ndarray, b: np.ndarray, rule: str = "vitscope") -> float:
    """One-sided paired Wilcoxon signed-rank p-value for a > b under ``rule`` (see the module docstring)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) == 0:
        return float("nan")
    if rule == "ciernik2025":
        if np.array_equal(a, b):
            return 1.0                                    # what SciPy returns there (with a warning)
        return float(wilcoxon(a, b, alternative="greater").pvalue)
    d = denoised_differences(a, b)
    if not d.any():
        return float("nan")
    return float(wilcoxon(d, alternative="greater").pvalue)


def wilcoxon_over_datasets(gain_table, pairs: Sequence[tuple[str, str]] = FIGURE2_PAIRS, alpha: float = 0.05,
                           models: Sequence[str] | None = None, rule: str = "vitscope"):
    """Figure 2's tests: per model and pair (a, b), is a's gain greater than b's over the datasets? ``rule``:
    "vitscope" (unit-independent, untestable pairs left out of the correction) or "ciernik2025" (the paper's
    notebook: gains x 100, every pair corrected); see the module docstring."""
    import pandas as pd

    _check_rule(rule)
    unit = 100.0 if rule == "ciernik2025" else 1.0
    g = gain_table
    rows = []
    for model in (models or sorted(g["model"].unique())):
        gm = g[g["model"] == model]
        for a, b in pairs:
            va, vb, ds = _paired(gm, "model", a, b, "dataset")
            if len(ds) == 0:
                continue
            rows.append({"model": model, "a": a, "b": b, "n_datasets": len(ds), "mean_gain_a": float(va.mean()),
                         "mean_gain_b": float(vb.mean()), "p": _wilcoxon_greater(va * unit, vb * unit, rule)})
    df = pd.DataFrame(rows)
    if df.empty:
        raise ValueError(f"none of the pairs {list(pairs)} has runs on common datasets in the table")
    ok = df["p"].notna()
    df["p_adjusted"] = np.nan
    df.loc[ok, "p_adjusted"] = benjamini_hochberg(df.loc[ok, "p"].to_numpy())
    df["reject"] = df["p_adjusted"] < alpha
    return df


def per_dataset_tests(gain_table, alpha: float = 0.05, runs: Sequence[str] | None = None, rule: str = "vitscope"):
    """Table 1's tests: per dataset, the run with the highest mean gain over models vs every other run (paired over
    models, one-sided Wilcoxon, no correction). ``rule="ciernik2025"``: the paper's notebook, on the test values
    x 100 (the same test as on the gains, up to float noise); see the module docstring."""
    import pandas as pd

    _check_rule(rule)
    column, unit = ("value", 100.0) if rule == "ciernik2025" else ("gain", 1.0)
    g = gain_table if runs is None else gain_table[gain_table["run"].isin(runs)]
    rows = []
    for dataset, gd in g.groupby("dataset", sort=True):
        means = gd.groupby("run")["gain"].mean()
        best = str(gd.groupby("run")[column].mean().idxmax()) if rule == "ciernik2025" else str(means.idxmax())
        for other in sorted(set(means.index) - {best}):
            va, vb, ms = _paired(gd, "dataset", best, other, "model", column)
            p = _wilcoxon_greater(va * unit, vb * unit, rule) if len(ms) else float("nan")
            rows.append({"dataset": dataset, "best": best, "other": other, "n_models": len(ms),
                         "mean_best": float(means[best]), "mean_other": float(means[other]), "p": p,
                         "significant": bool(p < alpha) if p == p else False})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class ProbeStatsOptions(Options):
    """Options of :func:`evaluate` (``vitscope probe-stats``)."""

    pairs: Any = None                      # run pairs a>b to test ("a>b,c>d" or [(a, b)]); default: Figure 2's
    baseline: str = "linear:last_cls"      # the run gains are measured against
    alpha: float = 0.05                    # significance level

    def validate(self) -> None:
        if not isinstance(self.baseline, str) or ":" not in self.baseline:
            raise OptionError("baseline", f"`baseline` is probe:experiment (e.g. linear:last_cls), got "
                                          f"{self.baseline!r}")
        self.check_number("alpha", 0, 1, low_open=True, high_open=True)
        if isinstance(self.pairs, str):
            pairs = []
            for item in (s for s in self.pairs.split(",") if s.strip()):
                if ">" not in item:
                    raise OptionError("pairs", f"`pairs` items are a>b, got {item!r}")
                a, b = (s.strip() for s in item.split(">", 1))
                pairs.append((a, b))
            self.pairs = tuple(pairs)
        elif self.pairs is not None:
            self.pairs = tuple(tuple(p) for p in self.pairs)


def read_results(paths) -> Any:
    """``vitscope probe`` results as one table: results.csv / .parquet files, or output folders holding one."""
    import pandas as pd

    frames = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            found = [p / n for n in ("results.parquet", "results.csv") if (p / n).is_file()]
            if not found:
                raise FileNotFoundError(f"{p} is a folder without results.csv or results.parquet; pass `vitscope "
                                        "probe` output folders or their results files")
            p = found[0]
        elif not p.exists():
            raise FileNotFoundError(f"results file not found: {p}")
        try:
            frames.append(pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p))
        except Exception as e:  # a corrupt or foreign file: one line naming it
            raise ValueError(f"cannot read the results table {p} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             "pass a results.csv / .parquet written by `vitscope probe`") from None
    if not frames:
        raise ValueError("no results tables given")
    return pd.concat(frames, ignore_index=True)


def evaluate(results, data=None, options: ProbeStatsOptions | None = None, **overrides) -> Result:
    """ciernik2025's statistics over probe runs: the gain of every run over the baseline (per model and dataset),
    one-sided paired Wilcoxon tests over datasets (Benjamini-Hochberg) and per-dataset tests over models.

    ``results``: a results table (DataFrame), or results files / ``vitscope probe`` output folders. Rows: ``model,
    dataset, task (the run), metric (gain), value`` (in [0, 1] units, as :func:`gains`); ``meta`` holds the gain
    table and the tests; ``figures()`` draws the gains."""
    import pandas as pd

    opts = options if options is not None else ProbeStatsOptions()
    opts = opts.replace(**overrides) if overrides else opts
    table = results if isinstance(results, pd.DataFrame) else read_results(results)
    g = gains(table, baseline=tuple(opts.baseline.split(":", 1)))
    runs = sorted(set(g["run"]))
    pairs = opts.pairs if opts.pairs is not None else [(a, b) for a, b in FIGURE2_PAIRS if a in runs and b in runs]
    tests = wilcoxon_over_datasets(g, pairs, alpha=opts.alpha) if pairs and g["dataset"].nunique() > 1 else None
    per = per_dataset_tests(g, alpha=opts.alpha) if g["model"].nunique() > 1 else None
    rows = [{"model": r.model, "dataset": r.dataset, "task": r.run, "metric": "gain", "value": r.gain}
            for r in g.itertuples()]
    shown = [r for r in runs if r != opts.baseline]
    summary = (f"{len(table)} rows, {g['model'].nunique()} model(s) x {g['dataset'].nunique()} dataset(s), "
               f"{len(shown)} runs, {0 if tests is None else len(tests)} Wilcoxon tests")
    return Result("probe_stats", tidy_table(rows, "probe_stats", opts), summary, opts,
                  meta={"gains": g, "wilcoxon_over_datasets": tests, "per_dataset_tests": per, "runs": shown},
                  draw=_draw)


def _draw(result: Result) -> dict:
    from vitscope.viz.probes import plot_gains

    g = result.meta["gains"]
    sets = list(dict.fromkeys(g["dataset"].dropna().astype(str)))
    where = sets[0] if len(sets) == 1 else f"mean over {len(sets)} datasets" if sets else None
    return {"gains": (plot_gains(g, result.meta["runs"], title=result.titled(
        "gain over the last-layer CLS linear probe", data=where)), g)}
