"""How good an SAE is: reconstruction and sparsity on activations, and the model's behaviour with it spliced in.

* :func:`activation_metrics`: L0 (mean active latents per token), FVU (fraction of variance unexplained:
  ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``), mean cosine of reconstruction and input, dead latents (never
  active), dense latents (active on more than ``dense`` of the tokens) and the latent density histogram
  (log10 of each latent's firing frequency).
* :func:`spliced_metrics`: the model run on images with the SAE's site (``blocks.{i}.hook_resid_post``, ...)
  replaced at the SAE's tokens by (a) the reconstruction, (b) zeros, (c) the mean activation (the bounds): top-1
  agreement with the original prediction, KL(original || spliced) of the logits, accuracy, and weighted k-NN
  top-1 accuracy (k = 20) from the final CLS features of the spliced stream (a seeded half / half split);
  ``kl_recovered = 1 - KL_sae / KL_zero``.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


@torch.no_grad()
def activation_metrics(sae, batches: Iterable[torch.Tensor], dense: float = 0.1) -> tuple[dict, np.ndarray]:
    """``({l0, fvu, cosine, dead_fraction, dense_fraction, tokens}, density (w,))`` over raw activation batches."""
    w = sae.cfg.width
    fires = torch.zeros(w, dtype=torch.float64)
    n = 0
    sse = l0 = cos = 0.0
    s1 = s2 = None
    for x in batches:
        x = x.float()
        z = sae.encode(x)
        xh = sae.decode(z)
        sse += float((x - xh).double().pow(2).sum())
        l0 += float((z > 0).sum())
        cos += float(torch.nn.functional.cosine_similarity(x, xh, dim=-1).double().sum())
        fires += (z > 0).sum(0).double()
        xd = x.double()
        s1 = xd.sum(0) if s1 is None else s1 + xd.sum(0)
        s2 = xd.pow(2).sum(0) if s2 is None else s2 + xd.pow(2).sum(0)
        n += x.shape[0]
    if n == 0:
        raise ValueError("no activations to measure the SAE on")
    total_var = float((s2 - s1.pow(2) / n).sum())
    density = (fires / n).numpy()
    return ({"l0": l0 / n, "fvu": sse / max(total_var, 1e-30), "cosine": cos / n,
             "dead_fraction": float((density == 0).mean()), "dense_fraction": float((density > dense).mean()),
             "tokens": n}, density)


def density_histogram(density: np.ndarray, bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of log10 firing frequency of the latents that fire: (counts, bin edges)."""
    live = density[density > 0]
    lo = np.floor(np.log10(live.min())) if len(live) else -6
    return np.histogram(np.log10(live), bins=bins, range=(min(lo, -1.0), 0.0))


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    lp, lq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


@torch.no_grad()
def spliced_metrics(model, sae, images, labels=None, block: int | None = None, tokens: str | None = None,
                    batch_size: int = 64, knn_k: int = 20, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{"sae" | "zero" | "mean": {top1_agreement, kl, accuracy, knn_top1}, "original": {...}}`` on ``images``
    (B, 3, H, W) tensor; see the module docstring."""
    from vitscope.analysis.sae.hooks import check_width, flat_tokens, replace_hook, site_hook, spliced, token_index

    check_width(sae, model)
    block = int(sae.cfg.block[0] if block is None else block)
    tokens = tokens or sae.cfg.tokens
    dev = next(model.parameters()).device
    hook = site_hook(sae, block)
    # the original run and the mean activation of the spliced tokens
    orig_logits, orig_feats, total, count = [], [], None, 0
    for s in range(0, len(images), batch_size):
        x = images[s:s + batch_size].to(dev)
        acts = {}
        with model.hooks([(hook, lambda t, hp: acts.__setitem__("a", t))]):
            f = model.forward_features(x)
        a = flat_tokens(acts["a"])
        a = a[:, token_index(model, block, tokens, a.shape[1])]
        total = a.double().sum((0, 1)) if total is None else total + a.double().sum((0, 1))
        count += a.shape[0] * a.shape[1]
        orig_feats.append(_cls(model, f))
        orig_logits.append(model.forward_head(f))
    mean = (total / count).float()
    runs = {"original": (torch.cat(orig_logits), torch.cat(orig_feats))}
    variants = {"sae": None, "zero": lambda t: torch.zeros_like(t), "mean": lambda t: mean.expand_as(t).clone()}
    for name, fn in variants.items():
        lg, ft = [], []
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size].to(dev)
            if fn is None:
                with spliced(model, sae, block, tokens):
                    f = model.forward_features(x)
            else:
                with model.hooks([(hook, replace_hook(model, block, tokens, fn))]):
                    f = model.forward_features(x)
            ft.append(_cls(model, f))
            lg.append(model.forward_head(f))
        runs[name] = (torch.cat(lg), torch.cat(ft))
    o_logits = runs["original"][0]
    y = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    out = {}
    for name, (lg, ft) in runs.items():
        r = {"top1_agreement": float((lg.argmax(-1) == o_logits.argmax(-1)).float().mean()),
             "kl": float(_kl(o_logits.float(), lg.float()).mean())}
        if y is not None and (y >= 0).all():
            r["accuracy"] = float((lg.argmax(-1).cpu() == y).float().mean())
            if len(y) >= 2:                                   # the k-NN needs a train and a test half
                r["knn_top1"] = _knn(ft.cpu().numpy(), y.numpy(), knn_k, seed)
        out[name] = r
    kz = out["zero"]["kl"]
    out["sae"]["kl_recovered"] = 1 - out["sae"]["kl"] / kz if kz > 0 else float("nan")
    return out


def _cls(model, feats: torch.Tensor) -> torch.Tensor:
    lay = model.token_layout(model.cfg.depth)
    if lay.cls is not None:
        return feats[:, lay.index_of("cls")].float()
    return feats[:, lay.patches].mean(1).float()


def _knn(feats: np.ndarray, labels: np.ndarray, k: int, seed: int) -> float:
    """Weighted k-NN top-1 (%) on a seeded half / half split of the images."""
    from vitscope.analysis.knn import knn_accuracy

    n = len(labels)
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
    k = max(1, min(k, len(tr)))
    return float(knn_accuracy(feats[tr], labels[tr], feats[te], labels[te], k)[0])
