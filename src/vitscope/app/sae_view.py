"""The app's "SAE features" tab: a sparse autoencoder's latents on the page's image.

:func:`sae_view` is a pure view like those of ``vitscope.app.views``: (model, image, SAE, options) -> a
:class:`~vitscope.app.views.View`. The numbers come from ``vitscope.analysis.sae.browse`` (the static feature
browser's helpers): the latents of every patch token at the SAE's site (``blocks.{block}.hook_resid_post``, ...)
through the SAE's ``encode`` (with its saved normalisation), each latent's logit effect through the final norm and
the head, and the nearest latents by decoder cosine. Nothing here knows about Gradio.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vitscope.app.views import DISPLAY, View, _model_name, enlarge, mark_patch, model_input
from vitscope.viz.attention import overlay

NO_SAE = ("No SAE loaded: train one with `vitscope sae train --store STORE --block B -o runs/sae` (docs/sae.md) and "
          "start the app with `vitscope app --sae runs/sae`.")
LISTING = ("latent", "activation", "active patches")


def load_saes(paths) -> dict:
    """``{name: SAE}`` for SAE folders / files or folders of SAEs (``vitscope sae train``'s output); the name is
    the folder's (with its parent's when two share one)."""
    from vitscope.analysis.sae.io import load_sae, sae_paths

    found = [p for path in paths or () for p in sae_paths(path)]
    names = [p.name for p in found]
    out = {}
    for p, name in zip(found, names):
        if names.count(name) > 1:
            name = f"{p.parent.name}/{name}"
        out[name] = load_sae(p)
    return out


def sae_choice(name: str, sae) -> tuple[str, str]:
    """(label, value) of an SAE in the page's list: its name with its model, block and tokens."""
    from vitscope.analysis.sae.browse import provenance

    return f"{name} ({sae.cfg.width} latents; {provenance(sae)})", name


