"""``load_model`` / ``save_model``: every way a ViT reaches vitscope, and the vitscope-native folder.

What ``load_model(name_or_path, ...)`` accepts, in the order it is tried:

1. a local folder: vitscope-native (``config.json`` with a ``"vitscope"`` key + ``model.safetensors``, written
   by :func:`save_model`), a transformers ``save_pretrained`` folder, or a timm folder (``config.json`` with
   ``"architecture"`` + ``model.safetensors`` / ``pytorch_model.bin``, the layout of timm's hub repositories);
2. a local ``.safetensors`` file written by :func:`save_model` (its header carries the config);
3. ``hf:<repo>``: a transformers ViT / DeiT / Dinov2 / CLIPVision / ViTMAE repository on the Hugging Face hub;
4. a registry name or alias (``vitscope models``), also as ``timm/<registry name>``;
5. ``timm/<arch>.<tag>`` for any timm ViT whose architecture vitscope covers; a plain timm name
   (``vit_base_patch16_224.augreg2_in21k_ft_in1k``) is read the same way.

``weights=PATH`` (or a URL) loads a local checkpoint into the architecture the name gives
(``load_model("dino-vits16", weights="dino_deitsmall16_pretrain.pth")``). ``.safetensors`` files are read
as tensors; ``.pth`` / ``.pt`` / ``.bin`` / ``.tar`` files with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers: nothing else is ever unpickled.

Downloads go through ``huggingface_hub.hf_hub_download`` (its cache, ``HF_HUB_OFFLINE``, ``HF_TOKEN``) or,
for official checkpoints that only exist at a URL, ``torch.hub.download_url_to_file`` into the torch hub
cache (``$TORCH_HOME/hub/checkpoints``; skipped when the file is already there). ``HF_HUB_OFFLINE=1`` also
stops URL downloads. A failed download raises :class:`DownloadError` with one line saying what failed and
how to load a local file instead.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from vitscope.hub import host_reachable as _host_reachable
from vitscope.hub import offline as _offline
from vitscope.models.bundled import bundled_path
from vitscope.models.config import ViTConfig
from vitscope.models.converters.common import CheckpointError, load_strict
from vitscope.models.preprocess import PreprocessConfig
from vitscope.models.registry import ModelEntry, WeightSource, get_entry, resolve_name
from vitscope.models.vit import HookedViT

NATIVE_FORMAT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".tar", ".ckpt")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")


class DownloadError(OSError):
    """Weights or a config could not be fetched (no network, offline mode, missing file); one-line message."""


# ----------------------------------------------------------------------------- reading checkpoint files
def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _is_safetensors(path: Path) -> bool:
    """True when the file starts with a safetensors header (8-byte length + a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 1 < n < 100_000_000 and head[8:9] == b"{"


def read_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint file safely: safetensors as tensors, torch files with ``weights_only=True``.

    Returns what the file holds (a state dict, or a dict wrapping one); see :func:`unwrap_state_dict`.
    Anything besides tensors, containers, numbers, strings and ``argparse.Namespace`` is refused.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass it as the model (load_model({str(path)!r})), not as weights=")
    if path.suffix == ".npz":
        raise ValueError(f"{path.name}: JAX/Flax .npz checkpoints are not read by vitscope; use the timm hub copy "
                         f"(timm/<name>) or convert it to safetensors")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path.name} is not a readable safetensors file ({e})") from None
    try:
        # weights_only: tensors, plain containers and numbers only; argparse.Namespace (the training
        # arguments inside official DINO / MAE / DeiT checkpoints) is allowed as a plain attribute bag
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle / zip / unpickler errors come in many types
        text = str(e)
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if glob:
            raise ValueError(
                f"{path.name} holds Python objects besides tensors ({glob.group(1)}), and vitscope only reads "
                f"weights (torch.load(weights_only=True)); re-save just the state dict "
                f"(torch.save(ckpt['model'], 'weights.pth')) or convert it to safetensors") from None
        why = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        first = (why.group(1) if why else (text.strip().splitlines() or [type(e).__name__])[0]).strip()
        raise ValueError(f"{path.name} is not a readable PyTorch or safetensors checkpoint ({first[:160]})") from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: follows ``model`` / ``state_dict`` / ``module`` wrappers
    (MAE, MoCo-v3, BEiT, DeiT checkpoints) and drops non-tensor entries (epoch counters, args)."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict of tensors")
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in ("model", "state_dict", "module", "teacher", "model_ema")
                      if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"{source} contains no tensors (top-level keys: {sorted(obj)[:10]})")
    return sd


