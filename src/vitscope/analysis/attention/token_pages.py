"""CLS and register attention pages (cls-register): at one block, each prefix token's per-head attention over the
patch tokens, for every image (one PDF per image, one page per token), and how much each token's map changes from
image to image (registers often take global, image-independent roles).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vitscope.analysis.api import Drawn, OptionError, Result, tidy_table
from vitscope.analysis.attention.common import (
    AttentionOptions, check_block, data_description, map_frame, one_model, options_of, pattern_batches, weights_of,
)
from vitscope.analysis.attention.maps import attention_map
from vitscope.analysis.attention.tokens import resolve_query
from vitscope.runtime import model_meta

ABSENT = ("error", "skip")


@dataclass
class TokenPagesOptions(AttentionOptions):
    """Options of :func:`evaluate` (``vitscope tokens-pdf``, the app's token view, the report's pages)."""

    block: int = -1                     # block whose attention is read (-1: the last, where every token is present)
    absent: str = "error"               # a token not yet in the sequence at the block: error, or skip (noted)
    limit: int | None = 4               # at most this many images (one PDF each)
    batch_size: int = 4
    cmap: str = "inferno"
    progress: bool = False

    def validate(self) -> None:
        self.check_int("block", minimum=None)
        self.check_choice("absent", ABSENT)
        self.check_limit()
        self.check_int("batch_size")
        self.check_display()


def prefix_tokens(model) -> list[str]:
    """``cls`` (when the model has one) and ``reg0`` .. ``reg<k>``."""
    cfg = model.cfg
    return (["cls"] if cfg.class_token else []) + [f"reg{k}" for k in range(cfg.num_registers)]


def evaluate(models, data=None, options: TokenPagesOptions | None = None, **overrides) -> Result:
    """The per-head attention of CLS and of every register over the patches at one block, for each image.

    Args:
        models: one model (or ``{label: model}`` with one entry) with a CLS token or registers.
        data: images (a dataset spec, an ``ImageDataset``, image files, model inputs (N, 3, H, W)) or
            :class:`~vitscope.analysis.attention.common.AttentionPatterns`.
        options: :class:`TokenPagesOptions` (keyword overrides are applied on top).

    Returns a :class:`~vitscope.analysis.api.Result`: one row per image x token x head x patch (``metric``
    ``attention``, with ``image``, ``token``, ``head``, ``row``, ``col``), and per token ``image_spread`` (the
    standard deviation over images of its head-mean map, averaged over the patches: low for a token that attends
    to the same place in every image). ``arrays["maps"]``: ``{token: (N, H, rows, cols)}``; ``meta["notes"]``:
    tokens left out (``absent="skip"``) and where they enter. ``figures()``: one page per image and token;
    :func:`write_pdfs` writes the PDFs.
    """
    opts = options_of(TokenPagesOptions, options, overrides)
    label, model = one_model(models)
    cfg = model.cfg
    b = check_block(model, opts.block)
    tokens = prefix_tokens(model)
    if not tokens:
        raise ValueError("this model has neither a CLS token nor registers")
    present, notes = [], []
    for t in tokens:
        try:
            resolve_query(t, model.token_layout(b), cfg)       # a token before its block: one clear error
            present.append(t)
        except ValueError as e:
            if opts.absent == "error":
                raise
            if not (t.startswith("reg") and t != "reg0"):          # one line for all registers
                notes.append(str(e).replace("register 0 enters", "the registers enter"))
    if not present:
        raise OptionError("block", " ".join(notes))
    maps: dict[str, list] = {t: [] for t in present}
    display, index, ids = [], [], []
    for batch in pattern_batches(model, data, [b], opts.limit, opts.batch_size, opts.progress):
        for t in present:
            maps[t].append(attention_map(batch.patterns[b], batch.layouts[b], t, cfg=cfg).float().cpu().numpy())
        display += batch.display
        index += batch.index
        ids += batch.ids
    arrays = {"maps": {t: np.concatenate(v) for t, v in maps.items()}, "index": np.asarray(index),
              "display": display if all(d is not None for d in display) else None}
    n, H = len(ids), cfg.num_heads
    spread = {t: float(np.mean(np.std(m.mean(1), axis=0))) for t, m in arrays["maps"].items()}
    frames = [map_frame(m.reshape(n * H, *m.shape[2:]), metric="attention", token=t,
                        image=[i for i in ids for _ in range(H)], head=list(range(H)) * n)
              for t, m in arrays["maps"].items()]
    frames.append(pd.DataFrame({"metric": "image_spread", "token": list(spread), "value": list(spread.values())}))
    df = pd.concat(frames, ignore_index=True)
    df["head"] = df["head"].astype(object).where(df["head"].notna(), None)
    df.insert(0, "model", label)
    df.insert(1, "block", b)
    table = tidy_table(df, "token_pages", opts, dataset=data_description(data), weights={label: weights_of(model)})
    summary = (f"{label}: attention of {', '.join(present)} at block {b} over {n} image(s); spread over images "
               + ", ".join(f"{t} {v:.4f}" for t, v in spread.items()))
    if notes:
        summary += " (" + " ".join(notes) + ")"
    return Result("token_pages", table, summary, opts, arrays,
                  meta={"model": label, "block": b, "tokens": present, "notes": notes, "ids": ids,
                        "spread": spread, "record": model_meta(model, label)}, draw=_draw)


def _pages(result: Result):
    """(image position, file-name base) of every image of a result."""
    return [(k, f"{int(i):04d}_{Path(ident).stem}") for k, (i, ident) in
            enumerate(zip(result.arrays["index"], result.meta["ids"]))]


def _draw(result: Result):
    """One page per image and token: the image and the token's per-head maps."""
    from vitscope.viz.attention_tokens import plot_token_page

    a, m, o = result.arrays, result.meta, result.options
    b = m["block"]
    for k, base in _pages(result):
        disp = None if a["display"] is None else a["display"][k]
        for t in m["tokens"]:
            meta = {**m["record"], "image": m["ids"][k], "block": b, "token": t, "pdf": f"{base}_block{b}.pdf"}
            yield f"{base}_block{b}_{t}", Drawn(plot_token_page(disp, a["maps"][t][k], t, b, o.cmap),
                                                arrays={"maps": a["maps"][t][k]}, meta=meta)


def write_pdf(result: Result, k: int, path: str | Path) -> Path:
    """The multi-page PDF of the ``k``-th image of ``result``: one page per token (CLS first, then each register)."""
    from vitscope.viz.attention_tokens import tokens_pdf

    a, m = result.arrays, result.meta
    disp = None if a["display"] is None else a["display"][k]
    return tokens_pdf(path, disp, {t: a["maps"][t][k] for t in m["tokens"]}, m["block"], result.options.cmap)


def write_pdfs(result: Result, out: str | Path) -> list[Path]:
    """One PDF per image of ``result`` in ``out``: ``<index>_<name>_block<b>.pdf``."""
    return [write_pdf(result, k, Path(out) / f"{base}_block{result.meta['block']}.pdf")
            for k, base in _pages(result)]
