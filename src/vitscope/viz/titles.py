"""Figure titles that say what was measured on: the data set, the number of images and the token mode."""
from __future__ import annotations

import re

#: the longest context line, in characters; longer ones are broken (a 4-inch figure holds about 65 at 10 pt)
WIDTH = 60
#: how a token mode reads in a title ("mean" is the mean of the patch tokens)
TOKEN_WORDS = {"mean": "mean of patch", "ap": "mean of patch", "patches": "patch",
               "centred": "centred patch"}                       # an SAE of patch tokens less their image's mean


def context_line(data: str | None = None, n_images: int | None = None, tokens: str | None = None,
                 width: int = WIDTH) -> str:
    """``"synthetic:n=64 · 64 images · cls tokens"`` from whichever of the three are given ("" when none).

    A line longer than ``width`` characters is broken between the parts, and a part longer than ``width`` (a long
    dataset spec or two of them) after a comma, space, slash or ``&``, so that the title is not cut by the edge of
    the figure."""
    parts = []
    if data:
        parts.append(str(data))
    if n_images is not None:
        parts.append(f"{int(n_images)} image{'s' if int(n_images) != 1 else ''}")
    if tokens:
        parts.append(f"{TOKEN_WORDS.get(str(tokens), tokens)} tokens")
    lines: list[str] = []
    for part in parts:
        for piece in _break(part, width):
            if lines and len(lines[-1]) + 3 + len(piece) <= width and not _continues(lines[-1], piece, part):
                lines[-1] += " · " + piece
            else:
                lines.append(piece)
    return "\n".join(lines)


def _break(text: str, width: int) -> list[str]:
    """``text`` in pieces of at most ``width`` characters where it can be (cut after ``, / & ?`` or a space)."""
    if len(text) <= width:
        return [text]
    out, line = [], ""
    for chunk in re.findall(r"[^,/&? ]*[,/&? ]*", text):
        if line and len(line) + len(chunk) > width:
            out.append(line.rstrip())
            line = ""
        line += chunk
    if line.strip():
        out.append(line.rstrip())
    return out


def _continues(last: str, piece: str, part: str) -> bool:
    """Whether ``piece`` is a later piece of a part that was broken (it starts a line of its own)."""
    return len(part) > len(piece) and not part.startswith(piece)


def context_title(title: str | None, data: str | None = None, n_images: int | None = None,
                  tokens: str | None = None) -> str | None:
    """``title`` with the context line below it (or the context line alone; None when there is nothing)."""
    line = context_line(data, n_images, tokens)
    if title and line:
        return f"{title}\n{line}"
    return title or line or None
