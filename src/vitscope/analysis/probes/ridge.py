"""Per-token ridge probes (vilas2023): one ridge regression per site, block and token position.

Each probe maps the raw feature of one token position (no normalisation) to a C-vector of targets, -1
everywhere and +1 at the label, with ridge penalty ``alpha`` (vilas2023: 1.0) and an unpenalised intercept,
as scikit-learn's ``Ridge(alpha=1.0)``. The fit is the closed form on centred data,

    W = (Xc^T Xc + alpha I)^-1 Xc^T Yc,    b = mean(Y) - mean(X) W,

solved for every position at once (one batched ``torch.linalg.solve``). The statistics it needs (counts,
sums, X^T X and per-class sums of X) accumulate batch by batch, so a probe over a whole dataset never holds
the features in memory (:class:`RidgeAccumulator`).

Evaluation gives per token the top-1 accuracy and the true class's rank, the number of classes with a
strictly larger score (0 = best; vilas2023 stores the same 0-based rank from an argsort, ties in arbitrary
order). Summed over the blocks of the residual stream, the ranks of the patch tokens order the patches for
the token-removal curves of ``vitscope.analysis.class_embedding.removal`` (lowest sum = most important).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vitscope.analysis.api import Options, OptionError, Result, data_label, tidy_table
from vitscope.analysis.attention.tokens import grid_of, token_names

# probe sites: the block output and the two branches as they are added to the stream (vilas2023's hs, attn, mlp)
RIDGE_SITES = {"resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}
SEED_SITE_NAMES = {"hs": "resid_post", "attn": "attn_out", "mlp": "mlp_out"}


def pm1_targets(labels: torch.Tensor, num_classes: int, dtype=torch.float64) -> torch.Tensor:
    """Labels (N,) -> targets (N, C): -1 everywhere, +1 at the label."""
    labels = torch.as_tensor(labels).long()
    y = torch.full((labels.shape[0], num_classes), -1.0, dtype=dtype, device=labels.device)
    y[torch.arange(labels.shape[0], device=labels.device), labels] = 1.0
    return y


@dataclass
class RidgeWeights:
    """Closed-form ridge solutions, batched over leading dims: ``weight`` (..., D, C), ``bias`` (..., C)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, ..., D) with the same trailing batch dims as the weights -> scores (B, ..., C), computed
        in the weights' precision (float64 by default)."""
        w = self.weight.to(x.device)
        return torch.einsum("b...d,...dc->b...c", x.to(w.dtype), w) + self.bias.to(w)


def _solve(sxx: torch.Tensor, sxy: torch.Tensor, alpha: float) -> torch.Tensor:
    D = sxx.shape[-1]
    eye = torch.eye(D, dtype=sxx.dtype, device=sxx.device)
    return torch.linalg.solve(sxx + alpha * eye, sxy)


