"""The evaluation API every analysis follows: one ``evaluate(models_or_stores, data, options) -> Result``.

* :class:`Options` — a dataclass that holds every default of an analysis and validates itself when built, with
  one style of message (:class:`OptionError`: "`k` must be a positive integer, got 0"). The command line, a study
  file's ``options:`` and the app's controls all map onto its fields (:meth:`Options.from_mapping`), so each default
  is written once.
* :class:`Result` — the tidy table (a pandas DataFrame whose first columns are :data:`COLUMNS`, the study table's),
  the figures it can draw (:meth:`Result.figures`, named matplotlib Figures), a one-line :attr:`Result.summary`, and
  the arrays behind them. :meth:`Result.save` writes the table (CSV + parquet) and every figure with its numbers.

The front ends (``cli/``, ``experiments/``, ``report/``, ``app/``) only parse, print or draw what ``evaluate``
returns; none of them holds science.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = ("model", "weights", "dataset", "analysis", "block", "metric", "value", "options")


class OptionError(ValueError):
    """A bad option value. ``field`` names the dataclass field, so a front end can name its own spelling of it
    (``--k`` on the command line, ``options.k`` in a study file)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


@dataclass
class Options:
    """Base class of every analysis's options. Subclasses are dataclasses with defaults for every field and a
    :meth:`validate` that uses the ``check_*`` helpers below; validation runs when an instance is built."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        """Raise :class:`OptionError` for a bad value; normalise values (e.g. lists to tuples) in place."""

    # ------------------------------------------------------------------ building
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, **overrides):
        """Build from a mapping (a study file's ``options:``, the app's controls); unknown keys are one line that
        lists the known ones and suggests the closest."""
        merged = {**dict(values or {}), **overrides}
        names = cls.field_names()
        unknown = [k for k in merged if k not in names]
        if unknown:
            k = unknown[0]
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise OptionError(k, f"unknown option `{k}`{hint}; {cls.__name__} takes {', '.join(names)}")
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def as_json(self, exclude: Sequence[str] = ()) -> str:
        """The options as canonical JSON (the ``options`` column), without run-time fields such as the device."""
        d = {k: v for k, v in self.to_dict().items() if k not in set(exclude) | set(RUNTIME_FIELDS)}
        return json.dumps(d, sort_keys=True, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o))

    # ------------------------------------------------------------------ checks (one message style)
    def check_int(self, name: str, minimum: int | None = 1, maximum: int | None = None,
                  optional: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, int):
            raise OptionError(name, f"`{name}` must be an integer, got {_fmt(v)}")
        if minimum == 1 and maximum is None and v < 1:
            raise OptionError(name, f"`{name}` must be a positive integer, got {v}")
        if minimum is not None and v < minimum:
            raise OptionError(name, f"`{name}` must be an integer >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise OptionError(name, f"`{name}` must be an integer <= {maximum}, got {v}")

    def check_ints(self, name: str, minimum: int = 1) -> None:
        """A non-empty sequence of integers >= ``minimum``; stored as a tuple."""
        v = getattr(self, name)
        if isinstance(v, int) and not isinstance(v, bool):
            v = (v,)
        if isinstance(v, str):
            try:
                v = tuple(int(p) for p in v.split(",") if p.strip())
            except ValueError:
                raise OptionError(name, f"`{name}` takes comma-separated integers, got {_fmt(getattr(self, name))}"
                                  ) from None
        v = tuple(v or ())
        if not v or any(isinstance(k, bool) or not isinstance(k, int) or k < minimum for k in v):
            what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
            raise OptionError(name, f"`{name}` takes {what}, got {_fmt(getattr(self, name))}")
        setattr(self, name, v)

    def check_number(self, name: str, low: float | None = None, high: float | None = None,
                     low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            raise OptionError(name, f"`{name}` must be a number, got {_fmt(v)}")
        bad = ((low is not None and (v <= low if low_open else v < low))
               or (high is not None and (v >= high if high_open else v > high)))
        if not bad:
            return
        if low is not None and high is not None:
            rng = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            rng = "positive" if (low == 0 and low_open) else f"{'>' if low_open else '>='} {low}"
        else:
            rng = f"{'<' if high_open else '<='} {high}"
        raise OptionError(name, f"`{name}` must be {rng}, got {v}")

    def check_choice(self, name: str, choices: Sequence[str], aliases: Mapping[str, str] | None = None) -> None:
        """One of ``choices``; an old spelling in ``aliases`` is replaced by its current name."""
        v = getattr(self, name)
        if aliases and v in aliases:
            v = aliases[v]
            setattr(self, name, v)
        if v not in choices:
            close = difflib.get_close_matches(str(v), list(choices), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError(name, f"`{name}` must be one of {', '.join(map(str, choices))}, got {_fmt(v)}{hint}")

    def check_blocks(self, name: str = "blocks") -> None:
        """``"all"``, ``"0,3,-1"`` or ``"4:8"`` (or a list of ints); the model's depth is checked when it is known."""
        from vitscope.features.access import parse_blocks

        v = getattr(self, name)
        if v is None or not isinstance(v, str):
            return
        try:
            parse_blocks(v, 1000)
        except ValueError as e:
            raise OptionError(name, str(e)) from None


