"""Retrieval, DAVIS and keypoints through the Python API (``evaluate``), the command line (given the same
``synthetic:`` task roots a study takes) and a study cell: the same table; their options' checks; retrieval over
unreadable images against a loop written from the definition; DAVIS frames not enlarged."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tests.frontends import assert_same_values, run_cli, study_cell, values
from vitscope.analysis.api import OptionError

ROOTS = {"revisited": "synthetic:size=32,landmarks=2", "davis": "synthetic:size=32,videos=1,frames=3",
         "spair": "synthetic:size=32,pairs=4"}
STUDY = f"""\
study: t
models: [demo-vit]
datasets:
  - {{name: tasks, revisited: "{ROOTS['revisited']}", davis: "{ROOTS['davis']}", spair: "{ROOTS['spair']}"}}
analyses:
  - {{name: retrieval, options: {{protocols: [medium, hard], blocks: "0,-1"}}}}
  - {{name: davis, options: {{resolution: squash, radius: 3, n_last: 1, blocks: "0,-1"}}}}
  - {{name: keypoints, options: {{pairs_per_category: 0, blocks: "2,5"}}}}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("study")


@pytest.mark.slow
def test_retrieval_python_cli_and_study_give_the_same_table(study, tmp_path):
    from vitscope.analysis.retrieval import RetrievalOptions, evaluate

    rows, ctx = study_cell(STUDY, "retrieval", study)
    api = evaluate({"demo-vit": ctx.model(0)}, ctx.task_root("revisited"),
                   RetrievalOptions(protocols=("medium", "hard"), blocks="0,-1"))
    run_cli("retrieval", "-m", "demo-vit", "--root", ROOTS["revisited"], "--protocols", "medium,hard",
            "--blocks", "0,-1", "-o", tmp_path, "-q")
    cli = pd.read_parquet(tmp_path / "retrieval.parquet")
    assert_same_values(values(api.table), values(rows))
    assert_same_values(values(api.table), values(cli))
    assert len(api.table) == 2 * 2 * 4 and (tmp_path / "data").is_dir()       # the synthetic set, written once


@pytest.mark.slow
def test_davis_python_cli_and_study_give_the_same_table(study, tmp_path):
    from vitscope.analysis.video_segmentation import DavisOptions, evaluate

    rows, ctx = study_cell(STUDY, "davis", study)
    api = evaluate({"demo-vit": ctx.model(0)}, ctx.task_root("davis"),
                   DavisOptions(resolution="squash", radius=3, n_last=1, blocks="0,-1"))
    run_cli("davis", "-m", "demo-vit", "--davis", ROOTS["davis"], "--resolution", "squash", "--radius", 3,
            "--n-last", 1, "--blocks", "0,-1", "-o", tmp_path, "-q")
    cli = pd.read_parquet(tmp_path / "davis.parquet")
    assert_same_values(values(api.table), values(rows))
    assert_same_values(values(api.table), values(cli))
    assert set(api.table["block"]) == {0, 5} and (tmp_path / "davis_objects.csv").exists()


@pytest.mark.slow
def test_keypoints_python_cli_and_study_give_the_same_table(study, tmp_path):
    from vitscope.analysis.correspondence import KeypointsOptions, evaluate

    rows, ctx = study_cell(STUDY, "keypoints", study)
    api = evaluate({"demo-vit": ctx.model(0)}, ctx.task_root("spair"),
                   KeypointsOptions(pairs_per_category=0, blocks="2,5"))
    run_cli("keypoints", "-m", "demo-vit", "--spair", ROOTS["spair"], "--pairs-per-category", 0, "--blocks", "2,5",
            "-o", tmp_path, "-q")
    cli = pd.read_parquet(tmp_path / "keypoints.parquet")
    assert_same_values(values(api.table), values(rows))
    assert_same_values(values(api.table), values(cli))
    assert set(api.table["metric"]) == {"pck@0.1", "pck@0.05", "pck@0.01"} and set(api.table["pairs"]) == {4}