def ridge_fit(X: torch.Tensor, Y: torch.Tensor, alpha: float = 1.0, fit_intercept: bool = True,
              dtype=torch.float64) -> RidgeWeights:
    """Ridge regression in closed form, batched: X (..., N, D), Y (..., N, C) (or (N, C), shared).

    Same solution as scikit-learn's ``Ridge(alpha, fit_intercept)`` for every leading index.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    X = X.to(dtype)
    Y = Y.to(dtype)
    if fit_intercept:
        xm, ym = X.mean(-2, keepdim=True), Y.mean(-2, keepdim=True)                  # ..., 1, D / C
        X, Y = X - xm, Y - ym
    sxx = X.transpose(-1, -2) @ X                                                    # ..., D, D
    sxy = X.transpose(-1, -2) @ Y                                                    # ..., D, C
    W = _solve(sxx, sxy, alpha)                                                      # ..., D, C
    if fit_intercept:
        b = (ym - xm @ W).squeeze(-2)                                                # ..., C
    else:
        b = torch.zeros(W.shape[:-2] + W.shape[-1:], dtype=dtype, device=W.device)
    return RidgeWeights(W, b)


class RidgeAccumulator:
    """Sufficient statistics of ridge probes with +1/-1 targets, one per position, over streamed batches.

    ``update(x, labels)``: x (B, P, D) features of P positions, labels (B,). ``solve()`` -> RidgeWeights with
    weight (P, D, C) and bias (P, C), equal to ``ridge_fit`` on all rows at once. Memory: P * D * (D + C).
    """

    def __init__(self, num_positions: int, dim: int, num_classes: int, alpha: float = 1.0,
                 dtype=torch.float64, device="cpu") -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.P, self.D, self.C, self.alpha = num_positions, dim, num_classes, float(alpha)
        kw = dict(dtype=dtype, device=device)
        self.n = 0
        self.counts = torch.zeros(num_classes, **kw)                                 # C
        self.sum_x = torch.zeros(num_positions, dim, **kw)                           # P, D
        self.xtx = torch.zeros(num_positions, dim, dim, **kw)                        # P, D, D
        self.class_sum = torch.zeros(num_positions, num_classes, dim, **kw)          # P, C, D

    def update(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        B, P, D = x.shape
        if (P, D) != (self.P, self.D):
            raise ValueError(f"expected features of shape (B, {self.P}, {self.D}), got {tuple(x.shape)}")
        labels = torch.as_tensor(labels, device=self.xtx.device).long()
        if (labels < 0).any() or (labels >= self.C).any():
            raise ValueError(f"labels must be in [0, {self.C - 1}] for a {self.C}-class probe")
        x = x.to(self.xtx)
        onehot = torch.nn.functional.one_hot(labels, self.C).to(x)                   # B, C
        self.n += B
        self.counts += onehot.sum(0)
        self.sum_x += x.sum(0)
        self.xtx += torch.einsum("bpd,bpe->pde", x, x)
        self.class_sum += torch.einsum("bc,bpd->pcd", onehot, x)

    def solve(self) -> RidgeWeights:
        if self.n < 2:
            raise ValueError(f"a ridge probe needs at least 2 training rows, got {self.n}")
        n = self.n
        xm = self.sum_x / n                                                          # P, D
        ym = 2 * self.counts / n - 1                                                 # C
        sxx = self.xtx - n * xm[:, :, None] * xm[:, None, :]                         # P, D, D
        xty = 2 * self.class_sum.transpose(1, 2) - self.sum_x[:, :, None]            # P, D, C (Y = 2 onehot - 1)
        sxy = xty - n * xm[:, :, None] * ym[None, None, :]                           # P, D, C
        W = _solve(sxx, sxy, self.alpha)
        b = ym[None, :] - torch.einsum("pd,pdc->pc", xm, W)
        return RidgeWeights(W, b)


def true_class_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Scores (B, ..., C), labels (B,) -> rank (B, ...): classes with a strictly larger score than the label's."""
    labels = torch.as_tensor(labels, device=scores.device).long()
    idx = labels.reshape(-1, *([1] * (scores.ndim - 1))).expand(*scores.shape[:-1], 1)
    true = scores.gather(-1, idx)                                                    # B, ..., 1
    return (scores > true).sum(-1)


# ----------------------------------------------------------------------------- probes over a model
def _site_hook(site: str) -> str:
    site = SEED_SITE_NAMES.get(site, site)
    if site not in RIDGE_SITES:
        raise ValueError(f"unknown probe site {site!r}; choose among {', '.join(RIDGE_SITES)} "
                         f"(vilas2023's names: {', '.join(SEED_SITE_NAMES)})")
    return RIDGE_SITES[site]


def resolve_sites(sites: str | Iterable[str]) -> list[str]:
    """Site names (comma-separated or a list; vilas2023's hs/attn/mlp accepted) -> vitscope site names."""
    items = [s.strip() for s in sites.split(",")] if isinstance(sites, str) else [str(s) for s in sites]
    items = [s for s in items if s]
    if not items:
        raise ValueError("no probe sites given; choose among " + ", ".join(RIDGE_SITES))
    out = []
    for s in items:
        _site_hook(s)
        name = SEED_SITE_NAMES.get(s, s)
        if name not in out:
            out.append(name)
    return out


@dataclass
class TokenProbes:
    """Fitted per-token ridge probes: ``weights[(site, block)]`` has weight (T_b, D, C) and bias (T_b, C)."""

    weights: dict[tuple[str, int], RidgeWeights]
    num_classes: int
    alpha: float
    n_train: int
    sites: list[str] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)


