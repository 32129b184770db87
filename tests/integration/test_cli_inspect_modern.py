"""`vitscope inspect` on the modern families (no network): the rotary, gated-MLP and attention-pool hooks are listed
with their shapes, and the token layout says where CLS and registers sit (or that there is no CLS)."""
import pytest
from typer.testing import CliRunner

from vitscope.cli.main import app

runner = CliRunner()


def _line(output: str, hook: str) -> str:
    return next(line for line in output.splitlines() if line.strip().startswith(hook + " "))


@pytest.mark.slow
def test_inspect_dinov3_shows_the_rotary_hooks():
    r = runner.invoke(app, ["inspect", "dinov3-vits16", "--random", "--input-size", "64"])
    assert r.exit_code == 0, r.output
    assert "CLS@0, registers@1..4 (4), patches@5..20 (4x4)" in r.output
    assert "(1, 21, 6, 64)" in _line(r.output, "blocks.0.attn.hook_rot_q")
    assert "(1, 21, 6, 64)" in _line(r.output, "blocks.11.attn.hook_rot_k")
    assert "rope: dinov3" in r.output


@pytest.mark.slow
def test_inspect_siglip2_and_eva02():
    r = runner.invoke(app, ["inspect", "siglip2-b16-224", "--random", "--input-size", "64"])
    assert r.exit_code == 0, r.output
    assert "patches@0..15 (4x4)" in r.output and "CLS@" not in r.output
    assert "(1, 12, 1, 16)" in _line(r.output, "attn_pool.hook_pattern")
    assert "(1, 768)" in _line(r.output, "hook_pooled")
    r = runner.invoke(app, ["inspect", "eva02-t14", "--random", "--input-size", "56"])
    assert r.exit_code == 0, r.output
    assert "(1, 17, 512)" in _line(r.output, "blocks.0.mlp.hook_pre_linear")
    assert "(1, 17, 3, 64)" in _line(r.output, "blocks.0.attn.hook_rot_q")
