"""Build a report: run every registered analysis for each model and write one HTML page."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitscope.report.context import ReportContext
from vitscope.report.html import ReportPart, render
from vitscope.report.registry import available, run_analyses


@dataclass
class ModelSpec:
    """One model of a report: the model (or a name / path for ``load_model``), its images, and labels."""

    model: Any
    data: Any = None
    name: str = "model"
    title: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def build_report(models: Sequence[ModelSpec], out: str | Path = "runs/report", title: str = "vitscope report",
                 subtitle: str = "", analyses: Sequence[str] | None = None, progress: bool = True,
                 facts: dict[str, Any] | None = None, **context_options) -> Path:
    """Run the analyses (all registered ones by default) on every model and write ``out/report.html``.

    ``context_options`` go to :class:`ReportContext` (n_images, n_eval, n_show, batch_size).
    Returns the path of the page.
    """
    from vitscope.outlock import output_lock

    with output_lock(out, "vitscope report"):
        return _build_report(models, Path(out), title, subtitle, analyses, progress, facts, context_options)


def _build_report(models, out: Path, title: str, subtitle: str, analyses, progress: bool, facts,
                  context_options: dict) -> Path:
    from vitscope.models.loading import load_model

    t0 = time.time()
    descriptions = {a.name: a.description for a in available(analyses)}
    parts = []
    for spec in models:
        model = load_model(str(spec.model)) if isinstance(spec.model, (str, Path)) else spec.model
        ctx = ReportContext(model, spec.data, out_dir=out, name=spec.name, title=spec.title or spec.name,
                            report_dir=out, progress=progress, info=spec.info, **context_options)
        if ctx.dataset is not None:
            _ = ctx.images              # no usable image is one clear error before any section runs
        sections = run_analyses(ctx, analyses, progress=progress)
        summary = {k: v for k, v in spec.info.items() if isinstance(v, (str, int, float))}
        summary.update(headline(ctx.info))
        if ctx.dataset is not None:
            summary.setdefault("images", getattr(ctx.dataset, "description", f"{len(ctx.dataset)} images"))
            summary.setdefault("images used", f"{len(ctx.images)} for the attention analyses, up to {ctx.n_eval} "
                                              f"for accuracy, similarity and probes (spread over the dataset)")
        parts.append(ReportPart(spec.name, ctx.title, sections, summary, descriptions))
    facts = dict(facts or {})
    facts["built in"] = f"{time.time() - t0:.0f} s"
    page = out / "report.html"
    page.write_text(render(parts, title, subtitle, facts), encoding="utf-8")
    return page


def headline(info: dict[str, Any]) -> dict[str, str]:
    """The numbers worth a line at the top of a model's part (from what the analyses left in ctx.info)."""
    out = {}
    if "accuracy" in info:
        out["accuracy (top-1)"] = f"{100 * info['accuracy']:.1f}% on {info.get('accuracy_n', '?')} images"
    for rule, r in (info.get("saliency") or {}).items():
        out[f"saliency IoU, {rule} masks"] = (f"{r['trained']['last_block_merged']:.3f} (random weights "
                                              f"{r['random']['last_block_merged']:.3f}) on "
                                              f"{r.get('n_images', '?')} images")
    return out


def report(model, data: str | None = None, out: str | Path = "runs/report", name: str | None = None,
           analyses: Sequence[str] | None = None, progress: bool = True, **context_options) -> Path:
    """The report of one model (a HookedViT, a registry name, hub id or folder) on the user's images."""
    label = name or (Path(str(model)).name if isinstance(model, (str, Path)) else "model")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "model"
    spec = ModelSpec(model, data, name=safe, title=label)
    subtitle = f"Model <code>{_esc(label)}</code>" + (f" on <code>{_esc(data)}</code>" if data else "")
    return build_report([spec], out, title=f"vitscope report: {label}", subtitle=subtitle, analyses=analyses,
                        progress=progress, **context_options)


def _esc(v) -> str:
    from html import escape

    return escape(str(v))
