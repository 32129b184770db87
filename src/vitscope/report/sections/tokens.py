"""cls-register's CLS / register attention pages: a multi-page PDF per image (one page per token), linked from the
report, with the pages of the first image embedded."""
from __future__ import annotations

import numpy as np

from vitscope.report.registry import Section, analysis


@analysis("token_pages", "CLS and register attention (cls-register)", needs=("registers", "images"), order=60)
def token_pages(ctx) -> Section:
    """At the last block (every token present), the per-head attention of CLS and of each register over the
    patch tokens; one PDF per image, one page per token."""
    from vitscope.analysis.attention.maps import attention_map
    from vitscope.viz.attention_tokens import plot_token_page, tokens_pdf

    model = ctx.model
    cfg = model.cfg
    block = cfg.depth - 1
    lay = ctx.layout(block)
    tokens = (["cls"] if lay.cls is not None else []) + [f"reg{k}" for k in range(len(lay.registers))]
    k = min(3, len(ctx.images))
    pattern = ctx.patterns[block]
    maps = {t: attention_map(pattern, lay, t).numpy() for t in tokens}                           # n, H, r, c
    sec = Section()
    sec.add_text(f"{cfg.num_registers} registers enter before block {cfg.register_block} (appended at the "
                 f"{cfg.register_location}), CLS before block {cfg.cls_block}. Below, block {block}: what each of "
                 f"them attends to. Registers often take global, image-independent roles (cf. \"Vision "
                 f"Transformers need registers\").")
    for i in range(k):
        path = ctx.path(f"tokens_image{int(ctx.indices[i])}_block{block}.pdf")
        tokens_pdf(path, ctx.display[i], {t: maps[t][i] for t in tokens}, block)
        sec.link(ctx, f"PDF: image #{int(ctx.indices[i])}, block {block} ({len(tokens)} pages)", path)
    for t in tokens[:2]:
        fig = plot_token_page(ctx.display[0], maps[t][0], t, block)
        sec.figure(ctx, fig, f"page_{t}", f"{t.upper() if t == 'cls' else t}: per-head attention over the patches "
                   f"(image #{int(ctx.indices[0])}, block {block}).", arrays={"maps": maps[t][0]})
    # how much the registers attend to the same place in different images: low spread = global role
    spread = {t: float(np.mean(np.std(maps[t].mean(1), axis=0))) for t in tokens}
    sec.table(ctx, [{"token": t, "spread over images of the head-mean map": round(v, 5)} for t, v in spread.items()],
              "spread", f"Image dependence of each token's attention (std over {len(ctx.images)} images, mean over "
              f"patches)")
    return sec
