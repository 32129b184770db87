"""One writer per output folder: a second writer is refused with one line naming the first (issue: two
`vitscope extract` into one store used to crash on a missing progress temp file)."""
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from vitscope.outlock import OutputLockedError, output_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from vitscope.outlock import output_lock
    with output_lock(sys.argv[1], "holder test", part=sys.argv[2] if len(sys.argv) > 2 else None):
        print("locked", flush=True)
        time.sleep(60)
""")


def _hold(folder, *part):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), *part], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_is_refused_and_named(tmp_path):
    p = _hold(tmp_path / "out")
    try:
        with pytest.raises(OutputLockedError) as e:
            with output_lock(tmp_path / "out"):
                pass
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and "holder test" in msg and "\n" not in msg
    finally:
        p.kill()
        p.wait()
    # the operating system released the killed holder's lock: no stale lock
    with output_lock(tmp_path / "out"):
        pass


def test_parts_are_independent_and_lock_released_on_error(tmp_path):
    with output_lock(tmp_path, part="rank-0"):
        with output_lock(tmp_path, part="rank-1"):
            pass
        with pytest.raises(OutputLockedError):
            with output_lock(tmp_path, part="rank-0"):
                pass
    with pytest.raises(ZeroDivisionError):
        with output_lock(tmp_path):
            1 / 0
    with output_lock(tmp_path):                 # released after the exception
        pass


def test_extract_into_a_store_being_written_is_refused_and_store_untouched(tmp_path):
    from vitscope.features import extract_features
    from vitscope.models import HookedViT, ViTConfig

    torch.manual_seed(0)
    model = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4))
    p = _hold(tmp_path / "store", "rank-0")
    try:
        with pytest.raises(OutputLockedError, match=f"pid {p.pid}"):
            extract_features(model, "synthetic:n=8,size=32", tmp_path / "store", progress=False, num_workers=0)
        assert sorted(x.name for x in (tmp_path / "store").iterdir()) == [".vitscope-lock-rank-0"]
    finally:
        p.kill()
        p.wait()
    store = extract_features(model, "synthetic:n=8,size=32", tmp_path / "store", progress=False, num_workers=0)
    assert store.n == 8


def test_cli_second_extract_one_line(tmp_path):
    p = _hold(tmp_path / "store", "rank-0")
    try:
        r = subprocess.run([sys.executable, "-m", "vitscope", "extract", "-m", "demo-vit", "-d", "synthetic:n=4",
                            "-o", str(tmp_path / "store"), "-q"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "VITSCOPE_DEBUG": ""})
        assert r.returncode != 0
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(err) == 1 and f"pid {p.pid}" in err[0] and "Traceback" not in r.stderr
    finally:
        p.kill()
        p.wait()


def test_evaluation_commands_refuse_a_second_writer(tmp_path):
    p = _hold(tmp_path / "out")
    try:
        for cmd in (["davis", "--davis", str(tmp_path)], ["keypoints", "--spair", str(tmp_path)]):
            r = subprocess.run([sys.executable, "-m", "vitscope", *cmd, "-m", "demo-vit", "-o", str(tmp_path / "out")],
                               capture_output=True, text=True, timeout=120, env={**os.environ, "VITSCOPE_DEBUG": ""})
            assert r.returncode == 1 and f"pid {p.pid}" in r.stderr, (cmd, r.stderr)
    finally:
        p.kill()
        p.wait()
