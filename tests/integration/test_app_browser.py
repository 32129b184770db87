"""The web app in a real browser: headless Chromium (Debian package `chromium`, as the report's browser test)
opens the page served on 127.0.0.1, uploads an image, waits for the attention figure of that upload, checks
that it rendered and that the console holds no error, and takes a screenshot.

Regenerate the documentation's screenshot:
    PYTHONPATH=src .venv/bin/python tests/integration/test_app_browser.py docs/img/app.png
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from test_report_browser import find_chromium  # noqa: E402

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="headless Chromium is not installed "
                                    "(Debian: apt-get install chromium); .ci/run installs it")

FIGURE = "document.querySelector('#vs-attention img')"


def _photo(path: Path) -> Path:
    img = Image.new("RGB", (240, 180), (30, 90, 200))
    ImageDraw.Draw(img).ellipse([80, 50, 160, 130], fill=(250, 200, 0))
    img.save(path)
    return path


def run_page(png: Path, upload: Path, width: int = 1280, height: int = 1500) -> dict:
    """Start the app, drive the page in Chromium, return what was seen (and write the screenshot)."""
    import torch

    from _cdp import Browser
    from vitscope.app.ui import build_app, launch

    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, state = build_app()
    _, url, _ = launch(demo, state, port=port, block=False, quiet=True)
    try:
        with Browser(find_chromium(), width, height) as b:
            b.goto(url)
            first = b.wait_js(f"(() => {{ const i = {FIGURE}; return i && i.complete && i.naturalWidth > 0 ? i.src : null }})()",
                              120)
            b.set_files("#vs-upload input[type=file]", [str(upload)])
            seen = b.wait_js(
                f"(() => {{ const i = {FIGURE}; return i && i.complete && i.naturalWidth > 0 && i.src !== {first!r} "
                f"? {{src: i.src, w: i.naturalWidth, h: i.naturalHeight}} : null }})()", 120)
            # the figure as the browser decoded it: draw it on a canvas and read its pixels back
            stats = b.js(f"""(() => {{ const i = {FIGURE}; const c = document.createElement('canvas');
                c.width = i.naturalWidth; c.height = i.naturalHeight; const x = c.getContext('2d');
                x.drawImage(i, 0, 0); const d = x.getImageData(0, 0, c.width, c.height).data;
                let lo = 255, hi = 0; for (let k = 0; k < d.length; k += 4) {{ const v = d[k]; lo = Math.min(lo, v); hi = Math.max(hi, v); }}
                return [lo, hi]; }})()""")
            note = b.js("document.querySelector('#vs-attention-note').innerText")
            top5 = b.js("document.querySelector('#vs-top5').innerText")
            b.screenshot(png)
            # a click on the figure makes the patch under the pointer the query (row 1, column 6 of 8 x 8)
            left, top, w, h = b.js(f"(() => {{ const r = {FIGURE}.getBoundingClientRect(); "
                                   f"return [r.left, r.top, r.width, r.height] }})()")
            for kind in ("mousePressed", "mouseReleased"):
                b.call("Input.dispatchMouseEvent", session=True, type=kind, x=left + w * 6.5 / 8, y=top + h * 1.5 / 8,
                       button="left", clickCount=1)
            clicked = b.wait_js("(() => { const n = document.querySelector('#vs-attention-note').innerText; "
                                "return n.includes('patch (') ? n : null })()", 60)
            return {"first": first, "seen": seen, "red_range": stats, "note": note, "top5": top5, "clicked": clicked,
                    "errors": list(b.errors), "root": str(state.root)}
    finally:
        demo.close()


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_upload_renders_the_attention_figure_without_console_errors(tmp_path):
    res = run_page(tmp_path / "app.png", _photo(tmp_path / "upload.png"))
    assert res["errors"] == [], res["errors"]
    assert res["seen"]["w"] == 448 and res["seen"]["h"] == 448
    assert "/results/" in res["seen"]["src"] and res["seen"]["src"] != res["first"]
    lo, hi = res["red_range"]
    assert hi - lo > 100                                   # a heat map, not a flat picture
    assert res["note"].startswith("CLS -> patches at block 5")
    assert res["clicked"].startswith("patch (1, 6) -> patches at block 5")
    assert "triangle" in res["top5"] or "circle" in res["top5"] or "%" in res["top5"]
    shot = np.asarray(Image.open(tmp_path / "app.png").convert("L"))
    assert shot.shape == (1500, 1280) and int(shot.max()) - int(shot.min()) > 100


@pytest.mark.browser
@needs_chromium
def test_the_driver_sees_console_errors_and_exceptions():
    """The harness itself must be able to fail."""
    from _cdp import Browser

    with Browser(find_chromium()) as b:
        b.goto("data:text/html,<p>x</p><script>console.error('boom');setTimeout(()=>{throw new Error('bang')},0)</script>")
        b.wait(lambda: len(b.errors) >= 2, 20, "two errors")
    assert any("boom" in e for e in b.errors) and any("bang" in e for e in b.errors)


if __name__ == "__main__":     # python tests/integration/test_app_browser.py OUT.png
    import tempfile

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "app.png")
    with tempfile.TemporaryDirectory() as d:
        r = run_page(out, _photo(Path(d) / "upload.png"), height=1150)
    print(out, r["errors"])