# ----------------------------------------------------------------------------- converting to vitscope keys
# prefixes that training wrappers put before every key of a timm-layout model (DDP "module.", Lightning "model.")
_WRAPPER_PREFIXES = ("model.", "module.")
# files that timm's hub repositories hold: their DINO / MAE backbones have official keys but run as timm runs them
_TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def strip_wrapper_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` without a ``model.`` / ``module.`` prefix that every key carries (a ViT saved inside a wrapper)."""
    for pre in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(pre) for k in sd) and f"{pre}patch_embed.proj.weight" in sd:
            return {k[len(pre):]: v for k, v in sd.items()}
    return sd


def checkpoint_format(raw: Mapping[str, Any], path: str | Path | None = None, hint: str | None = None) -> str:
    """The layout of a loaded checkpoint (``converters.FORMATS``), from its keys, refined by the file.

    A headless backbone with timm's keys reads as ``"dino"`` (official DINO files and timm's hub copies of
    DINO / MAE have the same keys); inside a timm hub file (``model.safetensors``, ``pytorch_model.bin``) it
    is ``"timm"``. ``hint`` (the registry's format) is used when the keys do not tell.
    """
    from vitscope.models import converters

    try:
        fmt = converters.detect_format(raw)
    except ValueError:
        try:
            fmt = converters.detect_format(strip_wrapper_prefix(unwrap_state_dict(raw)))
        except ValueError:
            if hint is None:
                raise
            return hint
    if fmt == "dino" and path is not None and Path(path).name in _TIMM_HUB_FILES:
        return "timm"
    return fmt


def convert_checkpoint(raw: Mapping[str, Any], cfg: ViTConfig, fmt: str | None = None,
                       source: str = "checkpoint", own_keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """A loaded checkpoint (raw, with its wrappers) -> a state dict with vitscope keys for ``cfg``.

    A state dict already in vitscope's layout (the keys of ``HookedViT(cfg).state_dict()``) passes through.
    Otherwise ``converters.detect_format`` tells the format from the keys (``fmt``, the registry's hint, is
    used when it cannot) and ``converters.convert_state_dict`` renames.
    """
    from vitscope.models import converters

    sd = unwrap_state_dict(raw, source=source)
    stripped = strip_wrapper_prefix(sd)
    if stripped is not sd:
        raw = sd = stripped
    if own_keys is None:
        with torch.device("meta"):
            own_keys = set(HookedViT(cfg).state_dict())
    if set(sd) == own_keys:
        return sd
    try:
        detected = converters.detect_format(raw)
    except ValueError as e:
        if fmt is None:
            raise CheckpointError(f"{source}: {e}") from None
        detected = fmt
    return converters.convert_state_dict(raw, cfg, detected)


# ----------------------------------------------------------------------------- downloads
def _offline_hint(what: str, reason: str) -> str:
    cache = ("or copy a filled Hugging Face cache (HF_HOME) here" if _offline()
             else "or set HF_HUB_OFFLINE=1 with a filled Hugging Face cache")
    return (f"could not download {what} ({reason}); download it elsewhere and pass weights=PATH "
            f"(CLI: --weights PATH), {cache}, or use random weights (CLI: --random)")


def hub_download(repo_id: str, filenames: tuple[str, ...] | list[str], what: str | None = None) -> Path:
    """First of ``filenames`` that ``huggingface_hub.hf_hub_download`` can give for ``repo_id`` (its cache,
    ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_TOKEN``); DownloadError with a one-line hint when none can be had.

    When the hub cannot be reached, only the cache is consulted (``local_files_only=True``), so a missing
    network fails at once instead of after retries.
    """
    import huggingface_hub
    from huggingface_hub import constants

    offline = _offline()
    local_only = offline or not _host_reachable(constants.ENDPOINT)
    reasons = []
    for fn in filenames:
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id=repo_id, filename=fn, local_files_only=local_only))
        except Exception as e:  # noqa: BLE001 - hub errors: offline, not found, HTTP, connection
            name = type(e).__name__
            if name in ("RepositoryNotFoundError", "GatedRepoError"):
                raise DownloadError(f"the Hugging Face repository {repo_id!r} does not exist or is gated "
                                    f"({name}); check the name, or log in with `hf auth login`") from None
            reasons.append((fn, name))
            if not local_only and name not in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
                break                       # a connection problem: the next file would fail the same way
    if not local_only and all(n in ("EntryNotFoundError", "RemoteEntryNotFoundError") for _, n in reasons):
        raise DownloadError(f"{repo_id} has none of the files {list(filenames)}") from None
    if offline:
        why = "HF_HUB_OFFLINE=1 and not in the Hugging Face cache"
    elif local_only:
        why = f"offline? {constants.ENDPOINT} cannot be reached and it is not in the cache"
    else:
        why = f"offline? {reasons[0][1]}"
    raise DownloadError(_offline_hint(what or f"{repo_id}/{reasons[0][0]}", why)) from None


def url_download(url: str, filename: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` into the torch hub cache (``torch.hub.get_dir()/checkpoints``), once; return the path.

    ``file://`` URLs are copied the same way (no network). Respects ``HF_HUB_OFFLINE`` for network URLs.
    """
    from urllib.parse import urlparse

    from torch.hub import download_url_to_file, get_dir

    filename = filename or Path(urlparse(url).path).name
    if not filename:
        raise ValueError(f"cannot tell a file name from the URL {url!r}")
    dest_dir = Path(get_dir()) / "checkpoints"
    dest = dest_dir / filename
    if dest.exists():
        return dest
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"unsupported URL scheme in {url!r}; expected https:// or file://")
    if scheme != "file" and _offline():
        raise DownloadError(_offline_hint(url, f"HF_HUB_OFFLINE=1 and not in {dest_dir}"))
    if scheme != "file" and not _host_reachable(url):
        raise DownloadError(f"could not download {url} (offline? its host cannot be reached); download it "
                            f"elsewhere and pass weights=PATH (CLI: --weights PATH), or put it at {dest}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(url, str(dest), progress=progress)
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, socket errors, ...
        reason = str(getattr(e, "reason", "") or e).strip().splitlines()[0][:120] or type(e).__name__
        raise DownloadError(
            f"could not download {url} (offline? {reason}); download it elsewhere and pass weights=PATH "
            f"(CLI: --weights PATH), or put it at {dest}") from None
    return dest


def _fetch_source(src: WeightSource, progress: bool) -> Path:
    if src.kind == "hub":
        names = [src.filename] + [f for f in ("model.safetensors", "pytorch_model.bin") if f != src.filename]
        return hub_download(src.location, names, what=f"the weights of {src.location}")
    if src.kind == "url":
        return url_download(src.location, src.filename, progress=progress)
    raise ValueError(f"unknown weight source kind {src.kind!r}")


# ----------------------------------------------------------------------------- building
def _build(cfg: ViTConfig, pp: PreprocessConfig | None, seed: int | None, device=None) -> HookedViT:
    """Random init (timm's); ``device="meta"`` builds shapes only, instantly."""
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return HookedViT(cfg, pp)
    if seed is None:
        return HookedViT(cfg, pp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return HookedViT(cfg, pp)


# non-persistent buffers that ``_empty`` knows how to recompute after ``to_empty``
_RECOMPUTED_BUFFERS = ("relative_position_index",)


def _empty(cfg: ViTConfig, pp: PreprocessConfig | None) -> HookedViT:
    """A model whose parameters are allocated but not initialised (they are about to be overwritten by a
    strict load, which covers every parameter and persistent buffer): skips the random init, which for
    large models takes longer than reading the weights. Falls back to a normal build when the model has
    a non-persistent buffer this function cannot recompute."""
    from vitscope.models.vit import relative_position_index

    with torch.device("meta"):
        model = HookedViT(cfg, pp)
    for _, mod in model.named_modules():
        if any(b not in _RECOMPUTED_BUFFERS for b in mod._non_persistent_buffers_set):
            return HookedViT(cfg, pp)
    model = model.to_empty(device="cpu")
    for _, mod in model.named_modules():
        if "relative_position_index" in mod._non_persistent_buffers_set:
            mod.relative_position_index = relative_position_index(cfg.grid)
    return model


def _pretrained(cfg: ViTConfig, pp: PreprocessConfig | None, path: Path, fmt: str | None,
                follow_file: bool = False) -> tuple[HookedViT, str, str]:
    """Read ``path``, convert it to ``cfg``'s keys, load it strictly into a new model.

    Returns (model, file sha256, detected format). With ``follow_file`` (a file loaded into a named
    architecture) two facts come from the file rather than the name: the position-embedding resampling rule
    of its format (official DINO / DINOv2 files resample as the official code does) and the number of classes
    of its linear head (a fine-tuned checkpoint, e.g. a 100-class head on a 1000-class architecture).
    """
    from vitscope.models.converters.official import official_pos_interp

    raw = read_checkpoint(path)
    detected = checkpoint_format(raw, path, fmt)
    if follow_file:
        cfg = cfg.replace(**official_pos_interp(detected, cfg.num_registers))
    with torch.device("meta"):
        own_keys = set(HookedViT(cfg).state_dict())
    sd = convert_checkpoint(raw, cfg, fmt, source=path.name, own_keys=own_keys)
    head = sd.get("head.weight")
    if follow_file and head is not None and cfg.head in ("linear", "distilled") and head.shape[0] != cfg.num_classes:
        cfg = cfg.replace(num_classes=int(head.shape[0]))
        cfg.meta["num_classes_from_weights"] = int(head.shape[0])
    missing = own_keys - set(sd)
    model = _empty(cfg, pp) if not missing else HookedViT(cfg, pp)   # a partial load reports what is missing
    load_strict(model, sd, source=path.name)
    return model, sha256_file(path), detected


def _with_input_size(cfg: ViTConfig, pp: PreprocessConfig, input_size) -> tuple[ViTConfig, PreprocessConfig]:
    """Run a model at another input size: the stored position embedding keeps its grid and is resampled."""
    if input_size is None:
        return cfg, pp
    size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if tuple(cfg.img_size) == size and tuple(pp.input_size) == size:
        return cfg, pp
    if cfg.rel_pos_bias:
        raise ValueError(f"BEiT models (relative position bias) run at their native input size "
                         f"{cfg.img_size[0]} only, not {size[0]}")
    cfg = cfg.replace(img_size=size, pos_embed_grid=cfg.stored_pos_grid)
    from dataclasses import replace

    return cfg, replace(pp, input_size=size)


def _finish(model: HookedViT, meta: dict[str, Any], device, dtype) -> HookedViT:
    model.meta = meta
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    model.eval()
    return model


# timm ViT / DeiT / BEiT / EVA-02 / AIMv2 model names (arch or arch.tag): vit_base_patch16_224.augreg2_in21k_ft_in1k,
# eva02_base_patch14_224.mim_in22k, aimv2_large_patch14_224.apple_pt, ...
_TIMM_NAME = re.compile(r"^(vit|deit3?|beit(v2)?|eva02|aimv2)_[a-z0-9]+(_distilled)?(_[a-z0-9]+)*_patch\d+"
                        r"(_[a-z0-9]+)*(\.[A-Za-z0-9_]+)?$")


def _is_url(s: str) -> bool:
    return bool(re.match(r"^(https?|file)://", str(s)))


# ----------------------------------------------------------------------------- public API
def load_model(name_or_path: str | os.PathLike, pretrained: bool = True, weights: str | os.PathLike | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype | None = None, *,
               seed: int | None = None, input_size: int | tuple[int, int] | None = None,
               source: str | None = None, progress: bool = True, fold_ln: bool = False,
               center_writing_weights: bool = False, fold_value_biases: bool = False) -> HookedViT:
    """Build a :class:`HookedViT` in eval mode, with ``.preprocess_cfg`` and ``.meta``.

    Args:
        name_or_path: a registry name or alias (``vitscope models``), ``timm/<name>``, ``hf:<repo>``,
            a local folder (vitscope / timm / transformers layout), a vitscope ``.safetensors`` file, or a
            model bundled with the package (``demo-vit``, ``demo-vit-reg4``; no network).
        pretrained: False builds the architecture with random weights (timm's init), needs no network.
        weights: a local checkpoint (or URL) to load into the architecture the name gives; overrides
            ``pretrained``. Format (timm, official DINO / MAE / MoCo-v3, transformers, vitscope) is detected.
        device, dtype: where and in which precision the model ends up.
        seed: seed of the random init (``pretrained=False``); None uses torch's global generator.
        input_size: run at another input size (preprocessing and the default token grid change; the
            position embedding is resampled bicubically; not for BEiT).
        source: for registry names with several weight sources, "hub" or "url" (default: the first).
        progress: show download progress.
        fold_ln, center_writing_weights, fold_value_biases: TransformerLens's weight processing, applied after
            loading (``vitscope.models.processing``): the logits are unchanged, the weights simpler to read.

    ``model.meta`` holds ``name``, ``family``, ``source`` (where the weights came from: a path, hub file,
    URL, or "random-init"), ``weights_sha256`` (of the file loaded; None for random init) and ``format``.
    """
    if fold_ln or center_writing_weights or fold_value_biases:
        from vitscope.models.processing import process_weights

        model = load_model(name_or_path, pretrained, weights, device, dtype, seed=seed, input_size=input_size,
                           source=source, progress=progress)
        return process_weights(model, fold_ln, center_writing_weights, fold_value_biases)
    if weights is not None:
        pretrained = True
    target = str(name_or_path)
    path = Path(target).expanduser()
    if not target.startswith(("hf:", "timm/")) and path.exists():
        if path.is_dir():
            return _load_folder(path, pretrained, weights, device, dtype, seed, input_size)
        return _load_file(path, pretrained, weights, device, dtype, seed, input_size)
    if target.startswith("hf:"):
        return _load_hf_repo(target[3:], pretrained, weights, device, dtype, seed, input_size)
    bundled = bundled_path(target)
    if bundled is not None:
        return _load_folder(bundled, pretrained, weights, device, dtype, seed, input_size)
    canon = resolve_name(target)
    if canon is not None:
        return _load_entry(get_entry(canon), pretrained, weights, device, dtype, seed, input_size, source, progress)
    if target.startswith("timm/"):
        return _load_timm_name(target[5:], pretrained, weights, device, dtype, seed, input_size)
    if _TIMM_NAME.match(target):                       # a plain timm name resolves as timm/<name> does
        return _load_timm_name(target, pretrained, weights, device, dtype, seed, input_size)
    if path.suffix in WEIGHT_SUFFIXES or os.sep in target or target.startswith("."):
        raise FileNotFoundError(f"{target} does not exist (a local file or folder was expected)")
    get_entry(target)                      # raises the KeyError with suggestions
    raise AssertionError("unreachable")


def _load_entry(entry: ModelEntry, pretrained, weights, device, dtype, seed, input_size, source,
                progress) -> HookedViT:
    cfg, pp = _with_input_size(entry.build_config(), entry.preprocess, input_size)
    meta: dict[str, Any] = {"name": entry.name, "family": entry.family, "source": "random-init",
                            "weights_sha256": None, "format": None}
    if weights is not None:
        w = str(weights)
        wpath = url_download(w, progress=progress) if _is_url(w) else Path(w).expanduser()
        hint = entry.source.format if entry.source else None
        model, sha, fmt = _pretrained(cfg, pp, wpath, hint, follow_file=True)
        meta.update(source=w, format=fmt, weights_sha256=sha, weights_path=str(wpath))
    elif pretrained:
        if not entry.sources:
            raise ValueError(f"{entry.name} has no published weights; use pretrained=False or weights=PATH")
        src = entry.sources[0]
        if source is not None:
            picked = [s for s in entry.sources if s.kind == source]
            if not picked:
                raise ValueError(f"{entry.name} has no {source!r} weight source; it has "
                                 f"{[s.kind for s in entry.sources]}")
            src = picked[0]
        wpath = _fetch_source(src, progress)            # before building anything: fail fast when offline
        # the resampling rule follows the file: official DINO / DINOv2 files resample as the official code
        model, sha, fmt = _pretrained(cfg, pp, wpath, src.format, follow_file=True)
        meta.update(source=src.describe(), format=fmt, weights_sha256=sha, weights_path=str(wpath))
    else:
        model = _build(cfg, pp, seed, device)
    return _finish(model, meta, device, dtype)


# --- timm/<name> outside the registry, and timm folders
def _timm_model(arch_name: str | None, cj: dict | None, wpath: Path | None, seed, input_size, name: str,
                source: str | None = None) -> HookedViT:
    """A timm model from its name and/or config.json (and, best, the checkpoint tensors), via the timm converter."""
    from vitscope.models.converters import official
    from vitscope.models.converters import timm as tconv

    sd, fmt = None, "timm"
    if wpath is not None:
        raw = read_checkpoint(wpath)
        fmt = checkpoint_format(raw, wpath, "timm")
        if fmt in ("dino", "dinov2"):            # an official release: its backbone, resampled as its code does
            sd = official.dino_backbone(raw) if fmt == "dino" else official.dinov2_backbone(raw)
        else:
            sd = strip_wrapper_prefix(unwrap_state_dict(raw, source=wpath.name))
    cfg = tconv.config_from_timm(arch_name, cj, state_dict=sd)
    if sd is not None:
        cfg = cfg.replace(**official.official_pos_interp(fmt, cfg.num_registers))
    pp = tconv.preprocess_from_timm(dict((cj or {}).get("pretrained_cfg") or {}), cfg.img_size, cfg.patch_size)
    cfg.meta.update(name=name)
    cfg, pp = _with_input_size(cfg, pp, input_size)
    meta: dict[str, Any] = {"name": name, "family": "timm", "source": "random-init", "weights_sha256": None,
                            "format": fmt}
    if sd is None:
        model = _build(cfg, pp, seed)
    else:
        model = _empty(cfg, pp)
        load_strict(model, tconv.convert_timm_state_dict(sd, cfg), source=wpath.name)
        meta.update(source=source or str(wpath), weights_path=str(wpath), weights_sha256=sha256_file(wpath))
    model.meta = meta
    return model


def _load_timm_name(name: str, pretrained, weights, device, dtype, seed, input_size) -> HookedViT:
    from vitscope.models.converters import timm as tconv

    tconv.timm_args_from_name(name)         # a clear error now if vitscope does not cover the architecture
    repo = f"timm/{name}"
    cj = None
    try:
        cj = json.loads(hub_download(repo, ["config.json"], what=f"{repo}/config.json").read_text())
    except DownloadError:
        if pretrained and weights is None:
            raise                           # random init / local weights: the name alone will do
    wpath, source = None, None
    if weights is not None:
        wpath, source = Path(weights).expanduser(), str(weights)
    elif pretrained:
        if "." not in name:
            raise ValueError(f"timm/{name}: give the weights' tag too (timm/{name}.<tag>, e.g. "
                             f"timm/vit_small_patch16_224.augreg_in21k_ft_in1k)")
        wpath = hub_download(repo, ["model.safetensors", "pytorch_model.bin"], what=f"the weights of {repo}")
        source = f"hub:{repo}"
    model = _timm_model(name, cj, wpath, seed, input_size, repo, source)
    return _finish(model, model.meta, device, dtype)


# --- hf:<repo>
def _load_hf_repo(repo: str, pretrained, weights, device, dtype, seed, input_size) -> HookedViT:
    if not repo:
        raise ValueError("hf: needs a repository, e.g. hf:facebook/dinov2-small")
    cfg_path = hub_download(repo, ["config.json"], what=f"{repo}/config.json")
    folder = cfg_path.parent
    for optional in ("preprocessor_config.json",):
        try:
            hub_download(repo, [optional])
        except DownloadError:
            pass
    if pretrained and weights is None:
        hub_download(repo, ["model.safetensors", "pytorch_model.bin"], what=f"the weights of {repo}")
    model = _load_hf_folder(folder, pretrained, seed, input_size, name=f"hf:{repo}", weights=weights)
    if pretrained and weights is None:
        model.meta["source"] = f"hub:{repo}"
    return _finish(model, model.meta, device, dtype)


def _hf_weight_file(folder: Path) -> Path | None:
    for fn in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
               "pytorch_model.bin.index.json"):
        if (folder / fn).exists():
            return folder / fn
    return None


def _timm_weight_file(folder: Path) -> Path | None:
    for fn in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if (folder / fn).exists():
            return folder / fn
    return None


def _resized(model: HookedViT, input_size) -> HookedViT:
    """The same weights in a model built for another input size (the stored position grid is kept)."""
    cfg, pp = _with_input_size(model.cfg, model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size),
                               input_size)
    if cfg is model.cfg:
        return model
    new = HookedViT(cfg, pp)
    new.load_state_dict(model.state_dict(), strict=True)
    new.meta = getattr(model, "meta", {})
    return new


