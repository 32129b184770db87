"""Weight processing as TransformerLens does it on load: the same function, simpler weights to read.

* :func:`fold_layer_norm` (``fold_ln``): each LayerNorm's scale and shift move into the linear layer that reads it
  (``W' = W diag(w)``, ``b' = b + W b_ln``); the norm keeps only its centring and scaling (weight 1, bias 0), so
  ``ln*.hook_normalized`` is then the unit-variance vector and the weights say what reads it.
* :func:`center_writing_weights`: every weight that writes to the residual stream (patch embedding, position
  embeddings, CLS / DIST / register tokens, attention output, MLP output) has its mean over the model width removed.
  Every reader of the stream is a LayerNorm, which removes that mean anyway. LayerScale is folded into the writing
  layer first (``gamma`` becomes 1), so that what is added to the stream is centred.
* :func:`fold_value_biases`: the value bias moves into the output projection's bias (``b_O' = b_O + W_O b_V``):
  attention rows sum to one, so ``pattern @ (v + b_V) = pattern @ v + b_V``. (A hook that edits the pattern so that
  rows no longer sum to one then sees the bias in another place.)

The logits are unchanged to float32 rounding (tested to 1e-5); activations named by the hook contract change where
the processing says so. ``load_model(..., fold_ln=True, center_writing_weights=True, fold_value_biases=True)``
applies them on load; ``model.meta["processing"]`` lists what was applied.
"""
from __future__ import annotations

import torch
from torch import nn

PROCESSING = ("fold_ln", "center_writing_weights", "fold_value_biases")


