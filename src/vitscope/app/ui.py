"""The Gradio page: one image (an upload or a sample photograph) drives every view of ``vitscope.app.views``.

``build_app`` returns the Blocks (queue set up) and its :class:`AppState`. Every file the app reads or serves lies
in its own temporary folder: Gradio's upload and cache folder is set there (``GRADIO_TEMP_DIR``), the sample
photographs are copied there at start, results are written there, and no ``allowed_paths`` are given. A folder
the app made itself is removed when the process ends: at exit, on Ctrl-C, on SIGTERM and SIGHUP (a folder given
with ``tmp_dir`` is the caller's and stays).

API endpoints (for ``gradio_client``): ``/predict``, ``/attention``, ``/rollout``, ``/explain``, ``/tokens``,
``/distance``, ``/logit_lens``, ``/patching``, ``/sae`` (when SAEs are given); each takes the model name, the
random-weights switch, the uploaded file (or None) and the sample name first, then the options of its view.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from vitscope.analysis.attribution_maps import FAMILIES, METHODS as EXPLAIN_METHODS
from vitscope.app import sae_view as SV
from vitscope.app import views as V
from vitscope.app.models import DEMO_MODELS, ModelCache, class_label
from vitscope.app.uploads import MAX_BYTES, MAX_PIXELS, ImageCache, UploadError

log = logging.getLogger("vitscope.app")

CMAPS = ("inferno", "viridis", "magma", "plasma", "jet", "turbo", "gray")
PREDICTED = "predicted class"
PATCH = "patch"


@dataclass
class AppState:
    """Everything the handlers share: the temporary folder, the model cache, the decoded uploads."""

    root: Path
    models: ModelCache
    model_names: list[str]
    samples: dict[str, Path]
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    images: ImageCache = field(default_factory=ImageCache)
    saes: dict = field(default_factory=dict)                     # {name: SAE} for the "SAE features" tab
    result_age_s: float = 3600.0
    _last_prune: float = 0.0

    @property
    def results(self) -> Path:
        return self.root / "results"

    def image(self, upload, sample):
        """The upload when there is one, else the sample photograph (both read from the app's folder)."""
        if upload:
            path = upload if isinstance(upload, (str, Path)) else getattr(upload, "name", None) or upload.get("path")
            return self.images.get(path, [self.root], self.max_bytes, self.max_pixels)
        if not sample:
            raise UploadError("no image: upload one or choose a sample photograph")
        if sample not in self.samples:
            raise UploadError(f"no sample photograph {sample!r}; choose one of {', '.join(self.samples)}")
        return self.images.get(self.samples[sample], [self.root], self.max_bytes, self.max_pixels)

    def save(self, view: V.View, model_name: str) -> list[str]:
        """Write the view's files into a fresh folder under ``results/`` and return their paths."""
        from vitscope.runtime import slug

        self.prune()
        folder = self.results / uuid.uuid4().hex
        return [str(p) for p in V.save_view(view, folder, f"{slug(model_name)}_{view.name}")]

    def prune(self) -> None:
        """Remove result folders older than ``result_age_s`` (checked at most once a minute)."""
        now = time.time()
        if now - self._last_prune < 60 or not self.results.exists():
            return
        self._last_prune = now
        for d in self.results.iterdir():
            try:
                if now - d.stat().st_mtime > self.result_age_s:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass


def make_state(models=DEMO_MODELS, tmp_dir: str | Path | None = None, device: str | None = None,
               cache_size: int = 3, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               preload: bool = True, saes=None) -> AppState:
    """The app's temporary folder (made fresh unless given), its model cache and the sample photographs.
    ``saes``: SAE folders / files or folders of SAEs (or ``{name: SAE}``) for the "SAE features" tab."""
    from vitscope.data.samples import sample_paths

    saes = dict(saes) if isinstance(saes, dict) else SV.load_saes(saes)        # a bad path: nothing made yet
    root = Path(tempfile.mkdtemp(prefix="vitscope-app-") if tmp_dir is None else tmp_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if tmp_dir is None:                        # the app's own folder goes when the process ends
        _at_exit(functools.partial(_remove, root))
    (root / "samples").mkdir(exist_ok=True)
    samples = {}
    for name, src in sample_paths().items():
        dst = root / "samples" / f"{name}{src.suffix.lower()}"
        if not dst.exists():
            shutil.copyfile(src, dst)
        samples[name] = dst
    names = list(dict.fromkeys(str(m) for m in (models or DEMO_MODELS)))
    cache = ModelCache(max(cache_size, len(names)), device)
    state = AppState(root, cache, names, samples, max_bytes, max_pixels)
    state.saes = {n: sae.to(cache.device).eval() for n, sae in saes.items()}
    if preload:
        for n in names:
            cache.get(n)
    return state


def _remove(root: Path) -> None:
    for _ in range(3):                         # a handler may still be writing a result into it
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return


def _at_exit(fn) -> None:
    """Call ``fn`` when the process ends: at exit (also after Ctrl-C) and on SIGTERM / SIGHUP, after which the
    process still ends by that signal (a handler installed before is called instead; an ignored signal stays
    ignored)."""
    atexit.register(fn)
    if threading.current_thread() is not threading.main_thread():
        return                                 # signal handlers can only be set from the main thread
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if previous == signal.SIG_IGN:
            continue

        def on_signal(signum, frame, previous=previous):
            fn()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, on_signal)


# ----------------------------------------------------------------------------- handlers (plain functions)
def _err(e: BaseException):
    if isinstance(e, (ValueError, RuntimeError, KeyError, OSError)):
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        return gr.Error(" ".join(msg.split()) or type(e).__name__, print_exception=False)
    log.exception("unexpected error in a view")
    return gr.Error(f"internal error ({type(e).__name__}); the server keeps running", print_exception=False)


def _run(state: AppState, model_name, random, upload, sample, view_fn, **kw):
    """Load the model and the image, run one view under the model's lock, save its files.

    Returns (view, files, note, pictures): ``pictures`` maps "figure" and each further picture to its PNG file,
    which the page shows directly (no second encoding)."""
    try:
        entry = state.models.get(model_name, bool(random))
        img = state.image(upload, sample)
        with entry.lock:
            view = view_fn(entry.model, img, **kw)
        files = state.save(view, entry.label)
    except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
        raise _err(e) from None
    note = view.note if view.figure is not None or view.label is not None else f"**{view.note}**"
    pngs = [f for f in files if f.endswith(".png")]
    pics = {}
    if view.figure is not None:
        pics["figure"] = pngs.pop(0)
    for key in view.images:
        pics[key] = pngs.pop(0)
    return view, files, note, pics


def _head(head: str):
    head = str(head).strip()
    if head in V.FUSIONS:
        return head
    try:
        return int(head.replace("head", "").strip())
    except ValueError:
        raise ValueError(f"head must be mean, max, min or 'head <k>', got {head!r}") from None


def _target(target):
    if target in (None, "", PREDICTED):
        return None
    try:
        return int(str(target).split(":")[0].replace("class", "").strip())
    except ValueError:
        raise ValueError(f"the class must be '{PREDICTED}' or a class number, got {target!r}") from None


def _patch(patch) -> tuple[int, int] | None:
    """``"row,col"`` (a clicked patch) -> (row, col); empty -> None."""
    if not patch or "," not in str(patch):
        return None
    try:
        r, c = str(patch).split(",", 1)
        return int(r), int(c)
    except ValueError:
        raise ValueError(f"the patch is 'row,col', got {patch!r}") from None


def _latent(latent) -> int | None:
    if latent is None or str(latent).strip() == "":
        return None
    try:
        v = float(latent)
    except ValueError:
        raise ValueError(f"the latent is a number (a latent id), got {latent!r}") from None
    if v != int(v):
        raise ValueError(f"the latent is a whole number (a latent id), got {latent!r}")
    return int(v)


def _query(query: str, patch: str):
    q = str(query or "cls").strip()
    if q == PATCH:
        p = _patch(patch)
        if p is None:
            raise UploadError("click a patch on the attention figure (or type row,col) to use a patch query")
        return p
    return q


def handlers(state: AppState) -> dict:
    """The functions behind every event, by endpoint name (plain callables; the tests may call them)."""

    def predict(model_name, random, upload, sample):
        view, files, note, _ = _run(state, model_name, random, upload, sample, V.predictions_view)
        return view.label, note, files

    def attention(model_name, random, upload, sample, block, head, query, patch, alpha, cmap):
        try:
            q, h = _query(query, patch), _head(head)
        except ValueError as e:
            raise _err(e) from None
        view, files, note, pics = _run(state, model_name, random, upload, sample, V.attention_view,
                                       block=int(block), head=h, query=q, alpha=float(alpha), cmap=cmap)
        return pics.get("figure"), pics.get("heads"), note, files

    def rollout(model_name, random, upload, sample, method, target, head_fusion, discard_ratio, alpha, cmap):
        try:
            t = _target(target)
        except ValueError as e:
            raise _err(e) from None
        view, files, note, pics = _run(state, model_name, random, upload, sample, V.rollout_view, method=method,
                                 target=t, head_fusion=head_fusion, discard_ratio=float(discard_ratio),
                                 alpha=float(alpha), cmap=cmap)
        return pics.get("figure"), note, files

    def explain(model_name, random, upload, sample, method, target, block, alpha, cmap):
        try:
            t = _target(target)
        except ValueError as e:
            raise _err(e) from None
        view, files, note, pics = _run(state, model_name, random, upload, sample, V.explain_view, method=method,
                                       target=t, block=int(block), alpha=float(alpha), cmap=cmap)
        return pics.get("figure"), note, files

    def tokens(model_name, random, upload, sample, block, cmap):
        view, files, note, pics = _run(state, model_name, random, upload, sample, V.tokens_view, block=int(block),
                                 cmap=cmap)
        return pics.get("figure"), note, files

    def distance(model_name, random, upload, sample, variant):
        view, files, note, pics = _run(state, model_name, random, upload, sample, V.distance_view, variant=variant)
        return pics.get("figure"), note, files

    def logit_lens(model_name, random, upload, sample, block, alpha):
        view, files, note, pics = _run(state, model_name, random, upload, sample, V.logit_lens_view, block=int(block),
                                 alpha=float(alpha))
        return pics.get("figure"), note, files

    def patching(model_name, random, upload, sample, patch, corrupt, site):
        try:
            p = _patch(patch)
        except ValueError as e:
            raise _err(e) from None
        view, files, note, pics = _run(state, model_name, random, upload, sample, V.patching_view, patch=p,
                                       corrupt=corrupt, site=site)
        return pics.get("figure"), pics.get("effects"), note, files

    def sae(model_name, random, upload, sample, sae_name, latent, patch):
        if not state.saes:
            return None, None, SV.NO_SAE, None
        try:
            p, lat = _patch(patch), _latent(latent)
            if sae_name not in state.saes:
                raise ValueError(f"no SAE {sae_name!r}; choose one of {', '.join(state.saes)}")
        except ValueError as e:
            raise _err(e) from None
        view, files, note, pics = _run(state, model_name, random, upload, sample, SV.sae_view,
                                       sae=state.saes[sae_name], name=sae_name, latent=lat, patch=p)
        return pics.get("figure"), SV.listing(view), note, files

    return {"predict": predict, "attention": attention, "rollout": rollout, "explain": explain, "tokens": tokens,
            "distance": distance, "logit_lens": logit_lens, "patching": patching, "sae": sae}


def check_image(state: AppState, upload, sample, n_outputs: int):
    """The one check of a new image (or model) before every view runs: ``(*outputs, message)``.

    A good image leaves every view's outputs as they are (each view then draws its own) and the message empty. A
    bad one clears all ``n_outputs`` (no figure, note or file of the last good image stays beside it) and gives
    the one message, shown under the upload; :func:`stop_on` then keeps every view from running."""
    try:
        state.image(upload, sample)
    except Exception as e:  # noqa: BLE001 - every failure becomes the one message
        return (*[None] * n_outputs, f"**This image cannot be used:** {_err(e).message}")
    return (*[gr.skip()] * n_outputs, "")


def stop_on(message: str) -> None:
    """Stop the views after a failed :func:`check_image`, silently: its message is already in the page."""
    if message:
        raise gr.Error(message, visible=False, print_exception=False)


def model_controls(state: AppState, model_name, random):
    """Choices that depend on the model: blocks, heads, queries, classes (updates for the page's controls)."""
    try:
        m = state.models.get(model_name, bool(random)).model
    except Exception as e:  # noqa: BLE001
        raise _err(e) from None
    depth, H = m.cfg.depth, m.cfg.num_heads
    heads = list(V.FUSIONS) + [f"head {h}" for h in range(H)]
    queries = V.query_choices(m)
    classes = [PREDICTED] + ([class_label(m, c) for c in range(m.cfg.num_classes)] if m.cfg.num_classes <= 1000 else [])
    blk = dict(minimum=0, maximum=depth - 1, value=depth - 1, step=1)
    info = (f"**{model_name}**{' (random weights)' if random else ''}: {depth} blocks, {H} heads, "
            f"patch {m.cfg.patch_size}, input {tuple(m.preprocess_cfg.input_size) if m.preprocess_cfg else m.cfg.img_size}"
            + (f", CLS enters before block {m.cfg.cls_block}" if m.cfg.class_token and m.cfg.cls_block else "")
            + (f", {m.cfg.num_registers} registers enter before block {m.cfg.register_block}"
               if m.cfg.num_registers else ""))
    return (gr.update(**blk), gr.update(choices=heads, value="mean"), gr.update(choices=queries, value=queries[0]),
            gr.update(**blk), gr.update(**blk), gr.update(choices=classes, value=PREDICTED), gr.update(**blk),
            gr.update(choices=classes, value=PREDICTED), info)


def pick_latent(table, index) -> int:
    """A row clicked in the table of latents (``index``: (row, col) of the cell) -> its latent id."""
    import pandas as pd

    row = int(index[0] if isinstance(index, (list, tuple)) else index)
    t = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table["data"], columns=table["headers"])
    return int(float(t.iloc[row, 0]))


