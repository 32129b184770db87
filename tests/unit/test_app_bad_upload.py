"""The page on a bad upload: one message, every view cleared, and the next good image works again.

The page's own event chain (``build_blocks``) is walked here as Gradio runs it: a step after ``.then`` runs
whatever came before, a step after ``.success`` only when the step before raised nothing; every ``gr.Error``
raised on the way with ``visible`` set is a message shown in the page (a toast), beside the notes the steps write.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.app.ui import build_blocks, check_image, make_state

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    state = make_state(models=["demo-vit"], tmp_dir=tmp_path_factory.mktemp("app"))
    return state, build_blocks(state)


def _component(demo, elem_id):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def _fire(demo, values: dict, component, event: str):
    """Run every step triggered by ``component``'s ``event``, in the page's order. Returns the toasts."""
    messages = []
    steps = [f for f in demo.fns.values() if (component._id, event) in f.targets]
    while steps:
        fn = steps.pop(0)
        ok = True
        try:
            out = fn.fn(*[values[c._id] for c in fn.inputs]) if fn.fn else None
        except gr.Error as e:
            if e.visible:
                messages.append(e.message)
            ok = False
        else:
            out = out if isinstance(out, tuple) else (out,)
            for c, v in zip(fn.outputs, out if fn.outputs else ()):
                if isinstance(v, dict) and v.get("__type__") == "update":
                    if "value" in v:
                        values[c._id] = v["value"]
                else:
                    values[c._id] = v
        steps += [f for f in demo.fns.values() if f.trigger_after == fn._id
                  and (ok or not f.trigger_only_on_success) and (not ok or not f.trigger_only_on_failure)]
    return messages


def _view_outputs(demo):
    """Every output of every view (the outputs of the ``/predict`` ... ``/patching`` endpoints)."""
    return [c for f in demo.fns.values() if f.api_name and f.api_visibility == "public" for c in f.outputs]


def test_bad_upload_one_message_every_view_cleared_then_a_good_upload_works(page, tmp_path):
    state, demo = page
    values = {i: getattr(b, "value", None) for i, b in demo.blocks.items()}
    upload = _component(demo, "vs-upload")
    outputs = _view_outputs(demo)
    assert len(outputs) == 26
    figure, top5 = _component(demo, "vs-attention"), _component(demo, "vs-top5")
    note = _component(demo, "vs-image-note")

    # the sample photograph: every view draws
    assert _fire(demo, values, upload, "change") == [] and values[note._id] == ""
    assert Path(values[figure._id]).is_file() and len(values[top5._id]) == 5

    # a text file named .png: one message, no figure, note, label or file of the last image stays
    folder = state.root / "uploads"
    folder.mkdir()
    bad = folder / "notes.png"
    bad.write_text("not an image\n" * 20)
    values[upload._id] = str(bad)
    toasts = _fire(demo, values, upload, "change")
    assert toasts == []                                       # the one message is the note under the upload
    assert "not an image" in values[note._id] and "\n" not in values[note._id]
    assert [c for c in outputs if values[c._id] not in (None, "")] == []

    # a good upload after it: every view draws again, on the new image
    good = folder / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(good)
    values[upload._id] = str(good)
    assert _fire(demo, values, upload, "change") == [] and values[note._id] == ""
    assert Path(values[figure._id]).is_file() and len(values[top5._id]) == 5
    empty = [c for c in outputs if values[c._id] in (None, "", [])]
    assert empty == [], [type(c).__name__ for c in empty]


def test_check_image_clears_only_on_a_bad_image(page):
    state, _ = page
    bad = state.root / "empty.png"
    bad.write_bytes(b"")
    *outs, msg = check_image(state, str(bad), "cat", 3)
    assert outs == [None, None, None] and "empty" in msg
    *outs, msg = check_image(state, None, "cat", 3)
    assert msg == "" and all(o == gr.skip() for o in outs)
    *outs, msg = check_image(state, None, "no-such-sample", 2)
    assert outs == [None, None] and "no sample photograph" in msg
