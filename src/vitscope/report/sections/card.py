"""Model card, token layout, training curves and accuracy."""
from __future__ import annotations

import numpy as np
import torch

from vitscope.report.registry import Section, analysis

CARD_FIELDS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_classes",
               "class_token", "distill_token", "num_registers", "register_location", "register_block", "cls_block",
               "pos_embed", "global_pool", "head", "layer_scale_init", "drop_path_rate")


def _value(v):
    if isinstance(v, (list, tuple)):
        return " x ".join(str(x) for x in v)
    return v


def layout_rows(model) -> list[dict]:
    """One row per block where the token sequence changes (and the output)."""
    rows, prev = [], None
    for b in range(model.cfg.depth + 1):
        lay = model.token_layout(b)
        key = (lay.n_tokens, lay.cls, lay.dist, lay.registers, lay.patches)
        if key == prev:
            continue
        prev = key
        rows.append({
            "entering block": b if b < model.cfg.depth else "output",
            "tokens": lay.n_tokens,
            "CLS": "-" if lay.cls is None else lay.cls,
            "DIST": "-" if lay.dist is None else lay.dist,
            "registers": "-" if not lay.registers else f"{lay.registers[0]}..{lay.registers[-1]}",
            "patches": f"{lay.patches.start}..{lay.patches.stop - 1} ({lay.grid[0]} x {lay.grid[1]})",
        })
    return rows


@analysis("model_card", "Model card", order=10)
def model_card(ctx) -> Section:
    """Configuration, token layout per block, provenance and (for models trained by vitscope) training."""
    model, cfg = ctx.model, ctx.model.cfg
    meta = getattr(model, "meta", {}) or {}
    extra = meta.get("extra") or {}
    n_params = sum(p.numel() for p in model.parameters())
    sec = Section()
    sec.add_text(
        f"<b>{ctx.title}</b>: {cfg.depth} blocks, width {cfg.embed_dim}, {cfg.num_heads} heads, "
        f"{_value(cfg.img_size)} px input in {cfg.patch_size} px patches ({cfg.grid[0]} x {cfg.grid[1]} grid), "
        f"{n_params / 1e6:.2f} M parameters. Source: {meta.get('source', 'in memory')}.")
    if cfg.num_registers or cfg.cls_block:
        sec.add_text(f"Dynamic tokens (cls-register): {cfg.num_registers} register(s) enter before block "
                     f"{cfg.register_block} ({cfg.register_location} of the sequence); CLS enters before block "
                     f"{cfg.cls_block}. The table below gives the sequence at each block where it changes.")
    for k in ("description", "command"):
        if extra.get(k):
            sec.add_text(f"{k.capitalize()}: <code>{extra[k]}</code>" if k == "command" else str(extra[k]))
    rows = [{"field": f, "value": _value(getattr(cfg, f))} for f in CARD_FIELDS]
    pp = model.preprocess_cfg
    if pp is not None:
        rows.append({"field": "preprocess", "value": f"resize/crop to {_value(pp.input_size)} (crop_pct "
                                                     f"{pp.crop_pct}), mean {pp.mean}, std {pp.std}"})
    sec.table(ctx, rows, "config", "Configuration (ViTConfig)")
    sec.table(ctx, layout_rows(model), "layout", "Token layout entering each block (indices in the sequence)")
    history = extra.get("history")
    if history:
        from vitscope.train.curves import plot_curves

        fig = plot_curves(history, title="training (vitscope train)")
        sec.figure(ctx, fig, "training_curves", "Loss and accuracy per epoch during training; the kept checkpoint "
                   "is the best by validation accuracy.",
                   arrays={k: np.array([h.get(k, np.nan) for h in history], float)
                           for k in ("train_loss", "val_loss", "train_acc", "val_acc")})
        facts = {k: extra[k] for k in ("best_val_acc", "best_epoch", "epochs", "wall_time_s", "seed") if k in extra}
        if facts:
            sec.table(ctx, [{"fact": k, "value": v} for k, v in facts.items()], "training", "Training run")
    return sec


def confusion(pred: np.ndarray, true: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m


@analysis("accuracy", "Accuracy on these images", needs=("classifier",), order=15)
def accuracy(ctx) -> Section:
    """Top-1 accuracy of the model's own head on the labelled images, per class, and the confusion matrix."""
    from vitscope.viz.attention import subplots

    logits, y = ctx.logits, ctx.eval_labels
    pred = logits.argmax(-1).numpy()
    C = len(ctx.classes)
    acc = float((pred == y).mean())
    top5 = float((torch.topk(logits, min(5, C), -1).indices.numpy() == y[:, None]).any(1).mean())
    sec = Section()
    sec.add_text(f"Top-1 accuracy <b>{100 * acc:.1f}%</b> (top-5 {100 * top5:.1f}%) on {len(y)} images "
                 f"({100 / C:.1f}% is chance for {C} classes).")
    if acc < 1.5 / C:
        sec.add_text(f"<b>Warning:</b> this is near chance: the images may be unlike the model's training data "
                     f"(the bundled demo models need <code>builtin:demo</code>).")
    cm = confusion(pred, y, C)
    rows = [{"class": ctx.classes[c], "images": int(cm[c].sum()),
             "accuracy": round(float(cm[c, c] / max(cm[c].sum(), 1)), 4)} for c in range(C)]
    sec.table(ctx, rows, "per_class", "Accuracy per class")
    fig, axes = subplots(1, 1, figsize=(0.45 * C + 2.2, 0.45 * C + 1.6))
    ax = axes[0, 0]
    ax.imshow(cm, cmap="Blues")
    for i in range(C):
        for j in range(C):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(C), ctx.classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(C), ctx.classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    sec.figure(ctx, fig, "confusion", "Confusion matrix (rows: true class, columns: prediction).",
               arrays={"confusion": cm})
    ctx.info["accuracy"], ctx.info["accuracy_n"] = acc, len(y)
    return sec
