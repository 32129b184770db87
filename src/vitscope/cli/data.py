"""`vitscope synth` (write the synthetic benchmark) and `vitscope check-data` (decode a dataset, report bad files)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth_cmd(
        out_dir: Path = typer.Argument(..., help="Folder to write the benchmark into (created; must be empty "
                                                 "unless --force)."),
        like: Optional[str] = typer.Option(None, "--like", help="Take every generator setting from a dataset "
                                           "spec: builtin:demo (what the bundled demo models were trained on) or "
                                           "synthetic:KEY=VALUE,...; the flags below override it where given."),
        size: Optional[int] = typer.Option(None, "--size", help="Image side in pixels (scenes and videos are "
                                                                "twice this). [default: 64]"),
        classes: Optional[int] = typer.Option(None, "--classes", help="Number of shape classes (2 to 10). "
                                                                      "[default: 8]"),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: the same seed writes the same bytes. "
                                                                "[default: 0]"),
        difficulty: Optional[str] = typer.Option(None, "--difficulty", help="easy, medium or hard (noise, clutter, "
                                                 "texture, scale range, contrast). [default: medium]"),
        noise: Optional[float] = typer.Option(None, "--noise", help="Override: pixel noise std (0-1 scale)."),
        clutter: Optional[int] = typer.Option(None, "--clutter", help="Override: distractor strokes per image."),
        train_per_class: int = typer.Option(50, "--train-per-class", help="ImageFolder training images per class."),
        val_per_class: int = typer.Option(20, "--val-per-class", help="ImageFolder validation images per class."),
        scenes: int = typer.Option(40, "--scenes", help="COCO-style multi-object scenes."),
        part_images: int = typer.Option(40, "--part-images", help="PartImageNet-style images."),
        semantic_images: int = typer.Option(40, "--semantic-images", help="ImageNet-S-style images."),
        videos: int = typer.Option(4, "--videos", help="DAVIS-style sequences."),
        frames: int = typer.Option(12, "--frames", help="Frames per sequence."),
        pairs: int = typer.Option(40, "--pairs", help="SPair-style keypoint pairs."),
        landmarks: int = typer.Option(6, "--landmarks", help="Revisited-style landmarks (three queries each)."),
        parts: str = typer.Option(",".join(("imagefolder", "coco", "partimagenet", "imagenet_s", "davis", "spair",
                                            "revisited")), "--parts", "--formats",
                                  help="Parts to write, comma-separated: imagefolder, coco, partimagenet, "
                                       "imagenet_s, davis, spair, revisited."),
        force: bool = typer.Option(False, "--force", help="Write into a non-empty folder (files are overwritten)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Write the synthetic benchmark to OUT_DIR in the public dataset formats (see synth.json there)."""
        from vitscope.data.synthetic import SynthConfig, write
        from vitscope.data.spec import synthetic_config

        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"{out_dir} exists and is not a folder")
        if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
            raise ValueError(f"{out_dir} is not empty; choose another folder or pass --force")
        given = {k: v for k, v in dict(size=size, n_classes=classes, seed=seed, difficulty=difficulty, noise=noise,
                                       clutter=clutter).items() if v is not None}
        cfg = synthetic_config(like).with_options(**given) if like else SynthConfig(**given)
        manifest = write(out_dir, cfg, formats=[f.strip() for f in parts.split(",") if f.strip()],
                         train_per_class=train_per_class, val_per_class=val_per_class, scenes=scenes,
                         part_images=part_images, semantic_images=semantic_images, videos=videos, frames=frames,
                         pairs=pairs, landmarks=landmarks, progress=not quiet)
        for name, info in manifest["written"].items():
            counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items() if not isinstance(v, dict))
            typer.echo(f"{name:13s} {out_dir / info['folder']}  ({counts})")
        typer.echo(f"wrote {out_dir / 'synth.json'}")

    @app.command("check-data")
    def check_data_cmd(
        data: str = typer.Argument(..., help="Dataset spec: folder, list file, shards, hf:NAME, video, "
                                             "synthetic:... (see docs/data.md)."),
        report: Optional[Path] = typer.Option(None, "--report", help="Write the skipped files here (CSV); "
                                                                     "default: no file."),
        batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images decoded per batch."),
        workers: int = typer.Option(0, "--workers", "-w", help="DataLoader worker processes."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Decode only the first N images."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Decode every image of a dataset once; list the files that cannot be read, and why."""
        from vitscope.cli.common import check_limit
        from vitscope.data import open_dataset
        from vitscope.models.preprocess import PreprocessConfig, Preprocessor

        check_limit(limit)
        ds = open_dataset(data, transform=Preprocessor(PreprocessConfig(input_size=16, crop_pct=1.0)))
        if limit is not None and limit < len(ds):
            ds = ds.subset(range(limit))
        typer.echo(f"{ds.description}: {len(ds)} images, {len(ds.classes)} classes")
        for _ in ds.batches(batch_size=batch_size, num_workers=workers, progress=not quiet):
            pass
        for r in ds.skipped[:20]:
            typer.echo(f"  skipped {r.id}: {r.reason}")
        if len(ds.skipped) > 20:
            typer.echo(f"  ... and {len(ds.skipped) - 20} more")
        if report is not None:
            ds.write_skip_report(report)
        typer.echo(ds.skip_summary(report=report))
