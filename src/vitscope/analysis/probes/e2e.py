"""End-to-end recipes of ciernik2025: images in, features computed every step, no feature store.

- ``attentive-frozen``: the attentive probe on a **frozen** backbone. Each step runs the backbone under ``no_grad``
  (eval mode) with hooks on the chosen layer set's sites, reduces the tokens as the feature store would (same
  :func:`vitscope.features.plan.reduce_tokens`), L2-normalises **per token over the feature axis**, zero-pads to one
  width and stacks, then trains :class:`~vitscope.analysis.probes.AttentiveProbe`. Defaults (ciernik2025's
  ``get_hyperparams("small")``): lr 1e-3, weight decay 0.1, 10 epochs (at least 1,000 steps), batch 256, attention
  dropout 0.1 (projection 0), layer set ``tokens`` (all tokens of the last layer), heads 8 for all tokens, else the
  number of inputs.
- ``finetune``: a linear head on the last layer's CLS (``ln_final.cls``; ``clip_proj.cls`` for CLIP), the backbone
  **trained** (training mode). AdamW with two parameter groups: backbone lr = lr x 0.001 (1e-6), weight decay 1e-6;
  head lr 1e-3, weight decay 0.1; the cosine schedules end at 1e-9 (backbone) and 1e-6 (head). 40 epochs, batch 256.

Shared with the feature probes (:mod:`vitscope.analysis.probes.train`): class-weighted cross-entropy, AdamW, the
cosine schedule without warm-up and its 1000-step minimum, total gradient-norm clip 5. The Gaussian jitter (std 0.05,
p 0.5) is drawn **once per batch** (one coin for the batch, noise on every element), in training only. No tuning.

Data parallel under ``torchrun`` like ``vitscope train`` (:mod:`vitscope.train.distributed`): every step takes one
global batch from a seeded per-epoch permutation and splits it over the processes (``[rank::world]``); the loss is the
global class-weighted mean (its denominator summed over the processes), so the gradient does not depend on how the
batch was split. The attentive probe's BatchNorm is synchronised across processes on CUDA; on CPU each process
normalises its own part of the batch.

Resumable: every ``save_every`` steps (and at the end) ``<out>/ckpt/step-NNNNNNN/`` gets the trained weights
(safetensors), the optimiser state (``train_state.pt``, written by the run and read back with
``torch.load(weights_only=True)``) and ``state.json``; ``<out>/latest.json`` points at the newest one (replaced
atomically). A killed run started again with ``resume=True`` continues from there and ends as the uninterrupted run
would: the data order, the jitter and the dropout draws depend only on (seed, step, rank).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitscope.analysis.api import Options, OptionError, Result, tidy_table
from vitscope.analysis.probes.attentive import AttentiveProbe, default_heads, pad_stack
from vitscope.analysis.probes.inputs import ProbeInput, parse_inputs
from vitscope.analysis.probes.train import (build_seeded, class_weights, jitter, make_optimizer, schedule, seeded,
                                            set_cosine_lrs)
from vitscope.train.step import optimizer_step

RECIPES = ("attentive-frozen", "finetune")
_STORE_REDUCTION = {"ap_all": "all"}           # probe reductions computed from another store reduction
_RUN_KEYS_IGNORED = ("stop_after", "save_every")


@dataclass(frozen=True)
class E2EConfig:
    """One end-to-end run. ``None`` fields take the recipe's defaults (:func:`recipe_defaults`)."""

    recipe: str = "attentive-frozen"
    layer_set: str | None = None            # a named layer set or an explicit list (see inputs.parse_inputs)
    lr: float | None = None                 # the head's (probe's) learning rate
    weight_decay: float | None = None
    backbone_lr_scale: float = 1e-3         # finetune: backbone lr = lr x this
    backbone_weight_decay: float = 1e-6     # finetune
    epochs: int | None = None
    steps: int | None = None                # exact number of steps (overrides epochs and min_steps)
    min_steps: int = 1000
    batch_size: int = 256
    grad_clip: float | None = 5.0
    jitter_std: float = 0.05
    jitter_p: float = 0.5
    min_lr: float = 1e-6
    heads: int | None = None
    attn_drop: float | None = None
    proj_drop: float = 0.0
    seed: int = 0
    save_every: int = 200
    stop_after: int | None = None           # stop (with a checkpoint) after this many steps of this call

    def resolved(self) -> "E2EConfig":
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown end-to-end recipe {self.recipe!r}; choose among {', '.join(RECIPES)}")
        d = {k: v for k, v in recipe_defaults(self.recipe).items() if getattr(self, k) is None}
        cfg = replace(self, **d)
        for name in ("batch_size", "epochs", "min_steps", "save_every"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.steps is not None and cfg.steps < 1:
            raise ValueError(f"steps must be >= 1, got {cfg.steps}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def recipe_defaults(recipe: str) -> dict:
    """ciernik2025's hyper-parameters of each recipe (``get_hyperparams("small")`` / ``("small_finetuning")``)."""
    if recipe == "attentive-frozen":
        return {"lr": 1e-3, "weight_decay": 0.1, "epochs": 10, "attn_drop": 0.1}
    return {"lr": 1e-3, "weight_decay": 0.1, "epochs": 40, "attn_drop": 0.0}


# ----------------------------------------------------------------------------- features from images, per step
def model_sites(model) -> list[str]:
    """The sites a layer set can name on this model: ``ln2`` and the final layer (``clip_proj`` for CLIP)."""
    return ["ln2", "ln_final"] + (["clip_proj"] if model.cfg.head == "clip_proj" else [])


def model_inputs(model, spec: str | None, recipe: str) -> list[ProbeInput]:
    """The inputs of ``spec`` for ``model`` (default: all tokens of the last layer for the attentive probe, the last
    layer's CLS for fine-tuning)."""
    sites = model_sites(model)
    final = "clip_proj" if "clip_proj" in sites else "ln_final"
    if spec is None:
        spec = "tokens" if recipe == "attentive-frozen" else f"{final}.cls"
    return parse_inputs(spec, model.cfg.depth, sites=sites,
                        cls_from=model.cfg.cls_block if model.cfg.class_token else 0)


def input_plan(model, inputs: list[ProbeInput]):
    """The feature-store plan (hooks, reductions, ``stop_at``) that yields every input. Reductions asked at
    different blocks (a late-CLS model: CLS from its entry block, AP at every block) get plans of their own, merged."""
    from vitscope.features.plan import Plan, make_plan

    where: dict[str, tuple[list[str], set[int]]] = {}
    for i in inputs:
        red = _STORE_REDUCTION.get(i.reduction, i.reduction)
        sites, layers = where.setdefault(red, ([], set()))
        if i.site not in sites:
            sites.append(i.site)
        if i.layer is not None:
            layers.add(i.layer)
    groups: dict[tuple, list[str]] = {}
    for red, (sites, layers) in where.items():
        groups.setdefault((tuple(sites), tuple(sorted(layers))), []).append(red)
    plans = [make_plan(model, sites=list(sites), layers=list(layers) or "all", tokens=reds)
             for (sites, layers), reds in groups.items()]
    if len(plans) == 1:
        return plans[0]
    stops = [p.stop_at for p in plans]
    return Plan([e for p in plans for e in p.entries], list(dict.fromkeys(x for p in plans for x in p.sites)),
                sorted({x for p in plans for x in p.layers}), list(dict.fromkeys(x for p in plans for x in p.reductions)),
                None if None in stops else max(stops))


def image_features(model, x: torch.Tensor, inputs: list[ProbeInput], plan=None) -> list[torch.Tensor]:
    """The raw (not normalised) inputs for images ``x`` (B, 3, H, W): one hooked forward up to the last needed
    block, tokens reduced as the feature store reduces them. Differentiable when called with gradients."""
    from vitscope.features.plan import reduce_tokens, site_tokens

    plan = plan or input_plan(model, inputs)
    p = model.cfg.patch_size
    grid = (x.shape[-2] // p, x.shape[-1] // p)
    layouts = {e.block: model.token_layout(e.block, grid) for e in plan.entries}
    got: dict = {}

    def make(entry):
        def fn(t, hook):
            t = site_tokens(model, entry.site, t)
            for r in entry.reductions:
                got[(entry.site, entry.layer, r)] = reduce_tokens(t, layouts[entry.block], r).float()
        return fn

    with model.hooks([(e.hook, make(e)) for e in plan.entries]):
        model.forward_features(x, stop_at=plan.stop_at)
    out = []
    for i in inputs:
        red = i.reduction
        if red == "ap_all":                                   # every token after the first (ciernik2025's avg_pool)
            out.append(got[(i.site, i.layer, "all")][:, 1:].mean(dim=1))
        else:
            out.append(got[(i.site, i.layer, red)])
    return out


def combine(feats: list[torch.Tensor], kind: str, width: int | None = None) -> torch.Tensor:
    """L2-normalise per token over the feature axis, then stack zero-padded to ``width`` (attentive, (B, N, width))
    or concatenate flattened (linear, (B, sum))."""
    normed = [F.normalize(f, p=2, dim=-1) for f in feats]
    if kind == "attentive":
        return pad_stack(normed, width)
    return torch.cat([f.flatten(1) for f in normed], dim=1)


def input_shapes(model, inputs: list[ProbeInput], plan, image_hw: tuple[int, int]) -> list[tuple[int, ...]]:
    """Per-sample shape of every input at images of ``image_hw`` (no forward pass)."""
    from vitscope.features.extract import feature_shapes

    shapes = feature_shapes(model, plan, image_hw)
    out = []
    for i in inputs:
        s = shapes[(i.site, i.layer, _STORE_REDUCTION.get(i.reduction, i.reduction))]
        out.append((s[-1],) if i.reduction == "ap_all" else tuple(s))
    return out


class FineTuned(nn.Module):
    """Backbone + linear head on the combined inputs; ``forward(images, gen)`` jitters in training mode."""

    def __init__(self, backbone, head: nn.Linear, inputs: list[ProbeInput], cfg: E2EConfig) -> None:
        super().__init__()
        self.backbone, self.head, self.inputs, self.cfg = backbone, head, inputs, cfg
        self.plan = input_plan(backbone, inputs)

    def forward(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        z = combine(image_features(self.backbone, x, self.inputs, self.plan), "linear")
        if self.training and gen is not None:
            z = jitter(z[None], gen, self.cfg.jitter_p, self.cfg.jitter_std)[0]      # once per batch
        return self.head(z)


class FrozenProbe(nn.Module):
    """Frozen backbone (no_grad, eval) -> combined inputs -> attentive probe."""

    def __init__(self, backbone, probe: AttentiveProbe, inputs: list[ProbeInput], width: int, cfg: E2EConfig) -> None:
        super().__init__()
        self.probe = probe
        self.inputs, self.width, self.cfg = inputs, width, cfg
        self._backbone = [backbone]                             # not a sub-module: not trained, not saved, not DDP'd
        self.plan = input_plan(backbone, inputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self._backbone[0]
        with torch.no_grad():
            return combine(image_features(backbone, x, self.inputs, self.plan), "attentive", self.width)


# ----------------------------------------------------------------------------- data
def open_images(data, model):
    """A data spec (opened with the model's own evaluation preprocessing: no augmentation) or a dataset."""
    if not isinstance(data, (str, os.PathLike)):
        return data
    from vitscope.data import open_dataset
    from vitscope.models.preprocess import PreprocessConfig, Preprocessor

    pp = model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)
    return open_dataset(str(data), transform=Preprocessor(pp), on_error="skip")


def _first_image(ds) -> torch.Tensor:
    for i in range(min(len(ds), 256)):
        img = ds[i][0]
        if isinstance(img, torch.Tensor):
            return img
    raise ValueError("none of the first images of the training data could be loaded; check the dataset")


def _mix(*ints: int) -> int:
    return int(np.random.SeedSequence(list(ints)).generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    from vitscope.train.loop import epoch_order as order

    return order(n, seed, epoch)


class StepBatches:
    """The batch sampler of steps ``start .. end - 1``: this rank's share of each global batch."""

    def __init__(self, n: int, batch: int, nb: int, seed: int, start: int, end: int, rank: int, world: int) -> None:
        self.n, self.batch, self.nb, self.seed = n, batch, nb, seed
        self.start, self.end, self.rank, self.world = start, end, rank, world

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self):
        order, epoch = None, -1
        for step in range(self.start, self.end):
            e, b = divmod(step, self.nb)
            if e != epoch:
                order, epoch = epoch_order(self.n, self.seed, e), e
            yield order[b * self.batch:(b + 1) * self.batch][self.rank::self.world].tolist()


def _loader(ds, sampler, num_workers: int):
    from vitscope.data.datasets import collate_skip

    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_skip)


# ----------------------------------------------------------------------------- checkpoints
LATEST = "latest.json"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def save_checkpoint(out: Path, step: int, module: nn.Module, opt: torch.optim.Optimizer, state: dict) -> Path:
    """``out/ckpt/step-N/`` (weights.safetensors, train_state.pt with the optimiser, state.json), then the pointer
    ``out/latest.json`` (atomic); older checkpoints are removed after the pointer moved."""
    from safetensors.torch import save_file

    from vitscope.train.checkpoint import save_train_state

    folder = out / "ckpt" / f"step-{step:07d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              str(folder / "weights.safetensors"))
    save_train_state(folder, {"optimizer": opt.state_dict()})
    _write_json(folder / "state.json", {**state, "step": step})
    _write_json(out / LATEST, {"step": step, "folder": str(folder.relative_to(out))})
    for old in (out / "ckpt").iterdir():
        if old != folder and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(out: Path) -> tuple[dict, dict, dict]:
    """(weights, optimiser state, state.json) of the newest checkpoint in ``out``."""
    from safetensors.torch import load_file

    from vitscope.train.checkpoint import load_train_state

    ptr = out / LATEST
    if not ptr.exists():
        raise FileNotFoundError(f"cannot resume: {ptr} does not exist (was the run started with this --out?)")
    folder = out / json.loads(ptr.read_text())["folder"]
    state = json.loads((folder / "state.json").read_text())
    return load_file(str(folder / "weights.safetensors")), load_train_state(folder)["optimizer"], state


def _check_resume(saved: dict, now: dict) -> None:
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in _RUN_KEYS_IGNORED and saved.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: run {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"cannot resume: options differ from the interrupted run ({lines})")


# ----------------------------------------------------------------------------- the run
def train_e2e(model, train_data, test_data=None, cfg: E2EConfig = E2EConfig(), out: str | Path = "runs/probe-e2e",
              resume: bool = False, device: str = "auto", num_workers: int = 0, progress: bool = False,
              model_name: str | None = None, dataset: str | None = None,
              on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run an end-to-end recipe (see the module docstring) and return a summary (steps, loss, test metrics, paths).

    ``model``: a HookedViT (moved to the run's device); ``train_data`` / ``test_data``: data specs or datasets whose
    items are ``(image (3, H, W), label, index)``. Under ``torchrun --nproc_per_node=N`` the global batch is split over
    N processes. ``on_step(step)`` is called after each optimiser step (``step`` = steps done). Each rank holds its
    part of ``out``'s write lock while it runs, so a second job writing the same folder is refused at once.
    """
    from vitscope.outlock import output_lock
    from vitscope.train.distributed import setup

    cfg = cfg.resolved()
    env = setup(device)
    frozen = cfg.recipe == "attentive-frozen"
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        with output_lock(out, "vitscope probe-e2e", part=f"rank-{env.rank}"):
            return _run(model, train_data, test_data, cfg, Path(out), resume, env, num_workers, progress,
                        model_name, dataset, on_step)
    finally:
        if frozen:
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
        env.close()


def _run(model, train_data, test_data, cfg: E2EConfig, out: Path, resume: bool, env, num_workers: int,
         progress: bool, model_name, dataset, on_step) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from vitscope.train.data import dataset_classes, dataset_labels

    t0 = time.time()
    frozen = cfg.recipe == "attentive-frozen"
    model.to(env.device)
    ds = open_images(train_data, model)
    classes = dataset_classes(ds)
    labels = torch.as_tensor(dataset_labels(ds))
    n, C = len(ds), max(len(classes), int(labels.max()) + 1)
    if len(torch.unique(labels)) < 2:
        raise ValueError(f"the training data has only one class ({int(labels[0])}); a probe needs at least two")
    missing = sorted(set(range(len(classes))) - set(labels.tolist()))
    inputs = model_inputs(model, cfg.layer_set, cfg.recipe)
    plan = input_plan(model, inputs)
    shapes = input_shapes(model, inputs, plan, tuple(_first_image(ds).shape[-2:]))

    B = cfg.batch_size
    if B < env.world:
        raise ValueError(f"--batch-size {B} is smaller than the {env.world} processes")
    nb = math.ceil(n / B) if n % B == 0 or n % B >= env.world else n // B     # a tail smaller than world is dropped
    if nb == 0:
        raise ValueError(f"{n} training images are fewer than the {env.world} processes")
    if cfg.steps is not None:
        total, epochs = cfg.steps, math.ceil(cfg.steps / nb)
    else:
        _, epochs = schedule(nb * B, B, cfg.epochs, cfg.min_steps)                # the 1000-step minimum
        total = nb * epochs
    w = class_weights(labels, C).to(env.device)

    # ------------------------------------------------------------------ the trained module and its groups
    if frozen:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        width = max(s[-1] for s in shapes)
        heads = cfg.heads or default_heads(len(inputs), all_tokens=any(len(s) == 2 for s in shapes))
        probe = build_seeded(lambda: AttentiveProbe(width, heads, C, attn_drop=cfg.attn_drop,
                                                    proj_drop=cfg.proj_drop), cfg.seed).to(env.device)
        if env.world > 1 and env.device.type == "cuda":
            probe = nn.SyncBatchNorm.convert_sync_batchnorm(probe)
        net = FrozenProbe(model, probe, inputs, width, cfg)
        trained: nn.Module = probe
        groups = [{"params": list(probe.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    else:
        in_features = int(sum(np.prod(s) for s in shapes))
        head = build_seeded(lambda: nn.Linear(in_features, C), cfg.seed).to(env.device)
        net = FineTuned(model, head, inputs, cfg)
        trained = net
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr * cfg.backbone_lr_scale,
                   "weight_decay": cfg.backbone_weight_decay},
                  {"params": list(head.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
        if not groups[0]["params"]:
            raise ValueError("fine-tuning needs a backbone with trainable parameters (requires_grad=False everywhere)")
    bases = [g["lr"] for g in groups]
    opt = make_optimizer(groups)
    params = [p for g in groups for p in g["params"]]

    run_cfg = {**cfg.to_dict(), "inputs": [i.name for i in inputs], "train_size": n, "classes": classes}
    start, history = 0, []
    if resume:
        weights, opt_state, state = load_checkpoint(out)
        _check_resume(state["config"], run_cfg)
        trained.load_state_dict(weights, strict=True)
        opt.load_state_dict(opt_state)
        start, history = int(state["step"]), list(state.get("history", []))
    elif (out / LATEST).exists():
        raise ValueError(f"{out} holds an end-to-end run already; pass --resume to continue it or choose another --out")
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
    env.barrier()

    ddp = trained
    if env.world > 1:
        ddp = nn.parallel.DistributedDataParallel(trained, device_ids=[env.device.index] if env.device.type == "cuda"
                                                  else None, find_unused_parameters=not frozen)
    end = total if cfg.stop_after is None else min(total, start + cfg.stop_after)
    bar = tqdm(total=total, initial=start, disable=not (progress and env.main), desc=f"probe-e2e {cfg.recipe}",
               unit="step", dynamic_ncols=True)
    loader = _loader(ds, StepBatches(n, B, nb, cfg.seed, start, end, env.rank, env.world), num_workers)

    def checkpoint(step: int) -> None:
        if env.main:
            save_checkpoint(out, step, trained, opt, {"config": run_cfg, "history": history, "world_size": env.world,
                                                       "total_steps": total})
        env.barrier()

    step, loss_val = start, math.nan
    with seeded(cfg.seed, env.device):
        for images, y, _ in loader:
            e, b = divmod(step, nb)
            gen = torch.Generator(device=env.device).manual_seed(_mix(cfg.seed, e, b, env.rank))
            torch.manual_seed(_mix(cfg.seed, 1 + e, b, env.rank, 7))                   # dropout / drop-path draws
            x, y = images.to(env.device), y.to(env.device)
            lrs = set_cosine_lrs(opt, bases, step, total, cfg.min_lr)
            if frozen:
                trained.train()
                z = net.features(x)
                z = jitter(z[None], gen, cfg.jitter_p, cfg.jitter_std)[0]              # once per batch
                logits = ddp(z)
            else:
                ddp.train()
                logits = ddp(x, gen)
            ce = F.cross_entropy(logits, y, weight=w, reduction="none")               # w_y * l per sample
            denom = env.all_sum([float(w[y].sum())])[0]
            loss = ce.sum() * (env.world / denom)
            optimizer_step(opt, loss, params, cfg.grad_clip, where=f"step {step}")
            step += 1
            loss_val = float(loss.detach()) / env.world
            if step % nb == 0 or step == end:
                history.append({"step": step, "epoch": (step - 1) // nb, "loss": loss_val, "lr": lrs[-1]})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lrs[-1]:.2e}")
            if step % cfg.save_every == 0 or step == end:
                checkpoint(step)
            if on_step is not None:
                on_step(step)
    bar.close()
    if step == start and start < end:
        raise RuntimeError("no training step ran: every image of the batches failed to load")

    summary: dict[str, Any] = {"recipe": cfg.recipe, "steps": step, "total_steps": total, "epochs": epochs,
                               "batches_per_epoch": nb, "loss": loss_val, "train_size": n, "world_size": env.world,
                               "inputs": [i.name for i in inputs], "classes": classes, "out": str(out),
                               "finished": step >= total, "missing_classes": missing}
    if step < total:
        summary["wall_time_s"] = round(time.time() - t0, 1)
        return summary
    name = model_name or str(model.cfg.meta.get("name") or getattr(model, "meta", {}).get("name") or "model")
    if test_data is not None:
        summary.update(_evaluate(net, trained, frozen, model, test_data, env, B, num_workers, out, cfg, inputs,
                                 name, dataset or str(test_data)))
    if env.main:
        _save_final(out, trained, frozen, model, net, cfg, inputs, classes, name, summary)
    env.barrier()
    summary["wall_time_s"] = round(time.time() - t0, 1)
    if env.main:
        from vitscope.viz.save import save_json

        save_json({k: v for k, v in summary.items() if k not in ("classes",)}, out / "summary.json")
    return summary


@torch.no_grad()
def predict_images(net, frozen: bool, ds, env, batch: int, num_workers: int, record: bool = False):
    """Logits, targets and (attentive, ``record``) the query's attention weights over this rank's share of ``ds``."""
    pos = np.arange(len(ds))[env.rank::env.world]
    batches = [pos[i:i + batch].tolist() for i in range(0, len(pos), batch)]
    probe = net.probe if frozen else None
    if probe is not None:
        probe.eval()
        probe.record_attention = record
    else:
        net.eval()
    logits, targets, index = [], [], []
    try:
        for images, y, idx in _loader(ds, batches, num_workers):
            x = images.to(env.device)
            logits.append((probe(net.features(x)) if frozen else net(x)).float().cpu())
            targets.append(y)
            index.append(idx)
        attn = probe.attention_weights() if (probe is not None and record and logits) else None
    finally:
        if probe is not None:
            probe.record_attention = False
            probe.attn_block.cross_attn.attn_rec = []
    cat = (lambda xs, empty: torch.cat(xs) if xs else empty)
    return cat(logits, torch.empty(0)), cat(targets, torch.empty(0, dtype=torch.long)), \
        cat(index, torch.empty(0, dtype=torch.long)), attn


def _gather(env, obj):
    if env.world == 1:
        return [obj]
    import torch.distributed as dist

    parts = [None] * env.world
    dist.all_gather_object(parts, obj)
    return parts


def _evaluate(net, trained, frozen, model, test_data, env, batch, num_workers, out, cfg, inputs, name, dataset):
    from vitscope.analysis.probes.metrics import probe_metrics

    tds = open_images(test_data, model)
    logits, y, idx, attn = predict_images(net, frozen, tds, env, batch, num_workers, record=frozen)
    parts = _gather(env, (logits, y, idx, attn))
    if not env.main:
        return {}
    logits = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    idx = torch.cat([p[2] for p in parts])
    order = torch.argsort(idx)
    logits, y, idx = logits[order], y[order], idx[order]
    if len(y) == 0:
        raise ValueError("no test image could be loaded")
    metrics = probe_metrics(logits, y)
    experiment = cfg.layer_set or ("tokens" if frozen else "last_cls")
    rows = [{"model": name, "dataset": dataset, "experiment": experiment, "probe": cfg.recipe,
             "layer_set": experiment, "split": "test", "metric": k, "value": float(v)} for k, v in metrics.items()]
    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    df.to_parquet(out / "results.parquet", index=False)
    np.save(out / "logits.npy", logits.numpy())
    pd.DataFrame({"index": idx.numpy(), "target": y.numpy(), "prediction": logits.argmax(-1).numpy()}).to_csv(
        out / "predictions.csv", index=False)
    res: dict[str, Any] = {"test_size": len(y), "test_metrics": metrics, "results": str(out / "results.csv")}
    if attn is not None:
        a = torch.cat([p[3] for p in parts if p[3] is not None])[order].numpy()
        res["attention"] = a
    return res


def _save_final(out, trained, frozen, model, net, cfg, inputs, classes, name, summary) -> None:
    from vitscope.viz.save import save_figure

    meta = {"model": name, "recipe": cfg.recipe, "classes": classes, "config": cfg.to_dict(),
            "inputs": [{"site": i.site, "layer": i.layer, "reduction": i.reduction} for i in inputs],
            "normalize": "l2 per token over the feature axis, then zero-padded and stacked (attentive) or "
                         "concatenated (linear)", "test_metrics": summary.get("test_metrics")}
    if frozen:
        from vitscope.analysis.probes.attentive import save_attentive_probe

        probe = trained
        if isinstance(probe.bn, nn.SyncBatchNorm):                 # back to the plain module for the file
            probe = AttentiveProbe(probe.dim, probe.num_heads, probe.num_classes, cfg.attn_drop, cfg.proj_drop)
            probe.load_state_dict(trained.state_dict())
        save_attentive_probe(out / "probe", probe, meta)
        if "attention" in summary:
            from vitscope.viz.probes import plot_attention_heads

            a = summary.pop("attention")
            labels = [i.label for i in inputs] if a.shape[-1] == len(inputs) else None
            fig = plot_attention_heads(a, labels, title=f"{name}: end-to-end attentive probe")
            summary["figures"] = [str(p) for p in save_figure(fig, out / "attention", ("png",),
                                                              arrays={"mean": a.mean(0), "std": a.std(0)})]
    else:
        from vitscope.analysis.probes.linear import save_linear_head
        from vitscope.models.loading import save_model

        save_model(model, out / "backbone", extra={"trained_by": "vitscope probe-e2e finetune",
                                                   "config": cfg.to_dict()})
        save_linear_head(out / "head", net.head.weight, net.head.bias, meta)


# ----------------------------------------------------------------------------- the evaluation entry point
@dataclass
class E2EOptions(Options):
    """Options of :func:`evaluate` (``vitscope probe-e2e``): an :class:`E2EConfig` and where / how the run goes.
    ``None`` fields take the recipe's defaults (:func:`recipe_defaults`)."""

    recipe: str = "attentive-frozen"       # attentive-frozen, or finetune
    layer_set: str | None = None           # default: tokens (attentive-frozen), the last layer's CLS (finetune)
    lr: float | None = None                # the probe's / head's
    weight_decay: float | None = None
    backbone_lr_scale: float = 1e-3        # finetune: backbone lr = lr x this
    backbone_weight_decay: float = 1e-6    # finetune
    epochs: int | None = None
    steps: int | None = None               # exact number of steps (overrides epochs and min_steps)
    min_steps: int = 1000
    batch_size: int = 256                  # global, split over the processes
    heads: int | None = None
    attn_drop: float | None = None
    seed: int = 0
    save_every: int = 200                  # checkpoint every N steps (and at the end)
    out: str = "runs/probe-e2e"            # checkpoints, the trained probe / backbone, results
    resume: bool = False                   # continue the run in `out` from its last checkpoint
    num_workers: int = 0
    device: str = "auto"
    model_name: str | None = None
    dataset_name: str | None = None
    progress: bool = False

    def validate(self) -> None:
        if self.recipe not in RECIPES:
            raise OptionError("recipe", f"unknown end-to-end recipe {self.recipe!r}; choose among {', '.join(RECIPES)}")
        for name in ("epochs", "steps", "heads"):
            self.check_int(name, optional=True)
        for name in ("min_steps", "batch_size", "save_every"):
            self.check_int(name)
        self.check_int("num_workers", minimum=0)
        self.check_int("seed", minimum=0)
        self.check_number("lr", low=0, low_open=True, optional=True)
        self.check_number("weight_decay", low=0, optional=True)
        self.check_number("backbone_lr_scale", low=0, low_open=True)
        self.check_number("backbone_weight_decay", low=0)
        self.check_number("attn_drop", 0, 1, high_open=True, optional=True)

    def config(self) -> E2EConfig:
        keys = {f.name for f in fields(E2EConfig)}
        return E2EConfig(**{k: v for k, v in self.to_dict().items() if k in keys})

    def as_json(self, exclude=()) -> str:
        return super().as_json(tuple(exclude) + ("out", "resume", "num_workers", "model_name", "dataset_name"))


def evaluate(model, data=None, options: E2EOptions | None = None, *, test_data=None, **overrides) -> Result:
    """An end-to-end recipe of ciernik2025 (the attentive probe on a frozen backbone, or fine-tuning with a linear
    head) trained on ``data`` and scored on ``test_data``; checkpoints and the trained probe / backbone go to
    ``options.out`` (resumable). ``model``: a HookedViT (or ``{label: model}`` with one entry).

    The table has ``test_balanced_top1``, ``test_top1``, ... (``task`` = ``<recipe>:<layer set>``) when there is
    test data; ``meta["summary"]`` is what :func:`train_e2e` returned."""
    from vitscope.analysis.class_embedding.inputs import as_models, options_of

    opts = options_of(E2EOptions, options, overrides)
    if data is None:
        raise ValueError("end-to-end probes need labelled training images: pass --data SPEC")
    (label, m), *more = as_models(model).items()
    if more:
        raise ValueError("an end-to-end probe trains on one model at a time")
    name = opts.model_name or label
    s = train_e2e(m, data, test_data, opts.config(), out=opts.out, resume=opts.resume, device=opts.device,
                  num_workers=opts.num_workers, progress=opts.progress, model_name=name,
                  dataset=opts.dataset_name or (test_data if isinstance(test_data, str) else None))
    experiment = opts.layer_set or ("tokens" if opts.recipe == "attentive-frozen" else "last_cls")
    rows = [{"model": name, "task": f"{opts.recipe}:{experiment}", "metric": f"test_{k}", "value": float(v)}
            for k, v in (s.get("test_metrics") or {}).items()]
    tm = s.get("test_metrics")
    acc = f"test balanced top-1 {100 * tm['balanced_top1']:.1f}%, " if tm else ""
    summary = (f"probe-e2e {opts.recipe} on {name}: {s.get('steps')}/{s.get('total_steps')} steps, {acc}last loss "
               f"{s.get('loss', float('nan')):.3f} ({s.get('wall_time_s', 0):.0f} s, {s.get('world_size', 1)} "
               f"process(es))")
    return Result("probe_e2e", tidy_table(rows, "probe_e2e", opts), summary, opts, meta={"summary": s})
