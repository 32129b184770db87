"""The feature browser: a static HTML page of an SAE's latents (``vitscope sae browse SAE_DIR -o page/``).

Per latent: the top-activating images with the latent's activation over patches drawn on top, the histogram of its
non-zero activations, its logit effect (the atom read through the final norm and the head: the logit-lens path of
``model.project_to_logits``, vilas2023), and the nearest latents by decoder cosine. The page is self-contained
(images as files beside it, no server, no network); a search box jumps to a latent id.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import torch

from vitscope.analysis.api import Options


@dataclass
class BrowseOptions(Options):
    limit: int | None = 256               # images searched
    latents: int = 64                     # latents shown (most often active first)
    top: int = 8                          # top images per latent
    neighbours: int = 5
    logits: int = 5
    batch_size: int = 64

    def validate(self) -> None:
        self.check_int("limit", optional=True)
        self.check_int("latents")
        self.check_int("top")
        self.check_int("neighbours")
        self.check_int("logits")
        self.check_int("batch_size")


def _display(images: torch.Tensor, cfg) -> np.ndarray:
    """Preprocessed images back to uint8 (N, H, W, 3) for display."""
    mean = torch.tensor(getattr(cfg, "mean", (0.0,) * 3)).view(1, 3, 1, 1)
    std = torch.tensor(getattr(cfg, "std", (1.0,) * 3)).view(1, 3, 1, 1)
    x = (images * std + mean).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, vmax: float, scale: int = 2) -> np.ndarray:
    """An image (H, W, 3) blended with a heat map over its patches (g, g), nearest-upsampled, inferno colours."""
    from matplotlib import colormaps

    h, w = image.shape[:2]
    g0, g1 = heat.shape
    up = np.kron(heat / max(vmax, 1e-12), np.ones((h // g0, w // g1)))
    col = (colormaps["inferno"](np.clip(up, 0, 1))[..., :3] * 255).astype(np.float32)
    alpha = 0.6 * np.clip(up, 0, 1)[..., None] + 0.15
    out = (image.astype(np.float32) * (1 - alpha) + col * alpha).clip(0, 255).astype(np.uint8)
    return np.kron(out, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else out


def _hist_svg(values: np.ndarray, bins: int = 24, w: int = 220, h: int = 60) -> str:
    if len(values) == 0:
        return "<svg width='220' height='60'></svg>"
    counts, edges = np.histogram(values, bins=bins)
    top = max(int(counts.max()), 1)
    bw = w / bins
    bars = "".join(f"<rect x='{i * bw:.1f}' y='{h - c / top * h:.1f}' width='{bw - 1:.1f}' "
                   f"height='{c / top * h:.1f}' fill='#c0504d'/>" for i, c in enumerate(counts))
    return (f"<svg width='{w}' height='{h + 14}' role='img' aria-label='activation histogram'>{bars}"
            f"<text x='0' y='{h + 12}' font-size='10'>{edges[0]:.2g}</text>"
            f"<text x='{w - 30}' y='{h + 12}' font-size='10'>{edges[-1]:.2g}</text></svg>")


IMAGE_TOKENS = {"cls": "CLS token", "mean": "mean patch token"}      # SAEs that read one row per image


def _encode_rows(sae, x: torch.Tensor) -> torch.Tensor:
    """``sae.encode`` of raw activation rows (with its saved normalisation), in chunks, on the SAE's device."""
    x = x.to(sae.W_enc.device)
    return torch.cat([sae.encode(c) for c in x.split(4096)]).cpu()