#: fields that say how to run, not what is computed: left out of the ``options`` column
RUNTIME_FIELDS = ("device", "progress", "batch_size", "num_workers", "threads")


@dataclass
class Drawn:
    """A figure of :meth:`Result.figures` with what :meth:`Result.save` writes beside it: the rows it shows
    (``<name>.csv``), the arrays behind it (``<name>.<key>.npy``) and metadata (``<name>.json``)."""

    figure: Any
    rows: Any = None
    arrays: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class Result:
    """What ``evaluate`` returns. ``table``: tidy rows (pandas DataFrame, :data:`COLUMNS` first, then any extra
    columns of the analysis); ``summary``: one line; ``arrays``: the arrays behind the figures;
    ``draw``: ``draw(result) -> {name: Figure, (Figure, rows it shows), (Figure, rows, {"arrays": ..., "meta": ...}) or Drawn}``, called by :meth:`figures`;
    it may also return an iterator of ``(name, figure)`` pairs, which :meth:`save` draws and writes one at a
    time (analyses with a figure per image)."""

    analysis: str
    table: Any
    summary: str = ""
    options: Options | None = None
    arrays: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    draw: Callable[["Result"], dict[str, Any]] | None = field(default=None, repr=False)

    def figures(self) -> dict[str, Any]:
        """Named matplotlib Figures (empty when the analysis draws none)."""
        return {k: _unpack(v)[0] for k, v in self._drawn().items()}

    def _drawn(self) -> dict[str, Any]:
        return dict(self._draw_items())

    def _draw_items(self):
        if self.draw is None:
            return iter(())
        drawn = self.draw(self)
        return iter(drawn.items()) if isinstance(drawn, Mapping) else iter(drawn)

    def rows(self) -> list[dict]:
        return self.table.to_dict("records")

    # ------------------------------------------------------------------ what the figures were measured on
    def context(self, model: str | None = None, **changes) -> dict[str, Any]:
        """``{data, n_images, tokens}`` for the second title line of a figure (``vitscope.viz.titles``), from
        ``meta["context"]`` (which ``evaluate`` fills in; ``n_images`` may be ``{model: n}``, then ``model`` picks
        one, and a figure of several models shows the count they share, or none when they differ), with
        ``changes`` on top."""
        ctx = {"data": None, "n_images": None, "tokens": None, **(self.meta.get("context") or {}), **changes}
        n = ctx["n_images"]
        if isinstance(n, Mapping):
            counts = {int(v) for v in n.values() if v is not None}
            ctx["n_images"] = n.get(model) if model is not None else (counts.pop() if len(counts) == 1 else None)
        return ctx

    def titled(self, title: str | None, model: str | None = None, **changes) -> str | None:
        """``title`` with the context line below it (``builtin:demo · 64 images · cls tokens``): see
        :meth:`context`."""
        from vitscope.viz.titles import context_title

        return context_title(title, **self.context(model, **changes))

    def set_context(self, **context) -> "Result":
        """Name what the figures were measured on where ``evaluate`` could not know it (in-memory images have no
        name): ``data``, ``n_images`` or ``tokens`` replace ``meta["context"]``'s; returns the result."""
        bad = set(context) - {"data", "n_images", "tokens"}
        if bad:
            raise ValueError(f"the context takes data, n_images and tokens; got {sorted(bad)}")
        self.meta["context"] = {**(self.meta.get("context") or {}), **context}
        return self

    def save(self, out: str | Path, formats: Sequence[str] = ("png",), stem: str | None = None,
             figures: bool = True, table: bool = True) -> list[Path]:
        """Write ``<stem>.csv`` / ``.parquet`` (stem: the analysis name) and every figure as ``<name>.<fmt>`` with
        the rows it shows beside it; returns the paths written."""
        from vitscope.runtime import save_tidy
        from vitscope.viz.save import save_figure

        out = Path(out)
        written = save_tidy(self.table, out / (stem or self.analysis)) if table else []
        if figures:
            for name, drawn in self._draw_items():
                fig, shown, arrays, meta = _unpack(drawn)
                written += save_figure(fig, out / name, formats, arrays=arrays, meta=meta)
                if shown is not None:
                    written.append(out / f"{name}.csv")
                    shown.to_csv(written[-1], index=False)
        return written

    def __str__(self) -> str:
        return self.summary or f"{self.analysis}: {len(self.table)} rows"


