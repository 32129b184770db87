"""Distillation through a distillation token (DeiT): the teacher, its inputs and the loss.

In training the student's CLS token feeds ``model.head`` (supervised by the labels) and its DIST token feeds
``model.head_dist`` (supervised by the teacher); at test time the model averages the two heads
(``head="distilled"`` in :class:`~vitscope.models.vit.HookedViT`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitscope.train.augment import normalize, resize, soft_cross_entropy

DISTILL_KINDS = ("none", "soft", "hard")


def distillation_loss(cls_logits: torch.Tensor, dist_logits: torch.Tensor | None, targets: torch.Tensor,
                      teacher_logits: torch.Tensor | None, kind: str = "hard", alpha: float = 0.5,
                      tau: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a student with a CLS head and (optionally) a DIST head.

    ``targets``: soft targets (B, C) (smoothed / mixed labels).
    - ``kind="none"`` or no teacher: the label loss on CLS, and on DIST too when the model has one
      (averaged), so a distillation-token model can still be trained without a teacher.
    - ``"soft"``: (1 - alpha) * CE(CLS, targets) + alpha * tau^2 * KL(softmax(teacher / tau) || softmax(DIST / tau)),
      the KL averaged over the batch.
    - ``"hard"``: (1 - alpha) * CE(CLS, targets) + alpha * CE(DIST, argmax teacher) (DeiT uses alpha = 0.5).
    Returns (loss, parts) with the parts as floats for the log.
    """
    if kind not in DISTILL_KINDS:
        raise ValueError(f"distillation kind must be one of {DISTILL_KINDS}, got {kind!r}")
    base = soft_cross_entropy(cls_logits, targets)
    if kind == "none" or teacher_logits is None:
        if dist_logits is None:
            return base, {"loss_cls": float(base.detach())}
        dist = soft_cross_entropy(dist_logits, targets)
        return (base + dist) / 2, {"loss_cls": float(base.detach()), "loss_dist": float(dist.detach())}
    if dist_logits is None:
        raise ValueError("distillation needs a student with a distillation token (distill_token=True)")
    teacher_logits = teacher_logits.detach().float()
    if kind == "soft":
        kd = F.kl_div(F.log_softmax(dist_logits.float() / tau, dim=-1), F.log_softmax(teacher_logits / tau, dim=-1),
                      reduction="batchmean", log_target=True) * (tau * tau)
    else:
        kd = F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=-1))
    loss = (1.0 - alpha) * base + alpha * kd
    return loss, {"loss_cls": float(base.detach()), "loss_dist": float(kd.detach())}


class StudentHeads(nn.Module):
    """The training forward of a HookedViT: (CLS-head logits, DIST-head logits or None).

    A DeiT-distilled model's ``forward`` averages its two heads (the test-time rule); training reads them
    separately. This wrapper is what DDP wraps, so gradients of both heads are synchronised.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = self.model
        if not m.cfg.distill_token:
            return m(x), None
        tokens = m.forward_features(x)                                                  # B, T, D
        cls_logits = m.head(m.pool(tokens))                                             # B, C
        dist = m.token_layout(m.cfg.depth).dist
        dist_logits = m.head_dist(m.hook_pooled_dist(tokens[:, dist]))                  # B, C
        return cls_logits, dist_logits


class TeacherInput:
    """Turns the student's batch (images in [0, 1]) into the teacher's: its input size and normalisation."""

    def __init__(self, teacher) -> None:
        from vitscope.models.preprocess import PreprocessConfig

        pcfg = getattr(teacher, "preprocess_cfg", None) or PreprocessConfig(input_size=teacher.cfg.img_size)
        self.size = tuple(teacher.cfg.img_size)
        self.mean, self.std = pcfg.mean, pcfg.std

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return normalize(resize(x01, self.size), self.mean, self.std)


def load_teacher(name_or_path: str, num_classes: int, device: torch.device | str = "cpu"):
    """A frozen teacher in eval mode: any model ``vitscope.load_model`` reads (name, hub id, folder, file)."""
    from vitscope.models.loading import load_model

    teacher = load_model(str(name_or_path))
    n = teacher.cfg.num_classes if teacher.cfg.head != "none" else None
    if n != num_classes:
        raise ValueError(f"the teacher {name_or_path!r} predicts {n} classes but the dataset has {num_classes}; "
                         "use a teacher trained on the same classes")
    teacher.eval().requires_grad_(False)
    return teacher.to(device)
