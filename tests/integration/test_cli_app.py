"""`vitscope app` on the command line: its help, the one-line error without Gradio, and its temporary folder
removed when the server is stopped with SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_removes_the_apps_temporary_folder(tmp_path):
    pytest.importorskip("gradio")
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "vitscope", "app", "--port", str(port)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        root = Path(re.search(r"files in (\S+);", p.stdout.readline())[1])
        assert root.parent == tmp_path.resolve() and (root / "samples").is_dir()
        t0 = time.time()
        while True:                                               # the server answers: uploads may arrive
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except OSError:
                assert p.poll() is None and time.time() - t0 < 180, p.stdout.read()
                time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGTERM                        # it still ends by the signal
    assert not root.exists() and not list(tmp_path.glob("vitscope-app-*"))


@pytest.mark.slow
def test_a_given_folder_stays_and_ignored_signals_stay_ignored(tmp_path):
    pytest.importorskip("gradio")
    given = tmp_path / "mine"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from vitscope.app.ui import make_state
        signal.signal(signal.SIGHUP, signal.SIG_IGN)              # as under nohup
        mine = make_state(tmp_dir={str(given)!r}, preload=False)
        own = make_state(preload=False)
        print(own.root, flush=True)
        os.kill(os.getpid(), signal.SIGHUP)                       # ignored: the app goes on, its folder stays
        assert own.root.exists(), "removed on an ignored signal"
        os.kill(os.getpid(), signal.SIGTERM)
        sys.exit("still alive after SIGTERM")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == -signal.SIGTERM, r.stderr
    own = Path(r.stdout.split()[0])
    assert not own.exists() and (given / "samples").is_dir()
