"""The logit lens (vilas2023), streamed: every block output and both branch outputs, at every token, projected
onto class space as the batches pass.

``ClassProjection`` maps residual-stream vectors (..., D) to class logits (..., C): class embeddings
(``embeddings.ClassEmbeddings``) bound to a model. By default the model's own head (final norm or ``fc_norm``,
then the head with its bias; DeiT-distilled: the two heads averaged); for models without a classifier, a linear
head fitted on the last layer or a matrix the user gives (e.g. CLIP text embeddings after the CLIP projection).

``LogitLens`` runs a model with hooks that project each site as soon as the block computes it and keep only, per
image and token, the rank of the true class, its logit and the top-k classes; the logits (B, T, C) of one block
and site exist only inside the hook. What every metric needs is summed as the batches pass (fixed size), and the
per-image arrays go to a record that is either in memory or appended to files on disk (``record=PATH``), so the
process's peak memory does not grow with the number of images.

Sites: ``resid`` = ``blocks.{i}.hook_resid_post`` (block output), ``attn`` = ``hook_attn_out``, ``mlp`` =
``hook_mlp_out`` (the branches as they are added to the stream, no residual; after LayerScale, decision 4).
Token positions come from ``model.token_layout(i)``: tokens that enter late (CLS, registers) are only present at
the blocks they exist in.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitscope.analysis.api import OptionError, Result, data_label, tidy_table
from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings, ClassProjection  # noqa: F401
from vitscope.analysis.class_embedding.inputs import MASK_RULES, ClassSpaceOptions
from vitscope.analysis.class_embedding.metrics import COUNT_ALIASES, class_rank

SITES = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}


def pool_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """Last-block tokens (B, T, D) -> the vector a head on the last layer reads (B, D), before the final norm:
    the CLS token, or the mean of the patch tokens for average-pooled models and models without CLS."""
    lay = model.token_layout(model.cfg.depth)
    if model.cfg.global_pool != "avg" and lay.cls is not None:
        return tokens[:, lay.cls]
    n_patch = tokens.shape[1] - (lay.n_tokens - lay.n_patches)
    return tokens[:, lay.patches.start:lay.patches.start + n_patch].mean(dim=1)


def resolve_projection(model, projection: ClassProjection | ClassEmbeddings | None) -> ClassProjection:
    """``projection`` (ClassEmbeddings are bound to ``model``), else the model's own head."""
    if projection is None:
        return ClassProjection.from_model(model)
    if isinstance(projection, ClassEmbeddings):
        return projection.to_projection(model)
    return projection