def _blocks_of(model, blocks: Sequence[int] | None) -> list[int]:
    depth = model.cfg.depth
    out = list(range(depth)) if blocks is None else sorted({b % depth if b < 0 else b for b in blocks})
    bad = [b for b in out if not 0 <= b < depth]
    if bad:
        raise ValueError(f"blocks {bad} do not exist; this model has blocks 0..{depth - 1}")
    return out


def _check_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).long()
    if (labels < 0).any():
        raise ValueError("per-token probes need class labels, and some images have none; use a folder with one "
                         "sub-folder per class, a list file with labels, or synthetic:...")
    if (labels >= num_classes).any():
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got {int(labels.max())}")
    return labels


def _hooks(sites: list[str], blocks: list[int]) -> dict[tuple[str, int], str]:
    return {(s, b): f"blocks.{b}.{RIDGE_SITES[s]}" for s in sites for b in blocks}


def fit_token_probes(model, batches: Iterable, num_classes: int, sites: str | Iterable[str] = ("resid_post",),
                     blocks: Sequence[int] | None = None, alpha: float = 1.0, progress: bool = False,
                     total: int | None = None) -> TokenProbes:
    """Fit one ridge probe per site, block and token position from ``batches`` of (images, labels, ...).

    One forward pass per batch caches every requested site; only the probes' statistics are kept.
    """
    from tqdm.auto import tqdm

    sites_l, blocks_l = resolve_sites(sites), _blocks_of(model, blocks)
    hooks = _hooks(sites_l, blocks_l)
    acc: dict[tuple[str, int], RidgeAccumulator] = {}
    D = model.cfg.embed_dim
    with torch.inference_mode():
        for batch in tqdm(batches, desc="fit token probes", total=total, disable=not progress, leave=False):
            x, y = batch[0], _check_labels(batch[1], num_classes)
            _, cache = model.run_with_cache(x.to(model.device, model.dtype), names_filter=list(hooks.values()))
            for key, h in hooks.items():
                f = cache[h]                                                         # B, T_b, D
                if key not in acc:
                    acc[key] = RidgeAccumulator(f.shape[1], D, num_classes, alpha)
                acc[key].update(f.cpu(), y)
    if not acc:
        raise ValueError("no training images for the per-token probes")
    n = next(iter(acc.values())).n
    return TokenProbes({k: a.solve() for k, a in acc.items()}, num_classes, float(alpha), n, sites_l, blocks_l)


@dataclass
class TokenProbeResult:
    """Per-token probe results on a test set.

    ``ranks[(site, block)]``: (N, T_b) true-class rank of every image and token position;
    ``correct[(site, block)]``: (N, T_b) bool top-1 hits; ``layouts[block]``: the token layout.
    """

    ranks: dict[tuple[str, int], np.ndarray]
    correct: dict[tuple[str, int], np.ndarray]
    layouts: dict[int, object]
    num_classes: int

    def accuracy(self, site: str, block: int) -> np.ndarray:
        """Top-1 accuracy per token position (T_b,)."""
        return self.correct[(site, block)].mean(0)

    def rank_sum(self, site: str = "resid_post") -> np.ndarray:
        """Per image, the true-class ranks of each patch token summed over the blocks of ``site`` (N, n_patches)."""
        blocks = sorted(b for s, b in self.ranks if s == site)
        if not blocks:
            raise ValueError(f"no probes of site {site!r} were evaluated")
        total = 0
        for b in blocks:
            lay = self.layouts[b]
            total = total + self.ranks[(site, b)][:, lay.patches].astype(np.int64)
        return total

    def rows(self, model_name: str = "model") -> list[dict]:
        """Tidy rows: model, site, block, position, token, task, metric (accuracy, mean_rank, score), value."""
        out = []
        C = self.num_classes
        for (site, b), r in sorted(self.ranks.items()):
            names = token_names(self.layouts[b])
            acc, mr = self.correct[(site, b)].mean(0), r.mean(0)
            for p, name in enumerate(names):
                base = {"model": model_name, "site": site, "block": b, "position": p, "token": name,
                        "task": "ridge_probe"}
                out.append({**base, "metric": "accuracy", "value": float(acc[p])})
                out.append({**base, "metric": "mean_rank", "value": float(mr[p])})
                out.append({**base, "metric": "score", "value": float(1 - mr[p] / C)})
        return out


