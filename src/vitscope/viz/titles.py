"""Figure titles that say what was measured on: the data set, the number of images and the token mode."""
from __future__ import annotations


def context_line(data: str | None = None, n_images: int | None = None, tokens: str | None = None) -> str:
    """``"synthetic:n=64 · 64 images · cls tokens"`` from whichever of the three are given ("" when none)."""
    parts = []
    if data:
        parts.append(str(data))
    if n_images is not None:
        parts.append(f"{int(n_images)} image{'s' if int(n_images) != 1 else ''}")
    if tokens:
        parts.append(f"{tokens} tokens")
    return " · ".join(parts)


def context_title(title: str | None, data: str | None = None, n_images: int | None = None,
                  tokens: str | None = None) -> str | None:
    """``title`` with the context line below it (or the context line alone; None when there is nothing)."""
    line = context_line(data, n_images, tokens)
    if title and line:
        return f"{title}\n{line}"
    return title or line or None
