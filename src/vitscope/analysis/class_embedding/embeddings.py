"""Class embeddings: the matrix a logit lens projects the residual stream onto.

For a model with a classifier they are its own head (seed 001). For models without one (DINO, MAE, CLIP,
DINOv2) they come from a linear head fitted on the last layer (a linear probe on the final-norm output, or on
the CLIP projection) or from a matrix the user gives, e.g. CLIP text embeddings of class prompts, which live
after the CLIP projection.

``logits = W · proj(norm(h)) + b`` with ``norm`` the model's final norm (``fc_norm`` for average-pooled models,
else ``ln_final``; skipped with ``apply_norm=False``) and ``proj`` the CLIP projection (``model.head``,
bias-free; only with ``after_projection``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

_GIVE = ("give class embeddings: ClassEmbeddings.from_linear_head(weight, bias) (a linear head fitted on the "
         "last layer) or ClassEmbeddings.from_npy(FILE.npy) (e.g. CLIP text embeddings of class prompts; CLI: "
         "--class-embeddings FILE.npy)")
_NO_HEAD = "this model has no classification head to project onto; " + _GIVE
_CLIP_HEAD = "this model's head is the CLIP projection, not a classifier; " + _GIVE


@dataclass
class ClassEmbeddings:
    """Class vectors ``weight`` (C, E) and ``bias`` (C,) for a logit lens.

    ``apply_norm``: pass the stream through the model's final norm first (what the model's own head and a
    probe on the last layer read). ``after_projection``: the vectors live after the CLIP projection (E = its
    width), so the normalised stream is projected first; None decides from the width at projection time.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    apply_norm: bool = True
    after_projection: bool | None = False
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weight)
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            raise ValueError(f"class embeddings must be a 2-d matrix (classes, width), got shape {tuple(w.shape)}")
        if not torch.is_floating_point(w):
            w = w.float()
        if not torch.isfinite(w).all():
            raise ValueError("class embeddings contain NaN or infinite values")
        self.weight = w.detach()
        if self.bias is not None:
            b = torch.as_tensor(self.bias, dtype=w.dtype).detach()
            if b.shape != (w.shape[0],):
                raise ValueError(f"bias must have shape ({w.shape[0]},) (one per class), got {tuple(b.shape)}")
            self.bias = b

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    # ------------------------------------------------------------------ loaders
    @classmethod
    def from_model(cls, model) -> "ClassEmbeddings":
        """The model's own classifier (DeiT-distilled: the mean of its two heads, which is what it outputs)."""
        head = model.cfg.head
        if head == "clip_proj":
            raise ValueError(_CLIP_HEAD)
        if head == "none":
            raise ValueError(_NO_HEAD)
        w, b = model.head.weight.detach(), model.head.bias
        b = b.detach() if b is not None else None
        if head == "distilled":
            w = (w + model.head_dist.weight.detach()) / 2
            bd = model.head_dist.bias
            if b is not None or bd is not None:
                b = ((b if b is not None else 0) + (bd.detach() if bd is not None else 0)) / 2
        return cls(w, b, apply_norm=True, after_projection=False, source="model head")

    @classmethod
    def from_linear_head(cls, weight, bias=None, *, apply_norm: bool = True,
                         after_projection: bool | None = None) -> "ClassEmbeddings":
        """A linear head fitted on the last layer: ``weight`` (C, E) and ``bias`` (C,), or anything with
        ``.weight`` / ``.bias`` (an ``nn.Linear``) or a ``{"weight", "bias"}`` mapping. The head is taken to read
        the final-norm output (``apply_norm``), and the CLIP projection's output when its width is E."""
        if isinstance(weight, dict):
            weight, bias = weight["weight"], weight.get("bias", bias)
        elif hasattr(weight, "weight"):
            weight, bias = weight.weight, getattr(weight, "bias", bias)
        return cls(torch.as_tensor(weight).detach(), None if bias is None else torch.as_tensor(bias).detach(),
                   apply_norm=apply_norm, after_projection=after_projection, source="linear head")

    @classmethod
    def from_npy(cls, path: str | Path, bias=None, *, apply_norm: bool = True, after_projection: bool | None = None,
                 normalize: bool = False) -> "ClassEmbeddings":
        """A (C, E) matrix saved with ``numpy.save``, e.g. CLIP text embeddings of class prompts (E = the CLIP
        projection width: applied after the projection). ``normalize`` scales each class vector to unit length
        (as CLIP's zero-shot classifier does). Read without pickle."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"class-embeddings file {path} does not exist; expected a (classes, width) .npy")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"{path.name} is not a readable .npy array of numbers ({str(e).splitlines()[0]}); "
                             f"save a (classes, width) float matrix with numpy.save") from None
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{path.name} holds {arr.dtype} values; expected a (classes, width) float matrix")
        w = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if w.ndim == 2 and normalize:
            w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return cls(w, bias, apply_norm=apply_norm, after_projection=after_projection, source=str(path),
                   meta={"normalized": normalize})

    # ------------------------------------------------------------------ projection
    def _uses_projection(self, model) -> bool:
        D, E = model.cfg.embed_dim, self.weight.shape[1]
        proj_w = model.cfg.num_classes if model.cfg.head == "clip_proj" else None
        if self.after_projection is None:
            if proj_w is not None and E == proj_w and E != D:
                return True
            if E == D:
                return False
        elif self.after_projection:
            if proj_w is None:
                raise ValueError("after_projection=True needs a model with a CLIP projection head; this model has "
                                 f"head={model.cfg.head!r}")
            if E == proj_w:
                return True
        elif E == D:
            return False
        fit = (f"fit neither the model width {D} nor its CLIP projection width {proj_w}" if proj_w
               else f"do not fit the model width {D}")
        raise ValueError(f"class embeddings of width {E} {fit}; expected a (classes, {D}) matrix"
                         + (f" or (classes, {proj_w}) after the projection" if proj_w else ""))

    def _norm(self, model):
        if not self.apply_norm:
            return None
        return model.fc_norm if model.fc_norm is not None else model.ln_final

    def project(self, model, hidden: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """Residual-stream vectors ``hidden`` (..., D) at ``block`` -> class logits (..., C).

        The same class embeddings serve every block; ``block`` (negative counts from the end, ``depth`` is
        the output) is checked so that a wrong index fails here rather than later.
        """
        depth = model.cfg.depth
        if block is not None and not -depth <= block <= depth:
            raise ValueError(f"block must be in [-{depth}, {depth}] for a model of depth {depth}, got {block}")
        if hidden.shape[-1] != model.cfg.embed_dim:
            raise ValueError(f"hidden states must end in the model width {model.cfg.embed_dim}, "
                             f"got shape {tuple(hidden.shape)}")
        z = hidden
        norm = self._norm(model)
        if norm is not None:
            z = norm(z)                                                          # ..., D
        if self._uses_projection(model):
            z = z @ model.head.weight.T                                          # ..., E
        w = self.weight.to(device=z.device, dtype=z.dtype)
        logits = z @ w.T                                                         # ..., C
        if self.bias is not None:
            logits = logits + self.bias.to(device=z.device, dtype=z.dtype)
        return logits

    def directions(self, model, target: torch.Tensor) -> torch.Tensor:
        """The class vectors of ``target`` (B,) pulled back to the stream width (B, D): through the CLIP
        projection when the embeddings live after it, times the final norm's weight when it is applied."""
        target = check_targets(target, self.num_classes)
        w = self.weight.to(device=model.device, dtype=model.dtype)[target.to(model.device)]   # B, E
        if self._uses_projection(model):
            w = w @ model.head.weight                                            # B, D
        norm = self._norm(model)
        if norm is not None and norm.weight is not None:
            w = w * norm.weight
        return w.detach()


def check_targets(target, num_classes: int) -> torch.Tensor:
    """Labels (B,) as a long tensor; a clear error when one is outside [0, num_classes)."""
    t = torch.as_tensor(target)
    if t.ndim != 1 or t.is_floating_point():
        raise ValueError(f"targets must be a 1-d tensor of class indices, got {tuple(t.shape)} {t.dtype}")
    t = t.long()
    if len(t) and (t.min() < 0 or t.max() >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise ValueError(f"label {bad} is outside the {num_classes} classes of the class embeddings; "
                         f"labels must be in [0, {num_classes - 1}]")
    return t


def resolve_class_embeddings(model, embeddings: ClassEmbeddings | None = None) -> ClassEmbeddings:
    """``embeddings`` when given, else the model's own head; one clear error for a headless model."""
    if embeddings is not None:
        if not isinstance(embeddings, ClassEmbeddings):
            raise TypeError(f"expected ClassEmbeddings, got {type(embeddings).__name__}")
        return embeddings
    return ClassEmbeddings.from_model(model)
