"""`train()`: a HookedViT from scratch on an image dataset (DeiT-style recipe for small ViTs, cls-register).

One epoch = every training image once (drop-last batches). Validation after every epoch; the best model by
**validation** accuracy is kept in ``<out>/best`` (config.json + model.safetensors, what ``load_model``
reads), the last one with its optimizer state in ``<out>/last`` (for ``resume``). ``<out>/log.jsonl`` holds
one line per epoch; ``<out>/curves.{png,pdf}`` the loss / accuracy curves.

Randomness depends only on (seed, epoch, step, rank): a run is reproducible, and a resumed run continues
exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitscope.models import HookedViT, PreprocessConfig
from vitscope.models.loading import save_model
from vitscope.outlock import output_lock
from vitscope.train import augment as A
from vitscope.train.checkpoint import load_train_state, save_train_state
from vitscope.train.config import TrainConfig
from vitscope.train.data import ImageTensors, dataset_classes, dataset_labels, open_training_dataset, split_indices
from vitscope.train.distill import StudentHeads, TeacherInput, distillation_loss, load_teacher
from vitscope.train.distributed import DistEnv, setup
from vitscope.train.schedule import cosine_lr, set_lr
from vitscope.train.step import optimizer_step


def _step_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """The augmentation RNG of one step of one rank (independent of how the run was interrupted)."""
    mixed = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & ((1 << 63) - 1))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, tokens and position embeddings (timm's rule)."""
    skip = {"cls_token", "dist_token", "reg_token", "pos_embed"}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or LAMB (timm's NVLAMB: global gradient clipping at 1, trust ratio where weight decay applies)."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.opt == "lamb":
        from vitscope.train.lamb import Lamb

        return Lamb(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def epoch_order(n: int, seed: int, epoch: int, repeats: int = 1) -> torch.Tensor:
    """The sample order of one epoch: a seeded permutation; with ``repeats`` R > 1 (DeiT's repeated augmentation)
    every index is repeated R times in a row and the list cut back to n, so an epoch keeps its length and
    sees n / R images R times each. Global batches are cut from this order and split over the ranks
    (``[rank::world]``), so the R copies of an image go to R different processes when world >= R, each
    augmented on its own, as DeiT's RASampler does; on one process they share a batch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    if repeats > 1:
        perm = perm.repeat_interleave(repeats)[:n]
    return perm


@torch.no_grad()
def evaluate(model: HookedViT, data: ImageTensors, env: DistEnv, cfg: TrainConfig) -> dict[str, float]:
    """Validation loss and accuracy (a DeiT-distilled model: the averaged heads, plus each head alone)."""
    model.eval()
    heads = StudentHeads(model)
    pos = np.arange(len(data))[env.rank::env.world]
    batches = [pos[i:i + cfg.eval_batch_size] for i in range(0, len(pos), cfg.eval_batch_size)]
    tot = {"n": 0.0, "loss": 0.0, "correct": 0.0, "correct_cls": 0.0, "correct_dist": 0.0}
    for x, y in data.batches(batches, cfg.num_workers):
        x = A.normalize(x.to(env.device).float() / 255.0, cfg.mean, cfg.std)
        y = y.to(env.device)
        cls_logits, dist_logits = heads(x)
        logits = cls_logits if dist_logits is None else (cls_logits + dist_logits) / 2   # = model(x)
        tot["n"] += len(y)
        tot["loss"] += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        tot["correct"] += float((logits.argmax(-1) == y).sum())
        if dist_logits is not None:
            tot["correct_cls"] += float((cls_logits.argmax(-1) == y).sum())
            tot["correct_dist"] += float((dist_logits.argmax(-1) == y).sum())
    keys = list(tot)
    summed = dict(zip(keys, env.all_sum([tot[k] for k in keys])))
    n = max(summed["n"], 1.0)
    out = {"val_loss": summed["loss"] / n, "val_acc": summed["correct"] / n}
    if model.cfg.distill_token:
        out.update(val_acc_cls=summed["correct_cls"] / n, val_acc_dist=summed["correct_dist"] / n)
    return out


def _prepare_data(cfg: TrainConfig, env: DistEnv):
    ds = open_training_dataset(cfg.data)
    classes = dataset_classes(ds)
    labels = dataset_labels(ds)
    size = (cfg.img_size, cfg.img_size)
    if cfg.val_data is not None:
        vds = open_training_dataset(cfg.val_data)
        vclasses = dataset_classes(vds)
        if vclasses != classes:
            raise ValueError(f"the validation classes {vclasses[:5]}... differ from the training classes "
                             f"{classes[:5]}...; use two splits of the same dataset")
        train = ImageTensors(ds, np.arange(len(ds)), labels, size)
        val = ImageTensors(vds, np.arange(len(vds)), dataset_labels(vds), size)
    else:
        tr_idx, va_idx = split_indices(labels, cfg.val_fraction, seed=cfg.seed)
        train = ImageTensors(ds, tr_idx, labels, size)
        val = ImageTensors(ds, va_idx, labels, size)
    for part, name in ((train, "training"), (val, "validation")):
        if part.nbytes() <= cfg.cache_mb * 2**20:
            part.preload(progress=cfg.progress and env.main, desc=f"decoding {name} images")
    return train, val, classes


def _check_resume(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    diff = {k: (saved.get(k), getattr(cfg, k)) for k in TrainConfig.RESUME_KEYS
            if k in saved and _norm(saved.get(k)) != _norm(getattr(cfg, k))}
    if diff:
        lines = ", ".join(f"{k}: run {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"cannot resume: options differ from the interrupted run ({lines})")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def train(cfg: TrainConfig | None = None, **options) -> dict[str, Any]:
    """Train a HookedViT from scratch; returns a summary (best accuracy and epoch, paths, history, wall time).

    ``train(TrainConfig(...))`` or ``train(data="synthetic:...", epochs=10, ...)`` (the TrainConfig fields).
    Under ``torchrun --nproc_per_node=N`` the global batch is split over N data-parallel processes.
    """
    cfg = dataclasses.replace(cfg, **options) if cfg is not None else TrainConfig(**options)
    cfg.validate()
    env = setup(cfg.device)
    try:
        with output_lock(cfg.out, "vitscope train", part=f"rank-{env.rank}"):
            return _train(cfg, env)
    except KeyboardInterrupt:
        last = Path(cfg.out) / "last"
        done = (f"the last finished epoch is in {last}; run the same command with --resume to continue"
                if last.exists() else "no epoch had finished; run the same command to start again")
        raise KeyboardInterrupt(f"interrupted: {done}") from None
    finally:
        env.close()


def _train(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    t_start = time.time()
    out = Path(cfg.out)
    train_set, val_set, classes = _prepare_data(cfg, env)
    if cfg.batch_size % env.world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {env.world} processes")
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(train_set)} training images")
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    torch.manual_seed(cfg.seed)
    vcfg = cfg.vit_config(len(classes), classes, name=out.name)
    pcfg = PreprocessConfig(input_size=cfg.img_size, crop_pct=1.0, interpolation="bicubic",
                            mean=cfg.mean, std=cfg.std)
    model = HookedViT(vcfg, preprocess_cfg=pcfg).to(env.device)
    optimizer = make_optimizer(model, cfg)
    teacher = load_teacher(cfg.teacher, len(classes), env.device) if cfg.teacher else None
    teacher_input = TeacherInput(teacher) if teacher is not None else None

    start_epoch, best_acc, best_epoch, history = 0, -1.0, -1, []
    if cfg.resume:
        state = load_train_state(out / "last")
        _check_resume(cfg, state["config"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_acc, best_epoch = state["epoch"] + 1, state["best_acc"], state["best_epoch"]
        history = json.loads(state["history"])
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        header = {"event": "start", "config": cfg.to_dict(), "vit": vcfg.to_dict(), "world_size": env.world,
                  "train_size": len(train_set), "val_size": len(val_set), "classes": classes}
        with (out / "log.jsonl").open("w") as f:                   # rewritten from the state on resume
            for row in [header] + history:
                f.write(json.dumps(row) + "\n")

    net = StudentHeads(model)
    if env.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    use_mix = cfg.mixup > 0 or cfg.cutmix > 0

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, disable=not (cfg.progress and env.main),
               desc="training", unit="step", dynamic_ncols=True)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    for epoch in range(start_epoch, end_epoch):
        t_epoch = time.time()
        model.train()
        torch.manual_seed(cfg.seed * 100003 + epoch * 1009 + env.rank)            # drop-path of this epoch
        perm = epoch_order(len(train_set), cfg.seed, epoch, cfg.repeated_aug)
        batches = [perm[s * cfg.batch_size:(s + 1) * cfg.batch_size][env.rank::env.world].tolist()
                   for s in range(steps_per_epoch)]
        sums = {"loss": 0.0, "correct": 0.0, "n": 0.0, "loss_cls": 0.0, "loss_dist": 0.0}
        for s, (x, y) in enumerate(train_set.batches(batches, cfg.num_workers)):
            step = epoch * steps_per_epoch + s
            g = _step_generator(cfg.seed, epoch, s, env.rank)
            x01 = x.to(env.device).float() / 255.0                                      # b, 3, H, W in [0, 1]
            y = y.to(env.device)
            x01 = A.random_resized_crop(x01, (cfg.img_size, cfg.img_size), cfg.crop_scale, cfg.crop_ratio, g=g)
            if cfg.hflip > 0:
                x01 = A.random_flip(x01, cfg.hflip, g=g)
            targets = A.soft_targets(y, len(classes), cfg.label_smoothing)
            if use_mix:
                x01, targets, _ = A.mixup_cutmix(x01, targets, cfg.mixup, cfg.cutmix, cfg.mix_prob, g=g)
            lr = cosine_lr(step, total_steps, cfg.lr, warmup_steps, cfg.min_lr)
            set_lr(optimizer, lr)
            hooks = []
            if cfg.patch_dropout > 0:                           # drop tokens after the position embedding
                lay0 = model.token_layout(0, (x01.shape[-2] // cfg.patch_size, x01.shape[-1] // cfg.patch_size))
                hooks = [("hook_full_embed", lambda t, hook: A.patch_dropout(t, lay0, cfg.patch_dropout, g))]
            with model.hooks(fwd_hooks=hooks):
                cls_logits, dist_logits = net(A.normalize(x01, cfg.mean, cfg.std))
            teacher_logits = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(teacher_input(x01))
            loss, parts = distillation_loss(cls_logits, dist_logits, targets, teacher_logits,
                                            kind=cfg.distill if teacher is not None else "none",
                                            alpha=cfg.distill_alpha, tau=cfg.distill_tau)
            optimizer_step(optimizer, loss, model.parameters(), cfg.grad_clip, where=f"epoch {epoch} step {s}")
            sums["loss"] += float(loss.detach()) * len(y)
            for k, v in parts.items():
                sums[k] += v * len(y)
            sums["correct"] += float((cls_logits.argmax(-1) == y).sum())
            sums["n"] += len(y)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}")
        keys = list(sums)
        tot = dict(zip(keys, env.all_sum([sums[k] for k in keys])))
        n = tot["n"]
        row = {"epoch": epoch, "step": (epoch + 1) * steps_per_epoch, "lr": lr,
               "train_loss": tot["loss"] / n, "train_acc": tot["correct"] / n}
        if model.cfg.distill_token:                        # the two heads' losses (label / teacher)
            row.update(train_loss_cls=tot["loss_cls"] / n, train_loss_dist=tot["loss_dist"] / n)
        row.update(evaluate(model, val_set, env, cfg))
        row["epoch_time_s"] = round(time.time() - t_epoch, 3)
        improved = row["val_acc"] > best_acc
        if improved:
            best_acc, best_epoch = row["val_acc"], epoch
        row["best_val_acc"] = best_acc
        history.append(row)
        if env.main:
            extra = {**cfg.extra, "trained_by": "vitscope train", "epoch": epoch, "val_acc": row["val_acc"],
                     "train_config": cfg.to_dict()}
            if improved:
                save_model(model, out / "best", extra=extra)
            save_model(model, out / "last", extra=extra)
            save_train_state(out / "last", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "best_acc": best_acc, "best_epoch": best_epoch, "history": json.dumps(history),
                "config": cfg.to_dict()})
            with (out / "log.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.write(f"epoch {epoch}: train loss {row['train_loss']:.3f} acc {100 * row['train_acc']:.1f}% | "
                      f"val loss {row['val_loss']:.3f} acc {100 * row['val_acc']:.1f}%"
                      + (" (best)" if improved else ""))
        env.barrier()
    bar.close()

    summary = {"best_val_acc": best_acc, "best_epoch": best_epoch, "epochs": cfg.epochs,
               "best": str(out / "best"), "last": str(out / "last"), "log": str(out / "log.jsonl"),
               "wall_time_s": round(time.time() - t_start, 1), "world_size": env.world,
               "train_size": len(train_set), "val_size": len(val_set), "history": history}
    if env.main and history:
        from vitscope.train.curves import plot_curves
        from vitscope.viz.save import save_figure, save_json

        fig = plot_curves(history, title=f"{out.name}: best val acc {100 * best_acc:.1f}% (epoch {best_epoch})")
        arrays = {k: np.array([h.get(k, math.nan) for h in history], dtype=float)
                  for k in ("train_loss", "val_loss", "train_acc", "val_acc")}
        summary["curves"] = [str(p) for p in save_figure(fig, out / "curves", cfg.formats, arrays=arrays)]
        save_json({k: v for k, v in summary.items() if k != "history"}, out / "summary.json")
        if end_epoch == cfg.epochs:                  # the finished run: its whole story goes with the best model
            from vitscope.models.loading import load_model

            final = {**cfg.extra, "trained_by": "vitscope train", "train_config": cfg.to_dict(), "seed": cfg.seed,
                     **{k: summary[k] for k in ("best_val_acc", "best_epoch", "epochs", "wall_time_s", "world_size",
                                                "train_size", "val_size", "history")}}
            save_model(load_model(str(out / "best")), out / "best", extra=final)
    return summary