# ----------------------------------------------------------------------------- token alignment between blocks
def common_tokens(prev, cur) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Positions (in ``prev``, in ``cur``) of the tokens present in both layouts, and their keys, in ``cur`` order."""
    from vitscope.analysis.attention.tokens import token_names

    kp = {k: i for i, k in enumerate(token_names(prev))}
    kc = token_names(cur)
    both = [(kp[k], i, k) for i, k in enumerate(kc) if k in kp]
    return (np.array([a for a, _, _ in both], np.int64), np.array([b for _, b, _ in both], np.int64),
            [k for _, _, k in both])


# ----------------------------------------------------------------------------- per-image records
class Record:
    """Per-image arrays appended batch by batch, in memory or to raw files in a folder (read back lazily)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._mem: dict[str, list[np.ndarray]] = {}
        self._meta: dict[str, dict] = {}
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            for f in self.path.glob("*.bin"):
                f.unlink()

    def append(self, key: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        m = self._meta.setdefault(key, {"dtype": arr.dtype.str, "shape": list(arr.shape[1:]), "n": 0})
        if list(arr.shape[1:]) != m["shape"]:
            raise ValueError(f"record {key!r}: rows of shape {arr.shape[1:]} after {tuple(m['shape'])}")
        m["n"] += arr.shape[0]
        if self.path is None:
            self._mem.setdefault(key, []).append(arr.copy())
        else:
            with open(self.path / f"{key}.bin", "ab") as f:
                f.write(arr.tobytes())

    def keys(self) -> list[str]:
        return list(self._meta)

    def __contains__(self, key: str) -> bool:
        return key in self._meta

    def get(self, key: str) -> np.ndarray:
        if key not in self._meta:
            raise KeyError(f"nothing recorded under {key!r}; recorded: {sorted(self._meta)}")
        m = self._meta[key]
        shape = (m["n"], *m["shape"])
        if self.path is None:
            parts = self._mem[key]
            return np.concatenate(parts) if len(parts) > 1 else parts[0]
        return np.fromfile(self.path / f"{key}.bin", dtype=np.dtype(m["dtype"])).reshape(shape)

    def save_index(self) -> None:
        if self.path is not None:
            (self.path / "index.json").write_text(json.dumps(self._meta, indent=1))


# ----------------------------------------------------------------------------- the streamed lens
@dataclass
class LensSums:
    """Sums over images for one (site, block): per token position, and per image over the patch tokens."""

    score: np.ndarray                    # (T,) sum of identifiability scores
    top1: np.ndarray                     # (T,) images whose true class is rank 0 at this token
    true: np.ndarray                     # (T,) sum of true-class logits
    img_rate: float = 0.0                # sum over images of the share of patch tokens with rank 0
    img_any: int = 0                     # images with at least one rank-0 patch token
    img_score: float = 0.0               # sum over images of the mean patch score


@dataclass
class LensResult:
    """What :class:`LogitLens` accumulated. Blocks are 0-based; ``layouts[b]`` is the layout of block b's tokens."""

    sites: tuple[str, ...]
    depth: int
    num_classes: int
    layouts: dict[int, Any]
    n_images: int
    n_correct: int
    sums: dict[tuple[str, int], LensSums]
    counts: dict[str, np.ndarray]        # change rates and residual match: (depth, 2) = (hits, total)
    record: Record | None = None
    topk: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.n_correct / max(self.n_images, 1)

    # per-image arrays -------------------------------------------------------------------------------
    def _rec(self, key: str) -> np.ndarray:
        if self.record is None:
            raise ValueError("per-image values were not recorded: run the logit lens with record=True (or a folder)")
        return self.record.get(key)

    def ranks(self, site: str, block: int) -> np.ndarray:
        """(N, T_b) 0-based rank of the true class (number of classes with a strictly larger logit)."""
        return self._rec(f"rank_{site}_{block}").astype(np.int64)

    def true_logits(self, site: str, block: int) -> np.ndarray:
        return self._rec(f"true_{site}_{block}")

    def topk_classes(self, site: str, block: int) -> np.ndarray:
        return self._rec(f"top_{site}_{block}")

    def scores(self, site: str, block: int) -> np.ndarray:
        """(N, T_b) identifiability scores 1 - rank / C."""
        return 1.0 - self.ranks(site, block) / self.num_classes

    @property
    def labels(self) -> np.ndarray:
        return self._rec("label").astype(np.int64)

    @property
    def indices(self) -> np.ndarray:
        return self._rec("index").astype(np.int64)

    @property
    def masks(self) -> np.ndarray | None:
        """(N, N_patch) bool class-labelled patch tokens, when masks were given."""
        return self._rec("mask").astype(bool) if self.record is not None and "mask" in self.record else None

    @property
    def predictions(self) -> np.ndarray:
        return self._rec("pred").astype(np.int64)

    # summaries ---------------------------------------------------------------------------------------
    def token_kinds(self, block: int) -> dict[str, np.ndarray]:
        """Positions of each kind of token at ``block``: "cls" (when present) and "patches"."""
        lay = self.layouts[block]
        out = {}
        if lay.cls is not None:
            out["cls"] = np.array([lay.cls])
        out["patches"] = np.arange(lay.patches.start, lay.patches.stop)
        return out

    def mean_score(self, site: str, block: int) -> np.ndarray:
        """(T_b,) mean identifiability score per token position."""
        return self.sums[(site, block)].score / max(self.n_images, 1)

    def position_rate(self, site: str, block: int) -> np.ndarray:
        """(T_b,) share of images whose true class is rank 0 at each token position."""
        return self.sums[(site, block)].top1 / max(self.n_images, 1)

    def token_rate(self, site: str = "resid", block: int = -1) -> float:
        """Per image, the share of patch tokens with rank 0, averaged over images (vilas2023's token rate)."""
        return self.sums[(site, block % self.depth)].img_rate / max(self.n_images, 1)

    def image_rate(self, site: str = "resid", block: int = -1) -> float:
        """Share of images with at least one patch token whose true class is rank 0."""
        return self.sums[(site, block % self.depth)].img_any / max(self.n_images, 1)

    def rows(self, model: str = "model") -> list[dict]:
        """Tidy rows (model, block, task, metric, value, site, token) of every summary."""
        rows = []
        for (site, b), s in sorted(self.sums.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            for kind, pos in self.token_kinds(b).items():
                n = max(self.n_images, 1)
                rows.append(dict(model=model, block=b, task="logit_lens", metric="identifiability",
                                 value=float(s.score[pos].mean() / n), site=site, token=kind))
                rows.append(dict(model=model, block=b, task="logit_lens", metric="identifiable_rate",
                                 value=float(s.top1[pos].mean() / n), site=site, token=kind))
                rows.append(dict(model=model, block=b, task="logit_lens", metric="true_logit",
                                 value=float(s.true[pos].mean() / n), site=site, token=kind))
            rows.append(dict(model=model, block=b, task="logit_lens", metric="image_rate",
                             value=self.image_rate(site, b), site=site, token="patches"))
        for name, c in self.counts.items():
            if name in COUNT_ALIASES:
                continue
            metric, _, token = name.partition(":")
            for b in range(self.depth):
                if c[b, 1] > 0:
                    site = metric.split("_")[0] if metric in ("attn_change", "mlp_change") else "resid"
                    rows.append(dict(model=model, block=b, task="logit_lens", metric=metric,
                                     value=float(c[b, 0] / c[b, 1]), site=site, token=token or "all"))
        return rows


COUNT_NAMES = ("block_change:patches", "block_change:cls", "attn_change:patches", "attn_change:cls",
               "mlp_change:patches", "mlp_change:cls", "match_attn", "match_mlp", "match_prev", "composition",
               "composition_vilas2023")


class LogitLens:
    """Streamed logit lens over a model: call :meth:`update` per batch, then :meth:`result`.

    ``sites``: any of "resid", "attn", "mlp". ``topk``: how many top classes to record per token (0: none).
    ``record``: False (sums only), True (per-image arrays in memory) or a folder (per-image arrays appended to
    files there; memory stays flat). Change rates and residual match need "resid" (and the branch sites).
    ``prescale``: project the branches before LayerScale (vilas2023 reads ``attn.proj`` / ``mlp.fc2``); by default
    they are projected as added to the stream (the same for models without LayerScale).
    """

    def __init__(self, model, projection: ClassProjection | ClassEmbeddings | None = None,
                 sites: Sequence[str] = tuple(SITES),
                 topk: int = 5, record: bool | str | Path = False, prescale: bool = False) -> None:
        bad = [s for s in sites if s not in SITES]
        if bad or not sites:
            raise ValueError(f"sites must be among {tuple(SITES)}, got {list(sites)}")
        self.model = model
        self.projection = resolve_projection(model, projection)
        self.C = self.projection.num_classes
        self.sites = tuple(dict.fromkeys(sites))
        self.topk = min(int(topk), self.C)
        self.depth = model.cfg.depth
        self.record = None if record is False else Record(None if record is True else record)
        self.rank_dtype = np.int16 if self.C < 2**15 else np.int32
        self.layouts: dict[int, Any] | None = None
        self.grid: tuple[int, int] | None = None
        self.sums: dict[tuple[str, int], LensSums] = {}
        self.counts = {k: np.zeros((self.depth, 2), np.int64) for k in COUNT_NAMES}
        self.counts.update({old: self.counts[new] for old, new in COUNT_ALIASES.items()})
        self.n_images = 0
        self.n_correct = 0
        self.own_head = self.projection.own_head
        self.prescale = bool(prescale)

    # ------------------------------------------------------------------ one batch
    def _setup(self, grid: tuple[int, int]) -> None:
        if self.grid is None:
            self.grid = grid
            self.layouts = {b: self.model.token_layout(b, grid) for b in range(self.depth)}
            for s in self.sites:
                for b in range(self.depth):
                    T = self.layouts[b].n_tokens
                    self.sums[(s, b)] = LensSums(np.zeros(T), np.zeros(T, np.int64), np.zeros(T))
        elif grid != self.grid:
            raise ValueError(f"every batch must have the same input size; got grid {grid} after {self.grid}")

    def _check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels).long().flatten()
        if labels.numel() and (labels < 0).any():
            raise ValueError("the images have no class labels; the logit lens needs labelled images (a folder with "
                             "one sub-folder per class, a list file with labels, or synthetic:...)")
        if labels.numel() and (labels >= self.C).any():
            raise ValueError(f"label {int(labels.max())} is outside the head's {self.C} classes (0..{self.C - 1}); "
                             "give images of the classes the head predicts, or class embeddings for your classes")
        return labels

    def project_batch(self, images: torch.Tensor, labels: torch.Tensor,
                      hooks: Sequence | None = None) -> tuple[dict, torch.Tensor]:
        """Run one batch; {(site, block): (rank (B, T), true logit (B, T), top-k (B, T, k))} and the model logits.

        ``hooks``: extra forward hooks (e.g. an intervention) applied during the same pass.
        """
        model = self.model
        p = model.cfg.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        self._setup(grid)
        labels = self._check_labels(labels).to(model.device)
        out: dict[tuple[str, int], tuple] = {}
        k = self.topk

        def make(site: str, b: int):
            ls = getattr(model.blocks[b], "ls1" if site == "attn" else "ls2", None)
            gamma = getattr(ls, "gamma", None) if self.prescale and site != "resid" else None

            def fn(act: torch.Tensor, hook) -> None:                               # B, T, D
                if gamma is not None:                                              # undo LayerScale
                    act = act / gamma
                logits = self.projection(act)                                      # B, T, C
                tgt = labels[:, None].expand(logits.shape[:2])
                rank = class_rank(logits, tgt)                                     # B, T
                true = logits.gather(-1, tgt[..., None])[..., 0]                   # B, T
                top = logits.topk(max(k, 1), dim=-1).indices                       # B, T, k
                out[(site, b)] = (rank, true, top)
            return fn

        fwd = [(f"blocks.{b}.{SITES[s]}", make(s, b)) for s in self.sites for b in range(self.depth)]
        pooled: dict[str, torch.Tensor] = {}
        if not self.own_head and model.attn_pool is not None:     # attention-pooled: the pool's own output
            def pool(act: torch.Tensor, hook) -> None:
                pooled["logits"] = self.projection(act, pooled=True)
            fwd.append(("hook_pooled", pool))
        elif not self.own_head:                   # the prediction of the given embeddings on the pooled vector
            def pool(act: torch.Tensor, hook) -> None:
                pooled["logits"] = self.projection(pool_tokens(model, act))
            fwd.append((f"blocks.{self.depth - 1}.hook_resid_post", pool))
        with torch.inference_mode():
            logits = model.run_with_hooks(images.to(model.device, model.dtype), fwd_hooks=list(hooks or []) + fwd)
        return out, pooled.get("logits", logits)

    def update(self, images: torch.Tensor, labels, masks: torch.Tensor | np.ndarray | None = None,
               indices=None, hooks: Sequence | None = None) -> None:
        """Project one batch (B, 3, H, W) with labels (B,); ``masks`` (B, N_patch) or (B, rows, cols) bool marks
        the class-labelled patch tokens (recorded for the class-vs-context test)."""
        labels_t = self._check_labels(labels)
        B = images.shape[0]
        if B == 0:
            return
        out, logits = self.project_batch(images, labels_t, hooks)
        labels_c = labels_t.cpu()
        self.n_images += B
        pred = logits.argmax(-1).cpu()
        self.n_correct += int((pred == labels_c).sum())
        self._accumulate(out)
        if self.record is not None:
            self._record(out, labels_c, pred, masks, indices, B)

    def _accumulate(self, out: dict) -> None:
        C = self.C
        for (site, b), (rank, true, _) in out.items():
            s = self.sums[(site, b)]
            r = rank.cpu()
            s.score += (1.0 - r.double() / C).sum(0).numpy()
            s.top1 += (r == 0).sum(0).numpy()
            s.true += true.double().sum(0).cpu().numpy()
            pt = self.layouts[b].patches
            hit = (r[:, pt] == 0)
            s.img_rate += float(hit.double().mean(1).sum())
            s.img_any += int(hit.any(1).sum())
            s.img_score += float((1.0 - r[:, pt].double() / C).mean(1).sum())
        if "resid" not in self.sites:
            return
        for b in range(1, self.depth):
            prev, cur = self.layouts[b - 1], self.layouts[b]
            ip, ic, keys = common_tokens(prev, cur)
            is_cls = np.array([k == "cls" for k in keys])
            is_patch = np.array([k.startswith("patch") for k in keys])
            tp = out[("resid", b - 1)][1][:, ip]                                    # B, K true logit, block b-1
            tc = out[("resid", b)][1][:, ic]
            self._count("block_change", b, tc > tp, is_cls, is_patch)
            for br in ("attn", "mlp"):
                if br in self.sites:
                    # the branch of block b sees the tokens entering block b (= tokens of block b's output)
                    self._count(f"{br}_change", b, out[(br, b)][1][:, ic] > tp, is_cls, is_patch)
            if "attn" in self.sites and "mlp" in self.sites:
                top_o = out[("resid", b)][2][:, ic, 0]
                top_a = out[("attn", b)][2][:, ic, 0]
                top_m = out[("mlp", b)][2][:, ic, 0]
                top_p = out[("resid", b - 1)][2][:, ip, 0]
                n = top_o.numel()
                for name, hit in (("match_attn", top_o == top_a), ("match_mlp", top_o == top_m),
                                  ("match_prev", top_o == top_p),
                                  ("composition", (top_o != top_p) & (top_o != top_a) & (top_o != top_m)),
                                  ("composition_vilas2023", (top_o != top_p) & (top_o != top_a))):
                    self.counts[name][b] += (int(hit.sum()), n)

    def _count(self, name: str, b: int, hit: torch.Tensor, is_cls: np.ndarray, is_patch: np.ndarray) -> None:
        hit = hit.cpu()
        for kind, sel in (("cls", is_cls), ("patches", is_patch)):
            if sel.any():
                h = hit[:, torch.from_numpy(sel)]
                self.counts[f"{name}:{kind}"][b] += (int(h.sum()), h.numel())

    def _record(self, out: dict, labels, pred, masks, indices, B: int) -> None:
        rec = self.record
        rec.append("label", labels.numpy().astype(np.int64))
        rec.append("index", (np.arange(self.n_images - B, self.n_images) if indices is None
                             else np.asarray(torch.as_tensor(indices)).astype(np.int64)))
        if pred is not None:
            rec.append("pred", pred.numpy().astype(np.int64))
        if masks is not None:
            m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).bool()
            n_patch = self.layouts[0].n_patches
            m = m.reshape(B, -1)
            if m.shape[1] != n_patch:
                raise ValueError(f"masks have {m.shape[1]} cells per image but the model sees a "
                                 f"{self.grid[0]}x{self.grid[1]} token grid ({n_patch} patches); resize masks to the "
                                 "token grid (vitscope.analysis.attention.saliency.mask_to_token_grid)")
            rec.append("mask", m.numpy())
        for (site, b), (rank, true, top) in out.items():
            rec.append(f"rank_{site}_{b}", rank.cpu().numpy().astype(self.rank_dtype))
            rec.append(f"true_{site}_{b}", true.float().cpu().numpy())
            if self.topk:
                rec.append(f"top_{site}_{b}", top[..., :self.topk].cpu().numpy().astype(self.rank_dtype))

    def result(self) -> LensResult:
        if self.n_images == 0:
            raise ValueError("the logit lens saw no images")
        if self.record is not None:
            self.record.save_index()
        return LensResult(self.sites, self.depth, self.C, dict(self.layouts), self.n_images, self.n_correct,
                          self.sums, self.counts, self.record, self.topk, meta={"own_head": self.own_head})