def data_label(data) -> str | None:
    """What a figure title says the images were: a spec string, a dataset's description or a store's folder."""
    if data is None:
        return None
    if isinstance(data, str):
        return data
    if hasattr(data, "reductions"):
        return f"store {Path(str(data.path)).name}"
    return getattr(data, "description", None)


def _unpack(drawn) -> tuple:
    """(figure, rows shown, arrays, meta) of what ``draw`` returned for one name."""
    if isinstance(drawn, Drawn):
        return drawn.figure, drawn.rows, drawn.arrays, drawn.meta
    if isinstance(drawn, tuple):
        files = (drawn[2] if len(drawn) > 2 else None) or {}
        return drawn[0], drawn[1], files.get("arrays"), files.get("meta")
    return drawn, None, None, None


def tidy_table(rows: Sequence[Mapping[str, Any]], analysis: str, options: Options | None = None,
               dataset: str | None = None, weights: Mapping[str, str] | None = None):
    """Rows (dicts with at least ``model``, ``metric``, ``value``, or a DataFrame with those columns) -> a
    DataFrame with :data:`COLUMNS` first.

    ``weights``: model label -> weights identity (hash); ``options``: written as canonical JSON in every row."""
    import pandas as pd

    opts = options.as_json() if options is not None else None
    if isinstance(rows, pd.DataFrame):
        return _tidy_frame(rows, analysis, opts, dataset, weights)
    out = []
    for r in rows:
        row = {"model": r.get("model"), "weights": (weights or {}).get(r.get("model"), r.get("weights")),
               "dataset": r.get("dataset", dataset), "analysis": analysis, "block": r.get("block"),
               "metric": r["metric"], "value": r["value"], "options": opts}
        row.update({k: v for k, v in r.items() if k not in row})
        out.append(row)
    df = pd.DataFrame(out, columns=None if out else list(COLUMNS))
    if "block" in df and df["block"].notna().all() and len(df):
        df["block"] = df["block"].astype("int64")
    return df


def _tidy_frame(df, analysis: str, opts: str | None, dataset: str | None, weights: Mapping[str, str] | None):
    """:func:`tidy_table` of a DataFrame, built column by column in one go (large tables: a row per map cell)."""
    import numpy as np
    import pandas as pd

    n = len(df)

    def const(v):
        a = np.empty(n, dtype=object)
        a[:] = [v] * n if n else []
        return a

    model = df["model"].to_numpy() if "model" in df else const(None)
    if "weights" in df:
        w = df["weights"].to_numpy()
    else:
        lookup = {m: (weights or {}).get(m) for m in pd.unique(model)} if n else {}
        w = np.array([lookup[m] for m in model], dtype=object)
    cols = {"model": model, "weights": w,
            "dataset": df["dataset"].to_numpy() if "dataset" in df else const(dataset),
            "analysis": const(analysis), "block": df["block"].to_numpy() if "block" in df else const(None),
            "metric": df["metric"].to_numpy(), "value": df["value"].to_numpy(), "options": const(opts)}
    cols.update({c: df[c].to_numpy() for c in df.columns if c not in cols})
    out = pd.DataFrame(cols, copy=False)
    if n and out["block"].notna().all():
        out["block"] = out["block"].astype("int64")
    return out
