"""Ablations of attention heads and MLPs over a dataset, and iterative head pruning.

A head is ablated at its output ``blocks.{b}.attn.hook_z`` (B, T, H, Dh, before the output projection), an MLP at
``blocks.{b}.hook_mlp_out``, by one of:

* ``zero``: replaced by zeros (the MLP's output bias goes too);
* ``mean``: replaced by its mean over a reference set, per position (``mean_over="position"``) or over positions too
  (``"global"``); mean-ablating every head of a block replaces that block's attention output with its mean
  (the projection is linear; tested);
* ``resample``: replaced by the same activation of another image of the data (a seeded derangement: every image
  takes another image's value).

For each component the accuracy and the mean true-class logit over the data, and their drops from the unablated
model. Iterative pruning (Michel et al. 2019, with real ablations for the importance): at each step the heads whose
ablation (on top of the ones already pruned) lowers the true-class logit least are pruned, ``prune_step`` at a
time, and the accuracy and logit after each step make the curve.

Batched as patching is: each image batch runs once with its residual stream cached; the ablated copies of the batch
are stacked and run from the first ablated block (:meth:`HookedViT.forward_from`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vitscope.analysis.api import Options, Result, tidy_table

ABLATIONS = ("zero", "mean", "resample")
MEAN_OVER = ("position", "global")
COMPONENTS = ("heads", "mlps", "heads,mlps")


@dataclass
class AblateOptions(Options):
    """Options of :func:`evaluate` (``vitscope ablate``, the study analysis ``ablation``)."""

    method: str = "mean"                 # zero, mean (over the reference set) or resample (another image's)
    mean_over: str = "position"          # mean: per position or global (over positions too)
    components: str = "heads,mlps"       # heads, mlps or heads,mlps
    blocks: str = "all"                  # all, "0,3,-1" or "4:8"
    reference: str | None = None         # dataset spec of the reference set for the mean (default: the data)
    prune: bool = False                  # also the iterative head-pruning curve
    prune_step: int = 4                  # heads pruned per step
    prune_images: int = 64               # images that rank the heads and measure the curve
    limit: int | None = 256              # images of the data
    seed: int = 0                        # seed of the resampling
    batch_size: int = 64
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        self.check_choice("method", ABLATIONS)
        self.check_choice("mean_over", MEAN_OVER)
        self.check_choice("components", COMPONENTS, aliases={"mlps,heads": "heads,mlps", "all": "heads,mlps",
                                                             "head": "heads", "mlp": "mlps"})
        self.check_blocks("blocks")
        self.check_int("prune_step")
        self.check_int("prune_images", minimum=2)
        self.check_int("limit", optional=True)
        self.check_int("batch_size")
        self.check_int("seed", minimum=0)


# ----------------------------------------------------------------------------- replacement values
@torch.no_grad()
def reference_means(model, images: torch.Tensor, blocks: Sequence[int], per_position: bool = True,
                    batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean of every block's ``attn.hook_z`` and ``hook_mlp_out`` over ``images``: ``{hook name: (1, T or 1, ...)}``."""
    names = [f"blocks.{b}.{s}" for b in blocks for s in ("attn.hook_z", "hook_mlp_out")]
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for s in range(0, images.shape[0], batch_size):
        _, cache = model.run_with_cache(images[s:s + batch_size].to(model.device, model.dtype), names_filter=names)
        for k, v in cache.items():
            v = v.double().sum(0, keepdim=True)
            sums[k] = sums[k] + v if k in sums else v
        n += min(batch_size, images.shape[0] - s)
    means = {k: (v / n) for k, v in sums.items()}
    if not per_position:
        means = {k: v.mean(1, keepdim=True) for k, v in means.items()}
    return {k: v.to(model.dtype) for k, v in means.items()}


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation without fixed points (one random cycle): image ``i`` takes image ``perm[i]``'s activation."""
    if n < 2:
        raise ValueError(f"resample ablation needs at least two images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


@dataclass
class Ablation:
    """What is ablated in each of K stacked copies of a batch: ``heads[b]`` (K, H) and ``mlps[b]`` (K,) masks."""

    heads: dict[int, torch.Tensor]
    mlps: dict[int, torch.Tensor]
    K: int

    @property
    def start(self) -> int:
        return min([b for b, m in self.heads.items() if m.any()] + [b for b, m in self.mlps.items() if m.any()])


def ablated_logits(model, resid: dict[int, torch.Tensor], ablation: Ablation, values: dict[str, torch.Tensor],
                   grid=None) -> torch.Tensor:
    """Logits (K, n, C) of K ablated copies of a batch of n images, run from the first ablated block.

    ``resid[b]`` (n, T, D): the batch's ``blocks.{b}.hook_resid_pre``; ``values``: the replacement of each hook
    (``blocks.{b}.attn.hook_z`` / ``blocks.{b}.hook_mlp_out``), broadcastable to (n, T, ...)."""
    K = ablation.K
    start = ablation.start
    x = resid[start]
    n = x.shape[0]
    hooks = []
    for b, m in ablation.heads.items():
        if m.any():
            mask = m.to(x.device)[:, None, None, :, None]                               # K, 1, 1, H, 1

            def fz(a, hook, mask=mask, v=values[f"blocks.{b}.attn.hook_z"]):
                a5 = a.reshape(K, n, *a.shape[1:])
                return torch.where(mask, v.to(a)[None].expand_as(a5), a5).reshape(a.shape)
            hooks.append((f"blocks.{b}.attn.hook_z", fz))
    for b, m in ablation.mlps.items():
        if m.any():
            mask = m.to(x.device)[:, None, None, None]                                  # K, 1, 1, 1

            def fm(a, hook, mask=mask, v=values[f"blocks.{b}.hook_mlp_out"]):
                a4 = a.reshape(K, n, *a.shape[1:])
                return torch.where(mask, v.to(a)[None].expand_as(a4), a4).reshape(a.shape)
            hooks.append((f"blocks.{b}.hook_mlp_out", fm))
    with model.hooks(hooks):
        logits = model.forward_from(x.repeat(K, 1, 1), start, grid)
    return logits.reshape(K, n, -1)


# ----------------------------------------------------------------------------- per component, over a dataset
def _components(model, blocks: Sequence[int], which: str) -> list[tuple[int, str, int | None]]:
    H = model.cfg.num_heads
    out = []
    for b in blocks:
        if "heads" in which:
            out += [(b, "head", h) for h in range(H)]
        if "mlps" in which:
            out.append((b, "mlp", None))
    return out


def _single(model, comps: list[tuple[int, str, int | None]]) -> Ablation:
    """One copy per component (all in one block)."""
    K, H = len(comps), model.cfg.num_heads
    b = comps[0][0]
    heads = torch.zeros(K, H, dtype=torch.bool)
    mlps = torch.zeros(K, dtype=torch.bool)
    for k, (_, kind, h) in enumerate(comps):
        if kind == "head":
            heads[k, h] = True
        else:
            mlps[k] = True
    return Ablation({b: heads}, {b: mlps}, K)


class _Batches:
    """The data's images (in memory, preprocessed) and labels, with the values that replace ablated activations."""

    def __init__(self, model, images: torch.Tensor, labels: torch.Tensor, method: str, means=None, seed: int = 0,
                 batch_size: int = 64) -> None:
        self.model, self.images, self.labels = model, images, labels
        self.method, self.means, self.batch_size = method, means, batch_size
        self.perm = derangement(images.shape[0], seed) if method == "resample" else None

    def __iter__(self):
        model = self.model
        L = model.cfg.depth
        names = [f"blocks.{b}.hook_resid_pre" for b in range(L)]
        src_names = [f"blocks.{b}.{s}" for b in range(L) for s in ("attn.hook_z", "hook_mlp_out")]
        for s in range(0, self.images.shape[0], self.batch_size):
            x = self.images[s:s + self.batch_size].to(model.device, model.dtype)
            logits, cache = model.run_with_cache(x, names_filter=names)
            resid = {b: cache[f"blocks.{b}.hook_resid_pre"] for b in range(L)}
            if self.method == "zero":
                cfg = model.cfg
                z = torch.zeros(1, 1, cfg.num_heads, cfg.head_dim, device=x.device, dtype=x.dtype)
                mlp = torch.zeros(1, 1, cfg.embed_dim, device=x.device, dtype=x.dtype)
                values = {k: (z if k.endswith("hook_z") else mlp) for k in src_names}
            elif self.method == "mean":
                values = self.means
            else:
                idx = torch.as_tensor(self.perm[s:s + x.shape[0]])
                _, values = model.run_with_cache(self.images[idx].to(model.device, model.dtype),
                                                 names_filter=src_names)
            labels = self.labels[s:s + x.shape[0]].to(model.device)
            yield resid, values, logits, labels


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct (…, n) bool, true-class logit (…, n)) for logits (…, n, C)."""
    correct = logits.argmax(-1) == labels
    true = logits.gather(-1, labels.expand(*logits.shape[:-1])[..., None].long())[..., 0]
    return correct, true


@torch.no_grad()
def ablate_components(model, images: torch.Tensor, labels: torch.Tensor, method: str = "mean",
                      components: str = "heads,mlps", blocks: Sequence[int] | None = None, means=None,
                      seed: int = 0, batch_size: int = 64, progress: bool = False) -> list[dict]:
    """Rows of the accuracy (%) and mean true-class logit with each component ablated, and their drops: metrics
    ``head_accuracy``, ``head_accuracy_drop``, ``head_logit``, ``head_logit_drop`` (``mlp_...`` for MLPs), and the
    unablated ``accuracy`` / ``logit`` (block None)."""
    blocks = list(range(model.cfg.depth)) if blocks is None else list(blocks)
    comps = _components(model, blocks, components)
    n = images.shape[0]
    correct = torch.zeros(len(comps) + 1, dtype=torch.float64)
    logit = torch.zeros(len(comps) + 1, dtype=torch.float64)
    batches = _Batches(model, images, labels, method, means, seed, batch_size)
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, total=-(-n // batch_size), desc=f"{method} ablation", unit="batch", leave=False)
    for resid, values, base_logits, y in it:
        c, t = _scores(base_logits, y)
        correct[0] += c.sum().item()
        logit[0] += t.double().sum().item()
        k = 1
        for b in blocks:
            group = [cp for cp in comps if cp[0] == b]
            if not group:
                continue
            lg = ablated_logits(model, resid, _single(model, group), values)
            c, t = _scores(lg, y)
            correct[k:k + len(group)] += c.sum(1).double().cpu()
            logit[k:k + len(group)] += t.double().sum(1).cpu()
            k += len(group)
    acc, mean_logit = 100.0 * correct / n, logit / n
    rows = [{"block": None, "component": "none", "head": None, "metric": m, "value": float(v)}
            for m, v in (("accuracy", acc[0]), ("logit", mean_logit[0]))]
    for k, (b, kind, h) in enumerate(comps, start=1):
        for m, v in (("accuracy", acc[k]), ("accuracy_drop", acc[0] - acc[k]), ("logit", mean_logit[k]),
                     ("logit_drop", mean_logit[0] - mean_logit[k])):
            rows.append({"block": b, "component": kind, "head": h, "metric": f"{kind}_{m}", "value": float(v)})
    return rows


@torch.no_grad()
def prune_heads(model, images: torch.Tensor, labels: torch.Tensor, method: str = "mean", means=None,
                step: int = 4, seed: int = 0, batch_size: int = 64, progress: bool = False) -> list[dict]:
    """The iterative pruning curve: rows ``n_pruned``, ``metric`` (accuracy / logit), ``value``, ``pruned`` (the
    heads pruned at that step, "block.head")."""
    L, H = model.cfg.depth, model.cfg.num_heads
    remaining = [(b, h) for b in range(L) for h in range(H)]
    pruned: list[tuple[int, int]] = []
    batches = list(_Batches(model, images, labels, method, means, seed, batch_size))
    n = images.shape[0]

    def evaluate_sets(sets: list[list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy (%) and mean logit with each set of heads ablated (K sets, stacked in chunks)."""
        acc, lg = np.zeros(len(sets)), np.zeros(len(sets))
        per = max(1, batch_size // min(batch_size, n))              # sets per forward pass
        for k0 in range(0, len(sets), per):
            chunk = sets[k0:k0 + per]
            heads = {b: torch.zeros(len(chunk), H, dtype=torch.bool) for b in range(L)}
            for k, s in enumerate(chunk):
                for b, h in s:
                    heads[b][k, h] = True
            abl = Ablation(heads, {}, len(chunk))
            for resid, values, _, y in batches:
                c, t = _scores(ablated_logits(model, resid, abl, values), y)
                acc[k0:k0 + len(chunk)] += c.sum(1).double().cpu().numpy()
                lg[k0:k0 + len(chunk)] += t.double().sum(1).cpu().numpy()
        return 100.0 * acc / n, lg / n

    base_acc = base_logit = 0.0
    for _, _, logits, y in batches:
        c, t = _scores(logits, y)
        base_acc += c.sum().item()
        base_logit += t.double().sum().item()
    rows = [{"n_pruned": 0, "metric": "accuracy", "value": 100.0 * base_acc / n, "pruned": ""},
            {"n_pruned": 0, "metric": "logit", "value": base_logit / n, "pruned": ""}]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(remaining), desc="pruning heads", unit="head", leave=False)
    while remaining:
        _, lg = evaluate_sets([pruned + [r] for r in remaining])
        order = np.argsort(-lg, kind="stable")[:step]                # the highest logit left = the least important
        chosen = [remaining[i] for i in order]
        pruned += chosen
        remaining = [r for r in remaining if r not in chosen]
        acc, lg = evaluate_sets([pruned])
        tag = " ".join(f"{b}.{h}" for b, h in chosen)
        rows += [{"n_pruned": len(pruned), "metric": "accuracy", "value": float(acc[0]), "pruned": tag},
                 {"n_pruned": len(pruned), "metric": "logit", "value": float(lg[0]), "pruned": tag}]
        if bar is not None:
            bar.update(len(chosen))
    if bar is not None:
        bar.close()
    return rows


