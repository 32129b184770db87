"""Class embeddings: the matrix a logit lens projects the residual stream onto, and the one place where the
projection is computed.

For a model with a classifier they are its own head (vilas2023). For models without one (DINO, MAE, CLIP,
DINOv2) they come from a linear head fitted on the last layer (``vitscope probe``'s linear probe on the final-norm
CLS, saved with ``save_linear_head``: :meth:`ClassEmbeddings.from_head`) or from a matrix the user gives, e.g.
CLIP text embeddings of class prompts, which live after the CLIP projection (:meth:`ClassEmbeddings.from_npy`).

``logits = W · unit(proj(norm(h))) + b`` with

- ``norm`` the model's final norm (``fc_norm`` for average-pooled models, else ``ln_final``; for attention-pooled
  models (SigLIP, PE) the final norm, the pool applied to each vector alone and ``fc_norm``:
  ``HookedViT.head_input``; skipped with ``apply_norm=False``),
- ``proj`` the CLIP projection (``model.head``, bias-free; with ``after_projection``) or an explicit
  ``projection`` (a (D, E) matrix or a callable),
- ``unit`` an L2 normalisation of each vector (``l2_normalize``: what a probe trained on L2-normalised features
  reads; off by default).

:class:`ClassProjection` is these embeddings bound to a model
(:meth:`ClassEmbeddings.to_projection`): the callable the streamed logit lens, the memories and the
perturbations use.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

_GIVE = ("give class embeddings: ClassEmbeddings.from_linear_head(weight, bias) or ClassEmbeddings.from_head(DIR) "
         "(a linear head fitted on the last layer; CLI: --head DIR) or ClassEmbeddings.from_npy(FILE.npy) (e.g. CLIP "
         "text embeddings of class prompts; CLI: --class-embeddings FILE.npy)")
_NO_HEAD = "this model has no classification head to project onto; " + _GIVE
_CLIP_HEAD = "this model's head is the CLIP projection, not a classifier; " + _GIVE
FINAL_SITES = ("ln_final", "clip_proj")


def model_norm(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The norm the model's head reads through: ``fc_norm`` for average-pooled models, else the final norm; for
    attention-pooled models the whole way to the head (``HookedViT.head_input``: norm, pool, ``fc_norm``)."""
    if getattr(model, "attn_pool", None) is not None:
        return model.head_input
    fc = getattr(model, "fc_norm", None)
    return fc if fc is not None else getattr(model, "ln_final", None)


def _tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


