"""extract_features: run a model over a dataset once and stream reduced activations into a feature store.

Per batch: images are copied to the device (pinned memory, non-blocking on CUDA), the model runs under
``torch.inference_mode`` (optionally compiled and autocast) only up to the last block that is needed,
hooks on the requested sites reduce tokens on the device (CLS, patch mean, ...), the results go to the host
in one copy, and a background thread writes them into the store while the next batch is computed.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitscope.features import identity
from vitscope.features.distributed import Dist, setup, split_contiguous
from vitscope.features.plan import Plan, make_plan, reduce_tokens, reduced_shape, site_tokens, site_width
from vitscope.features.progress import PROGRESS_DIR, complement, covered, grid_batches, read_all, write_json_atomic
from vitscope.features.store import (FORMAT, FORMAT_VERSION, MANIFEST, STORAGE_DTYPES, FeatureStore,
                                     IncompatibleStoreError, array_file, create_arrays, open_store, read_manifest,
                                     remove_store)
from vitscope.features.writer import BackgroundWriter, Job
from vitscope.outlock import LOCK_NAME, output_lock

_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


# ----------------------------------------------------------------------------- data plumbing
class _Items(Dataset):
    """Normalises items to ``(image tensor or None, label, index, skip record or None)``.

    Accepts the vitscope contract ``(image, label, index)`` (a failed item carries a SkipRecord or None in the
    image slot), ``(image, label)`` or a bare image tensor.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        if isinstance(item, torch.Tensor):
            img, label, index = item, -1, i
        elif len(item) >= 3:
            img, label, index = item[0], item[1], item[2]
        else:
            img, label, index = item[0], item[1], i
        if isinstance(img, torch.Tensor):
            return img, int(label), int(index), None
        rec = {"id": str(getattr(img, "id", "")), "reason": str(getattr(img, "reason", "could not be loaded")),
               "kind": str(getattr(img, "kind", "corrupt"))}
        return None, -1, int(index), rec


def _collate(items):
    good = [it for it in items if it[0] is not None]
    images = torch.stack([it[0] for it in good]) if good else torch.empty(0)
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    idx = torch.tensor([it[2] for it in good], dtype=torch.long)
    skipped = {it[2]: it[3] for it in items if it[0] is None}
    return images, labels, idx, skipped


def _probe_item(dataset, limit: int = 256) -> torch.Tensor:
    """The first decodable image (3, H, W), to learn the input size."""
    items = _Items(dataset)
    for i in range(min(len(items), limit)):
        img = items[i][0]
        if img is not None:
            return img
    raise ValueError(f"none of the first {min(len(items), limit)} samples could be loaded; check the dataset")