@pytest.mark.parametrize("cls, kw, words", [
    ("retrieval", dict(imsize=0), "`imsize` must be an integer >= 8, got 0"),
    ("retrieval", dict(protocols="easy,harder"), "`protocols` takes easy, medium, hard"),
    ("retrieval", dict(preprocess="crop"), "`preprocess` must be one of thumbnail, model"),
    ("davis", dict(limit=0), "`limit` must be a positive integer, got 0"),
    ("davis", dict(short_side=0), "`short_side` must be a positive integer, got 0"),
    ("davis", dict(resolution="x"), "`resolution` must be one of dino, squash, dense"),
    ("davis", dict(temperature=0), "`temperature` must be positive, got 0"),
    ("keypoints", dict(size=0), "`size` must be an integer >= 8, got 0"),
    ("keypoints", dict(pairs_per_category=-1), "`pairs_per_category` must be an integer >= 0, got -1"),
    ("keypoints", dict(split="train"), "`split` must be one of test, val, trn, got 'train'"),
])
def test_options_say_what_was_expected(cls, kw, words):
    from vitscope.analysis.correspondence import KeypointsOptions
    from vitscope.analysis.retrieval import RetrievalOptions
    from vitscope.analysis.video_segmentation import DavisOptions

    with pytest.raises(OptionError) as e:
        {"retrieval": RetrievalOptions, "davis": DavisOptions, "keypoints": KeypointsOptions}[cls](**kw)
    assert str(e.value).startswith(words) and e.value.field == next(iter(kw))


@pytest.mark.parametrize("args, words", [
    (["retrieval", "-m", "demo-vit", "--root", "x", "--imsize", "0"], "--imsize must be an integer >= 8, got 0"),
    (["keypoints", "-m", "demo-vit", "--spair", "x", "--size", "0"], "--size must be an integer >= 8, got 0"),
    (["keypoints", "-m", "demo-vit", "--spair", "x", "--pairs-per-category", "-1"],
     "--pairs-per-category must be an integer >= 0, got -1"),
    (["davis", "-m", "demo-vit", "--davis", "x", "--limit", "0"], "--limit must be a positive integer, got 0"),
    (["davis", "-m", "demo-vit", "--davis", "x", "--short-side", "0"], "--short-side must be a positive integer"),
    (["davis", "-m", "demo-vit", "--davis", "synthetic:videoz=2"], "unknown synthetic option 'videoz'"),
])
def test_cli_bad_values_are_one_line_naming_the_flag(args, words, tmp_path):
    from typer.testing import CliRunner

    from vitscope.cli.main import app

    r = CliRunner().invoke(app, args + ["-o", str(tmp_path)])
    assert r.exit_code != 0 and isinstance(r.exception, ValueError) and words in str(r.exception), r.exception


def _two_ground_truths(tmp_path):
    from vitscope.data.synthetic import SynthConfig, write

    write(tmp_path, SynthConfig(size=32), formats=["revisited"], landmarks=2)
    root = tmp_path / "revisited" / "rsynth"
    shutil.copy(root / "gnd_rsynth.pkl", root / "gnd_other.pkl")
    return root


def test_retrieval_names_the_option_that_chooses_a_ground_truth(tmp_path):
    from typer.testing import CliRunner

    from vitscope.analysis.retrieval import evaluate
    from vitscope.cli.main import app

    root = _two_ground_truths(tmp_path)
    with pytest.raises(OptionError, match=r"holds 2 ground truths \(other, rsynth\); choose one with `name`"):
        evaluate([], root)
    r = CliRunner().invoke(app, ["retrieval", "-m", "demo-vit", "--root", str(root), "-o", str(tmp_path / "o")])
    assert "choose one with --name" in str(r.exception) and "name=" not in str(r.exception)


def _ap(ranked_ids, positives, ignored):
    """Average precision from the definition (revisitop): ignored items are removed from the ranking, then the
    trapezoidal rule over the positives' positions; positives never ranked add nothing."""
    kept = [i for i in ranked_ids if i not in set(ignored)]
    ap, found = 0.0, 0
    for r, i in enumerate(kept):
        if i in set(positives):
            p0 = 1.0 if r == 0 else found / r
            found += 1
            ap += (p0 + found / (r + 1)) / 2
    return ap / len(positives)


