"""`vitscope synth` and `vitscope check-data` end to end."""
import csv
import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from vitscope.cli.main import app
from vitscope.data import open_dataset, tasks

SMALL = ["--size", "32", "--classes", "3", "--train-per-class", "2", "--val-per-class", "1", "--scenes", "2",
         "--part-images", "2", "--semantic-images", "2", "--videos", "1", "--frames", "3", "--pairs", "2",
         "--landmarks", "1", "--quiet"]


def test_synth_writes_every_format_and_refuses_a_full_folder(tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["synth", str(out), *SMALL])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "synth.json").read_text())
    assert set(manifest["written"]) == {"imagefolder", "coco", "partimagenet", "imagenet_s", "davis", "spair",
                                        "revisited"}
    assert manifest["config"]["size"] == 32 and manifest["classes"] == ["circle", "square", "triangle"]
    ds = open_dataset(out / "classification" / "train", transform=np.array)
    assert len(ds) == 6 and ds[0][0].shape == (32, 32, 3)
    assert len(tasks.load_davis(out / "davis")[0]) == 3
    again = CliRunner().invoke(app, ["synth", str(out), *SMALL])
    assert again.exit_code != 0 and "not empty" in str(again.exception)
    only = CliRunner().invoke(app, ["synth", str(tmp_path / "only"), *SMALL, "--formats", "imagefolder"])
    assert only.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["classification", "synth.json"]


def test_check_data_lists_bad_files_and_writes_a_report(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(root / f"good{k}.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("hello")
    report = tmp_path / "out" / "skipped.csv"
    res = CliRunner().invoke(app, ["check-data", str(root), "--report", str(report), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "skipped 2 of 5 images (1 empty, 1 not an image)" in res.output
    rows = list(csv.DictReader(report.open()))
    assert sorted(r["id"].rsplit("/", 1)[1] for r in rows) == ["empty.jpg", "notes.png"]


def test_check_data_mistyped_path_is_one_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["check-data", str(tmp_path / "nope")])
    assert res.exit_code != 0 and isinstance(res.exception, FileNotFoundError)
    assert "dataset not found" in str(res.exception)
