"""Attention figures: every function returns a Figure that saves with its numbers; overlays blend as defined."""
import re

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from vitscope.viz import attention as VA
from vitscope.viz import attention_distance as VD
from vitscope.viz import attention_stats as VS
from vitscope.viz import attention_tokens as VT
from vitscope.viz.save import save_figure

rng = np.random.default_rng(0)


def test_overlay_blends_as_defined():
    img = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    m = rng.random((2, 2))
    np.testing.assert_array_equal(VA.overlay(img, m, alpha=0.0), img)
    heat = VA.overlay(img, m, alpha=1.0, mode="nearest")
    cmap = matplotlib.colormaps["inferno"]
    want = (np.asarray(cmap((m - m.min()) / (m.max() - m.min()))[..., :3]) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(heat[::4, ::4], want)
    with pytest.raises(ValueError, match="alpha"):
        VA.overlay(img, m, alpha=2)
    side = VA.heatmap_frame(img, m, layout="side")
    assert side.shape == (8, 16, 3)


def test_denormalize_roundtrip():
    img = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (img.transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_array_equal(VA.denormalize(x, mean, std), img)


@pytest.mark.slow
def test_every_figure_saves_with_its_numbers(tmp_path):
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    def data(*shape):
        return rng.random(shape)

    maps4, grid, batch, d3, dm = data(4, 4, 4), data(3, 4, 4, 4), data(2, 4, 4), data(3, 4), data(5, 2)
    std, v3, v34, cx, cy, sim, filt, page = data(3, 4) * 0.1, data(3), data(3, 4), data(3, 4), data(3, 4), \
        data(3, 3, 3, 3), data(5, 8, 8, 3), data(4, 4, 4)
    figs = {      # name: (figure, the arrays it draws)
        "heads": (VA.plot_head_maps(maps4, image=img, overlay_image=True), {"maps": maps4}),
        "grid": (VA.plot_block_head_grid(grid, blocks=[1, 2, 3]), {"maps": grid}),
        "batch": (VA.plot_image_overlays([img, img], batch), {"maps": batch}),
        "frames": (VA.plot_frames([img, img], ["0", "1"]), {"frames": np.stack([img, img])}),
        "dist": (VD.plot_attention_distance(d3, "B", std=std), {"mean": d3, "std": std}),
        "dist_models": (VD.plot_attention_distance_models({"a": d3, "b": dm}, relative_depth=True),
                        {"a": d3, "b": dm}),
        "block": (VS.plot_block_metric(v3, "std"), {"values": v3}),
        "head": (VS.plot_head_metric(v34, "std"), {"values": v34}),
        "heat": (VS.plot_block_head_heatmap(v34, label="IoU"), {"values": v34}),
        "offsets": (VS.plot_offsets(cx, cy), {"x": cx, "y": cy}),
        "pos": (VT.plot_position_similarity(sim), {"similarity": sim}),
        "filters": (VT.plot_patch_filters(filt), {"filters": filt}),
        "page": (VT.plot_token_page(img, page, "reg0", 2), {"maps": page}),
    }
    for name, (fig, arrays) in figs.items():
        assert isinstance(fig, Figure)
        fmts = ("png", "svg") if name == "heat" else ("png",)
        paths = save_figure(fig, tmp_path / name, fmts, dpi=40, arrays=arrays, meta={"name": name})
        assert {p.suffix for p in paths} == {f".{f}" for f in fmts} | {".npy", ".json"}
        assert all(p.stat().st_size > 0 for p in paths)
        for key, arr in arrays.items():                     # the numbers beside the picture are the ones drawn
            np.testing.assert_array_equal(np.load(tmp_path / f"{name}.{key}.npy"), arr)


def test_tokens_pdf_has_one_page_per_token(tmp_path):
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    maps = {"cls": rng.random((4, 4, 4)), "reg0": rng.random((4, 4, 4)), "reg1": rng.random((4, 4, 4))}
    p = VT.tokens_pdf(tmp_path / "t.pdf", img, maps, block=3)
    data = p.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 3