def logit_lens(model, batches, projection: ClassProjection | None = None, sites: Sequence[str] = tuple(SITES),
               topk: int = 5, record: bool | str | Path = False, hooks: Sequence | None = None,
               progress: bool = False, total: int | None = None, prescale: bool = False) -> LensResult:
    """Run :class:`LogitLens` over ``batches``: an iterable of ``(images, labels)`` or
    ``(images, labels, indices)`` or ``(images, labels, indices, masks)`` tuples."""
    lens = LogitLens(model, projection, sites, topk, record, prescale)
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="logit lens", unit="batch", total=total)
    for batch in it:
        images, labels = batch[0], batch[1]
        idx = batch[2] if len(batch) > 2 else None
        masks = batch[3] if len(batch) > 3 else None
        lens.update(images, labels, masks=masks, indices=idx, hooks=hooks)
    return lens.result()


# ----------------------------------------------------------------------------- the evaluation entry point

ANALYSIS = "logit_lens"
ALIASES = ("logit-lens", "identifiability", "projection")     # the names it had in the report, the library, the CLI


@dataclass
class LogitLensOptions(ClassSpaceOptions):
    """Options of :func:`evaluate` (``vitscope logit-lens``, the study analysis ``logit_lens``, the report's
    ``logit_lens`` section). The defaults are the study's (block outputs only, no random twin); ``vitscope
    logit-lens`` asks for every site and the random-weight twin."""

    sites: tuple[str, ...] = ("resid",)    # resid (block output), attn, mlp (branch outputs)
    topk: int = 5                          # top classes recorded per token
    prescale: bool = False                 # branches before LayerScale (vilas2023 reads attn.proj / mlp.fc2)
    random_baseline: bool = False          # compare with the random-weight twin (seeded by `seed`)
    seed: int = 0                          # the twin's weights and the permutations
    mask_rule: str | None = "majority"     # object masks to the token grid; None: no class- vs context test
    permutations: int = 300                # of the class- vs context-labelled test
    record_dir: str | None = None          # per-image records appended under <record_dir>/<model>/records

    def validate(self) -> None:
        super().validate()
        v = self.sites
        items = [s.strip() for s in v.split(",")] if isinstance(v, str) else list(v or ())
        items = [s for s in items if s]
        bad = [s for s in items if s not in SITES]
        if bad or not items:
            raise OptionError("sites", f"`sites` takes {', '.join(SITES)}, got {v!r}")
        self.sites = tuple(dict.fromkeys(items))
        self.check_int("topk")
        if self.mask_rule is not None:
            self.check_choice("mask_rule", MASK_RULES)
        self.check_int("permutations")
        self.check_int("seed", minimum=0)

    def as_json(self, exclude=()) -> str:
        return super().as_json(tuple(exclude) + ("record_dir",))


