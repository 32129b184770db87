"""The SAE spliced into the model: the activation it was trained on (its config's ``site``, by default
``blocks.{i}.hook_resid_post``; :func:`site_hook`) replaced by the reconstruction, with hook points
``blocks.{i}.sae.hook_latents`` (B, T_sel, w) and ``blocks.{i}.sae.hook_recons`` (B, T_sel, d) for interventions.

>>> with sae.hooks(model, 3) as m:                              # or vitscope.analysis.sae.hooks.spliced(...)
...     def amplify(z, hook):
...         z[..., 17] *= 5
...         return z
...     logits = m.run_with_hooks(x, fwd_hooks=[("blocks.3.sae.hook_latents", amplify)])

Only the tokens the SAE was trained on are replaced (``patches``: the patch tokens, ``cls``: the CLS token,
``all``: every token; an SAE on patch means is applied to each patch token). ``keep_error=True`` adds the SAE's
reconstruction error back, so that only an intervention on the latents changes the stream.

Every block site of the feature store can be read and spliced: ``resid_pre``, ``resid_mid``, ``resid_post``,
``attn_out``, ``mlp_out``, ``ln1``, ``ln2`` and ``blocks.{i}.<hook>`` (an MLP hidden layer, ``attn.hook_z``: head-split
hooks are read flattened, (B, T, H * Dh), as the store keeps them).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from vitscope.hooks.hook_points import HookPoint


def centre_tokens(x: torch.Tensor, centre: str = "image") -> torch.Tensor:
    """An image's patch tokens (..., P, d) as a centred SAE reads them: less their mean over the P patches
    (``centre="image"``), or as they are (``"none"``)."""
    if centre == "none":
        return x
    if centre != "image":
        raise ValueError(f"centre must be none or image, got {centre!r}")
    return x - x.mean(-2, keepdim=True)


def token_index(model, block: int, tokens: str, n_tokens: int) -> torch.Tensor | slice:
    """The positions of ``tokens`` in the stream leaving ``block`` (``n_tokens`` tokens)."""
    lay = model.token_layout(block)
    if lay.n_tokens != n_tokens:                       # another input size: a square grid of patches
        prefix = lay.n_tokens - len(range(lay.n_tokens)[lay.patches])
        side = int(round((n_tokens - prefix) ** 0.5))
        lay = model.token_layout(block, (side, side))
    if tokens in ("patches", "mean", "centred"):
        return lay.patches
    if tokens == "cls":
        return slice(lay.index_of("cls"), lay.index_of("cls") + 1)
    if tokens == "all":
        return slice(None)
    raise ValueError(f"tokens must be patches, cls, mean, centred or all, got {tokens!r}")


@torch.no_grad()
def block_token_acts(model, images, block: int, tokens: Sequence[str], batch_size: int = 64,
                     hook: str | None = None) -> dict[str, torch.Tensor]:
    """``{selection: raw activations (rows, d)}`` for each token selection in ``tokens`` (``patches``, ``cls``,
    ``mean``, ``all``, ``centred``: the patches less their image's mean patch) at ``hook`` (default
    ``blocks.{block}.hook_resid_post``; an SAE's own: :func:`site_hook`), all from one forward pass per batch;
    head-split activations flattened to (H * Dh). An SAE's own inputs: the selection :func:`input_tokens`."""
    hook = hook or f"blocks.{block}.hook_resid_post"
    out = {t: [] for t in tokens}
    dev = next(model.parameters()).device
    for s in range(0, len(images), batch_size):
        _, cache = model.run_with_cache(images[s:s + batch_size].to(dev), names_filter=hook)
        full = flat_tokens(cache[hook])
        for t in out:
            if t == "mean":
                a = full[:, token_index(model, block, "patches", full.shape[1])].mean(1, keepdim=True)
            elif t == "centred":
                a = centre_tokens(full[:, token_index(model, block, "patches", full.shape[1])])
            else:
                a = full[:, token_index(model, block, t, full.shape[1])]
            out[t].append(a.reshape(-1, a.shape[-1]).float().cpu())
    return {t: torch.cat(v) for t, v in out.items()}


def input_tokens(sae) -> str:
    """The token selection of :func:`block_token_acts` that gives an SAE its inputs: its config's ``tokens``, or
    ``centred`` for an SAE of centred patch tokens (``centre="image"``)."""
    return "centred" if getattr(sae.cfg, "centre", "none") == "image" else sae.cfg.tokens


def block_patch_acts(model, images, block: int, tokens: str, batch_size: int = 64,
                     hook: str | None = None) -> torch.Tensor:
    """Raw activations (rows, d) of the tokens an SAE reads (one selection of :func:`block_token_acts`)."""
    return block_token_acts(model, images, block, (tokens,), batch_size, hook)[tokens]


class SAESplice(nn.Module):
    """Encode -> ``hook_latents`` -> decode -> ``hook_recons`` (raw activation units)."""

    def __init__(self, sae, keep_error: bool = False) -> None:
        super().__init__()
        self.sae = sae
        self.keep_error = keep_error
        self.hook_latents = HookPoint()
        self.hook_recons = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, d): the tokens the SAE replaces (for a centred SAE, an image's patch tokens)."""
        shape, dtype = x.shape, x.dtype
        x = x.float()
        mean = None
        if getattr(self.sae.cfg, "centre", "none") != "none":          # the SAE reads, and rebuilds, x - mean
            mean = x.mean(-2, keepdim=True)
            x = x - mean
        flat = x.reshape(-1, shape[-1])
        z = self.sae.encode(flat)
        z = self.hook_latents(z.reshape(*shape[:-1], -1))
        r = self.sae.decode(z.reshape(flat.shape[0], -1))
        if self.keep_error:
            with torch.no_grad():
                err = flat - self.sae.reconstruct(flat)
            r = r + err
        r = r.reshape(shape)
        if mean is not None:
            r = r + mean
        return self.hook_recons(r.to(dtype))


def block_site(site: str) -> tuple[str, str]:
    """(the store's name of a block site, its hook suffix in a block): ``"mlp_out"`` and
    ``"blocks.8.hook_mlp_out"`` -> ``("mlp_out", "hook_mlp_out")``; a one-line ValueError for a site that is not a
    block's (an SAE is read and spliced back inside a block)."""
    from vitscope.features.plan import BLOCK_SHORT, canonical_site

    try:
        name, is_block, _ = canonical_site(str(site))
    except ValueError:
        is_block = False
    if not is_block:
        raise ValueError(f"{site!r} is not a block's activation; SAEs read and splice block sites "
                         f"({', '.join(BLOCK_SHORT)} or blocks.{{i}}.<hook>, e.g. blocks.{{i}}.mlp.hook_post)")
    return name, BLOCK_SHORT.get(name, name)


def sae_site(sae) -> tuple[str, str]:
    """:func:`block_site` of the site the SAE was trained on (its config's ``site``)."""
    return block_site(getattr(sae.cfg, "site", None) or "resid_post")


def flat_tokens(t: torch.Tensor) -> torch.Tensor:
    """A block activation as (B, T, features): head-split ones (B, T, H, Dh) flattened, as the store keeps them."""
    return t.flatten(2) if t.ndim == 4 else t


def site_hook(sae, block: int) -> str:
    """The hook an SAE reads and replaces in ``block``: ``blocks.{block}.hook_resid_post`` for a residual-stream SAE,
    ``blocks.{block}.hook_mlp_out`` for one trained on ``--site mlp_out``, and so on."""
    return f"blocks.{int(block)}.{sae_site(sae)[1]}"


def writes_to_stream(sae) -> bool:
    """Whether the SAE's atoms live in the residual stream's space (the stream itself or what a block adds to it),
    so that reading them through the head (the logit lens) means something."""
    return sae_site(sae)[0] in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def check_width(sae, model) -> None:
    from vitscope.features.plan import site_width

    name, suffix = sae_site(sae)
    d = site_width(model.cfg, name, suffix)
    if sae.cfg.d_in != d:
        raise ValueError(f"the SAE reads {sae.cfg.d_in}-dim activations but {model_name(model)} has width {d} at "
                         f"{name}; use an SAE trained on this model")


def model_name(model) -> str:
    return str((getattr(model, "meta", None) or {}).get("name") or "the model")


def replace_hook(model, block: int, tokens: str, fn):
    """A hook for a block's activation (``blocks.{block}.hook_resid_post``, ...) that replaces the ``tokens``
    positions by ``fn(selected)``; a head-split activation (B, T, H, Dh) is replaced as (B, T, H * Dh)."""

    def hook(t: torch.Tensor, hp):
        idx = token_index(model, block, tokens, t.shape[1])
        flat = flat_tokens(t)
        out = flat.clone()
        out[:, idx] = fn(flat[:, idx])
        return out.view_as(t)

    return hook


@contextlib.contextmanager
def spliced(model, sae, block: int | None = None, tokens: str | None = None,
            keep_error: bool = False) -> Iterator:
    """Context manager: ``model`` runs with the SAE replacing its site (:func:`site_hook`) at its tokens;
    the hook points ``blocks.{block}.sae.hook_latents`` / ``hook_recons`` exist inside the ``with``."""
    check_width(sae, model)
    block = int(sae.cfg.block[0] if block is None else block)
    block = block + model.cfg.depth if block < 0 else block
    if not 0 <= block < model.cfg.depth:
        raise ValueError(f"block {block} does not exist in a model of depth {model.cfg.depth}")
    tokens = tokens or sae.cfg.tokens
    if getattr(sae.cfg, "centre", "none") != "none" and tokens != "patches":
        raise ValueError(f"this SAE reads patch tokens less their image's mean (centre={sae.cfg.centre!r}); it "
                         f"replaces the patch tokens only, not {tokens!r}")
    splice = SAESplice(sae, keep_error).to(next(model.parameters()).device)
    blk = model.blocks[block]
    if hasattr(blk, "sae"):
        raise ValueError(f"block {block} already has an SAE spliced in")
    blk.add_module("sae", splice)
    model.setup_hooks()
    try:
        with model.hooks([(site_hook(sae, block), replace_hook(model, block, tokens, splice))]):
            yield model
    finally:
        del blk.sae
        model.setup_hooks()