def _load_hf_folder(folder: Path, pretrained: bool, seed, input_size, name: str | None = None,
                    weights: str | os.PathLike | None = None) -> HookedViT:
    """A transformers save_pretrained folder (the converters' ``load_hf_folder``) -> HookedViT."""
    from vitscope.models.converters import hf as hfconv

    hf_cfg = _read_json(folder / "config.json")
    family = f"hf-{hf_cfg.get('model_type', '?')}"
    meta: dict[str, Any] = {"name": name or str(folder), "family": family, "source": "random-init",
                            "weights_sha256": None, "format": "hf"}
    if pretrained and weights is None:
        wpath = _hf_weight_file(folder)
        if wpath is None:
            raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin")
        model = hfconv.load_hf_folder(folder)
        meta.update(source=str(wpath), weights_path=str(wpath), weights_sha256=sha256_file(wpath))
    else:
        cfg = hfconv.config_from_hf(hf_cfg)
        pre = hfconv.hf_preprocess(folder)
        if tuple(pre.input_size) != tuple(cfg.img_size) and all(s % cfg.patch_size == 0 for s in pre.input_size):
            cfg = cfg.replace(img_size=pre.input_size)
        model = _build(cfg, pre, seed)
        if weights is not None:
            wpath = Path(weights).expanduser()
            sd = unwrap_state_dict(read_checkpoint(wpath), source=wpath.name)
            hfconv.load_hf_state_dict(model, sd, hf_cfg["model_type"], source=wpath.name)
            meta.update(source=str(weights), weights_path=str(wpath), weights_sha256=sha256_file(wpath))
    model.cfg.meta.update(name=meta["name"], family=family)
    model.meta = meta
    return _resized(model, input_size)


