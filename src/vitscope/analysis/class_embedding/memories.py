"""Memories (vilas2023, reference section 16): the output weights of the attention projection and of the MLP as
"value vectors" read in class space.

- value vectors: the columns of the output weight (torch layout), ``attn.proj.weight[:, m]`` (D, D) and
  ``mlp.fc2.weight[:, m]`` (D, Dm); with the class embeddings E (C, D, the head's weight, no bias; given
  embeddings after a projection are pulled back through it), P = E W (C, M);
- class-value agreement: per class, the largest cosine between its embedding and a value vector (rows of E and
  columns of W L2-normalised), compared with the random-weight model by a one-sided Wilcoxon test paired by class;
- key coefficients: the MLP hidden pre-activation (``mlp.hook_pre``) and the attention heads' outputs concatenated
  (``attn.hook_z`` reshaped to (B, T, D), the input of ``proj``);
- key-value agreement: the 5 memories with the largest P[c, .] for the true class, against each token's 5 largest
  key coefficients (signed); agreement = the two index sets intersect. Random baseline: one class drawn per true
  class (seeded) instead of the true class;
- agreement rate per class (% of agreeing tokens over its images, all tokens or CLS only), its difference between
  correctly and wrongly classified images (CLS token) with a seeded permutation null;
- compositionality: % of tokens whose 5 most activated memories include one whose top class (argmax of P[., m])
  is the top-1 class of the layer's own branch output projected through the head.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vitscope.analysis.api import Result, data_label, tidy_table
from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings
from vitscope.analysis.class_embedding.inputs import ClassSpaceOptions
from vitscope.analysis.class_embedding.metrics import wilcoxon_greater
from vitscope.analysis.class_embedding.projection import ClassProjection, resolve_projection

KINDS = ("attn", "mlp")
KEY_HOOKS = {"attn": "attn.hook_z", "mlp": "mlp.hook_pre"}
OUT_HOOKS = {"attn": "hook_attn_out", "mlp": "hook_mlp_out"}


def value_vectors(model, block: int, kind: str) -> torch.Tensor:
    """(D, M) output weight of block ``block``'s attention projection (``kind="attn"``) or MLP ``fc2`` ("mlp")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    blk = model.blocks[block]
    return (blk.attn.proj.weight if kind == "attn" else blk.mlp.fc2.weight).detach().float()