def sae_view(model, image, sae, latent: int | None = None, patch: tuple[int, int] | None = None,
             name: str = "sae", alpha: float = 0.6, cmap: str = "inferno", neighbours: int = 5, logits: int = 5,
             size: int = DISPLAY) -> View:
    """One latent of ``sae`` over the patches of ``image``, and the latents active at a patch.

    ``patch`` (row, col): the listing holds the latents active at that patch, largest first (and the patch is
    outlined); without it, the latents active anywhere on the image, by their largest activation. ``latent``: the
    latent shown (default: the first of the listing). The figure is the latent's activation per patch over the
    image (colours from 0 to its maximum on the image); the note gives its range, its logit effect (the classes
    its atom raises and lowers through the final norm and the head) and its nearest latents by decoder cosine.

    Arrays: ``heat`` (rows, cols), ``logit_effect`` (classes, centred), ``listed_latents`` / ``listed_values`` (the
    listing). Table: every non-zero latent of every patch (row, col, latent, value). An SAE whose input width is not
    the model's gives no figure and a one-line note.
    """
    from vitscope.analysis.sae.browse import (IMAGE_TOKENS, logit_effects, nearest_latents, provenance, sae_latents,
                                              top_logits)
    from vitscope.analysis.sae.hooks import check_width
    from vitscope.analysis.attention.tokens import grid_of
    from vitscope.app.models import class_label

    mname = _model_name(model)
    block = int(sae.cfg.block[0])
    trained_on = (sae.cfg.meta or {}).get("model") or (sae.cfg.meta or {}).get("model_name")
    meta = {"model": mname, "view": "sae", "sae": name, "block": block, "sae_model": trained_on}
    try:
        check_width(sae, model)
    except ValueError as e:
        hint = f" ({name} was trained on {trained_on}: choose it in the model box)" if trained_on else ""
        return View("sae", None, note=f"{e}{hint}", meta=meta)
    if not 0 <= block < model.cfg.depth:
        return View("sae", None, note=f"{name} reads block {block}, which a model of depth {model.cfg.depth} does not "
                                      f"have", meta=meta)
    width = sae.cfg.width
    if latent is not None and not 0 <= int(latent) < width:
        raise ValueError(f"latent {latent} does not exist; {name} has {width} latents (0..{width - 1})")
    x, base = model_input(model, image)
    grid = grid_of(x, model)
    if patch is not None:
        r, c = int(patch[0]), int(patch[1])
        if not (0 <= r < grid[0] and 0 <= c < grid[1]):
            raise ValueError(f"patch ({r}, {c}) is outside the {grid[0]} x {grid[1]} patch grid")
        patch = (r, c)
    zs, own = sae_latents(sae, model, x)                    # one forward pass: the patches and the SAE's own row
    z = zs[0].numpy()                                                                # rows, cols, w
    counts = (z > 0).sum((0, 1))
    score = z[patch] if patch is not None else z.max((0, 1))
    listed = np.flatnonzero(score > 0)
    listed = listed[np.argsort(-score[listed], kind="stable")]
    lat = int(latent) if latent is not None else (int(listed[0]) if len(listed) else None)
    where = f"at patch ({patch[0]}, {patch[1]})" if patch is not None else "on this image"
    notes = [f"{name}: {provenance(sae)}; {len(listed)} latents active {where}"
             + ("" if patch is not None else " (click a patch to list those active there)")]
    if trained_on and str(trained_on) != mname:
        notes.append(f"this SAE was trained on {trained_on}, the model here is {mname}")
    if own is not None:
        notes.append(f"it was trained on the {IMAGE_TOKENS[sae.cfg.tokens]} and is shown on the patch tokens"
                     + (f"; on the {IMAGE_TOKENS[sae.cfg.tokens]}, latent {lat} is {float(own[0, lat]):.3g}"
                        if lat is not None else ""))
    arrays = {"listed_latents": listed.astype(np.int64), "listed_values": score[listed].astype(np.float32),
              "listed_patches": counts[listed].astype(np.int64)}
    img = enlarge(base, size)
    if lat is None:
        fig = img
        notes.insert(0, "no latent is active here")
    else:
        heat = z[..., lat]
        fig = overlay(img, heat, cmap=cmap, alpha=alpha, mode="nearest", vmin=0.0, vmax=max(float(heat.max()), 1e-12))
        on = heat[heat > 0]
        if len(on):
            pk = np.unravel_index(int(np.argmax(heat)), heat.shape)
            act = (f"active on {len(on)} of {heat.size} patches, {on.min():.3g} to {on.max():.3g} "
                   f"(largest at patch ({int(pk[0])}, {int(pk[1])}))")
        else:
            act = f"not active on this image (0 of {heat.size} patches)"
        line = f"latent {lat}: {act}"
        effect = logit_effects(sae, model, [lat])
        if effect is not None:
            up, down = top_logits(effect[0], logits, lambda k: class_label(model, k))
            up, down = [u for u in up if u[1] > 0], [d for d in down if d[1] < 0]     # few classes: no overlap
            line += ("; logit effect up " + (", ".join(f"{k} {v:+.2f}" for k, v in up) or "none")
                     + "; down " + (", ".join(f"{k} {v:+.2f}" for k, v in down) or "none"))
            arrays["logit_effect"] = effect[0].numpy()
        nb = nearest_latents(sae, [lat], neighbours)[0]
        line += "; nearest by decoder cosine " + ", ".join(f"{j} ({cs:.2f})" for j, cs in nb)
        notes.insert(0, line)
        arrays["heat"] = heat
        meta["neighbours"] = [j for j, _ in nb]
    if patch is not None:
        fig = mark_patch(fig, patch, grid)
    meta.update(latent=lat, patch=list(patch) if patch is not None else None)
    rr, cc, ll = np.nonzero(z)
    table = pd.DataFrame({"model": mname, "sae": name, "block": block, "row": rr, "col": cc, "latent": ll,
                          "value": z[rr, cc, ll]})
    return View("sae", fig, arrays, table, ". ".join(notes), meta)


def listing(view: View) -> pd.DataFrame:
    """The latents the view lists, as the page's table: latent, activation (at the patch, or the largest on the
    image) and the number of patches where the latent is active."""
    a = view.arrays
    empty = np.zeros(0)
    t = pd.DataFrame({k: a.get(f"listed_{v}", empty) for k, v in zip(LISTING, ("latents", "values", "patches"))})
    t[LISTING[1]] = t[LISTING[1]].astype(float).round(4)       # for reading; the downloads keep every digit
    return t
