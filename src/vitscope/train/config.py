"""TrainConfig: every option of ``vitscope train``, with the defaults of a small from-scratch recipe."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vitscope.models.config import ViTConfig


@dataclass
class TrainConfig:
    """Options of :func:`vitscope.train.train`. ``data`` / ``val_data`` are dataset specs (or dataset objects)."""

    data: Any = None
    out: str = "runs/train"
    val_data: Any = None                  # a separate validation set; else `val_fraction` of `data` is held out
    val_fraction: float = 0.1
    # architecture (a HookedViT trained from scratch)
    img_size: int = 32
    patch_size: int = 4
    embed_dim: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_registers: int = 0
    register_block: int = 0
    cls_block: int = 0
    register_location: str = "end"        # cls-register appends the registers at the end of the sequence
    distill_token: bool = False
    drop_path: float = 0.1
    # optimisation
    opt: str = "adamw"                    # "adamw" or "lamb" (NVLAMB as in timm: DeiT III, cls-register)
    epochs: int = 30
    batch_size: int = 128                 # global batch (split over data-parallel ranks)
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    # augmentation
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    repeated_aug: int = 1                 # DeiT's repeated augmentation: each image R times per epoch (DeiT: 3)
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    patch_dropout: float = 0.0            # share of patch tokens dropped in training (PatchDropout; also faster)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # distillation
    teacher: str | None = None
    distill: str = "hard"                 # "soft" (KL * tau^2) or "hard" (teacher argmax)
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    # running
    seed: int = 0
    resume: bool = False
    stop_after: int | None = None         # end this invocation after N epochs (continue later with resume)
    device: str = "auto"
    num_workers: int = 0
    cache_mb: int = 2048                  # decode the data once into memory when it fits
    eval_batch_size: int = 256
    progress: bool = True
    formats: tuple[str, ...] = ("png", "pdf")
    extra: dict[str, Any] = field(default_factory=dict)

    def vit_config(self, num_classes: int, classes: list[str] | None = None, name: str | None = None) -> ViTConfig:
        return ViTConfig(
            img_size=self.img_size, patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
            num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, num_classes=num_classes,
            num_registers=self.num_registers, register_block=self.register_block, cls_block=self.cls_block,
            register_location=self.register_location, distill_token=self.distill_token,
            head="distilled" if self.distill_token else "linear", drop_path_rate=self.drop_path,
            meta={"name": name or "vit", "family": "vitscope-trained", "classes": list(classes or [])},
        )

    def validate(self) -> None:
        if self.data is None:
            raise ValueError("no training data: pass a dataset spec (a folder, a list file, synthetic:...)")
        if self.teacher and not self.distill_token:
            raise ValueError("--teacher needs a distillation token: add --distill-token")
        if self.distill not in ("soft", "hard"):
            raise ValueError(f"--distill must be 'soft' or 'hard', got {self.distill!r}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"--distill-alpha must be in [0, 1], got {self.distill_alpha}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be >= 1")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"--patch-dropout must be in [0, 1), got {self.patch_dropout}")
        if self.opt not in ("adamw", "lamb"):
            raise ValueError(f"--opt must be 'adamw' or 'lamb', got {self.opt!r}")
        if self.repeated_aug < 1:
            raise ValueError(f"--repeated-aug must be >= 1 (1: off; DeiT uses 3), got {self.repeated_aug}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"--crop-scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")

    def to_dict(self) -> dict[str, Any]:
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v if isinstance(v, (str, int, float, bool, list, tuple, dict, type(None))) else repr(v)
        return d

    # fields that must agree between a run and its --resume (the rest, e.g. epochs or progress, may change)
    RESUME_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_registers",
                   "register_block", "cls_block", "register_location", "distill_token", "batch_size", "seed",
                   "opt", "repeated_aug")
