"""`vitscope train`: train a small HookedViT from scratch (thin wrapper over vitscope.train.train)."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        data: str = typer.Argument(..., help="Training images: a folder with one sub-folder per class, a list "
                                             "file, a dataset spec, or synthetic:... (the synthetic benchmark)."),
        out: str = typer.Option("runs/train", "--out", "-o", help="Run folder: best/, last/, log.jsonl, curves."),
        val_data: Optional[str] = typer.Option(None, "--val-data", help="A separate validation set (same classes)."),
        val_fraction: float = typer.Option(0.1, "--val-fraction",
                                           help="Share of DATA held out for validation when --val-data is not set."),
        img_size: int = typer.Option(32, "--img-size", help="Input size in pixels (square)."),
        patch_size: int = typer.Option(4, "--patch-size", help="Patch size in pixels."),
        embed_dim: int = typer.Option(128, "--embed-dim", help="Model width."),
        depth: int = typer.Option(6, "--depth", help="Number of blocks."),
        num_heads: int = typer.Option(4, "--num-heads", help="Attention heads per block."),
        mlp_ratio: float = typer.Option(4.0, "--mlp-ratio", help="MLP width / model width."),
        num_registers: int = typer.Option(0, "--num-registers", help="Register tokens (cls-register)."),
        register_block: int = typer.Option(0, "--register-block", help="Block before which the registers enter."),
        cls_block: int = typer.Option(0, "--cls-block", help="Block before which CLS (and DIST) enter."),
        register_location: str = typer.Option("end", "--register-location",
                                               help="'end' (appended, cls-register) or 'prefix' (after CLS, DINOv2)."),
        distill_token: bool = typer.Option(False, "--distill-token",
                                           help="Add a distillation token and head (DeiT); averaged at test time."),
        drop_path: float = typer.Option(0.1, "--drop-path", help="Stochastic depth rate of the last block."),
        epochs: int = typer.Option(30, "--epochs", help="Passes over the training set."),
        batch_size: int = typer.Option(128, "--batch-size", "-b", help="Global batch size (split over processes)."),
        opt: str = typer.Option("adamw", "--opt", help="'adamw' or 'lamb' (timm's NVLAMB, as DeiT III and cls-register)."),
        lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
        min_lr: float = typer.Option(1e-5, "--min-lr", help="Learning rate at the end of the cosine decay."),
        weight_decay: float = typer.Option(0.05, "--weight-decay", help="Weight decay (not on norms, biases, "
                                                                          "tokens, position embeddings)."),
        warmup_epochs: float = typer.Option(2.0, "--warmup-epochs", help="Linear warm-up length in epochs."),
        label_smoothing: float = typer.Option(0.1, "--label-smoothing", help="Label smoothing epsilon."),
        grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Clip the gradient norm to this value."),
        crop_min: float = typer.Option(0.35, "--crop-min", help="Smallest area fraction of random-resized-crop."),
        hflip: float = typer.Option(0.5, "--hflip", help="Probability of a horizontal flip."),
        repeated_aug: int = typer.Option(1, "--repeated-aug",
                                         help="Repeated augmentation: each image R times per epoch, each copy "
                                              "augmented on its own (DeiT: 3; 1: off)."),
        mixup: float = typer.Option(0.0, "--mixup", help="Mixup alpha (0: off)."),
        cutmix: float = typer.Option(0.0, "--cutmix", help="CutMix alpha (0: off)."),
        patch_dropout: float = typer.Option(0.0, "--patch-dropout",
                                            help="Share of patch tokens dropped at random in training "
                                                 "(PatchDropout; also makes steps faster)."),
        teacher: Optional[str] = typer.Option(None, "--teacher",
                                              help="Teacher for distillation: a model name or a checkpoint folder "
                                                   "(needs --distill-token)."),
        distill: str = typer.Option("hard", "--distill", help="'hard' (teacher argmax) or 'soft' (KL * tau^2)."),
        distill_alpha: float = typer.Option(0.5, "--distill-alpha", help="Weight of the distillation loss."),
        distill_tau: float = typer.Option(1.0, "--distill-tau", help="Temperature of soft distillation."),
        seed: int = typer.Option(0, "--seed", help="Seed of the initialisation, the split, the order and the "
                                                   "augmentations."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch."),
        device: str = typer.Option("auto", "--device", help="'auto', 'cpu' or 'cuda'."),
        num_workers: int = typer.Option(0, "--workers", "-w", "--num-workers",
                                        help="Data-loading processes (large datasets)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Train a ViT from scratch: AdamW or LAMB, cosine schedule, label smoothing, crop/flip (+ mixup/cutmix),
        drop-path, dynamic CLS/register placement, distillation; best checkpoint by validation accuracy.

        Data parallel: torchrun --nproc_per_node=N -m vitscope train DATA ..."""
        import shlex
        import sys

        from vitscope.train import TrainConfig, train

        cfg = TrainConfig(
            data=data, out=out, val_data=val_data, val_fraction=val_fraction, img_size=img_size,
            patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            num_registers=num_registers, register_block=register_block, cls_block=cls_block,
            register_location=register_location, distill_token=distill_token, drop_path=drop_path, epochs=epochs,
            batch_size=batch_size, opt=opt, repeated_aug=repeated_aug, lr=lr, min_lr=min_lr,
            weight_decay=weight_decay, warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing, grad_clip=grad_clip, crop_scale=(crop_min, 1.0), hflip=hflip,
            mixup=mixup, cutmix=cutmix, patch_dropout=patch_dropout, teacher=teacher, distill=distill,
            distill_alpha=distill_alpha, distill_tau=distill_tau, seed=seed, resume=resume, device=device,
            num_workers=num_workers, progress=not quiet,
            extra={"command": shlex.join(["vitscope", *sys.argv[1:]])},
        )
        summary = train(cfg)
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo(f"best validation accuracy {100 * summary['best_val_acc']:.2f}% at epoch "
                       f"{summary['best_epoch']}; model in {summary['best']} ({summary['wall_time_s']:.0f} s)")
