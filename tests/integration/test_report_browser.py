"""The report in a real browser: headless Chromium (Debian package `chromium`) opens the page, takes a
screenshot, and a script injected before the page's own content records every image that failed to load and
every error or console.error; the DOM is dumped after the load event and checked here.

Regenerate the README screenshot from a demo report:
    .venv/bin/python tests/integration/test_report_browser.py runs/demo/report.html docs/img/report.png
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--disable-extensions", "--mute-audio"]

CHECK_SCRIPT = """<script>
window.__vsErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && t.tagName) { window.__vsErrors.push('resource failed: ' + t.tagName + ' ' + (t.alt || t.src || t.href)); }
  else { window.__vsErrors.push('error: ' + e.message); }
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__vsErrors.push('rejection: ' + e.reason); });
(function () {
  var ce = console.error;
  console.error = function () { window.__vsErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); };
})();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  var pre = document.createElement('pre');
  pre.id = 'vs-check';
  pre.textContent = JSON.stringify({
    images: imgs.length, broken: broken, errors: window.__vsErrors,
    sections: document.querySelectorAll('section.vs-section').length,
    failed: Array.prototype.map.call(document.querySelectorAll('section.status-failed'), function (s) { return s.id; }),
    external: Array.prototype.filter.call(document.querySelectorAll('img, script[src], link[href]'), function (e) {
      var u = e.getAttribute('src') || e.getAttribute('href') || ''; return /^(https?:)?\\/\\//.test(u); }).length
  });
  document.body.appendChild(pre);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def run_chromium(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    exe = find_chromium()
    with tempfile.TemporaryDirectory(prefix="vitscope-chromium-") as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def check_page(page: Path) -> dict:
    """Open a copy of ``page`` with the check script injected first in <head>; return what it recorded."""
    text = page.read_text(encoding="utf-8")
    probe = page.with_name("_browser_check.html")                 # same folder: relative links still resolve
    probe.write_text(text.replace("<head>", "<head>\n" + CHECK_SCRIPT, 1), encoding="utf-8")
    try:
        res = run_chromium(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom",
                            probe.resolve().as_uri()])
    finally:
        probe.unlink()
    m = re.search(r'<pre id="vs-check">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the check script did not run (chromium rc {res.returncode}): {res.stderr[-2000:]}"
    out = json.loads(html.unescape(m.group(1)))
    # messages the page logged that the script could not hook (e.g. from the browser itself about this page)
    out["console"] = [line for line in res.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    return out


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1800) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    res = run_chromium([f"--window-size={width},{height}", f"--screenshot={png.resolve()}",
                        "--virtual-time-budget=15000", page.resolve().as_uri()])
    assert png.exists(), f"no screenshot (chromium rc {res.returncode}): {res.stderr[-2000:]}"
    return png


needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="headless Chromium is not installed "
                                    "(Debian: apt-get install chromium); .ci/run installs it")


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """A report with every kind of section: a tiny random ViT with late CLS and registers, and a plain one."""
    import torch

    from vitscope.data.synthetic import SHAPES
    from vitscope.models import HookedViT, PreprocessConfig, ViTConfig
    from vitscope.report import ModelSpec, build_report

    torch.manual_seed(0)
    pp = PreprocessConfig(input_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    base = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=8,
                meta={"classes": list(SHAPES[:8])})
    dyn = HookedViT(ViTConfig(**base, num_registers=2, register_block=1, cls_block=2, register_location="end"), pp)
    plain = HookedViT(ViTConfig(**base), pp)
    data = "synthetic:size=32,classes=8,n=24,split=test"
    out = tmp_path_factory.mktemp("report")
    page = build_report([ModelSpec(dyn, data, "dyn", "late CLS + registers"), ModelSpec(plain, data, "plain")],
                        out, n_images=6, n_eval=24, n_show=3, progress=False)
    return page


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_report_loads_in_chromium_without_errors(small_report, tmp_path):
    res = check_page(small_report)
    n_img = small_report.read_text().count("<img ")
    assert res["images"] == n_img and n_img >= 20
    assert res["broken"] == [], res["broken"]
    assert res["errors"] == [] and res["console"] == [], (res["errors"], res["console"])
    assert res["failed"] == [] and res["sections"] >= 20
    assert res["external"] == 0                                   # self-contained: nothing fetched from a server
    png = screenshot(small_report, tmp_path / "report.png")
    from PIL import Image

    im = Image.open(png).convert("L")
    assert im.size == (1280, 1800)
    lo, hi = im.getextrema()
    assert hi - lo > 100                                           # not a blank page


@pytest.mark.browser
@needs_chromium
def test_the_checker_sees_a_broken_image_and_a_console_error(tmp_path):
    """The harness itself must be able to fail."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>x</title></head><body>"
                    "<img alt='good' src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAA"
                    "DUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=='>"
                    "<img alt='missing' src='nowhere.png'><script>console.error('boom')</script></body></html>")
    res = check_page(page)
    assert res["images"] == 2 and res["broken"] == ["missing"]
    assert any("boom" in e for e in res["errors"])
    assert any("resource failed" in e for e in res["errors"])


if __name__ == "__main__":   # regenerate a screenshot: python test_report_browser.py REPORT.html OUT.png
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
