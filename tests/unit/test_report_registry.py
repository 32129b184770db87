"""The report registry: one entry adds a section; needs, skips and failures; the page is self-contained."""
import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.models import HookedViT, PreprocessConfig, ViTConfig
from vitscope.report import ANALYSES, ModelSpec, ReportContext, Section, analysis, build_report, run_analyses
from vitscope.report.registry import load_builtin_analyses


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    return HookedViT(cfg, PreprocessConfig(input_size=16, crop_pct=1.0))


@pytest.fixture
def scratch_analyses():
    """Register analyses for one test only."""
    load_builtin_analyses()
    before = dict(ANALYSES)
    yield
    ANALYSES.clear()
    ANALYSES.update(before)


def test_one_registry_entry_adds_one_section(tiny, tmp_path, scratch_analyses):
    @analysis("zz_probe", "A new analysis", order=999)
    def probe(ctx):
        """Counts the model's parameters."""
        from vitscope.viz.attention import subplots

        sec = Section()
        sec.add_text(f"{sum(p.numel() for p in ctx.model.parameters())} parameters")
        fig, ax = subplots(1, 1, figsize=(2, 2))
        ax[0, 0].plot([0, 1], [1, 0])
        sec.figure(ctx, fig, "line", "a line", arrays={"y": [1, 0]})
        sec.table(ctx, [{"a": 1, "b": 2.5}], "t", "a table")
        return sec

    @analysis("zz_needs_masks", "Needs masks", needs=("masks",), order=1000)
    def needs_masks(ctx):
        raise AssertionError("must not run without masks")

    @analysis("zz_broken", "Broken", order=1001)
    def broken(ctx):
        raise RuntimeError("something went wrong")

    page = build_report([ModelSpec(tiny, None, "m")], tmp_path, analyses=["zz_probe", "zz_needs_masks", "zz_broken"],
                        progress=False)
    text = page.read_text()
    n_params = sum(p.numel() for p in tiny.parameters())
    assert f"{n_params} parameters" in text and "Counts the model&#x27;s parameters." in text
    assert "skipped: the images have no object masks" in text
    assert "failed: RuntimeError: something went wrong" in text
    assert "something went wrong" in (tmp_path / "m" / "report.log").read_text()
    # the figure is embedded (a real PNG) and also saved with its numbers; the table also as CSV
    uris = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(uris) == 1
    im = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert im.format == "PNG" and im.size[0] > 50
    assert (tmp_path / "m" / "zz_probe_line.png").exists() and (tmp_path / "m" / "zz_probe_line.y.npy").exists()
    assert (tmp_path / "m" / "zz_probe_t.csv").read_text().splitlines() == ["a,b", "1,2.5"]
    with pytest.raises(ValueError, match="already registered"):
        analysis("zz_probe", "again")(lambda ctx: Section())


def test_model_only_report_skips_image_sections_with_reasons(tiny, tmp_path):
    ctx = ReportContext(tiny, None, out_dir=tmp_path, name="m", progress=False)
    sections = {s.key: s for s in run_analyses(ctx, progress=False)}
    assert sections["model_card"].status == "ok"
    assert sections["position_embedding"].status == "ok"
    for key in ("attention_maps", "rollout", "cka"):
        assert sections[key].skipped == "skipped: no images were given (pass --data)"
    assert sections["token_pages"].skipped == "skipped: the model has no register tokens"
    assert all(s.status != "failed" for s in sections.values()), {k: s.error for k, s in sections.items()}


def test_unknown_analysis_name(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown report analysis"):
        build_report([ModelSpec(tiny, None, "m")], tmp_path, analyses=["nope"], progress=False)


def test_layout_table_follows_the_token_layout():
    from vitscope.report.sections.card import layout_rows

    m = HookedViT(ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=4, num_heads=2, num_classes=3,
                            num_registers=2, register_block=1, cls_block=3, register_location="end"))
    rows = layout_rows(m)
    assert [r["entering block"] for r in rows] == [0, 1, 3]
    assert [r["tokens"] for r in rows] == [4, 6, 7]
    assert rows[2]["CLS"] == 0 and rows[2]["registers"] == "5..6" and rows[1]["CLS"] == "-"


def test_context_features_match_a_direct_forward(tmp_path):
    """One shared pass serves every token mode; compare with each block's output read by a plain hook."""
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=3,
                    num_registers=2, register_block=1, cls_block=2, register_location="end")
    model = HookedViT(cfg, PreprocessConfig(input_size=16, crop_pct=1.0))
    ctx = ReportContext(model, None, out_dir=tmp_path, name="m", progress=False, batch_size=4)
    x = torch.randn(10, 3, 16, 16)
    ctx._eval = (x, np.zeros(10, dtype=np.int64), np.arange(10))
    outs = {}
    for b in range(3):
        model.run_with_hooks(x, fwd_hooks=[(f"blocks.{b}.hook_resid_post",
                                            lambda t, hook, b=b: outs.__setitem__(b, t.detach()))])
    cls = ctx.block_features("trained", "cls")
    assert list(cls) == ["2"] and np.allclose(cls["2"], outs[2][:, 0].numpy(), atol=1e-5)
    mean = ctx.block_features("trained", "mean")
    assert np.allclose(mean["0"], outs[0].mean(1).numpy(), atol=1e-5)                 # 4 patches only
    assert np.allclose(mean["1"], outs[1][:, :4].mean(1).numpy(), atol=1e-5)          # registers appended
    assert np.allclose(mean["2"], outs[2][:, 1:5].mean(1).numpy(), atol=1e-5)         # CLS prepended
    assert ctx.block_features("trained", "all")["2"].shape == (10, 7 * 16)
    ctx2 = ReportContext(model, None, out_dir=tmp_path, name="m2", progress=False)
    ctx2._eval = ctx._eval
    ctx2.ALL_TOKENS_LIMIT = 100
    assert ctx2.block_features("trained", "all") is None
