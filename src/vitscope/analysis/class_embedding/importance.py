"""Patch-token importance for the token-removal curves (vilas2023, reference section 19).

Every function returns an importance per image and patch token (B, N), higher = more important, over the
patch tokens of the input (registers, CLS and DIST are never ranked); ``importance_order`` turns it into the
order in which the curves keep patches (most important first).

- ``grads`` (vilas2023's "cls-emb" importance): at every block b where CLS exists, the attention output of
  the block (``hook_attn_out``, what the branch adds to the stream) at CLS is projected onto class space
  with the final norm and the head (``model.project_to_logits``); the seed then applies a softmax and
  ``CrossEntropyLoss`` to those probabilities (a second log-softmax) against the true class. The loss of block
  b is differentiated with respect to the attention probabilities of block b only, at the CLS query row, and
  importance = -sum over blocks and heads of d loss_b / d a_b[h, CLS, j] for patch j.
- ``chefer``: Chefer et al.'s relevance of the true-class logit, R[CLS, patches]
  (``vitscope.analysis.attention.relevance``).
- ``probe``: minus the per-token ridge probes' true-class ranks summed over the residual blocks
  (``vitscope.analysis.probes.ridge``); lowest rank sum = most important.
- ``random``: orders shared by all images, ``torch.randperm(N)`` after ``torch.manual_seed(seed + i)`` for
  i = 0 .. n - 1 (vilas2023 seeds its 10 permutations 0 .. 9).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vitscope.analysis.attention.maps import block_of, pattern_hook
from vitscope.analysis.attention.tokens import grid_of

IMPORTANCE_METHODS = ("grads", "chefer", "probe")


def check_labels(model, labels, batch: int) -> torch.Tensor:
    """Labels as a (B,) long tensor inside the head's classes; one clear error otherwise."""
    if labels is None:
        raise ValueError("token importance and removal curves need the true class of every image; pass labels "
                         "(a dataset with labels: class sub-folders, a list file with labels, or synthetic:...)")
    y = torch.as_tensor(labels).long().reshape(-1)
    if y.numel() != batch:
        raise ValueError(f"expected one label per image ({batch}), got {y.numel()}")
    if (y < 0).any():
        raise ValueError("some images have no label (-1); removal curves need a labelled dataset (class "
                         "sub-folders, a list file with labels, or synthetic:...)")
    C = model.cfg.num_classes
    if (y >= C).any():
        raise ValueError(f"labels must be classes of the model's head (0..{C - 1}), got {int(y.max())}; "
                         f"use the dataset the model was trained on")
    return y


def check_classifier(model) -> None:
    if model.cfg.head == "none":
        raise ValueError("this model has no classification head: token importance and removal curves measure "
                         "class accuracy; use a model with a classifier")


def seed_gradient_importance(model, x: torch.Tensor, labels) -> torch.Tensor:
    """vilas2023's gradient importance (B, N) of the patch tokens; needs a CLS token."""
    check_classifier(model)
    if not model.cfg.class_token:
        raise ValueError("vilas2023's gradient importance reads the CLS token, and this model has none; "
                         "use --orders chefer,probe,random")
    y = check_labels(model, labels, x.shape[0]).to(model.device)
    grid = grid_of(x, model)
    blocks = [b for b in range(model.cfg.depth) if model.token_layout(b, grid).cls is not None]
    pats: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}

    def keep_pattern(t, hook):
        pats[block_of(hook.name)] = t

    def keep_out(t, hook):
        outs[block_of(hook.name)] = t

    hooks = [(pattern_hook(b), keep_pattern) for b in blocks] + [(f"blocks.{b}.hook_attn_out", keep_out)
                                                                  for b in blocks]
    lay_out = model.token_layout(model.cfg.depth, grid)
    importance = torch.zeros(x.shape[0], lay_out.n_patches, dtype=torch.float32, device=model.device)
    with torch.enable_grad():
        xg = x.detach().clone().to(model.device, model.dtype).requires_grad_(True)
        with model.hooks(hooks):
            model(xg)
        for b in blocks:
            lay = model.token_layout(b, grid)
            logits = model.project_to_logits(outs[b][:, lay.cls])                    # B, C
            loss = F.cross_entropy(logits.softmax(-1), y, reduction="sum")           # vilas2023's double softmax
            (g,) = torch.autograd.grad(loss, pats[b], retain_graph=True)            # B, H, T, T
            importance -= g[:, :, lay.cls, lay.patches].float().sum(1)
    return importance.detach()


def chefer_importance(model, x: torch.Tensor, labels) -> torch.Tensor:
    """Chefer relevance of the true-class logit, CLS row over the patch tokens (B, N)."""
    from vitscope.analysis.attention.relevance import relevance_from_model

    check_classifier(model)
    if not model.cfg.class_token:
        raise ValueError("Chefer relevance is read from the CLS row, and this model has no CLS token; "
                         "use --orders probe,random")
    y = check_labels(model, labels, x.shape[0])
    maps, _, _ = relevance_from_model(model, x.to(model.device, model.dtype), target=y.to(model.device),
                                      method="chefer", normalize=None)
    return maps.reshape(maps.shape[0], -1).float()


def probe_importance(model, x: torch.Tensor, labels, probes, site: str = "resid_post") -> torch.Tensor:
    """Minus the ridge probes' true-class rank summed over the probed blocks (B, N): higher = more important."""
    from vitscope.analysis.probes.ridge import probe_rank_sum

    y = check_labels(model, labels, x.shape[0]) if model.cfg.head != "none" else torch.as_tensor(labels).long()
    return -probe_rank_sum(model, probes, x, y, site).float()


def importance(model, x: torch.Tensor, labels, method: str, probes=None) -> torch.Tensor:
    """Importance (B, N) by ``method`` (grads, chefer or probe; ``probe`` needs fitted ``probes``)."""
    if method == "grads":
        return seed_gradient_importance(model, x, labels)
    if method == "chefer":
        return chefer_importance(model, x, labels)
    if method == "probe":
        if probes is None:
            raise ValueError("the probe order needs fitted per-token ridge probes (fit_token_probes on a training "
                             "set; in the command line: --probe-data SPEC)")
        return probe_importance(model, x, labels, probes)
    raise ValueError(f"unknown importance {method!r}; expected one of {IMPORTANCE_METHODS}")


def importance_order(importance: torch.Tensor) -> torch.Tensor:
    """(B, N) importance -> (B, N) patch indices, most important first; ties keep the lower index first."""
    return torch.sort(importance, dim=-1, descending=True, stable=True).indices


def random_orders(n_patches: int, n: int = 10, seed: int = 0) -> torch.Tensor:
    """``n`` random orders of ``n_patches`` (n, N): order i is ``torch.randperm(N)`` after
    ``torch.manual_seed(seed + i)``; the global random state is not touched."""
    if n < 1:
        raise ValueError(f"the number of random orders must be at least 1, got {n}")
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(int(seed) + i)
        out.append(torch.randperm(n_patches, generator=g))
    return torch.stack(out)