def click_patch(state: AppState, model_name, random, index):
    """Pixel (x, y) clicked on the attention figure -> ``"row,col"`` of the patch under it."""
    m = state.models.get(model_name, bool(random)).model
    size = tuple(m.preprocess_cfg.input_size) if m.preprocess_cfg else tuple(m.cfg.img_size)
    grid = (size[0] // m.cfg.patch_size, size[1] // m.cfg.patch_size)
    r, c = V.patch_at(float(index[0]), float(index[1]), V.display_size(size), grid)
    return f"{r},{c}"


# ----------------------------------------------------------------------------- the page
INTRO = """# vitscope: probe a Vision Transformer on your own image
Upload an image or pick a sample photograph; every tab below shows the same image through one analysis.
The bundled demo models work offline; type any model name (`dino-vits16`, `timm/<name>`, `hf:<repo>`, a local
folder) to add one: its weights are downloaded only then. *Random weights* builds the architecture untrained.
Every figure can be downloaded with the numbers behind it (PNG, `.npy`, `.csv`)."""


def build_blocks(state: AppState):
    """The Blocks of the page (not launched)."""
    h = handlers(state)
    first = state.model_names[0]
    m0 = state.models.get(first).model
    depth0 = m0.cfg.depth
    sample_names = list(state.samples)
    with gr.Blocks(title="vitscope", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                model = gr.Dropdown(state.model_names, value=first, allow_custom_value=True, label="Model",
                                    elem_id="vs-model")
                random = gr.Checkbox(False, label="Random weights (untrained baseline)")
                info = gr.Markdown(elem_id="vs-model-info")
                upload = gr.File(label="Upload an image (PNG, JPEG, WebP...)", file_types=["image"],
                                 type="filepath", elem_id="vs-upload")
                sample = gr.Dropdown(sample_names, value="cat" if "cat" in sample_names else sample_names[0],
                                     label="...or a sample photograph (used when nothing is uploaded)")
                image_note = gr.Markdown(elem_id="vs-image-note")
                top5 = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="vs-top5")
                top5_note = gr.Markdown()
                top5_files = gr.File(label="predictions (.csv, .npy)", file_count="multiple")
            with gr.Column(scale=2):
                with gr.Tab("Attention maps"):
                    with gr.Row():
                        a_block = gr.Slider(0, depth0 - 1, value=depth0 - 1, step=1, label="block")
                        a_head = gr.Dropdown(list(V.FUSIONS) + [f"head {k}" for k in range(m0.cfg.num_heads)],
                                             value="mean", label="head (or fused over heads)",
                                             allow_custom_value=True)
                        a_query = gr.Dropdown(V.query_choices(m0), value=V.query_choices(m0)[0],
                                              label="query token (patch: click the figure)",
                                              allow_custom_value=True)
                        a_patch = gr.Textbox("", label="clicked patch (row,col)", max_lines=1)
                    with gr.Row():
                        a_alpha = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="overlay alpha")
                        a_cmap = gr.Dropdown(list(CMAPS), value="inferno", label="colour map")
                    a_fig = gr.Image(label="attention (click a patch to use it as the query)", type="filepath",
                                     interactive=False, elem_id="vs-attention")
                    a_heads = gr.Image(label="every head", type="filepath", interactive=False, show_label=False)
                    a_note = gr.Markdown(elem_id="vs-attention-note")
                    a_files = gr.File(label="download (PNG, .npy, .csv)", file_count="multiple")
                with gr.Tab("Rollout & relevance"):
                    with gr.Row():
                        r_method = gr.Radio(list(V.ROLLOUT_METHODS), value="rollout", label="method")
                        r_target = gr.Dropdown([PREDICTED], value=PREDICTED, label="class explained (gradient methods)",
                                               allow_custom_value=True)
                        r_fusion = gr.Dropdown(list(V.FUSIONS), value="mean", label="head fusion (rollout)")
                        r_discard = gr.Slider(0.0, 0.95, value=0.0, step=0.05, label="discard ratio")
                    r_fig = gr.Image(label="rollout / relevance", type="filepath", interactive=False)
                    r_note = gr.Markdown()
                    r_files = gr.File(label="download (PNG, .npy, .csv)", file_count="multiple")
                with gr.Tab("Attribution maps"):
                    with gr.Row():
                        e_method = gr.Dropdown([(f"{m} ({FAMILIES[m]})", m) for m in EXPLAIN_METHODS],
                                               value="gradcam", label="method", allow_custom_value=True)
                        e_target = gr.Dropdown([PREDICTED], value=PREDICTED, label="class explained",
                                               allow_custom_value=True)
                        e_block = gr.Slider(0, depth0 - 1, value=depth0 - 1, step=1,
                                            label="block (CAMs; last block of the attention methods)")
                    e_fig = gr.Image(label="attribution map", type="filepath", interactive=False)
                    e_note = gr.Markdown()
                    e_files = gr.File(label="download (PNG, .npy, .csv)", file_count="multiple")
                with gr.Tab("CLS & registers"):
                    t_block = gr.Slider(0, depth0 - 1, value=depth0 - 1, step=1, label="block")
                    t_fig = gr.Image(label="CLS and register attention over the patches", type="filepath",
                                     interactive=False)
                    t_note = gr.Markdown()
                    t_files = gr.File(label="download (PNG, .npy, .csv)", file_count="multiple")
                with gr.Tab("Attention distance"):
                    d_variant = gr.Radio(["A", "B"], value="A",
                                         label="variant (A: normalised grid, renormalised; B: pixels)")
                    d_fig = gr.Image(label="mean attention distance per head and block", type="filepath",
                                     interactive=False)
                    d_note = gr.Markdown()
                    d_files = gr.File(label="download (PNG, .npy, .csv)", file_count="multiple")
                with gr.Tab("Logit lens"):
                    l_block = gr.Slider(0, depth0 - 1, value=max(depth0 - 2, 0), step=1, label="block")
                    l_fig = gr.Image(label="top class of every patch token", type="filepath",
                                     interactive=False)
                    l_note = gr.Markdown()
                    l_files = gr.File(label="download (PNG, .npy, .csv)", file_count="multiple")
                with gr.Tab("Patching"):
                    with gr.Row():
                        p_corrupt = gr.Dropdown(list(V.PATCH_CORRUPTIONS), value=V.PATCH_CORRUPTIONS[0],
                                                label="corrupted copy", allow_custom_value=True)
                        p_site = gr.Radio(list(V.PATCH_SITES), value="resid_pre", label="activation patched")
                        p_patch = gr.Textbox("", label="clicked patch (row,col; empty: the centre)", max_lines=1)
                    p_fig = gr.Image(label="click a patch: its clean activation is put into the corrupted run",
                                     type="filepath", interactive=False, elem_id="vs-patching")
                    p_chart = gr.Image(label="effect per block", type="filepath", interactive=False,
                                       show_label=False)
                    p_note = gr.Markdown()
                    p_files = gr.File(label="download (PNG, .npy, .csv)", file_count="multiple")
                with gr.Tab("SAE features"):
                    have = bool(state.saes)
                    gr.Markdown(SV.NO_SAE, visible=not have, elem_id="vs-sae-none")
                    with gr.Row(visible=have):
                        s_sae = gr.Dropdown([SV.sae_choice(n, v) for n, v in state.saes.items()],
                                            value=next(iter(state.saes), None), label="sparse autoencoder")
                        s_latent = gr.Textbox("", max_lines=1,        # a Number shows (and sends) 0 when empty
                                              label="latent id (empty: the strongest at the patch or on the image)")
                        s_patch = gr.Textbox("", label="clicked patch (row,col; empty: the whole image)",
                                             max_lines=1)
                    s_fig = gr.Image(label="the latent over the patches (click a patch to list the latents active "
                                           "there)", type="filepath", interactive=False, elem_id="vs-sae",
                                     visible=have)
                    s_table = gr.Dataframe(headers=list(SV.LISTING), interactive=False, visible=have,
                                           label="latents active (click a row to show that latent)",
                                           elem_id="vs-sae-latents")
                    s_note = gr.Markdown(elem_id="vs-sae-note", visible=have)
                    s_files = gr.File(label="download (PNG, .npy, .csv)", file_count="multiple", visible=have)

        src = [model, random, upload, sample]
        ev = {
            "predict": (src, [top5, top5_note, top5_files]),
            "attention": (src + [a_block, a_head, a_query, a_patch, a_alpha, a_cmap], [a_fig, a_heads, a_note, a_files]),
            "rollout": (src + [r_method, r_target, r_fusion, r_discard, a_alpha, a_cmap], [r_fig, r_note, r_files]),
            "explain": (src + [e_method, e_target, e_block, a_alpha, a_cmap], [e_fig, e_note, e_files]),
            "tokens": (src + [t_block, a_cmap], [t_fig, t_note, t_files]),
            "distance": (src + [d_variant], [d_fig, d_note, d_files]),
            "logit_lens": (src + [l_block, a_alpha], [l_fig, l_note, l_files]),
            "patching": (src + [p_patch, p_corrupt, p_site], [p_fig, p_chart, p_note, p_files]),
        }
        if state.saes:                         # the SAE tab's view (and its endpoint) exist when SAEs were given
            ev["sae"] = (src + [s_sae, s_latent, s_patch], [s_fig, s_table, s_note, s_files])
        # the public API: one endpoint per view on a hidden button; blocks are plain numbers there (any model's
        # depth, negative counts from the end), the page's sliders follow the model chosen in the page
        api_block = gr.Number(-1, precision=0, visible=False, label="block")
        api_btn = gr.Button(visible=False)
        for name, (ins, outs) in ev.items():
            ins = [api_block if c in (a_block, t_block, l_block, e_block) else c for c in ins]
            api_btn.click(h[name], ins, outs, api_name=name, show_progress="hidden")
        # the page: what changes triggers which view
        private = dict(api_visibility="private")
        controls = (a_block, a_head, a_query, t_block, l_block, r_target, e_block, e_target, info)
        everything = [(h[n], *ev[n]) for n in ev]

        # a new image or model is checked once: a bad one clears every view and gives one message, no view runs
        views_out = [c for _, _, outs in everything for c in outs]

        def check(up, smp):
            return check_image(state, up, smp, len(views_out))

        def chain(event):
            event = event.then(check, [upload, sample], views_out + [image_note], **private)
            event = event.then(stop_on, [image_note], None, **private)
            for k, (fn, ins, outs) in enumerate(everything):
                event = (event.success if k == 0 else event.then)(fn, ins, outs, **private)
            return event

        chain(model.change(lambda n, r: model_controls(state, n, r), [model, random], list(controls), **private))
        chain(random.change(lambda n, r: model_controls(state, n, r), [model, random], list(controls), **private))
        for trig in (upload.change, sample.change):
            ev0 = trig(lambda: None, None, None, **private)
            chain(ev0)
        gr.on([a_block.release, a_head.change, a_query.change, a_patch.submit, a_alpha.release, a_cmap.change],
              h["attention"], *ev["attention"], **private)
        gr.on([r_method.change, r_target.change, r_fusion.change, r_discard.release, a_alpha.release, a_cmap.change],
              h["rollout"], *ev["rollout"], **private)
        gr.on([e_method.change, e_target.change, e_block.release, a_alpha.release, a_cmap.change],
              h["explain"], *ev["explain"], **private)
        gr.on([t_block.release, a_cmap.change], h["tokens"], *ev["tokens"], **private)
        d_variant.change(h["distance"], *ev["distance"], **private)
        gr.on([l_block.release, a_alpha.release], h["logit_lens"], *ev["logit_lens"], **private)

        def on_click(n, r, evt: gr.SelectData):
            return click_patch(state, n, r, evt.index), PATCH

        a_fig.select(on_click, [model, random], [a_patch, a_query], **private).then(
            h["attention"], *ev["attention"], **private)
        gr.on([p_corrupt.change, p_site.change, p_patch.submit], h["patching"], *ev["patching"], **private)

        def on_patch_click(n, r, evt: gr.SelectData):
            return click_patch(state, n, r, evt.index)

        p_fig.select(on_patch_click, [model, random], [p_patch], **private).then(
            h["patching"], *ev["patching"], **private)
        if state.saes:
            # the SAE tab: another SAE starts from its strongest latent; a clicked patch lists the latents active
            # there; a clicked row of that list shows the latent
            s_sae.change(lambda: "", None, [s_latent], **private).then(h["sae"], *ev["sae"], **private)
            gr.on([s_latent.submit, s_patch.submit], h["sae"], *ev["sae"], **private)
            s_fig.select(on_patch_click, [model, random], [s_patch], **private).then(h["sae"], *ev["sae"],
                                                                                      **private)

            def on_pick(table, evt: gr.SelectData):
                return pick_latent(table, evt.index)

            s_table.select(on_pick, [s_table], [s_latent], **private).then(h["sae"], *ev["sae"], **private)
        chain(demo.load(lambda n, r: model_controls(state, n, r), [model, random], list(controls), **private))
    return demo


def build_app(models=DEMO_MODELS, tmp_dir: str | Path | None = None, device: str | None = None,
              concurrency: int = 4, cache_size: int = 3, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
              saes=None):
    """The Blocks with its queue, and the AppState. Gradio's own folders are set inside the app's folder.
    ``saes``: SAE folders / files or folders of SAEs for the "SAE features" tab (``make_state``)."""
    state = make_state(models, tmp_dir, device, cache_size, max_bytes, max_pixels, saes=saes)
    # Gradio's upload and cache folder is the app's folder: uploads, samples and results all live there
    os.environ["GRADIO_TEMP_DIR"] = str(state.root)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(state.root / "examples")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_blocks(state)
    demo.queue(default_concurrency_limit=max(1, int(concurrency)), max_size=256)
    return demo, state


def launch(demo, state: AppState, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True,
           quiet: bool = False):
    """Start the server. Only the app's folder is served (no ``allowed_paths``); uploads are capped at ``max_bytes``."""
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet,
                       allowed_paths=[], max_file_size=state.max_bytes, show_error=True, ssr_mode=False,
                       footer_links=["api"], inbrowser=False, share=False)