# --- local folders and files
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def _load_folder(folder: Path, pretrained, weights, device, dtype, seed, input_size) -> HookedViT:
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise FileNotFoundError(f"{folder} has no config.json; vitscope loads folders written by save_model, "
                                f"timm or transformers' save_pretrained (found: {found})")
    d = _read_json(cfg_file)
    if "vitscope" in d:
        return _load_native(folder, d, pretrained, weights, device, dtype, seed, input_size)
    from vitscope.models.converters import hf as hfconv

    if hfconv.is_hf_folder(folder):
        model = _load_hf_folder(folder, pretrained, seed, input_size, name=str(folder), weights=weights)
        return _finish(model, model.meta, device, dtype)
    if "architecture" in d:
        wpath = Path(weights).expanduser() if weights is not None else _timm_weight_file(folder)
        if pretrained and wpath is None:
            raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin")
        model = _timm_model(None, d, wpath if pretrained else None, seed, input_size, str(folder))
        return _finish(model, model.meta, device, dtype)
    raise ValueError(f"{cfg_file} is neither a vitscope, a timm nor a transformers config "
                     f"(keys: {sorted(d)[:10]})")


def _native_config(d: dict, where: str) -> tuple[ViTConfig, PreprocessConfig | None, dict]:
    version = int(d.get("format_version", 1))
    if version > NATIVE_FORMAT_VERSION:
        raise ValueError(f"{where} was written by a newer vitscope (format {version}); upgrade vitscope")
    cfg = ViTConfig.from_dict(d["vitscope"])
    pp = PreprocessConfig(**d["preprocess"]) if d.get("preprocess") else None
    return cfg, pp, d