# ----------------------------------------------------------------------------- the evaluation entry point
def _images_labels(model, data, limit: int | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The data's first ``limit`` images (the model's preprocessing) and labels; labels -1 become the model's own
    prediction (the accuracy is then agreement with the unablated model)."""
    from vitscope.features.access import image_batches, open_dataset_any

    ds = open_dataset_any(data) if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__") else data
    xs, ys = [], []
    for imgs, y, _ in image_batches([model], ds, batch_size=batch_size, limit=limit):
        xs.append(imgs[0])
        ys.append(torch.as_tensor(y))
    x, y = torch.cat(xs).float(), torch.cat(ys).long()
    if (y < 0).any():
        with torch.no_grad():
            pred = torch.cat([model(x[s:s + batch_size].to(model.device, model.dtype)).argmax(-1).cpu()
                              for s in range(0, x.shape[0], batch_size)])
        y = torch.where(y < 0, pred, y)
    return x, y, str(getattr(ds, "description", None) or (data if isinstance(data, str) else "tensor"))


def evaluate(models, data=None, options: AblateOptions | None = None, **overrides) -> Result:
    """Ablation of every head and MLP (``components``) of every block over ``data``, by ``method``; with
    ``prune`` the iterative head-pruning curve.

    ``data``: a labelled dataset (spec or opened), a tensor (N, 3, H, W), or ``(images, labels)``. Returns a Result
    with one row per model x component x metric (``head_accuracy``, ``head_accuracy_drop`` in percentage points,
    ``head_logit``, ``head_logit_drop``, the same with ``mlp_``; columns ``component`` (head / mlp / none),
    ``head``), the unablated ``accuracy`` and ``logit``, plus ``pruned_accuracy`` / ``pruned_logit`` rows (column
    ``n_pruned``) with ``prune``.
    """
    from vitscope.analysis.patching.evaluation import _blocks, model_items

    opts = (options or AblateOptions()).replace(**overrides) if overrides else (options or AblateOptions())
    if data is None:
        raise ValueError("ablations need images: a labelled dataset (spec) or a tensor of images")
    rows, curves, desc, counts, pruned, classes = [], {}, None, {}, {}, {}
    for label, model in model_items(models).items():
        if opts.device is not None:
            model = model.to(opts.device)
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            x, y, desc = data[0].float(), torch.as_tensor(data[1]).long(), "tensor"
            x, y = (x[:opts.limit], y[:opts.limit]) if opts.limit else (x, y)
        else:
            x, y, desc = _images_labels(model, data, opts.limit, opts.batch_size)
        blocks = _blocks(model, opts.blocks)
        means = None
        if opts.method == "mean":
            ref = x if opts.reference is None else _images_labels(model, opts.reference, None, opts.batch_size)[0]
            means = reference_means(model, ref, range(model.cfg.depth), opts.mean_over == "position",
                                    opts.batch_size)
        if opts.method == "resample" and x.shape[0] < 2:
            raise ValueError(f"resample ablation needs at least two images, got {x.shape[0]}")
        counts[label], classes[label] = int(x.shape[0]), model.cfg.num_classes
        for r in ablate_components(model, x, y, opts.method, opts.components, blocks, means, opts.seed,
                                   opts.batch_size, opts.progress):
            rows.append({"model": label, "method": opts.method, "n_images": int(x.shape[0]), **r})
        if opts.prune:
            k = min(opts.prune_images, x.shape[0])
            curve = prune_heads(model, x[:k], y[:k], opts.method, means, opts.prune_step, opts.seed,
                                opts.batch_size, opts.progress)
            curves[label], pruned[label] = curve, k
            rows += [{"model": label, "method": opts.method, "n_images": k, "block": None,
                      **{**c, "metric": f"pruned_{c['metric']}"}} for c in curve]
    table = tidy_table(rows, "ablation", opts, dataset=desc)
    context = {"data": data if isinstance(data, str) else None if desc == "tensor" else desc, "n_images": counts}
    return Result("ablation", table, _summary(table, opts), opts, draw=_draw,
                  meta={"curves": curves, "context": context, "num_classes": classes, "pruned_images": pruned})


def _summary(table, opts: AblateOptions) -> str:
    drops = table[table["metric"].isin(["head_logit_drop", "mlp_logit_drop"])]
    if not len(drops):
        return f"{opts.method} ablation: nothing ablated"
    top = drops.loc[drops["value"].idxmax()]
    what = f"head {int(top['block'])}.{int(top['head'])}" if top["component"] == "head" else \
        f"the MLP of block {int(top['block'])}"
    base = table[(table["metric"] == "accuracy") & (table["component"] == "none")]["value"].iloc[0]
    n = int(table["n_images"].iloc[0])
    return (f"{opts.method} ablation of {opts.components.replace(',', ' and ')} on {n} images (accuracy "
            f"{base:.1f}%): largest logit drop {top['value']:.3f} from {what} ({top['model']})")


def ablation_grid(table, model: str, metric: str = "logit_drop") -> tuple[np.ndarray, list[int], list[str]]:
    """(values (L, H [+ 1]), blocks, column names) of one model's ablation rows of ``metric`` (``logit_drop``,
    ``accuracy_drop``, ...): heads, then the MLP."""
    t = table[(table["model"] == model) & table["metric"].isin([f"head_{metric}", f"mlp_{metric}"])]
    blocks = sorted(int(b) for b in t["block"].dropna().unique())
    heads = sorted(int(h) for h in t["head"].dropna().unique())
    has_mlp = (t["component"] == "mlp").any()
    cols = [str(h) for h in heads] + (["MLP"] if has_mlp else [])
    out = np.full((len(blocks), len(cols)), np.nan)
    for _, r in t.iterrows():
        i = blocks.index(int(r["block"]))
        j = len(heads) if r["component"] == "mlp" else heads.index(int(r["head"]))
        out[i, j] = r["value"]
    return out, blocks, cols


def _draw(result: Result) -> dict:
    from vitscope.runtime import slug
    from vitscope.viz.patching import plot_head_effects, plot_pruning

    t = result.table
    figs = {}
    models = list(dict.fromkeys(t["model"]))
    for model in models:
        pre = f"{slug(model)}_" if len(models) > 1 else ""
        for metric, label in (("logit_drop", "true-class logit drop"), ("accuracy_drop", "accuracy drop (points)")):
            grid, blocks, cols = ablation_grid(t, model, metric)
            if not grid.size:
                continue
            fig = plot_head_effects(grid, blocks, title=result.titled(f"{model}: {result.options.method} ablation, "
                                                                      f"{label}", model),
                                    label=label, columns=cols, xlabel="head (and MLP)")
            figs[f"{pre}ablation_{metric}"] = (fig, t[(t["model"] == model)
                                                     & t["metric"].isin([f"head_{metric}", f"mlp_{metric}"])])
    if result.meta["curves"]:
        curve = t[t["metric"].isin(["pruned_accuracy", "pruned_logit"])].copy()
        curve["metric"] = curve["metric"].str.replace("pruned_", "", regex=False)
        pruned, classes = (set(result.meta.get(k, {}).values()) for k in ("pruned_images", "num_classes"))
        C = classes.pop() if len(classes) == 1 else None
        figs["ablation_pruning"] = (plot_pruning(
            curve, title=result.titled(f"iterative head pruning ({result.options.method} ablation)",
                                       n_images=pruned.pop() if len(pruned) == 1 else None),
            chance=100 / C if C else None), curve)
    return figs
