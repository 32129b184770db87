"""The "SAE features" tab in a real browser: headless Chromium opens `vitscope app --sae DIR` (demo-vit and an
SAE saved to disk), opens the tab, uploads an image, waits for the latent's figure of that upload, clicks a patch
and waits for the latents listed there; the console holds no error.

Regenerate the documentation's screenshot (with the SAE of docs/sae.md's example; without it, random weights):
    PYTHONPATH=src .venv/bin/python tests/integration/test_app_sae_browser.py docs/img/app_sae.png \
        runs/sae/topk-b3-w512-k16-lr0.001
"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_app_browser import _photo, needs_chromium  # noqa: E402
from test_app_sae_server import saved_sae as _sae  # noqa: E402
from test_report_browser import find_chromium  # noqa: E402

FIGURE = "document.querySelector('#vs-sae img')"
NOTE = "document.querySelector('#vs-sae-note').innerText"


def run_page(png: Path, upload: Path, saes: Path, width: int = 1280, height: int = 1400) -> dict:
    import torch

    from _cdp import Browser
    from vitscope.app.ui import build_app, launch

    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, state = build_app(models=["demo-vit"], saes=[saes])
    _, url, _ = launch(demo, state, port=port, block=False, quiet=True)
    try:
        with Browser(find_chromium(), width, height) as b:
            b.goto(url)
            # the tab may sit in Gradio's overflow menu: click the last button of that name (the menu's entry)
            tabs = "[...document.querySelectorAll('button')].filter(t => t.innerText.trim() === 'SAE features')"
            b.wait_js(f"{tabs}.length > 0", 120)
            b.js(f"{tabs}.at(-1).click()")
            b.wait_js("(() => { const e = document.querySelector('#vs-sae'); return e && e.offsetParent !== null })()",
                      60)
            first = b.js(f"(() => {{ const i = {FIGURE}; return i ? i.src : null }})()")
            b.set_files("#vs-upload input[type=file]", [str(upload)])
            # the upload's figure, once every event of the upload has finished (an upload clears the patch)
            seen = b.wait_js(f"(() => {{ const i = {FIGURE}; const busy = document.querySelector('#vs-sae-note')"
                             f".innerText.includes('processing'); return i && i.complete && i.naturalWidth > 0 && "
                             f"i.src !== {json.dumps(first)} && !busy ? {{src: i.src, w: i.naturalWidth}} : null }})()", 180)
            before = b.js(NOTE)
            patch = None
            for _ in range(3):                                        # a click while the page is busy may be lost
                left, top, w, h = b.js(f"(() => {{ const r = {FIGURE}.getBoundingClientRect(); "
                                       f"return [r.left, r.top, r.width, r.height] }})()")
                for kind in ("mousePressed", "mouseReleased"):       # row 2, column 5 of the 8 x 8 patches
                    b.call("Input.dispatchMouseEvent", session=True, type=kind, x=left + w * 5.5 / 8,
                           y=top + h * 2.5 / 8, button="left", clickCount=1)
                try:       # the note of the clicked patch (Gradio shows "processing" over the old one meanwhile)
                    patch = b.wait_js("(() => { const t = document.querySelector('#vs-sae-note').innerText; "
                                      "return t.includes('(2, 5)') && !t.includes('processing') ? t : null })()", 60)
                    break
                except TimeoutError:
                    continue
            rows = b.js("document.querySelectorAll('#vs-sae-latents tbody tr').length")
            b.screenshot(png)
            return {"seen": seen, "before": before, "patch": patch, "rows": rows, "errors": list(b.errors)}
    finally:
        demo.close()


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_sae_tab_on_an_uploaded_image_without_console_errors(tmp_path):
    res = run_page(tmp_path / "sae.png", _photo(tmp_path / "upload.png"), _sae(tmp_path / "saes"))
    assert res["errors"] == [], res["errors"]
    assert "/results/" in res["seen"]["src"] and res["seen"]["w"] > 0
    assert res["patch"] is not None and res["patch"] != res["before"], res["before"]
    assert "not active" not in res["patch"], res["patch"]     # the strongest latent at the patch is shown
    assert res["rows"] >= 1


if __name__ == "__main__":     # python tests/integration/test_app_sae_browser.py OUT.png [SAE_DIR]
    import tempfile

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "app_sae.png")
    with tempfile.TemporaryDirectory() as d:
        saes = Path(sys.argv[2]) if len(sys.argv) > 2 else _sae(Path(d) / "saes")
        r = run_page(out, _photo(Path(d) / "upload.png"), saes, height=1150)
    print(out, r["errors"])