def test_retrieval_skips_unreadable_images_against_a_loop(tmp_path):
    """One database image and one query are unreadable: they are skipped (and listed), the query is not scored and
    the database image counts as never retrieved; the mAP equals a loop over the readable images."""
    from vitscope import HookedViT, ViTConfig
    from vitscope.analysis.retrieval import evaluate, image_descriptors, protocol_sets
    from vitscope.data.tasks import load_revisited
    from vitscope.data.tasks.revisited import revisited_loaders

    from vitscope.data.synthetic import SynthConfig, write

    write(tmp_path, SynthConfig(size=32), formats=["revisited"], landmarks=2)
    root = tmp_path / "revisited" / "rsynth"
    gt = load_revisited(root)
    bad_db = int(gt.queries[0].easy[0])                         # a positive of query 0
    (root / "jpg" / f"{gt.imlist[bad_db]}.jpg").write_bytes(b"not a jpeg")
    (root / "jpg" / f"{gt.queries[1].name}.jpg").write_bytes(b"")
    torch.manual_seed(0)
    model = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)).eval()
    res = evaluate({"m": model}, root, protocols=("medium",), blocks="1")
    assert {r.id for r in res.meta["skipped"]} == {str(root / "jpg" / f"{gt.imlist[bad_db]}.jpg"),
                                                   str(root / "jpg" / f"{gt.queries[1].name}.jpg")}
    assert "skipped 2 unreadable image(s)" in res.summary
    db, qs = revisited_loaders(gt)
    keep_db = [i for i in range(len(db)) if i != bad_db]
    keep_q = [q for q in range(len(qs)) if q != 1]
    f = lambda items: image_descriptors({"m": model}, items, {"m": [1]}, imsize=32)["m"][1]  # noqa: E731
    fdb, fq = f([db[i] for i in keep_db]), f([qs[q] for q in keep_q])
    fdb, fq = fdb / np.linalg.norm(fdb, axis=1, keepdims=True), fq / np.linalg.norm(fq, axis=1, keepdims=True)
    aps = []
    for row, q in zip(fq, keep_q):
        pos, ign = protocol_sets(gt.queries[q], "medium")
        if len(pos):
            order = sorted(range(len(keep_db)), key=lambda j: (-float(fdb[j] @ row), j))
            aps.append(_ap([keep_db[j] for j in order], pos.tolist(), ign.tolist()))
    got = res.table.set_index("metric")["value"]
    assert got["mAP_medium"] == pytest.approx(100 * np.mean(aps), abs=1e-6)
    assert int(res.table["n_queries"].iloc[0]) == len(aps) and int(res.table["n_db"].iloc[0]) == len(keep_db)


def test_davis_keeps_small_frames_at_their_size(tmp_path):
    """The dino resolution does not enlarge 64-px synthetic frames to 480 px (unless ``upscale``); the numbers are
    those of evaluate_davis at the frames' own size."""
    from vitscope import HookedViT, ViTConfig
    from vitscope.analysis.video_segmentation import davis_rows, evaluate, evaluate_davis
    from vitscope.data.synthetic import SynthConfig, write
    from vitscope.data.tasks import load_davis

    write(tmp_path, SynthConfig(size=32), formats=["davis"], videos=1, frames=3)
    torch.manual_seed(0)
    model = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)).eval()
    seqs = list(load_davis(tmp_path / "davis"))
    assert seqs[0].frames().shape[1:3] == (64, 64)
    got = evaluate({"m": model}, tmp_path / "davis", radius=2, n_last=1)
    ref = evaluate_davis(model, seqs, short_side=64, radius=2, n_last=1)
    want = {(r["block"], r["metric"]): r["value"] for r in davis_rows(ref, "m")}
    assert values(got.table) == pytest.approx({k: v for k, v in want.items()})
    assert ref["info"][seqs[0].name]["input_size"] == (64, 64)
    from vitscope.analysis.video_segmentation import dino_frame_size

    assert dino_frame_size(64, 64) == (480, 448)                  # what upscale=True (DINO's code) would run at


def test_report_sections_answer_to_their_old_names():
    from vitscope.report.registry import available

    assert [a.name for a in available(["video_segmentation", "correspondence"])] == ["davis", "keypoints"]
    assert [a.name for a in available(["davis", "video_segmentation"])] == ["davis"]


def test_synthetic_task_roots_are_written_once(tmp_path):
    from vitscope.data.tasks.synthetic import task_root

    a = task_root("synthetic:size=32,pairs=2", "spair", tmp_path)
    stamp = (a.parent / "synth.json").stat().st_mtime_ns
    assert task_root("synthetic:size=32,pairs=2", "spair", tmp_path) == a
    assert (a.parent / "synth.json").stat().st_mtime_ns == stamp and (a / "PairAnnotation").is_dir()
    with pytest.raises(FileNotFoundError, match="spair root not found"):
        task_root(tmp_path / "nope", "spair", tmp_path)
