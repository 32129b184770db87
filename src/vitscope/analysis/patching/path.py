"""Path patching (Wang et al. 2022, the IOI work; Goldowsky-Dill et al. 2023): the effect of one sender head on
the logits *through* chosen receivers only.

For every sender head ``(s, h)`` (the cells; stacked in the batch as in activation patching):

1. run the base input (the corrupted one for denoising) from block ``s`` with the sender's ``hook_z`` taken from the
   other run and every other head's ``hook_z`` frozen to its base value, in every later block (``freeze_mlps``
   freezes the MLP outputs too; by default they are recomputed, as in the IOI work); record what the receivers
   read: their heads' ``attn.hook_q_input`` / ``hook_k_input`` / ``hook_v_input``;
2. run the base input again with only those receiver inputs replaced by the recorded ones, everything else
   recomputed, and measure the metric.

With ``receivers="logits"`` step 1 alone is the measurement: the sender's effect on the logits with every other head
frozen (its direct path, plus the MLPs unless ``freeze_mlps``). The metric is normalised as in activation patching
(0 = corrupted, 1 = clean).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from vitscope.analysis.patching.activation import DIRECTIONS, PatchGrid, check_blocks, input_grid, runs
from vitscope.analysis.patching.pairs import PatchPairs


def parse_receivers(model, text: str) -> list[tuple[int, int, str]] | None:
    """``"logits"`` -> None; ``"4.3.q,5.k,5.2.qkv"`` -> [(block, head, "q"|"k"|"v"), ...] (``B.x`` is every head of
    block B); one line when a block or head does not exist."""
    s = str(text).strip()
    if s.lower() == "logits":
        return None
    depth, H = model.cfg.depth, model.cfg.num_heads
    out = []
    for part in (p.strip() for p in s.split(",") if p.strip()):
        m = re.fullmatch(r"(-?\d+)(?:\.(\d+))?\.([qkv]+)", part)
        if not m:
            raise ValueError(f"receivers take 'logits' or BLOCK.HEAD.q|k|v (or BLOCK.q for every head), "
                             f"comma-separated, e.g. '4.3.q,5.k'; got {part!r}")
        b = int(m.group(1))
        if not -depth <= b < depth:
            raise ValueError(f"receiver {part!r}: block {b} does not exist; this model has blocks 0..{depth - 1}")
        heads = range(H) if m.group(2) is None else [int(m.group(2))]
        if any(not 0 <= h < H for h in heads):
            raise ValueError(f"receiver {part!r}: head {m.group(2)} does not exist; blocks have heads 0..{H - 1}")
        out += [(b % depth, h, x) for h in heads for x in dict.fromkeys(m.group(3))]
    if not out:
        raise ValueError("receivers: give 'logits' or at least one BLOCK.HEAD.q|k|v")
    return sorted(dict.fromkeys(out))


def _groups(receivers: list[tuple[int, int, str]]) -> dict[tuple[int, str], list[int]]:
    g: dict[tuple[int, str], list[int]] = {}
    for b, h, x in receivers:
        g.setdefault((b, x), []).append(h)
    return g


@torch.no_grad()
def path_patching(model, pairs: PatchPairs, receivers: str = "logits", metric="logit",
                  direction: str = "denoising", blocks: Sequence[int] | None = None, freeze_mlps: bool = False,
                  batch_size: int = 64, progress: bool = False) -> PatchGrid:
    """The sender block x head grid of path patching to ``receivers`` (see the module). ``blocks``: the sender
    blocks (default: every block before the last receiver's, or every block for the logits)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    rec = parse_receivers(model, receivers)
    L, H = model.cfg.depth, model.cfg.num_heads
    last = L if rec is None else max(b for b, _, _ in rec)
    senders = [b for b in check_blocks(model, blocks) if b < last]
    if not senders:
        raise ValueError(f"no sender block before the receivers (blocks before {last}); choose earlier blocks")
    pairs = pairs.to(model.device, model.dtype)
    denoise = direction == "denoising"
    z = [f"blocks.{b}.attn.hook_z" for b in range(L)]
    base_names = z + [f"blocks.{b}.hook_resid_pre" for b in range(L)] + \
        ([f"blocks.{b}.hook_mlp_out" for b in range(L)] if freeze_mlps else [])
    fn, name, labels, m_clean, m_corr, c_clean, c_corr = runs(model, pairs, metric, z if denoise else base_names,
                                                              base_names if denoise else z)
    base, src = (c_corr, c_clean) if denoise else (c_clean, c_corr)
    groups = _groups(rec) if rec is not None else {}
    grid = input_grid(model, pairs.clean)
    P = pairs.clean.shape[0]
    per = max(1, batch_size // P)
    values, cells = {}, {}
    it = senders
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(senders, desc=f"path patching -> {receivers}", unit="block", leave=False)
    for s in it:
        out = []
        for h0 in range(0, H, per):
            heads = list(range(h0, min(H, h0 + per)))
            k = len(heads)
            sender = torch.zeros(k, 1, 1, H, 1, dtype=torch.bool, device=pairs.clean.device)
            sender[torch.arange(k), 0, 0, torch.as_tensor(heads)] = True
            hooks = _frozen(base, src, s, L, k, P, sender, freeze_mlps)
            seen: dict[tuple[int, str], torch.Tensor] = {}
            for (r, x), hs in groups.items():
                if r > s:
                    hooks.append((f"blocks.{r}.attn.hook_{x}_input",
                                  lambda a, hook, key=(r, x), hs=hs: seen.__setitem__(key, a[:, :, hs].clone())))
            with model.hooks(hooks):
                logits = model.forward_from(base[f"blocks.{s}.hook_resid_pre"].repeat(k, 1, 1), s, grid)
            if rec is not None:
                logits = _receive(model, base, seen, groups, k, grid) if seen else None
            vals = fn(logits, labels.repeat(k)).reshape(k, P) if logits is not None else \
                (m_corr if denoise else m_clean)[None].expand(k, P)
            out.append(vals.float())
        values[s] = torch.cat(out).cpu().double().numpy()
        cells[s] = [{"head": h} for h in range(H)]
    return PatchGrid("z", direction, "path", name, senders, values, cells, m_clean.cpu().double().numpy(),
                     m_corr.cpu().double().numpy(), grid, H,
                     extra={"receivers": str(receivers), "freeze_mlps": bool(freeze_mlps)})


def _frozen(base, src, s: int, L: int, k: int, P: int, sender: torch.Tensor, freeze_mlps: bool) -> list:
    """Step 1's hooks: the sender head from the other run, every other head (and, optionally, MLP) frozen."""
    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.repeat(k, *([1] * (t.ndim - 1)))

    hooks = []
    for b in range(s, L):
        zb = base[f"blocks.{b}.attn.hook_z"]
        if b == s:
            patched = torch.where(sender, src[f"blocks.{b}.attn.hook_z"][None], zb[None]).reshape(k * P, *zb.shape[1:])
            hooks.append((f"blocks.{b}.attn.hook_z", lambda a, hook, v=patched: v))
        else:
            hooks.append((f"blocks.{b}.attn.hook_z", lambda a, hook, v=rep(zb): v))
        if freeze_mlps:
            hooks.append((f"blocks.{b}.hook_mlp_out", lambda a, hook, v=rep(base[f"blocks.{b}.hook_mlp_out"]): v))
    return hooks


def _receive(model, base, seen, groups, k: int, grid) -> torch.Tensor:
    """Step 2: the base run with the receivers' inputs replaced by what step 1 recorded."""
    first = min(r for r, _ in seen)
    hooks = []
    for (r, x), hs in groups.items():
        if (r, x) not in seen:
            continue

        def put(a, hook, v=seen[(r, x)], hs=hs):
            a = a.clone()
            a[:, :, hs] = v
            return a
        hooks.append((f"blocks.{r}.attn.hook_{x}_input", put))
    with model.hooks(hooks):
        return model.forward_from(base[f"blocks.{first}.hook_resid_pre"].repeat(k, 1, 1), first, grid)

