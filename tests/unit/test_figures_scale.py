"""Grids of attention maps share one colour scale with a colour bar (or each panel its own, on request), and the
titles of data-set figures name the data, the image count and the token mode."""
import numpy as np
import pytest

from vitscope.viz.attention import plot_block_head_grid, plot_head_maps
from vitscope.viz.attention_tokens import plot_token_page
from vitscope.viz.titles import context_title

rng = np.random.default_rng(0)


def panel_images(fig):
    """The AxesImage of every map panel (the colour bar's axes hold no AxesImage)."""
    return [ax.images[0] for ax in fig.get_axes() if ax.images and ax.get_label() != "<colorbar>"]


def test_block_head_grid_shares_one_scale_with_a_colour_bar():
    maps = rng.random((3, 4, 5, 5)) * np.arange(1, 13).reshape(3, 4, 1, 1)        # panels of different ranges
    fig = plot_block_head_grid(maps, blocks=[2, 3, 4])
    ims = panel_images(fig)
    assert len(ims) == 12
    for im in ims:
        assert im.get_clim() == pytest.approx((maps.min(), maps.max()))
    bars = [ax for ax in fig.get_axes() if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    lo, hi = bars[0].get_ylim()
    assert (lo, hi) == pytest.approx((maps.min(), maps.max()))


def test_per_panel_scales_on_request():
    maps = rng.random((2, 3, 4, 4)) * np.arange(1, 7).reshape(2, 3, 1, 1)
    fig = plot_block_head_grid(maps, shared_scale=False)
    ims = panel_images(fig)
    for k, im in enumerate(ims):
        m = maps[k // 3, k % 3]
        assert im.get_clim() == pytest.approx((m.min(), m.max()))
    assert not [ax for ax in fig.get_axes() if ax.get_label() == "<colorbar>"]


@pytest.mark.parametrize("draw", [
    lambda m, **kw: plot_head_maps(m, **kw),
    lambda m, **kw: plot_token_page(None, m, "cls", 3, **kw),
])
def test_head_grids_share_the_scale(draw):
    maps = rng.random((6, 4, 4)) * np.arange(1, 7).reshape(6, 1, 1)
    ims = panel_images(draw(maps))
    assert {im.get_clim() for im in ims} == {(maps.min(), maps.max())}
    ims = panel_images(draw(maps, shared_scale=False))
    assert [im.get_clim() for im in ims] == [(m.min(), m.max()) for m in maps]


def test_overlays_use_the_shared_scale():
    """Over an image, the same map value gets the same colour in every panel when the scale is shared."""
    img = np.full((8, 8, 3), 128, np.uint8)
    maps = np.stack([np.full((2, 2), 0.5), np.full((2, 2), 1.0)])[None]             # 1 block, 2 heads, constant
    maps[0, 0, 0, 0], maps[0, 1, 0, 0] = 0.0, 0.0                                      # both span [0, ...]
    fig = plot_block_head_grid(maps, image=img, alpha=1.0)
    a, b = (np.asarray(im.get_array()) for im in panel_images(fig))
    assert not np.array_equal(a[6, 6], b[6, 6])                                        # 0.5 and 1.0 differ
    fig = plot_block_head_grid(maps, image=img, alpha=1.0, shared_scale=False)
    a, b = (np.asarray(im.get_array()) for im in panel_images(fig))
    np.testing.assert_array_equal(a[6, 6], b[6, 6])                                     # each at its own max


def test_context_titles():
    assert context_title("CKA", "builtin:demo", 64, "cls") == "CKA\nbuiltin:demo · 64 images · cls tokens"
    assert context_title("CKA", n_images=1) == "CKA\n1 image"
    assert context_title(None, "synthetic:n=8") == "synthetic:n=8"
    assert context_title("t") == "t" and context_title(None) is None
    fig = plot_block_head_grid(rng.random((1, 2, 3, 3)), title="map mean", data="builtin:demo", n_images=7)
    assert fig._suptitle.get_text() == "map mean\nbuiltin:demo · 7 images"