def memory_logits(embeddings: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """P = E W: (C, D) class embeddings times (D, M) value vectors -> (C, M)."""
    return embeddings.float() @ values.float()


def class_value_agreement(embeddings: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(C,) per class, the largest cosine between its embedding and any value vector (column of ``values``)."""
    E = torch.nn.functional.normalize(embeddings.float(), dim=1)
    W = torch.nn.functional.normalize(values.float(), dim=0)
    return (E @ W).max(dim=1).values


def class_value_rows(model, random_model=None, projection: ClassProjection | ClassEmbeddings | None = None,
                     random_projection: ClassProjection | ClassEmbeddings | None = None,
                     model_name: str = "model",
                     alpha: float = 0.05) -> list[dict]:
    """Mean class-value agreement per block and kind; with ``random_model``, its mean and the one-sided Wilcoxon
    p-value (trained > random, paired by class index)."""
    E = resolve_projection(model, projection).class_embeddings
    Er = resolve_projection(random_model, random_projection).class_embeddings if random_model is not None else None
    rows = []
    for b in range(model.cfg.depth):
        for kind in KINDS:
            x = class_value_agreement(E, value_vectors(model, b, kind)).numpy()
            row = dict(model=model_name, block=b, task="memories", metric="class_value_agreement",
                       value=float(x.mean()), kind=kind)
            if Er is not None:
                y = class_value_agreement(Er, value_vectors(random_model, b, kind)).numpy()
                p = wilcoxon_greater(x, y)
                row.update(random=float(y.mean()), p_value=p, significant=bool(p < alpha))
            rows.append(row)
    return rows


def key_value_agreement(class_memories: torch.Tensor, keys: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(B, T) bool: a token's ``k`` largest key coefficients (``keys`` (B, T, M), signed) share an index with its
    image's class memories (``class_memories`` (B, k'), e.g. the top memories of the true class)."""
    top = keys.topk(k, dim=-1).indices                                               # B, T, k
    return (top[..., :, None] == class_memories[:, None, None, :]).any(-1).any(-1)


def random_classes(num_classes: int, seed: int = 0) -> np.ndarray:
    """(C,) one class drawn uniformly for each true class (it may equal it), from ``seed``."""
    return np.random.default_rng(seed).integers(0, num_classes, size=num_classes)


@dataclass
class MemoryResult:
    num_classes: int
    depth: int
    k: int
    agree: dict[tuple[str, int, str], np.ndarray]          # (kind, block, "all"|"cls"|"random"|"random_cls") -> (C, 2)
    compose: dict[tuple[str, int], np.ndarray]             # (kind, block) -> (matches, tokens)
    cls_agree: dict[tuple[str, int], list] = field(default_factory=dict)   # per-image CLS agreement share
    correct: list = field(default_factory=list)

    def agreement_rate(self, kind: str, block: int, tokens: str = "all") -> np.ndarray:
        """(C,) % of agreeing tokens per class (NaN for classes without images)."""
        c = self.agree[(kind, block, tokens)]
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * c[:, 0] / c[:, 1]

    def correct_vs_wrong(self, kind: str, block: int, n_permutations: int = 300,
                         seed: int = 0) -> tuple[float, float]:
        """CLS agreement % among correctly minus among wrongly classified images, and the permutation p-value
        (share of ``n_permutations`` seeded reassignments of the images with a strictly larger difference)."""
        if (kind, block) not in self.cls_agree or not self.correct:
            return float("nan"), float("nan")
        a = np.concatenate(self.cls_agree[(kind, block)]).astype(np.float64)
        ok = np.concatenate(self.correct).astype(bool)
        if ok.all() or not ok.any():
            return float("nan"), float("nan")
        diff = 100.0 * (a[ok].mean() - a[~ok].mean())
        rng = np.random.default_rng(seed)
        null = np.empty(n_permutations)
        for i in range(n_permutations):
            s = ok[rng.permutation(len(ok))]
            null[i] = 100.0 * (a[s].mean() - a[~s].mean())
        return float(diff), float((null > diff).sum() / n_permutations)

    def rows(self, model: str = "model", n_permutations: int = 300, seed: int = 0) -> list[dict]:
        rows = []
        for b in range(self.depth):
            for kind in KINDS:
                if (kind, b, "all") not in self.agree:
                    continue
                for tokens in ("all", "cls"):
                    if (kind, b, tokens) not in self.agree:
                        continue
                    r = self.agreement_rate(kind, b, tokens)
                    rr = self.agreement_rate(kind, b, "random" if tokens == "all" else "random_cls")
                    rows.append(dict(model=model, block=b, task="memories", metric="key_value_agreement",
                                     value=float(np.nanmean(r)), random=float(np.nanmean(rr)), kind=kind,
                                     tokens=tokens, k=self.k))
                m, n = self.compose[(kind, b)]
                rows.append(dict(model=model, block=b, task="memories", metric="compositionality",
                                 value=float(100.0 * m / max(n, 1)), kind=kind, tokens="all", k=self.k))
                diff, p = self.correct_vs_wrong(kind, b, n_permutations, seed)
                if not np.isnan(diff):
                    rows.append(dict(model=model, block=b, task="memories", metric="agreement_correct_minus_wrong",
                                     value=diff, p_value=p, kind=kind, tokens="cls", permutations=n_permutations,
                                     seed=seed))
        return rows


class MemoryAgreement:
    """Streamed key-value agreement and compositionality: :meth:`update` per batch, then :meth:`result`."""

    def __init__(self, model, projection: ClassProjection | ClassEmbeddings | None = None, k: int = 5,
                 seed: int = 0,
                 blocks: Sequence[int] | None = None) -> None:
        self.model = model
        self.projection = resolve_projection(model, projection)
        E = self.projection.class_embeddings
        self.C, self.k = int(E.shape[0]), int(k)
        self.blocks = list(range(model.cfg.depth)) if blocks is None else [int(b) for b in blocks]
        self.rand = torch.from_numpy(random_classes(self.C, seed))
        self.class_mem, self.mem_class = {}, {}
        for b in self.blocks:
            for kind in KINDS:
                P = memory_logits(E, value_vectors(model, b, kind))                   # C, M
                if P.shape[1] < self.k:
                    raise ValueError(f"k={self.k} exceeds the {P.shape[1]} memories of block {b} ({kind})")
                self.class_mem[(kind, b)] = P.topk(self.k, dim=1).indices             # C, k
                self.mem_class[(kind, b)] = P.argmax(dim=0)                           # M
        self.res = MemoryResult(self.C, model.cfg.depth, self.k, {}, {})
        self.own_head = self.projection.own_head              # correct / wrong needs the model's own predictions
        self.n_images = 0

    def update(self, images: torch.Tensor, labels) -> None:
        model, C = self.model, self.C
        y = torch.as_tensor(labels).long().flatten()
        if (y < 0).any():
            raise ValueError("the images have no class labels; memories are measured on labelled images")
        if (y >= C).any():
            raise ValueError(f"label {int(y.max())} is outside the head's {C} classes (0..{C - 1})")
        acts: dict[tuple[str, str, int], torch.Tensor] = {}

        def save(key):
            def fn(t, hook):
                acts[key] = t.detach().float().cpu()
            return fn

        hooks = []
        for b in self.blocks:
            for kind in KINDS:
                hooks.append((f"blocks.{b}.{KEY_HOOKS[kind]}", save(("key", kind, b))))
                hooks.append((f"blocks.{b}.{OUT_HOOKS[kind]}", save(("out", kind, b))))
        with torch.inference_mode():
            logits = model.run_with_hooks(images.to(model.device, model.dtype), fwd_hooks=hooks)
            self.n_images += len(y)
            if self.own_head:
                self.res.correct.append((logits.argmax(-1).cpu() == y).numpy())
            for b in self.blocks:
                lay = model.token_layout(b, (images.shape[-2] // model.cfg.patch_size,
                                             images.shape[-1] // model.cfg.patch_size))
                for kind in KINDS:
                    keys = acts.pop(("key", kind, b))
                    keys = keys.reshape(keys.shape[0], keys.shape[1], -1)             # B, T, M
                    out = acts.pop(("out", kind, b))
                    top1 = self.projection(out.to(model.device)).argmax(-1).cpu()     # B, T
                    mems = self.class_mem[(kind, b)]
                    agree = key_value_agreement(mems[y], keys, self.k)                # B, T
                    agree_r = key_value_agreement(mems[self.rand[y]], keys, self.k)
                    self._add((kind, b, "all"), y, agree)
                    self._add((kind, b, "random"), y, agree_r)
                    if lay.cls is not None:
                        self._add((kind, b, "cls"), y, agree[:, lay.cls:lay.cls + 1])
                        self._add((kind, b, "random_cls"), y, agree_r[:, lay.cls:lay.cls + 1])
                    if lay.cls is not None and self.own_head:
                        self.res.cls_agree.setdefault((kind, b), []).append(agree[:, lay.cls].numpy())
                    top_keys = keys.topk(self.k, dim=-1).indices                      # B, T, k
                    match = (self.mem_class[(kind, b)][top_keys] == top1[..., None]).any(-1)
                    c = self.res.compose.setdefault((kind, b), np.zeros(2, np.int64))
                    c += (int(match.sum()), match.numel())

    def _add(self, key, y: torch.Tensor, hit: torch.Tensor) -> None:
        c = self.res.agree.setdefault(key, np.zeros((self.C, 2), np.int64))
        np.add.at(c[:, 0], y.numpy(), hit.sum(1).numpy())
        np.add.at(c[:, 1], y.numpy(), hit.shape[1])

    def result(self) -> MemoryResult:
        if not self.n_images:
            raise ValueError("no images were measured")
        return self.res


def memory_agreement(model, batches: Iterable, projection: ClassProjection | ClassEmbeddings | None = None,
                     k: int = 5, seed: int = 0, progress: bool = False) -> MemoryResult:
    """Run :class:`MemoryAgreement` over ``(images, labels, ...)`` batches."""
    acc = MemoryAgreement(model, projection, k, seed)
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="memories", unit="batch")
    for batch in it:
        acc.update(batch[0], batch[1])
    return acc.result()


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class MemoriesOptions(ClassSpaceOptions):
    """Options of :func:`evaluate` (``vitscope memories``)."""

    k: int = 5                             # memories per class and key coefficients per token (vilas2023: 5)
    permutations: int = 300                # of the correct- vs wrongly-classified test
    seed: int = 0                          # the random-class baseline, the permutations, the random-weight twin

    def validate(self) -> None:
        super().validate()
        self.check_int("k")
        self.check_int("permutations")
        self.check_int("seed", minimum=0)


def evaluate(models, data=None, options: MemoriesOptions | None = None, *, random_models=None,
             **overrides) -> Result:
    """Memories (vilas2023): class-value agreement per block against the random-weight twin, key-value agreement
    against a random class, compositionality, and the agreement of correctly minus wrongly classified images.

    ``models``: a model, a list or ``{label: model}``; ``data``: labelled images (a dataset spec, an opened
    dataset or in-memory ``[(images, labels), ...]``); ``random_models``: ``{label: twin}`` (default: drawn from
    ``options.seed``). Rows: ``model, block, metric, value`` with ``kind`` (attn / mlp), ``tokens``, ``random``,
    ``p_value``; ``figures()`` draws one memories figure per model."""
    from vitscope.analysis.class_embedding import inputs as I
    from vitscope.runtime import random_twin

    opts = I.options_of(MemoriesOptions, options, overrides)
    rows, summary, ds, counts = [], [], None, {}
    for label, model in I.as_models(models).items():
        emb = I.class_embeddings(model, label, opts)
        ds = I.labelled_dataset(data, model, opts)
        I.check_classes(model, ds, emb, names_given=opts.class_index is not None)
        twin = (random_models or {}).get(label) or random_twin(model, opts.seed)
        mine = class_value_rows(model, twin, emb, emb, model_name=label)
        acc = MemoryAgreement(model, emb, k=opts.k, seed=opts.seed)
        counts[label] = 0
        for images, labels, _, _ in I.labelled_batches([model], ds, opts):
            acc.update(images[0], labels)
            counts[label] += len(labels)
        mine += acc.result().rows(label, opts.permutations, opts.seed)
        rows += mine
        last = [r for r in mine if r["metric"] == "class_value_agreement" and r["block"] == model.cfg.depth - 1]
        summary.append(f"{label}: last-block class-value agreement " + ", ".join(
            f"{r['kind']} {r['value']:.2f} (random {r.get('random', float('nan')):.2f})" for r in last))
    table = tidy_table(rows, "memories", opts, dataset=getattr(ds, "description", None))
    return Result("memories", table, "; ".join(summary), opts, draw=_draw,
                  meta={"dataset": ds, "context": {"data": data_label(data) or data_label(ds), "n_images": counts}})


def _draw(result: Result) -> dict:
    from vitscope.runtime import slug
    from vitscope.viz.class_embedding import plot_memories

    t = result.table
    return {f"{slug(label)}/memories": (plot_memories(part, title=result.titled(f"{label}: memories", label)), part)
            for label, part in t.groupby("model", sort=False)}