def feature_shapes(model, plan: Plan, image_hw: tuple[int, int]) -> dict:
    """Per-sample shape of every store key for images of ``image_hw`` (no forward pass needed)."""
    cfg = model.cfg
    p = cfg.patch_size
    if image_hw[0] % p or image_hw[1] % p:
        raise ValueError(f"images of {image_hw[0]}x{image_hw[1]} px are not a multiple of the patch size {p}; "
                         "use the model's preprocessing")
    grid = (image_hw[0] // p, image_hw[1] // p)
    shapes = {}
    for e in plan.entries:
        lay = model.token_layout(e.block, grid)
        width = site_width(cfg, e.site, e.hook)                                      # q/k/v/z: H*Dh = D
        for r in e.reductions:
            shapes[(e.site, e.layer, r)] = reduced_shape(lay, r, width)
    return shapes


# ----------------------------------------------------------------------------- the hooked runner
class _Runner(nn.Module):
    """``runner(x) -> [reduced tensor per store key]``: forward up to ``plan.stop_at``, hooks reduce on device."""

    def __init__(self, model, plan: Plan, out_dtype: torch.dtype, round_bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.out_dtype = out_dtype
        self.round_bf16 = round_bf16
        self.buf: dict = {}
        self.layouts: dict[int, Any] = {}
        self._grid = None

    def fwd_hooks(self) -> list:
        return [(e.hook, self._make_hook(e)) for e in self.plan.entries]

    def _make_hook(self, entry):
        def fn(t: torch.Tensor, hook) -> None:
            lay = self.layouts[entry.block]
            t = site_tokens(self.model, entry.site, t)
            for r in entry.reductions:
                v = reduce_tokens(t, lay, r)
                if self.round_bf16:
                    v = v.to(torch.bfloat16)
                self.buf[(entry.site, entry.layer, r)] = v.to(self.out_dtype).contiguous()
            return None
        return fn

    def set_grid(self, x: torch.Tensor) -> None:
        p = self.model.cfg.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        if grid != self._grid:
            self.layouts = {e.block: self.model.token_layout(e.block, grid) for e in self.plan.entries}
            self._grid = grid

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.model.forward_features(x, stop_at=self.plan.stop_at)
        return [self.buf.pop(k) for k in self.plan.keys]


class _PinnedPool:
    """A few pinned host buffers (rows x flat width) reused for asynchronous device->host copies."""

    def __init__(self, n: int, rows: int, width: int, dtype: torch.dtype) -> None:
        import queue

        self.q: queue.Queue = queue.Queue()
        for _ in range(n):
            self.q.put(torch.empty((rows, width), dtype=dtype, pin_memory=True))

    def get(self) -> torch.Tensor:
        return self.q.get()

    def put(self, buf: torch.Tensor) -> None:
        self.q.put(buf)


# ----------------------------------------------------------------------------- helpers
def _resolve_device(device, d: Dist) -> torch.device:
    if device is None or device == "auto":
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{d.local_rank}" if d.active else "cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA GPU; use --device cpu")
    return dev


def _default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    return min(8, max(1, cpus // 2)) if device.type == "cuda" else (0 if cpus <= 4 else min(4, cpus // 4))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _open_dataset(dataset, model, on_error: str):
    if not isinstance(dataset, (str, os.PathLike)):
        return dataset
    from vitscope.data import open_dataset
    from vitscope.models.preprocess import PreprocessConfig, Preprocessor

    cfg = model.preprocess_cfg or PreprocessConfig(input_size=model.cfg.img_size)
    return open_dataset(str(dataset), transform=Preprocessor(cfg), on_error=on_error)


def _new_manifest(model, dataset, plan: Plan, shapes: dict, dtype: str, batch_size: int,
                  input_shape: tuple, world_size: int) -> dict:
    import vitscope

    n = len(dataset)
    ids, paths = identity.sample_ids(dataset)
    arrays = [{"site": s, "layer": l, "reduction": r, "file": array_file(s, l, r),
               "hook": next(e.hook for e in plan.entries if e.site == s and e.layer == l),
               "shape": [n, *shapes[(s, l, r)]]} for (s, l, r) in plan.keys]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
        "vitscope_version": vitscope.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "completed": None,
        "model": identity.model_identity(model),
        "preprocessing": identity.preprocessing_identity(dataset, model),
        "dataset": identity.dataset_identity(dataset),
        "input_shape": list(input_shape),
        "sites": plan.sites, "layers": plan.layers, "reductions": plan.reductions,
        "dtype": dtype, "storage_dtype": STORAGE_DTYPES[dtype],
        "batch_size": batch_size, "world_size": world_size,
        "arrays": arrays, "n": n,
        "ids": ids, "paths": paths, "classes": list(getattr(dataset, "classes", None) or []),
        "labels": None, "skipped": [],
    }


def _prepare(out_dir: Path, manifest: dict, resume: bool, batch_size: int, world: int) -> dict:
    """Rank 0: check or create the store; decide the batches left. Returns a plan dict (or an error)."""
    try:
        if (out_dir / MANIFEST).exists():
            old = read_manifest(out_dir)
            if resume:
                diff = identity.differences(old, manifest)
                if diff:
                    raise IncompatibleStoreError(
                        f"{out_dir} holds features computed with a different {', '.join(diff)}; it is never mixed "
                        "with new ones: choose another --out folder, or pass resume=False / --no-resume to "
                        "delete that store and start over")
                if old.get("complete"):
                    return {"complete": True, "batches": [[] for _ in range(world)], "done": old["n"]}
            else:
                remove_store(out_dir)
        elif out_dir.exists() and any(not p.name.startswith(LOCK_NAME) for p in out_dir.iterdir()):
            raise IncompatibleStoreError(f"{out_dir} exists, is not empty and is not a vitscope feature store; "
                                         "choose an empty or new folder for --out")
        if not (out_dir / MANIFEST).exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            create_arrays(out_dir, manifest)
            write_json_atomic(out_dir / MANIFEST, manifest)
        done, _ = read_all(out_dir)
        todo = complement(done, manifest["n"])
        batches = grid_batches(todo, batch_size)
        return {"complete": False, "batches": split_contiguous(batches, world), "done": covered(done)}
    except (ValueError, OSError) as e:
        return {"error": f"{type(e).__name__}: {e}", "exc": type(e).__name__}


def _finalise(out_dir: Path, elapsed: float) -> dict:
    """Rank 0, after every rank is done: check coverage, fold progress into the manifest, mark complete."""
    m = read_manifest(out_dir)
    done, skipped = read_all(out_dir)
    if covered(done) != m["n"]:
        raise RuntimeError(f"{out_dir}: only {covered(done)} of {m['n']} samples were written; run again to finish")
    labels = np.load(out_dir / "labels.npy", mmap_mode="r")
    m["labels"] = [int(x) for x in labels]
    m["skipped"] = [{"index": i, **r} for i, r in sorted(skipped.items())]
    m["complete"] = True
    m["completed"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    m["elapsed_s"] = round(elapsed, 3)
    write_json_atomic(out_dir / MANIFEST, m)
    import shutil

    shutil.rmtree(out_dir / PROGRESS_DIR, ignore_errors=True)
    return m


# ----------------------------------------------------------------------------- the function
def extract_features(model, dataset, out_dir, layers="all", sites=("resid_post",), tokens=("cls", "mean"),
                     batch_size: int = 64, dtype: str = "float32", num_workers: int | None = None,
                     device=None, compile: bool = False, autocast: str | None = None, resume: bool = True,
                     progress: bool = True, on_error: str = "skip", fsync: bool = True,
                     max_pending: int = 4) -> FeatureStore:
    """Extract reduced activations of ``model`` over ``dataset`` into the feature store ``out_dir``.

    ``dataset``: a Dataset whose items are ``(image (3, H, W), label or -1, index)`` (a failed item carries a
    SkipRecord/None as image; it is recorded and its row left at zero), or a data spec string for
    :func:`vitscope.data.open_dataset` (preprocessed with the model's own preprocessing).
    ``layers``: "all", "0,3,11", "-1", "4:8" or a list; ``sites``: short names (resid_post, ln2, ...) or hook
    names; ``tokens``: reductions among cls, dist, mean, cls+mean, registers, patches, all.
    ``dtype``: float32, float16 or bfloat16 (rounded to bfloat16, stored as float16, which holds every
    bfloat16 value of magnitude 6e-5..65504 exactly). ``autocast``: None, "bf16" or "fp16".
    ``resume``: continue an interrupted run of the same extraction (default), refusing a store of another
    model / weights / preprocessing / dataset; ``resume=False`` deletes an existing store first.
    Launched by ``torchrun`` the samples are split between the ranks and rank 0 finalises the store.
    The model is moved to ``device`` and put in eval mode for the run (its training flag is restored).
    Returns the (complete) :class:`FeatureStore`; ``store.run`` holds this run's counts and timing.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {list(STORAGE_DTYPES)}, got {dtype!r}")
    if autocast is not None and str(autocast).lower() not in _AUTOCAST:
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    out_dir = Path(out_dir)
    plan = make_plan(model, sites, layers, tokens)           # bad sites, layers or tokens: before anything is written
    d = setup(device)
    was_training = model.training
    held = contextlib.ExitStack()
    try:
        held.enter_context(output_lock(out_dir, "vitscope extract", part=f"rank-{d.rank}"))
        dev = _resolve_device(device, d)
        model.to(dev).eval()
        dataset = _open_dataset(dataset, model, on_error)
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        out_dtype = torch.float32 if STORAGE_DTYPES[dtype] == "float32" else torch.float16
        runner = _Runner(model, plan, out_dtype, round_bf16=(dtype == "bfloat16"))
        amp = (torch.autocast(device_type=dev.type, dtype=_AUTOCAST[str(autocast).lower()])
               if autocast is not None else contextlib.nullcontext())

        with model.hooks(runner.fwd_hooks()), torch.inference_mode():
            # the input size comes from the first decodable image; feature shapes from the token layout
            probe = _probe_item(dataset)
            shapes = feature_shapes(model, plan, tuple(probe.shape[-2:]))
            manifest = _new_manifest(model, dataset, plan, shapes, dtype, batch_size, tuple(probe.shape),
                                     d.world_size)
            if d.active:                                      # every rank must compute the same thing
                mine = identity.fingerprint(manifest)
                if d.sum([float(mine != d.broadcast(mine))])[0]:
                    raise ValueError("the ranks disagree on the model weights, preprocessing or dataset (e.g. an "
                                     "unseeded random init); every rank must load the same model and data")
            state = _prepare(out_dir, manifest, resume, batch_size, d.world_size) if d.is_main else None
            state = d.broadcast(state)
            if "error" in state:
                msg = state["error"].split(": ", 1)[1]
                raise (IncompatibleStoreError if state["exc"] == "IncompatibleStoreError" else ValueError)(msg)

            t0 = time.perf_counter()
            my_batches = state["batches"][d.rank]
            n_img, n_skip, nbytes = _run_batches(
                runner, dataset, out_dir, plan, my_batches, dev, d, batch_size, num_workers, compile, amp,
                progress, fsync, max_pending, dtype, done=int(state["done"]), n_total=int(manifest["n"]))
            n_img, n_skip = d.sum([float(n_img), float(n_skip)])
            d.barrier()
            elapsed = time.perf_counter() - t0
            if d.is_main and not state["complete"]:
                _finalise(out_dir, elapsed)
            d.barrier()
        store = open_store(out_dir)
        store.run = {"images": int(n_img), "skipped": int(n_skip), "seconds": elapsed,
                     "bytes": store.nbytes, "already_done": int(state["done"])}
        if progress and d.is_main:
            print(summary_line(store), file=sys.stderr, flush=True)
        return store
    finally:
        held.close()
        model.train(was_training)
        d.close()


def summary_line(store: FeatureStore) -> str:
    """``extracted 2000 images (3 skipped) in 41.2 s (48.5 img/s) -> DIR (73.4 MB)``."""
    r = getattr(store, "run", None) or {}
    n, s, sec = r.get("images", 0), r.get("skipped", 0), r.get("seconds", 0.0)
    rate = f", {n / sec:.1f} img/s" if sec > 0 and n else ""
    extra = f"; {r['already_done']} were already done" if r.get("already_done") else ""
    return (f"extracted {n} images ({s} skipped) in {sec:.1f} s{rate}{extra} -> {store.path} "
            f"({_human_bytes(store.nbytes)}, {len(store.keys())} arrays)")


def _run_batches(runner: _Runner, dataset, out_dir: Path, plan: Plan, batches, dev: torch.device, d: Dist,
                 batch_size: int, num_workers, compile: bool, amp, progress: bool, fsync: bool,
                 max_pending: int, dtype: str, done: int = 0, n_total: int = 0) -> tuple[int, int, int]:
    from vitscope.features.progress import RankProgress

    if not batches:
        return 0, 0, 0
    cuda = dev.type == "cuda"
    workers = _default_workers(dev) if num_workers is None else int(num_workers)
    loader = DataLoader(_Items(dataset), batch_sampler=[list(range(a, b)) for a, b in batches],
                        collate_fn=_collate, num_workers=workers, pin_memory=cuda,
                        persistent_workers=False, prefetch_factor=(4 if workers else None))
    arrays_meta = read_manifest(out_dir)["arrays"]
    files = [a["file"] for a in arrays_meta]
    writer = BackgroundWriter(out_dir, files, plan.keys, RankProgress(out_dir, d.rank, fsync=fsync),
                              max_pending=max_pending, fsync=fsync, check_f16=(dtype != "float32"))
    fn = torch.compile(runner) if compile else runner
    pool = None
    widths: list[int] = []
    from tqdm import tqdm

    total = sum(b - a for a, b in batches)
    if not d.active:                   # one process: the bar counts the whole store, a resumed run starts at N
        total, initial = done + total, done
    else:
        initial = 0
    bar = tqdm(total=total, initial=initial, unit="img", disable=not (progress and d.is_main), dynamic_ncols=True,
               desc=f"extract (rank 0 of {d.world_size})" if d.active else "extract", file=sys.stderr)
    in_dtype = runner.model.dtype if runner.model.dtype in (torch.float16, torch.bfloat16) else torch.float32
    n_img = n_skip = 0
    try:
        for (a, b), (images, labels, idx, skipped) in zip(batches, loader):
            n_skip += len(skipped)
            if len(idx) == 0:                                  # every item of the batch failed
                writer.submit(Job(a, b, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                  [np.zeros([0, *a["shape"][1:]], np.float32) for a in arrays_meta],
                                  skipped))
                bar.update(b - a)
                continue
            x = images.to(dev, non_blocking=True)
            if x.dtype != in_dtype:
                x = x.to(in_dtype)                             # a model loaded in half precision
            runner.set_grid(x)
            with amp:
                outs = fn(x)
            B = x.shape[0]
            if cuda:
                if pool is None:
                    widths = [int(np.prod(o.shape[1:])) for o in outs]
                    row_bytes = sum(widths) * outs[0].element_size()
                    n_buf = max(2, min(max_pending + 2, (2 << 30) // max(1, row_bytes * batch_size)))
                    pool = _PinnedPool(n_buf, batch_size, sum(widths), outs[0].dtype)   # <= ~2 GB pinned
                flat = torch.cat([o.reshape(B, -1) for o in outs], dim=1)      # B, sum(widths) on device
                buf = pool.get()
                host = buf[:B]
                host.copy_(flat, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record()
                arrays = list(host.split(widths, dim=1))       # (B, width) views; reshaped after the copy
                job = Job(a, b, idx.numpy(), labels.numpy(), arrays, skipped, ready=ev.synchronize,
                          release=(lambda buf=buf: pool.put(buf)))
            else:
                job = Job(a, b, idx.numpy(), labels.numpy(), outs, skipped)
            writer.submit(job)
            n_img += B
            bar.update(b - a)
        writer.close()
    except BaseException as e:
        try:                      # keep the batches already computed: they are valid rows
            writer.close()
        except BaseException:     # noqa: BLE001 (the first error is the one to report)
            pass
        if isinstance(e, KeyboardInterrupt) and not d.active:
            raise KeyboardInterrupt(f"interrupted at {bar.n}/{n_total} images; run the same "
                                    f"command to resume") from None
        raise
    finally:
        bar.close()
    return n_img, n_skip, writer.bytes_written

