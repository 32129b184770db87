"""`vitscope explain` on unreadable files: skipped with a report, and one clear error when none is left."""
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from vitscope.cli.main import app


def test_explain_skips_unreadable_and_fails_when_none_is_left(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    r = CliRunner().invoke(app, ["explain", str(bad), "-m", "demo-vit", "-o", str(tmp_path / "o1"), "-q"])
    assert r.exit_code != 0 and isinstance(r.exception, ValueError)
    assert "no usable image" in str(r.exception)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    r = CliRunner().invoke(app, ["explain", str(bad), str(good), "-m", "demo-vit", "-o", str(tmp_path / "o2"), "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o2" / "skipped.csv").exists() and (tmp_path / "o2" / "explain.csv").exists()
    assert len((tmp_path / "o2" / "explain.csv").read_text().strip().splitlines()) == 2    # header + the one good image