@dataclass
class ClassEmbeddings:
    """Class vectors ``weight`` (C, E) and ``bias`` (C,) for a logit lens.

    ``apply_norm``: pass the stream through the model's final norm first (what the model's own head and a
    probe on the last layer read). ``after_projection``: the vectors live after the CLIP projection (E = its
    width), so the normalised stream is projected first; None decides from the width at projection time.
    ``projection``: an explicit (D, E) matrix or callable applied after the norm instead of the model's CLIP
    projection. ``l2_normalize``: scale each (normalised, projected) vector to unit length before ``weight``.
    ``classes``: the class names (row k = class k), when known. ``own_head``: these are the model's own head.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    apply_norm: bool = True
    after_projection: bool | None = False
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    projection: Any = None
    l2_normalize: bool = False
    classes: list[str] | None = None
    own_head: bool = False

    def __post_init__(self) -> None:
        w = _tensor(self.weight)
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            raise ValueError(f"class embeddings must be a 2-d matrix (classes, width), got shape {tuple(w.shape)}")
        if not torch.is_floating_point(w):
            w = w.float()
        if not torch.isfinite(w).all():
            raise ValueError("class embeddings contain NaN or infinite values")
        self.weight = w
        if self.bias is not None:
            b = _tensor(self.bias).to(w.dtype)
            if b.shape != (w.shape[0],):
                raise ValueError(f"bias must have shape ({w.shape[0]},) (one per class), got {tuple(b.shape)}")
            self.bias = b
        P = self.projection
        if P is not None and not (callable(P) and not isinstance(P, torch.Tensor)):
            P = _tensor(P).float()
            if P.ndim != 2 or P.shape[1] != w.shape[1]:
                raise ValueError(f"the projection must be a (model width, {w.shape[1]}) matrix for class embeddings "
                                 f"of width {w.shape[1]}, got shape {tuple(P.shape)}")
            self.projection = P
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
            if len(self.classes) != w.shape[0]:
                raise ValueError(f"{len(self.classes)} class names for {w.shape[0]} class embeddings; give one name "
                                 "per row")

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
        names = list((getattr(model.cfg, "meta", None) or {}).get("classes") or []) or None
        if names is not None and len(names) != w.shape[0]:
            names = None
        return cls(w, b, apply_norm=True, after_projection=False, source="model head", classes=names, own_head=True)

    @classmethod
    def from_linear_head(cls, weight, bias=None, *, apply_norm: bool = True, after_projection: bool | None = None,
                         l2_normalize: bool = False, classes: Sequence[str] | None = None) -> "ClassEmbeddings":
        """A linear head fitted on the last layer: ``weight`` (C, E) and ``bias`` (C,), or anything with
        ``.weight`` / ``.bias`` (an ``nn.Linear``) or a ``{"weight", "bias"}`` mapping. The head is taken to read
        the final-norm output (``apply_norm``), and the CLIP projection's output when its width is E."""
        if isinstance(weight, dict):
            weight, bias = weight["weight"], weight.get("bias", bias)
        elif hasattr(weight, "weight"):
            weight, bias = weight.weight, getattr(weight, "bias", bias)
        return cls(_tensor(weight), None if bias is None else _tensor(bias), apply_norm=apply_norm,
                   after_projection=after_projection, source="linear head", l2_normalize=l2_normalize,
                   classes=list(classes) if classes else None)

    @classmethod
    def from_head(cls, path: str | Path) -> "ClassEmbeddings":
        """A linear head saved by :func:`vitscope.analysis.probes.linear.save_linear_head` (``vitscope probe``
        saves ``heads/linear_last_cls``, the linear probe on the final norm's CLS). ``path``: the head's
        ``.safetensors`` / ``.json`` / common stem, a ``heads/`` folder or a ``vitscope probe`` output folder
        (both: its ``linear_last_cls``).

        The head must read one input of the last layer (``ln_final``, or ``clip_proj``: then it applies after
        the CLIP projection); when the probe L2-normalised its inputs, the lens does too."""
        from vitscope.analysis.probes.linear import load_linear_head

        p = _head_path(path)
        weight, bias, meta = load_linear_head(p)
        inputs = meta.get("inputs")
        after = None
        if inputs is not None:
            sites = [(i.get("site"), i.get("layer"), i.get("reduction")) for i in inputs]
            if len(sites) != 1 or sites[0][0] not in FINAL_SITES or sites[0][1] is not None:
                names = ", ".join(f"{s}.{r}" if l is None else f"{s}.{l}.{r}" for s, l, r in sites)
                raise ValueError(f"the head {p.name} reads {names or 'no input'}; the logit lens needs a linear head "
                                 "on the last layer alone (`vitscope probe -l last` saves heads/linear_last_cls)")
            after = sites[0][0] == "clip_proj"
        l2 = str(meta.get("normalize", "")).lower().startswith("l2")
        classes = meta.get("classes") or None
        if classes is not None and len(classes) != weight.shape[0]:
            classes = None
        emb = cls.from_linear_head(weight, bias, after_projection=after, l2_normalize=l2, classes=classes)
        emb.source, emb.meta = str(p), {k: v for k, v in meta.items() if k != "format"}
        return emb

    @classmethod
    def from_npy(cls, path: str | Path, bias=None, *, apply_norm: bool = True, after_projection: bool | None = None,
                 normalize: bool = False, classes: Sequence[str] | None = None) -> "ClassEmbeddings":
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
                   meta={"normalized": normalize}, classes=list(classes) if classes else None)

    # ------------------------------------------------------------------ projection
    def _projection_fn(self, model) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What maps the normalised stream (..., D) to the embeddings' width (..., E), or None (E = D)."""
        P = self.projection
        if P is not None:
            if isinstance(P, torch.Tensor):
                return lambda z: z @ P.to(device=z.device, dtype=z.dtype)
            return P
        if self._uses_projection(model):
            return lambda z: z @ model.head.weight.T
        return None

    def _projection_matrix(self, model) -> torch.Tensor | None:
        """(D, E) matrix of the projection, or None when there is none."""
        P = self.projection
        if P is not None:
            if not isinstance(P, torch.Tensor):
                raise ValueError("class embeddings behind a callable projection cannot be pulled back to the stream; "
                                 "give the projection as a (D, E) matrix")
            return P
        return model.head.weight.detach().T if self._uses_projection(model) else None

    def _uses_projection(self, model) -> bool:
        if self.projection is not None:
            return True
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
        return model_norm(model) if self.apply_norm else None

    def features(self, model, hidden: torch.Tensor, unit: bool = True, pooled: bool = False) -> torch.Tensor:
        """What ``weight`` reads: ``unit(proj(norm(hidden)))`` (..., E); ``unit=False`` stops before the L2 step.
        ``pooled``: ``hidden`` is already what the head reads (the model's pooled output), so no norm."""
        if hidden.shape[-1] != model.cfg.embed_dim:
            raise ValueError(f"hidden states must end in the model width {model.cfg.embed_dim}, "
                             f"got shape {tuple(hidden.shape)}")
        z = hidden
        norm = None if pooled else self._norm(model)
        if norm is not None:
            z = norm(z)                                                          # ..., D
        proj = self._projection_fn(model)
        if proj is not None:
            z = proj(z)                                                          # ..., E
        if z.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"class embeddings have width {self.weight.shape[1]} but the projected vectors have "
                             f"{z.shape[-1]}; give embeddings of the model's width (or the projection to apply first)")
        if unit and self.l2_normalize:
            z = torch.nn.functional.normalize(z, dim=-1)
        return z

    def project(self, model, hidden: torch.Tensor, block: int | None = None, pooled: bool = False) -> torch.Tensor:
        """Residual-stream vectors ``hidden`` (..., D) at ``block`` -> class logits (..., C).

        The same class embeddings serve every block; ``block`` (negative counts from the end, ``depth`` is
        the output) is checked so that a wrong index fails here rather than later.
        """
        depth = model.cfg.depth
        if block is not None and not -depth <= block <= depth:
            raise ValueError(f"block must be in [-{depth}, {depth}] for a model of depth {depth}, got {block}")
        z = self.features(model, hidden, pooled=pooled)
        w = self.weight.to(device=z.device, dtype=z.dtype)
        logits = z @ w.T                                                         # ..., C
        if self.bias is not None:
            logits = logits + self.bias.to(device=z.device, dtype=z.dtype)
        return logits

    def stream_weight(self, model) -> torch.Tensor:
        """The class vectors at the stream width (C, D), without the norm's scale: ``weight`` pulled back through
        the projection when the embeddings live after it (the model's own head: its weight)."""
        P = self._projection_matrix(model)
        w = self.weight.to(device=model.device, dtype=torch.float32)
        return (w @ P.to(w).T).detach() if P is not None else w.detach()

    def directions(self, model, target: torch.Tensor) -> torch.Tensor:
        """The class vectors of ``target`` (B,) pulled back to the stream width (B, D): through the projection
        when the embeddings live after it, times the final norm's weight when it is applied."""
        target = check_targets(target, self.num_classes)
        if getattr(model, "attn_pool", None) is not None:
            raise ValueError("class directions in the residual stream need a linear path from the stream to the head; "
                             "this model reads its tokens through an attention pool (global_pool='map')")
        w = self.stream_weight(model).to(model.dtype)[target.to(model.device)]  # B, D
        norm = self._norm(model)
        if norm is not None and norm.weight is not None:
            w = w * norm.weight
        return w.detach()

    def to_projection(self, model):
        """These embeddings bound to ``model``: a :class:`ClassProjection` (``(..., D) -> (..., C)``)."""
        return ClassProjection(self, model)