def evaluate_token_probes(model, probes: TokenProbes, batches: Iterable, progress: bool = False,
                          total: int | None = None) -> TokenProbeResult:
    """Apply fitted probes to ``batches`` of (images, labels, ...): ranks and hits per image and token."""
    from tqdm.auto import tqdm

    hooks = _hooks(probes.sites, probes.blocks)
    ranks: dict[tuple[str, int], list[torch.Tensor]] = {k: [] for k in hooks}
    correct: dict[tuple[str, int], list[torch.Tensor]] = {k: [] for k in hooks}
    layouts = {}
    with torch.inference_mode():
        for batch in tqdm(batches, desc="evaluate token probes", total=total, disable=not progress, leave=False):
            x, y = batch[0], _check_labels(batch[1], probes.num_classes)
            x = x.to(model.device, model.dtype)
            grid = grid_of(x, model)
            _, cache = model.run_with_cache(x, names_filter=list(hooks.values()))
            for key, h in hooks.items():
                layouts[key[1]] = model.token_layout(key[1], grid)
                w = probes.weights[key]
                f = cache[h].cpu()
                if f.shape[1] != w.weight.shape[0]:
                    raise ValueError(f"block {key[1]} has {f.shape[1]} tokens but its probes were fitted on "
                                     f"{w.weight.shape[0]}; use images of the training size")
                s = w.predict(f)                                                     # B, T, C
                ranks[key].append(true_class_rank(s, y))
                correct[key].append(s.argmax(-1) == y[:, None])
    if not any(ranks.values()):
        raise ValueError("no test images for the per-token probes")
    return TokenProbeResult({k: torch.cat(v).numpy() for k, v in ranks.items()},
                            {k: torch.cat(v).numpy() for k, v in correct.items()}, layouts, probes.num_classes)


def probe_rank_sum(model, probes: TokenProbes, x: torch.Tensor, labels: torch.Tensor,
                   site: str = "resid_post") -> torch.Tensor:
    """The "linear probe" patch score of vilas2023 for one batch: per image, the ranks of each patch token summed
    over the probed blocks of ``site`` (B, n_patches); lowest = most important."""
    site = resolve_sites([site])[0]
    sub = TokenProbes({k: v for k, v in probes.weights.items() if k[0] == site}, probes.num_classes,
                      probes.alpha, probes.n_train, [site], [b for s, b in probes.weights if s == site])
    if not sub.weights:
        raise ValueError(f"the probes have no site {site!r}; fit them with sites including it")
    res = evaluate_token_probes(model, sub, [(x, labels)])
    return torch.from_numpy(res.rank_sum(site))


# ----------------------------------------------------------------------------- the evaluation entry point


@dataclass
class TokenProbeOptions(Options):
    """Options of :func:`evaluate` (``vitscope probe-tokens``)."""

    sites: tuple[str, ...] = ("resid_post", "attn_out", "mlp_out")   # vilas2023's hs, attn, mlp
    alpha: float = 1.0                     # ridge penalty (vilas2023: 1.0)
    num_classes: int | None = None         # default: the training set's
    batch_size: int = 64
    limit: int | None = None               # at most this many test images
    train_limit: int | None = None         # at most this many training images
    progress: bool = False

    def validate(self) -> None:
        from vitscope.analysis.class_embedding.inputs import check_limit

        try:
            self.sites = tuple(resolve_sites(self.sites))
        except ValueError as e:
            raise OptionError("sites", f"`sites`: {e}") from None
        self.check_number("alpha", low=0, low_open=True)
        self.check_int("num_classes", minimum=2, optional=True)
        self.check_int("batch_size")
        check_limit(self)
        check_limit(self, "train_limit")