def _load_native(folder: Path, d: dict, pretrained, weights, device, dtype, seed, input_size) -> HookedViT:
    cfg, pp, d = _native_config(d, str(folder / "config.json"))
    wpath = Path(weights).expanduser() if weights is not None else folder / "model.safetensors"
    return _native_model(cfg, pp, d, wpath if pretrained else None, device, dtype, seed, input_size,
                         name=d.get("meta", {}).get("name") or folder.name, where=str(folder))


def _native_model(cfg, pp, d, wpath: Path | None, device, dtype, seed, input_size, name: str,
                  where: str) -> HookedViT:
    if pp is None:
        pp = PreprocessConfig(input_size=cfg.img_size)
    cfg, pp = _with_input_size(cfg, pp, input_size)
    stored_meta = dict(d.get("meta") or {})
    meta: dict[str, Any] = {"name": name, "family": stored_meta.get("family", cfg.meta.get("family", "vitscope")),
                            "source": "random-init", "weights_sha256": None, "format": "vitscope",
                            "extra": d.get("extra") or {}}
    if wpath is not None:
        if not wpath.exists():
            raise FileNotFoundError(f"{where}: weights file {wpath} is missing")
        model, sha, fmt = _pretrained(cfg, pp, wpath, "vitscope")
        meta.update(source=str(wpath), weights_path=str(wpath), weights_sha256=sha, format=fmt)
    else:
        model = _build(cfg, pp, seed, device)
    if dtype is None and d.get("dtype"):
        dtype = getattr(torch, d["dtype"], None)
    return _finish(model, meta, device, dtype)


