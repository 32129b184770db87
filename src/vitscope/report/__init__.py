"""The HTML report: one registry of analyses (``registry.analysis``), run on a model and its images.

>>> from vitscope.report import report
>>> report("path/to/model", "path/to/images", out="runs/report")      # -> runs/report/report.html
"""
from vitscope.report.build import ModelSpec, build_report, report
from vitscope.report.context import ReportContext
from vitscope.report.registry import ANALYSES, Section, analysis, available, load_builtin_analyses, run_analyses

load_builtin_analyses()

__all__ = ["ANALYSES", "ModelSpec", "ReportContext", "Section", "analysis", "available", "build_report", "report",
           "run_analyses"]