def _fold_into(ln: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Fold ``ln``'s affine part into a linear layer ``(weight (out, D), bias (out,))`` in place; returns the bias
    term ``W b_ln`` that the caller adds to the layer's bias."""
    extra = weight @ ln.bias                                                            # out
    weight.mul_(ln.weight[None, :])
    ln.weight.fill_(1.0)
    ln.bias.zero_()
    return extra


@torch.no_grad()
def fold_layer_norm(model) -> list[str]:
    """Fold every LayerNorm that feeds a linear layer into it (in place); returns the norms folded.

    The blocks' ``ln1`` (into ``attn.qkv``) and ``ln2`` (into ``mlp.fc1``) always; the final norm (``ln_final`` on
    the CLS token, ``fc_norm`` after average pooling) into the classification head when it has a bias. CLIP's
    ``ln_pre`` writes the residual stream itself and stays. For BEiT's separate q / v biases the key's share of the
    bias is dropped: it adds the same number to every score of a query, which the softmax ignores (the attention
    pattern and every output are unchanged; ``hook_k`` and ``hook_attn_scores`` move by that constant).
    """
    cfg = model.cfg
    if cfg.res_post_norm:
        raise ValueError("fold_ln folds each LayerNorm into the linear layer that reads it, but residual post-norm "
                         "blocks normalise the branch outputs, which no linear layer reads; load without fold_ln")
    folded = []
    for i, blk in enumerate(model.blocks):
        attn, D = blk.attn, cfg.embed_dim
        extra = _fold_into(blk.ln1, attn.qkv.weight, attn.qkv.bias)                     # 3D
        if hasattr(attn, "q_bias"):
            attn.q_bias.add_(extra[:D])
            attn.v_bias.add_(extra[2 * D:])
        elif attn.qkv.bias is not None:
            attn.qkv.bias.add_(extra)
        elif extra.abs().max() > 0:
            raise ValueError(f"block {i}: ln1 has a shift but attn.qkv has no bias to take it; load without fold_ln")
        extra = _fold_into(blk.ln2, blk.mlp.fc1.weight, blk.mlp.fc1.bias)
        blk.mlp.fc1.bias.add_(extra)
        folded += [f"blocks.{i}.ln1", f"blocks.{i}.ln2"]
    final = _final_norm(model)
    if final is not None:
        name, ln = final
        heads = [model.head] + ([model.head_dist] if cfg.head == "distilled" else [])
        if all(h.bias is not None for h in heads):
            w, b = ln.weight.clone(), ln.bias.clone()
            for h in heads:
                ln.weight.copy_(w)
                ln.bias.copy_(b)
                h.bias.add_(_fold_into(ln, h.weight, h.bias))
            folded.append(name)
    return folded


def _final_norm(model) -> tuple[str, nn.LayerNorm] | None:
    """The norm whose output the head reads directly (and nothing else reads), or None."""
    cfg = model.cfg
    if cfg.head not in ("linear", "distilled", "clip_proj"):
        return None
    if model.fc_norm is not None:
        return "fc_norm", model.fc_norm
    if model.ln_final is not None and cfg.global_pool == "token":
        return "ln_final", model.ln_final
    return None


def _check_stream_read_by_norms(model) -> None:
    cfg = model.cfg
    if cfg.res_post_norm:
        raise ValueError("center_writing_weights needs every reader of the residual stream to be a LayerNorm; "
                         "residual post-norm blocks read the stream directly; load without it")
    if cfg.pre_norm:
        raise ValueError("center_writing_weights needs every write to the residual stream to be a linear layer; "
                         "CLIP's ln_pre writes its (uncentred) output; load without it")
    if model.ln_final is None and model.fc_norm is None:
        raise ValueError("center_writing_weights needs every reader of the residual stream to be a LayerNorm; this "
                         "model's head reads the stream without a final norm; load without it")


def _centre_rows(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Remove the mean over the output (first) dimension in place."""
    weight.sub_(weight.mean(0, keepdim=True))
    if bias is not None:
        bias.sub_(bias.mean())


def _fold_layer_scale(ls: nn.Module, linear: nn.Linear) -> None:
    if hasattr(ls, "gamma"):
        linear.weight.mul_(ls.gamma[:, None])
        linear.bias.mul_(ls.gamma)
        ls.gamma.fill_(1.0)


@torch.no_grad()
def _center_writing_weights(model) -> None:
    """Centre every weight that writes to the residual stream over the model width (in place); see the module."""
    _check_stream_read_by_norms(model)
    conv = model.patch_embed.proj
    conv.weight.sub_(conv.weight.mean(0, keepdim=True))
    if conv.bias is not None:
        conv.bias.sub_(conv.bias.mean())
    for name in ("pos_embed", "cls_token", "dist_token", "reg_token"):
        t = getattr(model, name, None)
        if isinstance(t, torch.Tensor):
            t.sub_(t.mean(-1, keepdim=True))
    for blk in model.blocks:
        _fold_layer_scale(blk.ls1, blk.attn.proj)
        _fold_layer_scale(blk.ls2, blk.mlp.fc2)
        _centre_rows(blk.attn.proj.weight, blk.attn.proj.bias)
        _centre_rows(blk.mlp.fc2.weight, blk.mlp.fc2.bias)


@torch.no_grad()
def _fold_value_biases(model) -> None:
    """Move each block's value bias into the output projection's bias (in place); see the module."""
    D = model.cfg.embed_dim
    for blk in model.blocks:
        attn = blk.attn
        if hasattr(attn, "v_bias"):
            b_v = attn.v_bias
        elif attn.qkv.bias is not None:
            b_v = attn.qkv.bias[2 * D:]
        else:
            continue
        attn.proj.bias.add_(attn.proj.weight @ b_v)
        b_v.zero_()


def process_weights(model, fold_ln: bool = False, center_writing_weights: bool = False,
                    fold_value_biases: bool = False):
    """Apply the named processing steps in TransformerLens's order (fold_ln, centring, value biases); returns the
    model, with ``model.meta["processing"]`` listing the steps applied."""
    if fold_ln:
        fold_layer_norm(model)
    if center_writing_weights:
        _center_writing_weights(model)
    if fold_value_biases:
        _fold_value_biases(model)
    steps = [n for n, on in zip(PROCESSING, (fold_ln, center_writing_weights, fold_value_biases)) if on]
    if steps:
        meta = getattr(model, "meta", None)
        if meta is None:
            meta = model.meta = {}
        meta["processing"] = list(dict.fromkeys([*meta.get("processing", []), *steps]))
    return model


# the public names of the steps are the option names (as in TransformerLens)
center_writing_weights = _center_writing_weights
fold_value_biases = _fold_value_biases
