"""`vitscope app` on the command line: its help, and the one-line error without Gradio."""
from __future__ import annotations

import sys

from typer.testing import CliRunner

from vitscope.cli.main import app


def test_app_help_lists_the_options():
    res = CliRunner().invoke(app, ["app", "--help"])
    assert res.exit_code == 0
    for opt in ("--model", "--host", "--port", "--concurrency", "--cache-size", "--max-mb", "--tmp-dir"):
        assert opt in res.output


def test_without_gradio_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)          # import gradio -> ImportError
    res = CliRunner().invoke(app, ["app", "--port", "1"])
    assert res.exit_code != 0
    assert isinstance(res.exception, RuntimeError)
    assert 'pip install "vitscope[app]"' in str(res.exception)