@torch.no_grad()
def sae_latents(sae, model, images: torch.Tensor, batch_size: int = 64, own_row: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SAE's latents at its site (``blocks.{block}.hook_resid_post``, ...), from one forward pass: of every patch
    token, (N, rows, cols, w), and, for an SAE trained on one row per image (``tokens`` ``cls`` or ``mean``, with
    ``own_row``), of that row, (N, w); else None. ``images``: a preprocessed batch (N, 3, H, W)."""
    from vitscope.analysis.sae.hooks import block_token_acts, input_tokens, site_hook

    block = int(sae.cfg.block[0])
    own = sae.cfg.tokens if own_row and sae.cfg.tokens in IMAGE_TOKENS else None
    patches = "centred" if input_tokens(sae) == "centred" else "patches"     # the patch rows the SAE reads
    acts = block_token_acts(model, images, block, (patches,) + ((own,) if own else ()), batch_size,
                            site_hook(sae, block))
    x = acts[patches]
    n, p = len(images), model.cfg.patch_size
    rows, cols = images.shape[-2] // p, images.shape[-1] // p
    if x.shape[0] != n * rows * cols:
        raise ValueError(f"block {block} has {x.shape[0] // n} patch tokens per image, expected a {rows} x {cols} "
                         f"grid for {tuple(images.shape[-2:])} pixels with patch {p}")
    return _encode_rows(sae, x).view(n, rows, cols, -1), (_encode_rows(sae, acts[own]) if own else None)


def patch_latents(sae, model, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The SAE's latents of every patch token at its site: (N, rows, cols, w) (:func:`sae_latents`)."""
    return sae_latents(sae, model, images, batch_size, own_row=False)[0]


@torch.no_grad()
def nearest_latents(sae, latents, n: int) -> list[list[tuple[int, float]]]:
    """For each of ``latents``: the ``n`` other latents whose decoder atoms have the largest cosine with its atom,
    as (latent, cosine), largest first."""
    W = sae.W_dec[0]
    W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    idx = torch.as_tensor(list(latents), dtype=torch.long, device=W.device)
    cos = W[idx] @ W.T                                                              # len(latents), w
    cos[torch.arange(len(idx), device=W.device), idx] = -2
    nb = torch.topk(cos, min(n, W.shape[0] - 1), dim=-1)
    return [[(int(i), float(c)) for c, i in zip(vals, ids)] for vals, ids in zip(nb.values.cpu(), nb.indices.cpu())]


@torch.no_grad()
def logit_effects(sae, model, latents) -> torch.Tensor | None:
    """Each latent's atom read through the final norm and the head (``model.project_to_logits``, the logit-lens
    path), centred over the classes: (len(latents), C); None for a model without a head, and for an SAE whose atoms
    are not in the residual stream's space (an MLP hidden layer, a normalised input, attention heads)."""
    from vitscope.analysis.sae.hooks import writes_to_stream

    if model.cfg.head == "none" or not writes_to_stream(sae):
        return None
    p = next(model.parameters())
    atoms = sae.W_dec[0][torch.as_tensor(list(latents), dtype=torch.long, device=sae.W_dec.device)]
    e = model.project_to_logits(atoms.to(p.device, p.dtype)).float().cpu()
    return e - e.mean(-1, keepdim=True)


def top_logits(effect: torch.Tensor, n: int, name=str) -> tuple[list, list]:
    """The ``n`` classes a latent's logit effect (C,) raises most and lowers most, as (name(class), effect)."""
    k = min(n, len(effect))
    up, down = torch.topk(effect, k), torch.topk(-effect, k)
    return ([(name(int(i)), float(v)) for v, i in zip(up.values, up.indices)],
            [(name(int(i)), float(-v)) for v, i in zip(down.values, down.indices)])


@torch.no_grad()
def latent_summary(sae, model, images: torch.Tensor, opts: BrowseOptions) -> dict:
    """Everything the page shows, as arrays: patch latents (N, g, g, w) of the chosen latents, their top images,
    histograms, logit effects and neighbours."""
    block = int(sae.cfg.block[0])
    z, own = sae_latents(sae, model, images, opts.batch_size)
    g = z.shape[1]
    if own is not None:                         # ranked on the row it was trained on; heat maps on the patches
        per_image, density = own, (own > 0).float().mean(0)
    else:
        per_image, density = z.flatten(1, 2).max(1).values, (z > 0).float().mean((0, 1, 2))
    order = torch.argsort(density, descending=True, stable=True)
    chosen = [int(i) for i in order[: opts.latents] if density[i] > 0]
    classes = list((getattr(model, "meta", None) or {}).get("classes") or model.cfg.meta.get("classes") or [])
    effect = logit_effects(sae, model, chosen) if chosen else None
    neighbours = nearest_latents(sae, chosen, opts.neighbours) if chosen else []
    out = {"block": block, "grid": g, "density": density.numpy(), "latents": [],
           "unit": "images" if own is not None else "patches"}
    for j, lat in enumerate(chosen):
        za = z[..., lat]
        peak = per_image[:, lat]
        top = torch.argsort(peak, descending=True, stable=True)[: opts.top]
        top = [int(i) for i in top if peak[i] > 0]
        values = peak[peak > 0] if own is not None else za[za > 0]
        heat = [za[i].numpy() for i in top]
        item = {"id": lat, "density": float(density[lat]), "top": top, "peak": [float(peak[i]) for i in top],
                "heat": heat, "vmax": max([float(h.max()) for h in heat] + [1e-12]), "values": values.numpy(),
                "neighbours": neighbours[j]}
        if effect is not None:
            name = (lambda c: classes[c] if c < len(classes) else str(c))
            item["logits_up"], item["logits_down"] = top_logits(effect[j], opts.logits, name)
        out["latents"].append(item)
    return out


def provenance(sae) -> str:
    """One line on what the SAE reads: its model, block, site and tokens, and the folder name of the store it was
    trained on (the name only: the page may be shared, the path on disk is the author's)."""
    from vitscope.analysis.sae.hooks import sae_site

    meta = sae.cfg.meta or {}
    model = meta.get("model") or meta.get("model_name")
    store = PureWindowsPath(str(meta["store"])).name if meta.get("store") else ""
    tokens = f"{sae.cfg.tokens} tokens"
    if getattr(sae.cfg, "centre", "none") == "image":
        tokens += " less their image's mean"
    parts = (f"model {model}" if model else "", f"block {int(sae.cfg.block[0])}", sae_site(sae)[0], tokens,
             f"store {store}" if store else "")
    return ", ".join(part for part in parts if part)


def write_browser(sae, model, data, out: str | Path, options: BrowseOptions | None = None,
                  title: str = "SAE") -> Path:
    """Write ``out/index.html`` (and ``out/img/*.png``) for ``sae`` on the images of ``data``; returns the page.
    ``out`` is written under its lock (:func:`vitscope.outlock.output_lock`), and only once the latents are known."""
    from vitscope.analysis.sae.evaluation import _images
    from vitscope.analysis.sae.hooks import check_width
    from vitscope.features.access import preprocess_config

    opts = options or BrowseOptions()
    check_width(sae, model)
    model.eval()
    images, _, _, _ = _images(model, data, opts.limit)
    info = latent_summary(sae, model, images, opts)
    shown = _display(images, preprocess_config(model))
    from vitscope.outlock import output_lock

    with output_lock(out, "vitscope sae browse"):     # one writer per folder; bad input has failed above, unwritten
        return _write_page(sae, info, shown, len(images), Path(out), title)


def _write_page(sae, info: dict, shown: np.ndarray, n_images: int, out: Path, title: str) -> Path:
    """The page of :func:`write_browser`: ``out/index.html`` (written beside, then renamed) and its images."""
    from PIL import Image

    (out / "img").mkdir(parents=True, exist_ok=True)
    cards = []
    for it in info["latents"]:
        lat = it["id"]
        vmax = it["vmax"]
        figs = []
        for rank, (i, heat) in enumerate(zip(it["top"], it["heat"])):
            name = f"img/l{lat}_{rank}.png"
            Image.fromarray(overlay(shown[i], heat, vmax)).save(out / name)
            figs.append(f"<figure><img src='{name}' alt='latent {lat} image {i}' width='96' height='96'>"
                        f"<figcaption>#{i} {it['peak'][rank]:.2f}</figcaption></figure>")
        nbs = " ".join(f"<a href='#latent-{j}'>{j}</a> ({c:.2f})" for j, c in it["neighbours"])
        logit = ""
        if "logits_up" in it:
            up = ", ".join(f"{html.escape(c)} {v:+.2f}" for c, v in it["logits_up"])
            down = ", ".join(f"{html.escape(c)} {v:+.2f}" for c, v in it["logits_down"])
            logit = f"<p class='logit'>logit effect: up {up}; down {down}</p>"
        cards.append(
            f"<section class='latent' id='latent-{lat}' data-id='{lat}'><h2>latent {lat}</h2>"
            f"<p>active on {100 * it['density']:.2f}% of {info['unit']}; nearest by decoder cosine: {nbs}</p>"
            f"<div class='tops'>{''.join(figs)}</div>{_hist_svg(it['values'])}{logit}</section>")
    reads = (f"<p>The SAE reads the {IMAGE_TOKENS[sae.cfg.tokens]}: images are ranked by the latent there (the "
             f"value under each image; the histogram is over images), and each heat map shows the same latent "
             f"applied to the image's patch tokens.</p>" if sae.cfg.tokens in IMAGE_TOKENS else "")
    head = (f"<h1>{html.escape(title)}</h1><p>{html.escape(sae.arch)} SAE, {sae.cfg.width} latents; "
            f"{html.escape(provenance(sae))}; {n_images} images searched, "
            f"{len(info['latents'])} latents shown, the most often active first.</p>{reads}"
            "<p><label>latent id <input id='q' type='number' min='0'></label> "
            "<button id='go'>show</button> <span id='msg'></span></p>")
    script = ("<script>document.getElementById('go').onclick=function(){var v=document.getElementById('q').value;"
              "var e=document.getElementById('latent-'+v);var m=document.getElementById('msg');"
              "if(e){e.scrollIntoView();m.textContent='';}else{m.textContent='latent '+v+' is not on this page';}};"
              "</script>")
    style = ("<style>body{font-family:sans-serif;margin:1em}.latent{border-top:1px solid #ccc;padding:.4em 0}"
             ".tops{display:flex;flex-wrap:wrap;gap:4px}figure{margin:0;font-size:10px;text-align:center}"
             "h2{font-size:1em;margin:.2em 0}</style>")
    page = out / "index.html"
    tmp = out / "index.html.tmp"
    tmp.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{style}"
                   f"</head><body>{head}{''.join(cards)}{script}</body></html>", encoding="utf-8")
    tmp.replace(page)
    return page