def evaluate(models, data=None, options: TokenProbeOptions | None = None, *, train_data=None,
             **overrides) -> Result:
    """Per-token ridge probes (vilas2023): one probe per site, block and token position fitted on ``train_data``,
    scored on ``data``: accuracy and true-class rank per token, and the rank sum over blocks that orders the patches
    of the removal curves.

    ``models``: a model, a list or ``{label: model}``; ``data`` / ``train_data``: labelled images (a dataset spec,
    an opened dataset or ``[(images, labels)]``). Rows ``model, block, metric (accuracy, mean_rank, score), value``
    with ``site``, ``position``, ``token``, ``alpha``, ``n_train``, ``n_test`` (accuracy as a fraction);
    ``arrays``: the accuracy per block and token (``probe_tokens_<model>_<site>``) and the rank sums
    (``rank_sum_<model>``); ``figures()`` draws the accuracy per site."""
    from vitscope.analysis.class_embedding.inputs import as_models, labelled_images, model_batches, options_of
    from vitscope.runtime import slug

    opts = options_of(TokenProbeOptions, options, overrides)
    rows, arrays, fits, summary = [], {}, {}, []
    te = None
    for label, model in as_models(models).items():
        tr, ytr = labelled_images(train_data, "--train-data", "per-token probes", opts.train_limit)
        te, yte = labelled_images(data, "--data", "per-token probes", opts.limit)
        C = opts.num_classes or max(len(getattr(tr, "classes", []) or []),
                                    int(ytr.max()) + 1 if ytr is not None and len(ytr) else 0)
        if yte is not None and len(yte) and yte.max() >= C:
            raise ValueError(f"--data has labels up to {int(yte.max())} but the probes have {C} classes (from "
                             "--train-data); use splits of the same dataset")
        n_batches = (lambda y: None if y is None else -(-len(y) // opts.batch_size))
        probes = fit_token_probes(model, model_batches(model, tr, opts.batch_size), C, sites=opts.sites, alpha=opts.alpha,
                                  progress=opts.progress, total=n_batches(ytr))
        res = evaluate_token_probes(model, probes, model_batches(model, te, opts.batch_size), progress=opts.progress,
                                    total=n_batches(yte))
        n_test = int(next(iter(res.ranks.values())).shape[0])
        rows += [{**r, "alpha": opts.alpha, "n_train": probes.n_train, "n_test": n_test} for r in res.rows(label)]
        all_names = token_names(model.token_layout(model.cfg.depth))
        for site in opts.sites:
            acc = np.full((len(probes.blocks), len(all_names)), np.nan)
            for i, b in enumerate(probes.blocks):
                a = res.accuracy(site, b)
                for p, n in enumerate(token_names(res.layouts[b])):
                    acc[i, all_names.index(n)] = a[p]
            arrays[f"probe_tokens_{slug(label)}_{site}"] = acc
        if "resid_post" in opts.sites:
            arrays[f"rank_sum_{slug(label)}"] = res.rank_sum("resid_post")
        fits[label] = (probes, all_names)
        last, s0 = probes.blocks[-1], opts.sites[0]
        lay = res.layouts[last]
        patch_acc = float(res.accuracy(s0, last)[lay.patches].mean())
        cls = f", CLS {100 * res.accuracy(s0, last)[lay.cls]:.1f}%" if lay.cls is not None else ""
        summary.append(f"{label} block {last} {s0}: patch tokens {100 * patch_acc:.1f}%{cls}")
    table = tidy_table(rows, "probe_tokens", opts, dataset=getattr(te, "description", None))
    context = {"data": data_label(data) or data_label(te), "n_images": n_test}
    return Result("probe_tokens", table, "per-token ridge probes (mean test accuracy): " + "; ".join(summary), opts,
                  arrays=arrays, meta={"probes": fits, "context": context}, draw=_draw)


def _draw(result: Result) -> dict:
    """Test accuracy per block and token position, one figure per model and site, with the matrix beside it."""
    from vitscope.runtime import slug
    from vitscope.viz.removal import plot_token_probe_accuracy

    figs = {}
    t = result.table
    for label, (probes, names) in result.meta["probes"].items():
        for site in result.options.sites:
            name = f"probe_tokens_{slug(label)}_{site}"
            acc = result.arrays[name]
            shown = t[(t["model"] == label) & (t["site"] == site) & (t["metric"] == "accuracy")]
            fig = plot_token_probe_accuracy(acc, names, blocks=probes.blocks, chance=1 / probes.num_classes,
                                            title=result.titled(f"{label}: per-token ridge probes, {site} (test "
                                                                "accuracy)"))
            figs[name] = (fig, shown, {"arrays": {"accuracy": acc},
                                       "meta": {"model": label, "site": site, "alpha": probes.alpha,
                                                "num_classes": probes.num_classes, "n_train": probes.n_train,
                                                "tokens": names}})
    return figs