def evaluate(models, data=None, options: LogitLensOptions | None = None, *, random_models=None,
             **overrides) -> Result:
    """The logit lens (vilas2023): every block output (and branch, ``sites``) at every token projected on the class
    embeddings; identifiability per block (against the random-weight twin, one-sided Wilcoxon), the rates at the
    last block, change rates, residual match and class- vs context-labelled tokens (when the images have masks).

    Args:
        models: a model, a list, or ``{label: model}``.
        data: labelled images: a dataset spec, an opened dataset, or in-memory ``[(images, labels), ...]``
            (``options.imagenet_s`` instead reads ImageNet-S labelled by the head's classes).
        options: :class:`LogitLensOptions` (keyword overrides on top).
        random_models: ``{label: random twin}`` when the caller holds them (default: drawn from ``options.seed``).

    Returns a :class:`~vitscope.analysis.api.Result`: tidy rows ``model, block, metric, value`` with ``task``
    (``logit_lens``), ``site``, ``token`` and, on the identifiability rows of the main site, ``random``,
    ``p_value``, ``significant`` and ``chance`` ((C + 1) / 2C); ``figures()`` draws the evolution, change rates,
    residual match and class- vs context figures per model; ``meta["lens"]`` holds each model's
    :class:`LensResult`.
    """
    from vitscope.analysis.class_embedding import inputs as I
    from vitscope.analysis.class_embedding.metrics import class_context_rows, evolution_rows, rate_rows
    from vitscope.runtime import random_twin, slug

    opts = I.options_of(LogitLensOptions, options, overrides)
    items = I.as_models(models)
    rows: list[dict] = []
    summary, notes, lenses_out, sites_shown = [], [], {}, {}
    ds = None
    for label, model in items.items():
        emb = I.class_embeddings(model, label, opts)
        ds = I.labelled_dataset(data, model, opts)
        I.check_classes(model, ds, emb, names_given=opts.class_index is not None)
        C = emb.num_classes if emb is not None else model.cfg.num_classes
        if opts.topk > C:
            notes.append(f"topk {opts.topk} is more than the {C} classes of {label}; its {C} classes are recorded")
        models_ = [model]
        if opts.random_baseline:
            models_.append((random_models or {}).get(label) or random_twin(model, opts.seed))
        rule = opts.mask_rule if opts.mask_rule is not None and I.has_class_masks(ds) else None
        if opts.mask_rule is not None and rule is None and not any("object masks" in n for n in notes):
            notes.append("the images have no object masks; the class- vs context-labelled test is left out")
        keep = opts.record_dir is not None or len(models_) > 1 or rule is not None

        def record(i: int):
            if opts.record_dir is None:
                return keep
            return Path(opts.record_dir) / slug(label) / ("records" if i == 0 else "records_random")

        lenses = [LogitLens(m, emb, sites=opts.sites, topk=opts.topk, prescale=opts.prescale, record=record(i))
                  for i, m in enumerate(models_)]
        for images, labels, idx, masks in I.labelled_batches(models_, ds, opts, rule):
            for lens, x in zip(lenses, images):
                lens.update(x, labels, masks=masks, indices=idx)
        res = lenses[0].result()
        rres = lenses[1].result() if len(lenses) > 1 else None
        site = "resid" if "resid" in opts.sites else opts.sites[0]
        last = res.depth - 1
        evo = evolution_rows(res, rres, site=site, model=label)
        for r in evo:
            r["chance"] = (res.num_classes + 1) / (2 * res.num_classes)
        rows += evo + rate_rows(res, label, site=site) + [
            r for r in res.rows(label) if not (r["site"] == site and (r["metric"] == "identifiability" or (
                r["metric"] == "image_rate" and r["block"] == last)))]
        if rres is not None:
            rows += rate_rows(rres, label + " (random)", site=site)
        if rule is not None:
            rows += class_context_rows(res, "score", site, opts.permutations, opts.seed, label)
            if "attn" in opts.sites and "resid" in opts.sites:
                rows += class_context_rows(res, "attn_change", "resid", opts.permutations, opts.seed, label)
        lenses_out[label] = (res, rres)
        sites_shown[label] = site
        random_note = f" (random weights: {100 * rres.token_rate():.1f}%)" if rres is not None else ""
        summary.append(f"{label}: {100 * res.token_rate():.1f}% identifiable patch tokens at the last block"
                       f"{random_note}, image rate {100 * res.image_rate():.1f}%, accuracy "
                       f"{'' if emb is None else 'of the class embeddings '}{100 * res.accuracy:.1f}% over "
                       f"{res.n_images} images")
    table = tidy_table(rows, ANALYSIS, opts, dataset=getattr(ds, "description", None))
    context = {"data": data_label(data) or data_label(ds), "n_images": {k: r.n_images for k, (r, _) in
                                                                         lenses_out.items()}}
    return Result(ANALYSIS, table, "; ".join(summary), opts,
                  meta={"lens": lenses_out, "site": sites_shown, "notes": notes, "dataset": ds, "context": context},
                  draw=_draw)