class ClassProjection:
    """Class embeddings bound to a model: residual-stream vectors (..., D) -> class logits (..., C).

    A thin view over :class:`~vitscope.analysis.class_embedding.embeddings.ClassEmbeddings`, which holds the
    vectors and computes the projection (norm -> optional projection -> ``W x + b``); build it with
    :meth:`from_model`, :meth:`ClassEmbeddings.to_projection` or ``ClassProjection(embeddings, model)``.
    """

    def __init__(self, embeddings: ClassEmbeddings, model) -> None:
        if not isinstance(embeddings, ClassEmbeddings):
            raise TypeError(f"expected ClassEmbeddings, got {type(embeddings).__name__}")
        self.embeddings, self.model = embeddings, model

    @classmethod
    def from_model(cls, model, weight=None, bias=None, norm: bool = True,
                   proj: torch.Tensor | Callable | None = None) -> "ClassProjection":
        """The model's own head (``weight=None``), or class embeddings (C, D') read after the model's final norm
        (``norm=True``) and an optional projection ``proj`` ((D, D') matrix or callable, e.g. CLIP's)."""
        if weight is None:
            return cls(ClassEmbeddings.from_model(model), model)
        return cls(ClassEmbeddings(weight, bias, apply_norm=norm, after_projection=False, projection=proj,
                                   source="given"), model)

    @property
    def num_classes(self) -> int:
        return self.embeddings.num_classes

    @property
    def classes(self) -> list[str] | None:
        return self.embeddings.classes

    @property
    def own_head(self) -> bool:
        """The embeddings are the model's own head (its logits are the lens's final prediction)."""
        return self.embeddings.own_head

    @property
    def class_embeddings(self) -> torch.Tensor:
        """The class embeddings at the stream width (C, D) (no bias): the head's weight (distilled: both heads
        averaged), or given embeddings pulled back through their projection."""
        return self.embeddings.stream_weight(self.model)

    def __call__(self, h: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """Class logits of residual-stream vectors ``h``; ``pooled=True``: ``h`` is the model's pooled output."""
        return self.embeddings.project(self.model, h, pooled=pooled).float()


def check_classes(model, ds, names_given: bool = False, emb=None) -> None:
    """The labels of ``ds`` must index the classes of the model's head (or of the class embeddings ``emb``); the
    class names are compared when both are known and ``names_given`` is False. ValueError otherwise."""
    if emb is None:
        C, names, what = model.cfg.num_classes, (model.cfg.meta or {}).get("classes"), "the model's head"
    else:
        C, names, what = emb.num_classes, emb.classes, "the class embeddings"
    if int(ds.labels.max()) >= C:
        raise ValueError(f"the dataset has labels up to {int(ds.labels.max())} but {what} "
                         f"{'predicts' if emb is None else 'have'} {C} classes; give images of those classes")
    if names and not names_given and list(names) != list(ds.classes)[:len(names)]:
        raise ValueError(f"the dataset's classes ({', '.join(ds.classes[:4])}...) are not the classes of {what} "
                         f"({', '.join(list(names)[:4])}...); give images of those classes, in that order")


def _head_path(path: str | Path) -> Path:
    """A saved head's stem from a file, a stem, a ``heads/`` folder or a ``vitscope probe`` output folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        for cand in (p / "linear_last_cls", p / "heads" / "linear_last_cls"):
            if cand.with_name(cand.name + ".safetensors").is_file():
                return cand
        raise FileNotFoundError(f"no linear head in {p}: expected {p}/heads/linear_last_cls.safetensors (written by "
                                "`vitscope probe -l last`) or a head file saved by save_linear_head")
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    if not p.with_name(p.name + ".safetensors").is_file():
        raise FileNotFoundError(f"no linear head at {path}: give a .safetensors head saved by `vitscope probe` "
                                "(heads/linear_last_cls) or save_linear_head, or the probe's output folder")
    return p


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


def resolve_class_embeddings(model, embeddings=None) -> ClassEmbeddings:
    """``embeddings`` when given (a :class:`ClassEmbeddings` or a ``ClassProjection``), else the model's own head;
    one clear error for a headless model."""
    if embeddings is not None:
        inner = getattr(embeddings, "embeddings", embeddings)
        if not isinstance(inner, ClassEmbeddings):
            raise TypeError(f"expected ClassEmbeddings, got {type(embeddings).__name__}")
        return inner
    return ClassEmbeddings.from_model(model)
