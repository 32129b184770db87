"""ReportContext: what every report analysis receives (model, images, labels, masks, output folder).

Expensive things are computed once and shared between analyses: the preprocessed images, the attention
patterns of every block, the per-block features, a random-weight twin of the model for baselines.
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitscope.report.registry import FigureItem, TableItem

# what an analysis may need, and the line shown when it is missing
NEEDS = ("images", "labels", "masks", "classifier", "registers", "cls")


class ReportContext:
    """One model and its images, as the report analyses see them.

    ``data``: a dataset spec (``vitscope.data.open_dataset``) or an ImageDataset, or None (model-only
    sections). ``n_images`` images (spread evenly over the dataset) feed the attention analyses;
    ``n_eval`` images the accuracy, CKA and clustering. Figures and tables go to ``out_dir/<name>/``;
    ``report_dir`` is where the HTML page lives (links are relative to it).
    """

    def __init__(self, model, data=None, out_dir: str | Path = "runs/report", name: str = "model",
                 title: str | None = None, report_dir: str | Path | None = None, n_images: int = 32,
                 n_eval: int = 512, n_show: int = 6, batch_size: int = 64, progress: bool = True,
                 info: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.name = name
        self.title = title or name
        self.report_dir = Path(report_dir or out_dir)
        self.out_dir = Path(out_dir) / name
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.n_images, self.n_eval, self.n_show = n_images, n_eval, n_show
        self.batch_size, self.progress = batch_size, progress
        self.info: dict[str, Any] = dict(info or {})
        self._data = data
        self._token_masks: dict[str, torch.Tensor] = {}
        self._features: dict[tuple[str, str], dict[str, np.ndarray] | None] = {}
        self._memo: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    @property
    def pcfg(self):
        from vitscope.models.preprocess import PreprocessConfig

        return self.model.preprocess_cfg or PreprocessConfig(input_size=self.model.cfg.img_size)

    @property
    def data_label(self) -> str | None:
        """What the figure titles name as the data: the spec given, or the dataset's description."""
        if self._data is None:
            return None
        if isinstance(self._data, (str, Path)):
            return str(self._data)
        return getattr(self._data, "description", None)

    @cached_property
    def dataset(self):
        """The ImageDataset (model preprocessing as its transform), or None."""
        if self._data is None:
            return None
        from vitscope.data import open_dataset
        from vitscope.models.preprocess import Preprocessor

        if isinstance(self._data, (str, Path)):
            return open_dataset(str(self._data), transform=Preprocessor(self.pcfg))
        return self._data

    def spread(self, n: int) -> np.ndarray:
        """``n`` indices spread evenly over the dataset (class folders are sorted; this mixes classes)."""
        N = len(self.dataset)
        if n >= N:
            return np.arange(N)
        return np.unique(np.linspace(0, N - 1, n).round().astype(np.int64))

    def _load(self, idx: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(images (n, 3, H, W), labels (n,), dataset indices (n,)) of the decodable items among ``idx``."""
        sub = self.dataset.subset(idx.tolist())
        xs, ys, ii = [], [], []
        for x, y, i in sub.batches(self.batch_size):
            xs.append(x)
            ys.append(y.numpy())
            ii.append(idx[i.numpy()])
        if not xs:
            raise ValueError("none of the report's images could be decoded")
        return torch.cat(xs), np.concatenate(ys), np.concatenate(ii)

    @cached_property
    def _sample(self):
        return self._load(self.spread(self.n_images))

    @property
    def images(self) -> torch.Tensor:
        """Preprocessed images for the attention analyses (n_images, 3, H, W)."""
        return self._sample[0]

    @property
    def labels(self) -> np.ndarray:
        return self._sample[1]

    @property
    def indices(self) -> np.ndarray:
        return self._sample[2]

    @cached_property
    def display(self) -> np.ndarray:
        """The same images as uint8 (n, H, W, 3), as the model sees them (resized, cropped)."""
        from vitscope.viz.attention import denormalize

        return denormalize(self.images, self.pcfg.mean, self.pcfg.std)

    @cached_property
    def _eval(self):
        return self._load(self.spread(self.n_eval))

    @property
    def eval_images(self) -> torch.Tensor:
        return self._eval[0]

    @property
    def eval_labels(self) -> np.ndarray:
        return self._eval[1]

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.dataset, "classes", None) or [])

    def object_masks(self, which: str = "images") -> list[np.ndarray]:
        """Union-of-objects masks (H, W) in the original image coordinates, for ``images`` or ``eval``."""
        from vitscope.analysis.cluster import dataset_masks

        idx = self.indices if which == "images" else self._eval[2]
        source = getattr(self.dataset, "source", self.dataset)
        out = []
        for i in idx:
            masks, _ = dataset_masks(source, int(i), "object")
            out.append(np.any(np.stack([np.asarray(m, bool) for m in masks]), axis=0))
        return out

    def token_masks(self, rule: str = "bicubic") -> torch.Tensor:
        """Object masks of ``images`` on the token grid (n, rows, cols) bool.

        ``rule``: "bicubic" (walmer2023: a generous resize that also marks cells next to the object), "majority"
        (at least half of the cell is object) or "any"; see ``mask_to_token_grid``.
        """
        from vitscope.analysis.attention.saliency import mask_to_token_grid

        if rule not in self._token_masks:
            grid = self.model.cfg.grid
            self._token_masks[rule] = torch.stack([
                torch.from_numpy(mask_to_token_grid(m, grid, preprocess_cfg=self.pcfg, rule=rule))
                for m in self._object_masks])
        return self._token_masks[rule]

    @cached_property
    def _object_masks(self) -> list[np.ndarray]:
        return self.object_masks("images")

    # ------------------------------------------------------------------ what is available
    def has(self, need: str) -> bool:
        cfg = self.model.cfg
        if need == "images":
            return self.dataset is not None and len(self.dataset) > 0
        if need == "labels":
            if not self.has("images") or not self.classes:
                return False
            return bool((np.asarray(self.dataset.labels) >= 0).all())
        if need == "masks":
            if not self.has("images"):
                return False
            src = getattr(self.dataset, "source", self.dataset)
            while hasattr(src, "base") and hasattr(src, "indices"):
                src = src.base
            return hasattr(src, "masks") or hasattr(src, "sample")
        if need == "classifier":
            return self.has("labels") and self.model_classes() == self.classes
        if need == "registers":
            return cfg.num_registers > 0
        if need == "cls":
            return cfg.class_token
        raise ValueError(f"unknown report need {need!r}; known: {NEEDS}")

    def model_classes(self) -> list[str] | None:
        """The class names the model's head predicts (from its config), or None when unknown."""
        cfg = self.model.cfg
        if cfg.head not in ("linear", "distilled"):
            return None
        classes = cfg.meta.get("classes")
        return list(classes) if classes else None

    def missing(self, need: str) -> str:
        """Why a section that needs ``need`` is skipped (one line)."""
        if need == "images":
            return "skipped: no images were given (pass --data)"
        if need == "labels":
            return ("skipped: the images have no class labels (use a folder with one sub-folder per class, a list "
                    "file with labels, or synthetic:...)")
        if need == "masks":
            return ("skipped: the images have no object masks (the synthetic benchmark and the segmentation task "
                    "formats have them)")
        if need == "classifier":
            mc = self.model_classes()
            if mc is None:
                return ("skipped: the model's head has no class names, so its predictions cannot be matched to the "
                        "dataset's labels")
            return (f"skipped: the model predicts {len(mc)} classes ({', '.join(mc[:4])}...) that are not the "
                    f"dataset's {len(self.classes)} classes")
        if need == "registers":
            return "skipped: the model has no register tokens"
        if need == "cls":
            return "skipped: the model has no CLS token"
        return f"skipped: needs {need}"

    # ------------------------------------------------------------------ shared computations
    @cached_property
    def patterns(self) -> dict[int, torch.Tensor]:
        """Attention patterns of every block on ``images``: {block: (n, H, T, T)}."""
        from vitscope.analysis.attention.maps import collect_patterns

        return collect_patterns(self.model, self.images)

    def attention_patterns(self, random: bool = False, masks: str | None = None):
        """The attention patterns of ``images`` (of the random-weight twin with ``random``) as the attention
        analyses' ``evaluate`` takes them, with the images, their pictures and, with ``masks`` (a rule of
        :meth:`token_masks`), the object masks on the token grid."""
        from vitscope.analysis.attention.common import AttentionPatterns

        return AttentionPatterns(self.random_patterns if random else self.patterns, images=self.images,
                                 masks=None if masks is None else self.token_masks(masks), display=self.display,
                                 ids=[f"#{int(i)}" for i in self.indices], description=self.data_label)

    def layout(self, block: int):
        return self.model.token_layout(block)

    def memo(self, key: str, compute):
        """``compute()`` once per context: results that several analyses share (e.g. the rollout maps)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @cached_property
    def random_model(self):
        """The same architecture with random weights (seed 0): the baseline of vilas2023 / 002."""
        from vitscope.models.vit import HookedViT

        torch.manual_seed(0)
        return HookedViT(self.model.cfg, preprocess_cfg=self.model.preprocess_cfg).eval()

    @cached_property
    def random_patterns(self) -> dict[int, torch.Tensor]:
        """Attention patterns of the random-weight twin on ``images``."""
        from vitscope.analysis.attention.maps import collect_patterns

        return collect_patterns(self.random_model, self.images)

    FEATURE_MODES = ("cls", "mean", "all")
    ALL_TOKENS_LIMIT = 2 * 2**30          # bytes of "all tokens" features kept in memory, over all blocks

    def block_features(self, which: str = "trained", mode: str = "mean") -> dict[str, np.ndarray]:
        """{block: (n_eval, d)} block outputs (``hook_resid_post``) of the model (or its random twin) on
        ``eval_images``, reduced by ``mode``: "cls" (blocks where CLS exists), "mean" (patch tokens) or "all"
        (every token, flattened; None when that would exceed ``ALL_TOKENS_LIMIT``). One forward pass per batch
        serves every mode."""
        if (which, mode) not in self._features:
            self._extract(which)
        return self._features[(which, mode)]

    def _extract(self, which: str) -> None:
        from vitscope.features.access import reduce_tokens

        model = self.model if which == "trained" else self.random_model
        cfg = model.cfg
        n = len(self.eval_images)
        lays = {b: model.token_layout(b) for b in range(cfg.depth)}       # a block keeps the tokens it receives
        all_bytes = sum(n * lays[b].n_tokens * cfg.embed_dim * 4 for b in lays)
        modes = [m for m in self.FEATURE_MODES if m != "all" or all_bytes <= self.ALL_TOKENS_LIMIT]
        hooks = [f"blocks.{b}.hook_resid_post" for b in range(cfg.depth)]
        parts: dict[tuple[str, int], list[torch.Tensor]] = {}
        with torch.inference_mode():
            for x in self.eval_images.split(self.batch_size):
                _, cache = model.run_with_cache(x, names_filter=hooks)
                for b, h in enumerate(hooks):
                    for m in modes:
                        if m == "cls" and lays[b].cls is None:
                            continue
                        parts.setdefault((m, b), []).append(reduce_tokens(cache[h], lays[b], m).float().cpu())
        for m in self.FEATURE_MODES:
            self._features[(which, m)] = None if m not in modes else {
                str(b): torch.cat(parts[(m, b)]).numpy() for b in range(cfg.depth) if (m, b) in parts}

    @cached_property
    def logits(self) -> torch.Tensor:
        """The model's logits on ``eval_images`` (n_eval, C)."""
        with torch.inference_mode():
            return torch.cat([self.model(x) for x in self.eval_images.split(self.batch_size)])

    # ------------------------------------------------------------------ output
    def save_figure(self, fig, stem: str, caption: str = "", arrays=None, meta=None) -> FigureItem:
        """Save a figure as ``out_dir/<stem>.png`` with its numbers; return it for embedding."""
        from vitscope.viz.save import save_figure

        paths = save_figure(fig, self.out_dir / stem, ("png",), arrays=arrays, meta=meta, close=True)
        png = Path(paths[0]).read_bytes()
        return FigureItem(caption, png, [self.relative(p) for p in paths])

    def save_table(self, rows, stem: str, caption: str = "", columns=None) -> TableItem:
        from vitscope.viz.save import save_table

        path = save_table(rows, self.out_dir / f"{stem}.csv", columns)
        return TableItem(caption, list(rows), list(columns) if columns else None, self.relative(path))

    def path(self, name: str) -> Path:
        """A file in this model's output folder."""
        return self.out_dir / name

    def relative(self, path: str | Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), self.report_dir.resolve())).as_posix()

    def log(self, message: str) -> None:
        with (self.out_dir / "report.log").open("a") as f:
            f.write(message.rstrip() + "\n")