def _load_file(path: Path, pretrained, weights, device, dtype, seed, input_size) -> HookedViT:
    if path.suffix == ".json":
        raise ValueError(f"{path} is a config file; pass its folder instead")
    if _is_safetensors(path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        if "vitscope" in md:
            cfg, pp, d = _native_config(json.loads(md["vitscope"]), str(path))
            wpath = Path(weights).expanduser() if weights is not None else path
            return _native_model(cfg, pp, d, wpath if pretrained else None, device, dtype, seed, input_size,
                                 name=d.get("meta", {}).get("name") or path.stem, where=str(path))
    raise ValueError(f"{path.name} is a weights file without an architecture; name the architecture and pass "
                     f"the file as weights: load_model(NAME, weights={str(path)!r}) "
                     f"(CLI: MODEL --weights PATH); see `vitscope models` for names")


def save_model(model: HookedViT, folder: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a vitscope-native folder that :func:`load_model` reads back bit-exactly.

    ``folder/config.json``: ``{"format_version", "vitscope": ViTConfig.to_dict(), "preprocess": ...,
    "meta": {name, family, ...}, "dtype", "extra": {...}}``; ``folder/model.safetensors``: the state dict,
    its header also carrying the config (so the file alone loads too). ``extra`` is any JSON-serialisable
    dict (training arguments, epoch, metrics); it comes back as ``model.meta["extra"]``.
    """
    from safetensors.torch import save_file

    if not isinstance(model, HookedViT):
        raise TypeError(f"save_model expects a HookedViT, got {type(model).__name__}")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    old_meta = dict(getattr(model, "meta", None) or {})
    meta = {k: old_meta[k] for k in ("name", "family") if k in old_meta}
    meta.setdefault("name", model.cfg.meta.get("name", folder.name))
    meta.setdefault("family", model.cfg.meta.get("family", "vitscope"))
    if old_meta.get("weights_sha256"):
        meta["parent_weights_sha256"] = old_meta["weights_sha256"]
    pp = model.preprocess_cfg
    d = {
        "format_version": NATIVE_FORMAT_VERSION,
        "vitscope": model.cfg.to_dict(),
        "preprocess": pp.to_dict() if pp is not None else None,
        "meta": meta,
        "dtype": str(model.dtype).replace("torch.", ""),
        "extra": dict(extra or {}),
    }
    text = json.dumps(d, indent=2)          # fails here, before writing, when extra is not JSON-serialisable
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt", "vitscope": text})
    os.replace(tmp, folder / "model.safetensors")
    (folder / "config.json").write_text(text)
    return folder
