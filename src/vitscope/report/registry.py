"""The one registry of report analyses.

An analysis is a function ``fn(ctx: ReportContext) -> Section``; registering it is the only step needed for
it to appear in ``vitscope demo`` and ``vitscope report``::

    @analysis("attention_distance", "Mean attention distance", order=40)
    def attention_distance_section(ctx):
        sec = Section()
        sec.figure(ctx, fig, "distance", caption="...")
        return sec

``needs`` names what the analysis requires from the context ("labels", "masks", "classifier", "late_tokens");
when one is missing the section is not run and says why (``ctx.missing(need)``). An analysis may also return
``Section.skip("why")`` itself. An exception becomes a "failed" section (the report is still written).
"""
from __future__ import annotations

import base64
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FigureItem:
    caption: str
    png: bytes                          # embedded in the page as base64
    files: list[str] = field(default_factory=list)   # the saved figure and its numbers (paths)

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class TableItem:
    caption: str
    rows: list[dict[str, Any]]
    columns: list[str] | None = None
    file: str | None = None


@dataclass
class Section:
    """What an analysis contributes: paragraphs, figures, tables, links, or one "skipped" line."""

    title: str = ""
    key: str = ""
    text: list[str] = field(default_factory=list)
    figures: list[FigureItem] = field(default_factory=list)
    tables: list[TableItem] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)        # (label, path relative to the report)
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @classmethod
    def skip(cls, why: str) -> "Section":
        return cls(skipped=why)

    @property
    def status(self) -> str:
        return "failed" if self.error else "skipped" if self.skipped else "ok"

    # conveniences for analyses ------------------------------------------------------------------
    def add_text(self, *paragraphs: str) -> "Section":
        self.text.extend(paragraphs)
        return self

    def figure(self, ctx, fig, name: str, caption: str = "", arrays=None, meta=None) -> FigureItem:
        """Save ``fig`` under the context's folder (PNG + numbers) and embed it."""
        item = ctx.save_figure(fig, name, caption, arrays=arrays, meta=meta)
        self.figures.append(item)
        return item

    def table(self, ctx, rows: Sequence[dict], name: str, caption: str = "",
              columns: Sequence[str] | None = None) -> TableItem:
        """Add a table (also written as CSV beside the report)."""
        item = ctx.save_table(list(rows), name, caption, columns)
        self.tables.append(item)
        return item

    def link(self, ctx, label: str, path: str | Path) -> None:
        self.links.append((label, ctx.relative(path)))


@dataclass(frozen=True)
class Analysis:
    name: str
    title: str
    fn: Callable[[Any], Section]
    needs: tuple[str, ...] = ()
    order: int = 100
    description: str = ""


ANALYSES: dict[str, Analysis] = {}
ALIASES: dict[str, str] = {}            # an older name of an analysis -> its name


def analysis(name: str, title: str, needs: Iterable[str] = (), order: int = 100,
             aliases: Iterable[str] = ()) -> Callable:
    """Decorator: register ``fn(ctx) -> Section`` as a report analysis (one entry per analysis); ``aliases``: other
    names ``--analyses`` accepts for it."""
    def deco(fn: Callable[[Any], Section]) -> Callable[[Any], Section]:
        if name in ANALYSES and ANALYSES[name].fn is not fn:
            raise ValueError(f"a report analysis named {name!r} is already registered")
        ANALYSES[name] = Analysis(name, title, fn, tuple(needs), order, (fn.__doc__ or "").strip())
        ALIASES.update({a: name for a in aliases})
        return fn
    return deco


def load_builtin_analyses() -> None:
    """Import the modules that register vitscope's own analyses."""
    import vitscope.report.sections  # noqa: F401  (registers on import)


def available(names: Sequence[str] | None = None) -> list[Analysis]:
    load_builtin_analyses()
    if names is None:
        return sorted(ANALYSES.values(), key=lambda a: (a.order, a.name))
    names = [ALIASES.get(n, n) for n in names]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise ValueError(f"unknown report analysis {unknown}; available: {sorted(ANALYSES)}")
    return [ANALYSES[n] for n in dict.fromkeys(names)]


def run_analyses(ctx, names: Sequence[str] | None = None, progress: bool = True) -> list[Section]:
    """Run every registered analysis (or ``names``) on ``ctx``, in order; never raises for one analysis."""
    sections = []
    todo = available(names)
    from tqdm.auto import tqdm

    for a in tqdm(todo, desc=f"report {ctx.name}", unit="section", disable=not progress, leave=False):
        t0 = time.time()
        missing = [n for n in a.needs if not ctx.has(n)]
        if missing:
            sec = Section.skip(ctx.missing(missing[0]))
        else:
            try:
                sec = a.fn(_Scoped(ctx, a.name))
                if sec is None:
                    raise TypeError(f"analysis {a.name!r} returned None instead of a Section")
            except Exception as e:  # one failing analysis must not lose the whole report
                sec = Section(error=f"{type(e).__name__}: {e}")
                ctx.log(f"analysis {a.name} failed:\n{traceback.format_exc()}")
        sec.title = sec.title or a.title
        sec.key = a.name
        sec.seconds = round(time.time() - t0, 2)
        sections.append(sec)
    return sections


class _Scoped:
    """The context as one analysis sees it: file names are prefixed with the analysis name."""

    def __init__(self, ctx, name: str) -> None:
        self._ctx, self._name = ctx, name

    def __getattr__(self, item):
        return getattr(self._ctx, item)

    def save_figure(self, fig, stem: str, caption: str = "", arrays=None, meta=None) -> FigureItem:
        return self._ctx.save_figure(fig, f"{self._name}_{stem}", caption, arrays=arrays, meta=meta)

    def save_table(self, rows, stem: str, caption: str = "", columns=None) -> TableItem:
        return self._ctx.save_table(rows, f"{self._name}_{stem}", caption, columns)
