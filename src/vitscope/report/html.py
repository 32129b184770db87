"""One self-contained HTML page from report sections: figures embedded as base64 PNG, no external resource."""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from vitscope.report.registry import Section, TableItem

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #dfe3ea; --accent: #3355aa; --bg: #ffffff; --soft: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       background: var(--bg); }
header { padding: 28px 40px 18px; border-bottom: 1px solid var(--line); background: var(--soft); }
header h1 { margin: 0 0 6px; font-size: 26px; }
header p { margin: 2px 0; color: var(--muted); }
.layout { display: flex; align-items: flex-start; }
nav { position: sticky; top: 0; width: 270px; flex: none; max-height: 100vh; overflow-y: auto; padding: 18px 18px 40px;
      border-right: 1px solid var(--line); font-size: 13.5px; }
nav h3 { margin: 14px 0 4px; font-size: 13.5px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
nav a { display: block; padding: 2px 0; color: var(--fg); text-decoration: none; }
nav a:hover { color: var(--accent); }
main { flex: 1; min-width: 0; padding: 10px 40px 60px; }
h2.part { margin: 34px 0 4px; padding-top: 8px; font-size: 22px; border-top: 3px solid var(--accent); }
section { margin: 22px 0 30px; }
section h3 { margin: 0 0 8px; font-size: 18px; }
.badge { display: inline-block; margin-left: 8px; padding: 0 7px; border-radius: 9px; font-size: 11.5px;
         vertical-align: middle; background: #e5efe5; color: #25632f; }
.badge.skipped { background: #f1f1f1; color: #6b6b6b; }
.badge.failed { background: #fbe4e4; color: #9b1c1c; }
.secs { font-size: 11.5px; font-weight: normal; color: var(--muted); }
.skipped-line { color: var(--muted); font-style: italic; }
.failed-line { color: #9b1c1c; }
.desc { color: var(--muted); font-size: 13.5px; margin: 0 0 8px; }
figure { display: inline-block; margin: 8px 14px 14px 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
figcaption { font-size: 13px; color: var(--muted); max-width: 640px; }
figcaption .files { font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; }
th { background: var(--soft); }
.tablewrap { max-height: 360px; overflow: auto; display: inline-block; max-width: 100%; }
.caption { font-size: 13px; color: var(--muted); margin-top: 10px; }
.summary td:first-child { font-weight: 600; }
code { background: var(--soft); padding: 0 4px; border-radius: 3px; font-size: 13px; overflow-wrap: anywhere; }
footer { padding: 16px 40px; color: var(--muted); font-size: 12.5px; border-top: 1px solid var(--line); }
"""


@dataclass
class ReportPart:
    """The sections of one model."""

    name: str
    title: str
    sections: list[Section]
    summary: dict[str, Any] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)


def _table(t: TableItem, max_rows: int = 400) -> str:
    cols = t.columns or list(dict.fromkeys(k for r in t.rows for k in r))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    body = []
    for r in t.rows[:max_rows]:
        body.append("<tr>" + "".join(f"<td>{escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>")
    more = f"<p class='desc'>{len(t.rows) - max_rows} more rows in the CSV.</p>" if len(t.rows) > max_rows else ""
    src = f" (<a href='{escape(t.file)}'>CSV</a>)" if t.file else ""
    cap = f"<div class='caption'>{escape(t.caption)}{src}</div>" if t.caption or src else ""
    return f"{cap}<div class='tablewrap'><table><tr>{head}</tr>{''.join(body)}</table></div>{more}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _section(part: ReportPart, sec: Section) -> str:
    anchor = f"{part.name}-{sec.key}"
    badge = f"<span class='badge {sec.status}'>{sec.status}</span>" if sec.status != "ok" else ""
    out = [f"<section id='{escape(anchor)}' class='vs-section status-{sec.status}'>",
           f"<h3>{escape(sec.title)}{badge} <span class='secs'>{sec.seconds:.1f} s</span></h3>"]
    desc = part.descriptions.get(sec.key)
    if desc:
        out.append(f"<p class='desc'>{escape(' '.join(desc.split()))}</p>")
    if sec.skipped:
        out.append(f"<p class='skipped-line'>{escape(sec.skipped)}</p>")
    if sec.error:
        out.append(f"<p class='failed-line'>failed: {escape(sec.error)} (details in {escape(part.name)}/report.log)</p>")
    for p in sec.text:
        out.append(f"<p>{p}</p>")                          # analyses write trusted HTML, escaping their inputs
    for f in sec.figures:
        files = ""
        if f.files:
            stem = f.files[0].rsplit(".", 1)[0]                  # the figure itself, then its numbers
            files = " <span class='files'>[" + ", ".join(
                f"<a href='{escape(p)}'>{escape(p[len(stem) + 1:] if p.startswith(stem + '.') else p)}</a>"
                for p in f.files) + "]</span>"
        out.append(f"<figure><img src='{f.data_uri}' alt='{escape(f.caption or sec.title)}'>"
                   f"<figcaption>{escape(f.caption)}{files}</figcaption></figure>")
    for t in sec.tables:
        out.append(_table(t))
    if sec.links:
        out.append("<ul>" + "".join(f"<li><a href='{escape(href)}'>{escape(label)}</a></li>"
                                    for label, href in sec.links) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def render(parts: Sequence[ReportPart], title: str = "vitscope report", subtitle: str = "",
           facts: dict[str, Any] | None = None) -> str:
    """The whole page as a string."""
    import vitscope

    nav, body = [], []
    for part in parts:
        nav.append(f"<h3>{escape(part.title)}</h3>")
        for sec in part.sections:
            mark = "" if sec.status == "ok" else f" <small>({sec.status})</small>"
            nav.append(f"<a href='#{escape(part.name)}-{escape(sec.key)}'>{escape(sec.title)}{mark}</a>")
        body.append(f"<h2 class='part' id='{escape(part.name)}'>{escape(part.title)}</h2>")
        if part.summary:
            rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(_fmt(v))}</td></tr>"
                           for k, v in part.summary.items())
            body.append(f"<table class='summary'>{rows}</table>")
        body.extend(_section(part, s) for s in part.sections)
    facts = dict(facts or {})
    facts.setdefault("generated", datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    facts.setdefault("vitscope", vitscope.__version__)
    fact_line = " · ".join(f"{escape(str(k))}: {escape(_fmt(v))}" for k, v in facts.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{escape(title)}</h1>
<p>{subtitle}</p>
<p>{fact_line}</p>
</header>
<div class="layout">
<nav>{''.join(nav)}</nav>
<main>
{''.join(body)}
</main>
</div>
<footer>Made by vitscope. Every figure's numbers (.npy / .json) and every table (.csv) are saved next to this page.</footer>
</body>
</html>
"""
