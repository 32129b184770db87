"""Helpers shared by every command module: option help texts, formats, device, model loading, images.

Commands import from here so that every command reads ``--model``, ``--data``, ``--formats`` and ``--out`` the
same way.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

MODEL_HELP = ("Model: a registry name, timm/<name>, hf:<repo>, or a local folder / file "
              "(see `vitscope models`).")
RANDOM_HELP = "Random weights (no download): the architecture only, as a baseline."
DATA_HELP = "Dataset spec (folder, list file, shards, hf:NAME, video, synthetic:...); see docs/data.md."
IMAGES_HELP = "Image files (used when --data is not given)."
OUT_HELP = "Output folder (created)."
FORMATS_HELP = "Figure formats, comma-separated: png, pdf, svg."
DEVICE_HELP = "Device: cpu, cuda, cuda:1, ... (default: cuda when available)."


def parse_formats(text: str) -> tuple[str, ...]:
    fmts = tuple(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in ("png", "pdf", "svg", "jpg")]
    if bad or not fmts:
        raise ValueError(f"--formats takes png, pdf, svg (comma-separated), got {text!r}")
    return fmts


def resolve_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_for_cli(name: str, random: bool, device: str | None = None):
    """``vitscope.load_model(name, pretrained=not random)`` in eval mode on ``device``."""
    from vitscope.models.loading import load_model

    model = load_model(name, pretrained=not random)
    return model.eval().to(resolve_device(device))


def open_images(model, data: str | None, images: list[Path] | None, limit: int | None):
    """An ImageDataset with the model's own preprocessing, from --data or image paths; at most ``limit`` items."""
    from vitscope.data import ImageDataset, open_dataset
    from vitscope.data.folders import FileSource
    from vitscope.models.preprocess import PreprocessConfig, Preprocessor

    pcfg = model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)
    tf = Preprocessor(pcfg)
    if data and images:
        raise ValueError("give either --data or image paths, not both")
    if data:
        ds = open_dataset(data, transform=tf)
    elif images:
        missing = [str(p) for p in images if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"image file not found: {missing[0]}")
        ds = ImageDataset(FileSource([str(p) for p in images], description="image files"), transform=tf)
    else:
        raise ValueError("no images: give image paths or --data SPEC")
    if limit is not None and limit < len(ds):
        ds = ds.subset(range(limit))
    if len(ds) == 0:
        raise ValueError("the dataset has no images")
    return ds, pcfg


def finish_skips(ds, out: Path) -> None:
    """Write ``out/skipped.csv`` when files were skipped and print the one-line summary."""
    if ds.skipped:
        ds.write_skip_report(out / "skipped.csv")
    typer.echo(ds.skip_summary(report=out / "skipped.csv" if ds.skipped else None))


def model_meta(model, name: str, random: bool) -> dict:
    """What a results file records about the model it came from."""
    meta = getattr(model, "meta", {}) or {}
    return {"model": name, "random_init": bool(random), "source": meta.get("source"),
            "weights_sha256": meta.get("weights_sha256"), "config": model.cfg.to_dict()}


def slug(s: str) -> str:
    """A string as a safe file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "model"


def load_models(names: list[str], random: bool, device: Optional[str], seed: int = 0,
                with_random: bool = False) -> dict:
    """Load every model by label; ``random`` random-inits them all, ``with_random`` adds a random-init copy of each."""
    from vitscope.models.loading import load_model

    models = {}
    for n in names:
        for rand in ([random] + ([True] if with_random and not random else [])):
            m = load_model(n, pretrained=not rand, device=device, seed=seed)
            m.eval()
            label = str((getattr(m, "meta", None) or {}).get("name") or Path(n).name or n)
            if rand:
                label += " (random)"
            while label in models:
                label += "'"
            models[label] = m
    return models


def save_tidy(rows, stem: Path) -> list[Path]:
    """Write a tidy table (list of dicts or DataFrame) as ``stem.csv`` and ``stem.parquet``; returns both paths."""
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, parquet = stem.with_name(f"{stem.name}.csv"), stem.with_name(f"{stem.name}.parquet")
    df.to_csv(csv, index=False)
    df.to_parquet(parquet, index=False)
    return [csv, parquet]
