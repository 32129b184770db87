"""Figures stay readable where the defaults of matplotlib fail: bar colours that do not repeat past ten series,
legends outside the bars, titles that do not collide, object contours on DAVIS overlays, chance lines and honest
ranges on per-block accuracy figures."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from vitscope.viz.experiments import plot_probe_gains  # noqa: E402
from vitscope.viz.probes import plot_gains  # noqa: E402
from vitscope.viz.style import distinct_colours  # noqa: E402

rng = np.random.default_rng(0)


def bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]


def extents(fig, *artists):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [a.get_window_extent(r) for a in artists]


def overlap(a, b):
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5


@pytest.mark.parametrize("n", [1, 10, 12, 20, 25])
def test_distinct_colours_never_repeat(n):
    cols = distinct_colours(n)
    assert len(cols) == n and len({tuple(np.round(c, 4)) for c in cols}) == n
    if n <= 10:                                     # the first ten are matplotlib's default cycle
        assert [c[:3] for c in cols] == [to_rgba(f"C{k}")[:3] for k in range(n)]


GAINS = {
    "probes": lambda n: plot_gains([{"model": m, "run": f"run-{r:02d}", "gain": float(rng.normal()) * 0.02}
                                    for m in ("demo-vit", "demo-vit-reg4") for r in range(n)]),
    "experiments": lambda n: plot_probe_gains([{"model": m, "task": f"experiment {t:02d}", "dataset": "a",
                                                "value": float(rng.normal())}
                                               for m in ("demo-vit", "demo-vit-reg4") for t in range(n)]),
}


@pytest.mark.parametrize("figure", sorted(GAINS))
def test_gains_twelve_bars_twelve_colours_and_legend_outside(figure):
    fig = GAINS[figure](12)
    ax = fig.axes[0]
    colours = {tuple(np.round(p.get_facecolor(), 4)) for p in bars(ax)}
    assert len(bars(ax)) == 24 and len(colours) == 12
    leg = ax.get_legend()
    assert len(leg.get_texts()) == 12
    box, lbox = extents(fig, ax, leg)
    assert not overlap(box, lbox), "the legend lies on the axes"
    W, H = fig.canvas.get_width_height()
    assert lbox.x0 >= 0 and lbox.x1 <= W + 0.5, "the legend is cut by the figure's edge"
    plt.close(fig)
