"""Shared styling of bar figures: colours that stay distinct past ten series, and legends outside the axes."""
from __future__ import annotations


def distinct_colours(n: int) -> list[tuple]:
    """``n`` RGBA colours, all different: matplotlib's default ten (``tab10``) first, then their light variants
    (``tab20``), then evenly spaced colours of ``turbo`` past twenty."""
    import matplotlib

    if n <= 20:
        tab20 = matplotlib.colormaps["tab20"].colors
        return [(*tab20[2 * k], 1.0) if k < 10 else (*tab20[2 * (k - 10) + 1], 1.0) for k in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(x) for x in [0.05 + 0.9 * k / (n - 1) for k in range(n)]]


def bar_hatch(k: int) -> str | None:
    """A hatch for the ``k``-th series past the first ten, so a light colour never passes for its dark twin."""
    return None if k < 10 else ("//", "..", "xx", "\\\\")[(k // 10 - 1) % 4]


def legend_outside(ax, title: str | None = None, fontsize: float = 7):
    """The legend right of the axes (never over the bars); the figure's constrained layout makes room for it."""
    return ax.legend(fontsize=fontsize, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                     borderaxespad=0.0, title=title, title_fontsize=fontsize)
