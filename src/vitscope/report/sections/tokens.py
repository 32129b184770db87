"""cls-register's CLS / register attention pages: a multi-page PDF per image (one page per token), linked from the
report, with the pages of the first image embedded. Numbers from ``vitscope.analysis.attention.token_pages``."""
from __future__ import annotations

from vitscope.report.registry import Section, analysis


@analysis("token_pages", "CLS and register attention (cls-register)", needs=("registers", "images"), order=60)
def token_pages(ctx) -> Section:
    """At the last block (every token present), the per-head attention of CLS and of each register over the
    patch tokens; one PDF per image, one page per token."""
    from vitscope.analysis.attention.token_pages import TokenPagesOptions, evaluate, write_pdf
    from vitscope.viz.attention_tokens import plot_token_page

    cfg = ctx.model.cfg
    result = evaluate({ctx.name: ctx.model}, ctx.attention_patterns(), TokenPagesOptions(limit=None))
    block, tokens, maps = result.meta["block"], result.meta["tokens"], result.arrays["maps"]     # {t: n, H, r, c}
    k = min(3, len(ctx.images))
    sec = Section()
    sec.add_text(f"{cfg.num_registers} registers enter before block {cfg.register_block} (appended at the "
                 f"{cfg.register_location}), CLS before block {cfg.cls_block}. Below, block {block}: what each of "
                 f"them attends to. Registers often take global, image-independent roles (cf. \"Vision "
                 f"Transformers need registers\").")
    for i in range(k):
        path = write_pdf(result, i, ctx.path(f"tokens_image{int(ctx.indices[i])}_block{block}.pdf"))
        sec.link(ctx, f"PDF: image #{int(ctx.indices[i])}, block {block} ({len(tokens)} pages)", path)
    for t in tokens[:2]:
        fig = plot_token_page(ctx.display[0], maps[t][0], t, block)
        sec.figure(ctx, fig, f"page_{t}", f"{t.upper() if t == 'cls' else t}: per-head attention over the patches "
                   f"(image #{int(ctx.indices[0])}, block {block}).", arrays={"maps": maps[t][0]})
    # how much the tokens attend to the same place in different images: low spread = global role
    spread = result.meta["spread"]
    sec.table(ctx, [{"token": t, "spread over images of the head-mean map": round(v, 5)} for t, v in spread.items()],
              "spread", f"Image dependence of each token's attention (std over {len(ctx.images)} images, mean over "
              f"patches)")
    return sec