def _draw(result: Result) -> dict:
    """Per model: identifiability over blocks (dashed: random weights), change rates, residual match and class- vs
    context-labelled tokens, each with the rows it shows."""
    from vitscope.runtime import slug
    from vitscope.viz import class_embedding as V

    t = result.table
    figs = {}
    for label, (res, _) in result.meta["lens"].items():
        mine = t[t["model"] == label]
        sub = slug(label)
        evo = mine[(mine["metric"] == "identifiability") & (mine["site"] == result.meta["site"][label])]
        figs[f"{sub}/identifiability_evolution"] = (V.plot_identifiability_evolution(
            evo, res.num_classes, title=result.titled(f"{label}: class identifiability", label)), evo)
        if "resid" in res.sites:
            change = mine[mine["metric"].isin(("block_change", "attn_change", "mlp_change"))]
            figs[f"{sub}/change_rates"] = (V.plot_change_rates(change, title=result.titled(f"{label}: change rates",
                                                                                           label)), change)
            match = mine[mine["metric"].str.startswith(("match_", "composition"))]
            if len(match):
                figs[f"{sub}/residual_match"] = (V.plot_residual_match(
                    match, title=result.titled(f"{label}: residual match", label)), match)
        ctx = mine[mine["metric"].str.startswith("class_minus_context")]
        if len(ctx):
            figs[f"{sub}/class_context"] = (V.plot_class_context(
                ctx, title=result.titled(f"{label}: class- vs context-labelled tokens", label)), ctx)
    return figs
