"""Training a grid of SAEs from a feature store in one pass over the data.

Every configuration of the grid (architecture x width x k or L1 coefficient x learning rate x block) reads the same
batches: each step reads one batch of rows per block from the store (:class:`~.data.StoreStream`) and every SAE
trains on it. Configurations of one architecture and width are stacked (:class:`~.models.SAE` with G members) and
step together as batched matrix products with a per-configuration learning rate (the probes' ``StackedAdamW``).

Per SAE: activations scaled so that their mean squared norm is ``d_in`` (the factor is saved with the SAE);
``b_dec`` from the geometric median (or mean) of a sample; LR warm-up (linear) then constant, then a linear decay to
zero over the last ``decay`` fraction of the steps (Anthropic's schedule); dead latents (no activation over
``dead_after`` tokens) trained by AuxK (TopK family) or resampled (ReLU, Anthropic's recipe). Checkpoints every
``checkpoint_every`` steps hold the parameters, the optimiser state and the counters (safetensors + JSON), so a
resumed run continues bit-identically on CPU; Ctrl-C ends the current step and writes one before stopping
(:func:`stop_at_step_end`). ``device`` (``--device``): where the SAEs train; the
store is read on the CPU and each batch copied over.
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vitscope.analysis.api import Options
from vitscope.analysis.probes.batched import StackedAdamW
from vitscope.analysis.sae.data import StoreStream, check_store, resolve_store_blocks
from vitscope.analysis.sae.hooks import block_site
from vitscope.analysis.sae.models import (ARCHS, CENTRES, SAE, UNIT_NORM, USES_K, SAEConfig, check_centre,
                                        init_from_data, scale_factor)

CHECKPOINT = "checkpoint"


@dataclass
class TrainOptions(Options):
    """Every setting of :func:`train_saes` (the CLI's ``vitscope sae train`` maps onto these fields)."""

    site: str = "resid_post"
    blocks: str = "-2"                    # '8', '4,8', '-2' (negatives from the end)
    tokens: str = "patches"
    centre: str = "none"                  # "image": each patch token less its image's mean patch token
    arch: str = "topk"
    width: tuple = (512,)                 # latents; several: a grid
    k: tuple = (32,)                      # TopK / BatchTopK / Matryoshka: latents per token
    l1: tuple = (1.0,)                    # ReLU: L1 coefficient; JumpReLU: L0 coefficient
    lr: tuple = (4e-4,)
    steps: int = 2000
    batch_size: int = 1024
    chunk_images: int = 256               # images per chunk read from the store (memory bound)
    warmup: int = 100
    decay: float = 0.2                    # share of the steps over which the LR decays linearly to zero
    b_dec_init: str = "geometric_median"
    init_rows: int = 4096
    dead_after: int = 200_000             # tokens without a firing that make a latent dead
    resample_every: int = 0               # ReLU: resample dead latents every this many steps (0: never)
    aux_k: int = 0
    aux_coef: float = 1 / 32
    bandwidth: float = 0.001
    threshold_init: float = 0.001
    prefixes: tuple = ()
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    limit: int | None = None              # at most this many images of the store
    progress: bool = False
    threads: int | None = None
    device: str | None = None             # where the SAEs train (default: cuda when available, else cpu)

    def validate(self) -> None:
        self.check_choice("arch", ARCHS)
        self.check_choice("tokens", ("patches", "cls", "mean", "all"))
        self.check_choice("centre", CENTRES)
        try:
            check_centre(self.centre, self.tokens)
        except ValueError as e:
            raise _err("centre", str(e).replace("centre", "`centre`", 1)) from None      # the front end's name
        try:                                                   # what the SAE is spliced back into
            block_site(self.site)
        except ValueError as e:
            raise _err("site", f"`site` takes a block site: {e}") from None
        self.check_ints("width")
        self.check_ints("k")
        for name in ("l1", "lr"):
            v = getattr(self, name)
            if isinstance(v, (int, float)):
                v = (v,)
            if isinstance(v, str):
                try:
                    v = tuple(float(p) for p in v.split(",") if p.strip())
                except ValueError:
                    raise _err(name, f"`{name}` takes comma-separated numbers, got {v!r}") from None
            v = tuple(float(p) for p in v)
            if not v or any(p < 0 or math.isnan(p) for p in v):
                raise _err(name, f"`{name}` takes non-negative numbers, got {getattr(self, name)!r}")
            setattr(self, name, v)
        if any(x <= 0 for x in self.lr):
            raise _err("lr", f"`lr` must be positive, got {self.lr}")
        if self.arch in USES_K:
            bad = [(k, w) for k in self.k for w in self.width if k > w]
            if bad:
                raise _err("k", f"`k` must not exceed the width: k={bad[0][0]} > width={bad[0][1]}; lower --k or "
                                 f"raise --width")
        self.check_int("steps")
        self.check_int("batch_size")
        self.check_int("chunk_images")
        self.check_int("warmup", minimum=0)
        self.check_number("decay", 0, 1)
        self.check_choice("b_dec_init", ("geometric_median", "mean", "zeros"))
        self.check_int("init_rows")
        self.check_int("dead_after")
        self.check_int("resample_every", minimum=0)
        self.check_int("checkpoint_every")
        self.check_int("log_every")
        self.check_int("limit", optional=True)
        self.check_int("aux_k", minimum=0)
        self.check_number("bandwidth", low=0, low_open=True)
        self.check_number("threshold_init", low=0, low_open=True)
        if not isinstance(self.blocks, (str, int, list, tuple)):
            raise _err("blocks", f"`blocks` takes '8', '4,8' or '-2', got {self.blocks!r}")
        if isinstance(self.blocks, str):
            self.check_blocks("blocks")

    @property
    def grid(self) -> list[dict]:
        """The configurations: width x (k or L1 coefficient) x learning rate (blocks are added by the trainer)."""
        sparsity = [("k", k) for k in self.k] if self.arch in USES_K else [("l1", v) for v in self.l1]
        return [{"width": w, key: v, "lr": lr} for w in self.width for key, v in sparsity for lr in self.lr]


def _identity(options: dict) -> dict:
    """The options that make a run what it is: a run resumes on another device, thread count or progress setting.
    A checkpoint written before ``centre`` existed is of an uncentred run."""
    return {k: v for k, v in {"centre": "none", **options}.items() if k not in ("device", "threads", "progress")}


def _err(name, msg):
    from vitscope.analysis.api import OptionError

    return OptionError(name, msg)


class _Stop:
    asked = False


@contextlib.contextmanager
def stop_at_step_end(enabled: bool = True) -> Iterator[_Stop]:
    """Ctrl-C (SIGINT) while training only sets ``asked``: the loop finishes its step, writes a checkpoint and
    stops, so no finished step is lost; a second Ctrl-C stops at once. Left as it is when not ``enabled`` (nowhere
    to save), off the main thread, or where SIGINT is ignored."""
    import signal
    import threading

    stop = _Stop()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        yield stop
        return

    def ask(signum, frame):
        if stop.asked:
            raise KeyboardInterrupt
        stop.asked = True

    signal.signal(signal.SIGINT, ask)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def lr_at(step: int, total: int, warmup: int, decay: float) -> float:
    """Multiplier of the base LR: linear warm-up over ``warmup`` steps, constant, linear decay to 0 over the last
    ``decay`` share of ``total``."""
    f = 1.0
    if warmup and step < warmup:
        f = (step + 1) / warmup
    start = total * (1 - decay)
    if decay > 0 and step >= start:
        f = min(f, max(0.0, (total - step) / (total - start)))
    return f


class _Stack:
    """One stacked SAE (an architecture and a width) on ``device``, its optimiser and its dead-latent counters."""

    def __init__(self, sae: SAE, lrs: Sequence[float], names: Sequence[str], device: str = "cpu") -> None:
        self.sae, self.names = sae.to(device), list(names)
        self.lr = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        self.params = {k: p for k, p in sae.named_parameters()}
        self.opt = StackedAdamW(self.params, torch.zeros(sae.n, device=device), nconf=1)
        self.since = torch.zeros(sae.n, sae.cfg.width, dtype=torch.long, device=device)  # tokens since each fired
        self.log: list[dict] = []

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.sae.{k}": v.detach().cpu().clone().contiguous() for k, v in self.sae.state_dict().items()}
        for k in self.params:
            out[f"{prefix}.m.{k}"] = self.opt.m[k].cpu().contiguous()
            out[f"{prefix}.v.{k}"] = self.opt.v[k].cpu().contiguous()
        out[f"{prefix}.since"] = self.since.cpu()
        return out

    def load(self, prefix: str, t: dict[str, torch.Tensor], step_t: int) -> None:
        self.sae.load_state_dict({k[len(prefix) + 5:]: v for k, v in t.items() if k.startswith(prefix + ".sae.")})
        for k in self.params:
            self.opt.m[k].copy_(t[f"{prefix}.m.{k}"])
            self.opt.v[k].copy_(t[f"{prefix}.v.{k}"])
        self.opt.t = step_t
        self.since.copy_(t[f"{prefix}.since"])


# On the CPU a stack's (members x batch x width) activations stay below glibc's largest mmap threshold (32 MiB):
# larger blocks are mapped and unmapped on every allocation, and the page faults of zero-filling them made a stack
# of 4 x 1024 x 3072 slower than its members one after another. Smaller stacks keep the batch read shared.
CPU_STACK_BYTES = 32 << 20


def build_stacks(opts: TrainOptions, blocks: Sequence[int], d_in: int, max_bytes: int | None = None
                 ) -> list[tuple[SAE, list[float], list[str]]]:
    """The grid (x blocks) grouped into stacks of one width, each of at most ``max_bytes`` of latents per batch
    (float32; None: one stack per width); returns (SAE, learning rates, member names)."""
    groups: dict[int, list[tuple[int, dict]]] = {}
    for b in blocks:
        for c in opts.grid:
            groups.setdefault(c["width"], []).append((b, c))
    split = []
    for width, members in groups.items():
        per = max(1, max_bytes // (4 * opts.batch_size * width)) if max_bytes else len(members)
        split += [(width, members[i:i + per]) for i in range(0, len(members), per)]
    out = []
    for width, members in split:
        cfg = SAEConfig(d_in=d_in, width=width, arch=opts.arch, k=tuple(c.get("k", 1) for _, c in members),
                        l1=tuple(c.get("l1", 0.0) for _, c in members), block=tuple(b for b, _ in members),
                        site=opts.site, tokens=opts.tokens, centre=opts.centre, bandwidth=opts.bandwidth,
                        threshold_init=opts.threshold_init, prefixes=tuple(opts.prefixes), aux_k=opts.aux_k,
                        aux_coef=opts.aux_coef)
        names = [member_name(opts.arch, b, c) for b, c in members]
        out.append((SAE(cfg), [c["lr"] for _, c in members], names))
    return out


def member_name(arch: str, block: int, c: dict) -> str:
    sp = f"k{c['k']}" if "k" in c else f"l1_{c['l1']:g}"
    return f"{arch}-b{block}-w{c['width']}-{sp}-lr{c['lr']:g}"


@torch.no_grad()
def resample_dead(sae: SAE, opt: StackedAdamW, dead: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor,
                  gen: torch.Generator) -> int:
    """Anthropic's resampling: each dead latent's atom becomes a batch input drawn with probability proportional to
    its squared reconstruction loss (normalised), its encoder row that direction times 0.2 x the mean alive encoder
    norm, its encoder bias zero, and its optimiser state is reset. Returns the number resampled."""
    n = 0
    for g in range(sae.n):
        idx = torch.nonzero(dead[g]).flatten()
        if len(idx) == 0:
            continue
        loss = (x[g] - x_hat[g]).pow(2).sum(-1)
        if float(loss.sum()) <= 0:
            continue
        pick = torch.multinomial(loss.pow(2), len(idx), replacement=True, generator=gen)
        v = x[g, pick] - sae.b_dec[g]
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive = ~dead[g]
        enc_norm = sae.W_enc[g][:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        dec_norm = sae.W_dec[g][alive].norm(dim=-1).mean() if alive.any() else torch.tensor(1.0)
        sae.W_dec[g, idx] = v * dec_norm
        sae.W_enc[g][:, idx] = (v * 0.2 * enc_norm).T
        sae.b_enc[g, idx] = 0
        for name, sl in (("W_dec", (g, idx)), ("b_enc", (g, idx))):
            opt.m[name][sl] = 0
            opt.v[name][sl] = 0
        opt.m["W_enc"][g][:, idx] = 0
        opt.v["W_enc"][g][:, idx] = 0
        n += len(idx)
    return n


class Trainer:
    """Trains every SAE of ``opts`` on ``store`` (see the module docstring). ``out``: where checkpoints and the
    trained SAEs go (None: nothing written). :meth:`run` returns ``{name: one-member SAE}``."""

    def __init__(self, store, opts: TrainOptions, out: str | Path | None = None, provenance: dict | None = None):
        from vitscope.features.access import open_store_any

        self.store = open_store_any(store)
        self.opts = opts
        self.blocks = resolve_store_blocks(self.store, opts.blocks)
        check_store(self.store, opts.site, self.blocks, opts.tokens)
        self.stream = StoreStream(self.store, opts.site, self.blocks, opts.tokens, opts.batch_size,
                                  opts.chunk_images, seed=opts.seed, limit=opts.limit, centre=opts.centre)
        self.out = Path(out) if out is not None else None
        model = getattr(self.store, "model", {}) or {}
        self.provenance = {"model": model.get("name"), "store": str(getattr(self.store, "path", "")),
                           **(provenance or {})}
        torch.manual_seed(opts.seed)
        from vitscope.runtime import resolve_device

        self.device = resolve_device(opts.device)
        cap = CPU_STACK_BYTES if self.device == "cpu" else None
        self.stacks = [_Stack(*s, device=self.device) for s in build_stacks(opts, self.blocks, self.stream.d, cap)]
        self.step = 0
        self._initialised = False

    # ------------------------------------------------------------------ setup
    def _init(self) -> None:
        sample = self.stream.sample(self.opts.init_rows)
        for st in self.stacks:
            cfg = st.sae.cfg
            x = torch.stack([sample[b] for b in cfg.block]).to(self.device)    # G, N, d (raw)
            st.sae.scale.copy_(scale_factor(x))
            # one generator per member from (seed, width, block): its start does not depend on the grid
            gens = [torch.Generator().manual_seed(self.opts.seed * 1_000_003 + cfg.width * 1009 + b)
                    for b in cfg.block]
            init_from_data(st.sae, st.sae.normalise(x), gens, self.opts.b_dec_init)
        self._initialised = True

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold ``out``'s write lock (:func:`vitscope.outlock.output_lock`) around :meth:`try_resume` and :meth:`run`:
        a second trainer of the same folder is refused with one line naming the first, instead of mixing two runs'
        checkpoints. Taken after the checks of ``__init__``, so bad input writes nothing; a no-op without ``out``."""
        if self.out is None:
            yield
            return
        from vitscope.outlock import output_lock

        with output_lock(self.out, "vitscope sae train"):
            yield

    def _ckpt_dir(self) -> Path | None:
        return self.out / CHECKPOINT if self.out is not None else None

    def save_checkpoint(self) -> None:
        d = self._ckpt_dir()
        if d is None:
            return
        from safetensors.torch import save_file

        d.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, st in enumerate(self.stacks):
            tensors.update(st.state(f"s{i}"))
        tmp = d / "state.safetensors.tmp"
        save_file(tensors, str(tmp))
        meta = {"step": self.step, "opt_t": [st.opt.t for st in self.stacks], "options": json.loads(
            self.opts.as_json()), "logs": [st.log for st in self.stacks]}
        (d / "state.json.tmp").write_text(json.dumps(meta))
        tmp.replace(d / "state.safetensors")
        (d / "state.json.tmp").replace(d / "state.json")

    def _interrupted(self) -> str:
        """The line a Ctrl-C ends the run with: where it stopped and how to go on."""
        return (f"interrupted after step {self.step} of {self.opts.steps}: saved to {self._ckpt_dir()}; run the same "
                f"command to resume")

    def try_resume(self) -> bool:
        """Continue from ``out/checkpoint`` when it holds a run of the same options (a different one is an error)."""
        d = self._ckpt_dir()
        if d is None or not (d / "state.json").exists():
            return False
        from safetensors.torch import load_file

        meta = json.loads((d / "state.json").read_text())
        if _identity(meta["options"]) != _identity(json.loads(self.opts.as_json())):
            raise ValueError(f"{d} holds a checkpoint of other training options; use another --out or delete it")
        t = load_file(str(d / "state.safetensors"))
        for i, st in enumerate(self.stacks):
            st.load(f"s{i}", t, meta["opt_t"][i])
            st.log = meta["logs"][i]
        self.step = int(meta["step"])
        self._initialised = True
        return True

    # ------------------------------------------------------------------ the loop
    def run(self, steps: int | None = None) -> dict[str, SAE]:
        """Train until ``opts.steps`` (or only ``steps`` more, for tests of resumption); returns the SAEs."""
        opts = self.opts
        if not self._initialised:
            self._init()
        end = opts.steps if steps is None else min(opts.steps, self.step + steps)
        bar = None
        if opts.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=opts.steps, initial=self.step, desc="training SAEs", unit="step",
                       dynamic_ncols=True)
        try:
            with stop_at_step_end(self.out is not None) as stop:
                for step, batch in self.stream(self.step, end - self.step):
                    if self.device != "cpu":
                        batch = {b: x.to(self.device, non_blocking=True) for b, x in batch.items()}
                    self._step(step, batch)
                    self.step = step + 1
                    if bar is not None:
                        bar.update(1)
                    if self.step % opts.checkpoint_every == 0 and self.step < opts.steps or stop.asked:
                        self.save_checkpoint()
                    if stop.asked and self.step < end:
                        raise KeyboardInterrupt(self._interrupted())
        finally:
            if bar is not None:
                bar.close()
        if self.step >= opts.steps and self.out is not None:
            self.save_all()
        return self.saes()

    def _step(self, step: int, batch: dict[int, torch.Tensor]) -> None:
        opts = self.opts
        f = lr_at(step, opts.steps, opts.warmup, opts.decay)
        bsz = next(iter(batch.values())).shape[0]
        for st in self.stacks:
            sae = st.sae
            blocks = sae.cfg.block
            if len(set(blocks)) == 1:
                x = batch[blocks[0]].unsqueeze(0).expand(sae.n, -1, -1)
            else:
                x = torch.stack([batch[b] for b in blocks])
            x = sae.normalise(x)
            dead = st.since >= opts.dead_after
            out = sae.loss(x, dead if sae.arch in USES_K else None)
            for p in st.params.values():
                p.grad = None
            out["loss"].sum().backward()
            if UNIT_NORM[sae.arch]:
                sae.project_decoder_grad()
            st.opt.step(st.lr * f)
            if UNIT_NORM[sae.arch]:
                sae.normalise_decoder()
            if sae.arch in ("batchtopk", "matryoshka"):
                sae.update_threshold()
            with torch.no_grad():
                st.since.add_(bsz).masked_fill_(out["fired"], 0)
                if (sae.arch == "relu" and opts.resample_every and (step + 1) % opts.resample_every == 0
                        and step + 1 < opts.steps * (1 - opts.decay)):
                    gen = torch.Generator(device=self.device).manual_seed(opts.seed * 1_000_003 + step)
                    if resample_dead(sae, st.opt, st.since >= opts.dead_after, x, out["x_hat"].detach(), gen):
                        st.since.masked_fill_(st.since >= opts.dead_after, 0)
                if (step + 1) % opts.log_every == 0 or step + 1 == opts.steps:
                    fvu = out["mse"] / (x - x.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1)
                    l0 = out["l0"] if "l0" in out else (out["z"] > 0).sum(-1).float().mean(-1)
                    for g, name in enumerate(st.names):
                        st.log.append({"sae": name, "step": step + 1, "loss": float(out["loss"][g]),
                                       "fvu": float(fvu[g]), "l0": float(l0[g]), "lr": float(st.lr[g] * f),
                                       "dead": float((st.since[g] >= opts.dead_after).float().mean())})

    # ------------------------------------------------------------------ results
    def saes(self) -> dict[str, SAE]:
        out = {}
        for st in self.stacks:
            for g, name in enumerate(st.names):
                m = st.sae.member(g).cpu()
                m.cfg.meta.update(self.provenance, name=name, lr=float(st.lr[g]), steps=self.step,
                                  tokens_seen=self.step * self.opts.batch_size, options=json.loads(
                                      self.opts.as_json()))
                out[name] = m
        return out

    def training_log(self):
        import pandas as pd

        return pd.DataFrame([r for st in self.stacks for r in st.log])

    def save_all(self) -> dict[str, Path]:
        """Every SAE to ``out/<name>/`` (safetensors + JSON) and the training log to ``out/training_log.csv``."""
        from vitscope.analysis.sae.io import save_sae
        from vitscope.runtime import save_tidy

        paths = {name: save_sae(sae, self.out / name) for name, sae in self.saes().items()}
        log = self.training_log()
        if len(log):
            save_tidy(log, self.out / "training_log")
        return paths


def train_saes(store, options: TrainOptions | None = None, out: str | Path | None = None, resume: bool = True,
               provenance: dict | None = None, **overrides) -> dict[str, SAE]:
    """Train the grid of ``options`` on a feature store; returns ``{name: SAE}`` (written under ``out``)."""
    opts = (options or TrainOptions()).replace(**overrides) if overrides else (options or TrainOptions())
    threads = opts.threads
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        tr = Trainer(store, opts, out, provenance)
        with tr.writing():
            if resume:
                tr.try_resume()
            return tr.run()
    finally:
        torch.set_num_threads(prev)
