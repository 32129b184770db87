"""Attention heat-map videos (probing-vits): per-frame attention of a video file or a frame folder.

Each frame is resized so that its short side is ``short_side`` pixels (default: the model's input size),
centre-cropped to multiples of the patch size (the model resamples its position embedding to that grid),
normalised with the model's own mean / std, and run in batches. The map of ``query`` (default CLS) at
``block`` (default the last), fused over heads (default mean), is upsampled to the frame, coloured
(inferno by default) and blended; frames are written as PNGs and as an mp4 (H.264 through the ffmpeg
binary that imageio-ffmpeg ships) or a GIF, chosen by the output suffix.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitscope.analysis.api import Drawn, OptionError, Result
from vitscope.analysis.attention.common import (
    AttentionOptions, check_block, map_frame, one_model, options_of, weights_of,
)
from vitscope.analysis.attention.maps import attention_map, collect_patterns
from vitscope.analysis.attention.tokens import normalize_block, resolve_query
from vitscope.runtime import model_meta

def _video_fps(path: Path) -> float | None:
    import imageio.v2 as iio

    try:
        reader = iio.get_reader(str(path))
    except Exception as e:  # imageio raises several types for unreadable files
        raise ValueError(f"cannot read video {path}: {e}") from e
    try:
        meta = reader.get_meta_data()
    finally:
        reader.close()
    if meta.get("fps"):
        return float(meta["fps"])
    if meta.get("duration"):                              # GIF: duration of a frame in ms
        return 1000.0 / float(meta["duration"])
    return None


def read_frames(source: str | Path, max_frames: int | None = None, step: int = 1
                ) -> tuple[Iterator[np.ndarray], float | None, int]:
    """Frames of a video file (mp4, GIF, anything ffmpeg reads) or of a folder of images (natural order).

    Reading goes through ``vitscope.data`` (``video_source`` / ``folder_source``). Returns (iterator of RGB
    uint8 (H, W, 3), fps of the frames returned or None for a folder, number of frames). Frames that cannot
    be decoded are skipped.
    """
    from vitscope.data.decode import ImageDecodeError
    from vitscope.data.folders import folder_source
    from vitscope.data.video import video_source

    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"video or frame folder not found: {src}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if src.is_dir():
        files = folder_source(src, layout="flat")
        if not files.paths:
            raise FileNotFoundError(f"no image files in frame folder {src}")
        idx = list(range(0, len(files.paths), step))[:max_frames]
        fps = None
    else:
        files = video_source(src, stride=step, max_frames=max_frames)
        idx = list(range(len(files.ids)))
        fps = _video_fps(src)
        fps = fps / step if fps else None

    def gen():
        for i in idx:
            try:
                yield np.asarray(files.load(i).convert("RGB"), dtype=np.uint8)
            except (ImageDecodeError, FileNotFoundError):
                continue

    return gen(), fps, len(idx)


def frame_to_tensor(frame: np.ndarray, model, short_side: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """RGB frame -> (normalised (3, h, w) with h, w multiples of the patch size, the resized uint8 crop)."""
    from vitscope.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

    p = model.cfg.patch_size
    short = short_side or min(model.cfg.img_size)
    img = Image.fromarray(frame)
    w, h = img.size
    s = short / min(w, h)
    nw, nh = max(p, round(w * s)), max(p, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC)
    cw, ch = (nw // p) * p, (nh // p) * p
    left, top = (nw - cw) // 2, (nh - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    arr = np.asarray(img, dtype=np.uint8)
    pcfg = getattr(model, "preprocess_cfg", None)
    mean = torch.tensor(pcfg.mean if pcfg else IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(pcfg.std if pcfg else IMAGENET_STD).view(3, 1, 1)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
    return (x - mean) / std, arr


def video_attention_maps(model, frames: Iterable[np.ndarray], block: int = -1, query="cls", fusion: str = "mean",
                         short_side: int | None = None, batch_size: int = 8, device=None
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (resized frame uint8 (h, w, 3), attention map (rows, cols) float) for every frame."""
    b = normalize_block(block, model.cfg.depth)
    resolve_query(query, model.token_layout(b), model.cfg)
    device = device or model.device
    buf_x, buf_f = [], []

    def run():
        x = torch.stack(buf_x).to(device=device, dtype=model.dtype)
        grid = (x.shape[-2] // model.cfg.patch_size, x.shape[-1] // model.cfg.patch_size)
        pat = collect_patterns(model, x, [b])[b]
        maps = attention_map(pat, model.token_layout(b, grid), query, fusion=fusion, cfg=model.cfg)
        out = list(zip(buf_f, maps.float().cpu().numpy()))
        buf_x.clear()
        buf_f.clear()
        return out

    shape = None
    for fr in frames:
        x, arr = frame_to_tensor(fr, model, short_side)
        if shape is not None and x.shape != shape:      # frame size changed mid-stream: flush first
            yield from run()
        shape = x.shape
        buf_x.append(x)
        buf_f.append(arr)
        if len(buf_x) == batch_size:
            yield from run()
    if buf_x:
        yield from run()


class VideoWriter:
    """Streaming writer: mp4 (H.264 via imageio-ffmpeg, cropped to even sides) or GIF, by the suffix."""

    def __init__(self, path: str | Path, fps: float = 10.0) -> None:
        self.path, self.fps = Path(path), float(fps)
        suffix = self.path.suffix.lower()
        if suffix not in (".gif", ".mp4", ".mov", ".mkv", ".avi"):
            raise ValueError(f"video output must end in .mp4, .mov, .mkv, .avi or .gif, got {self.path.name}")
        self.gif = suffix == ".gif"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._frames: list[Image.Image] = []
        self._writer = None
        self._size: tuple[int, int] | None = None
        self.n = 0

    def append(self, frame: np.ndarray) -> None:
        if self.gif:
            self._frames.append(Image.fromarray(frame))
        else:
            if self._writer is None:
                import imageio.v2 as iio

                h, w = frame.shape[:2]
                self._size = (h - h % 2, w - w % 2)              # yuv420p needs even sides
                self._writer = iio.get_writer(str(self.path), fps=self.fps, codec="libx264",
                                              pixelformat="yuv420p", macro_block_size=1, quality=7)
            h2, w2 = self._size
            self._writer.append_data(np.ascontiguousarray(frame[:h2, :w2]))
        self.n += 1

    def close(self) -> Path:
        if self.n == 0:
            raise ValueError("no frames to write")
        if self.gif:
            ims = self._frames
            ims[0].save(self.path, save_all=True, append_images=ims[1:],
                        duration=max(1, int(round(1000.0 / self.fps))), loop=0)
            self._frames = []
        elif self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.path

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: float = 10.0) -> Path:
    """Write RGB uint8 frames as mp4 or GIF, by the suffix of ``path``."""
    with VideoWriter(path, fps) as w:
        for f in frames:
            w.append(f)
    return Path(path)


def attention_video(model, source: str | Path, out: str | Path | None, block: int = -1, query="cls",
                    fusion: str = "mean", short_side: int | None = None, cmap: str = "inferno", alpha: float = 0.6,
                    layout: str = "overlay", fps: float | None = None, max_frames: int | None = None,
                    step: int = 1, batch_size: int = 8, save_frames: bool = True, progress: bool = True,
                    device=None) -> dict:
    """Heat-map video of ``source`` -> ``out`` (.mp4 or .gif), plus ``<out stem>_frames/*.png`` and the maps.

    ``layout``: ``"overlay"`` (map blended over the frame) or ``"side"`` (frame | heat map). ``out=None`` writes
    nothing (the maps and the sample frames only).
    Frames are streamed to the writer (a GIF is assembled in memory). Returns {"video", "frames_dir",
    "maps" (F, rows, cols), "fps", "n_frames", "samples" (up to 4 rendered frames for a summary figure)}.
    """
    from tqdm.auto import tqdm

    from vitscope.viz.attention import heatmap_frame

    out = None if out is None else Path(out)
    frames, src_fps, n = read_frames(source, max_frames=max_frames, step=step)
    fps = fps or src_fps or 10.0
    save_frames = save_frames and out is not None
    frames_dir = out.with_name(out.stem + "_frames") if out is not None else None
    if save_frames:
        frames_dir.mkdir(parents=True, exist_ok=True)
    maps, samples, last = [], [], None
    writer = VideoWriter(out, fps) if out is not None else None
    bar = tqdm(total=n, desc="video attention", unit="frame", disable=not progress)
    try:
        for k, (fr, m) in enumerate(video_attention_maps(model, frames, block, query, fusion, short_side,
                                                          batch_size, device)):
            img = heatmap_frame(fr, m, cmap=cmap, alpha=alpha, layout=layout)
            if save_frames:
                Image.fromarray(img).save(frames_dir / f"frame_{k:05d}.png")
            if writer is not None:
                writer.append(img)
            maps.append(m)
            if k < 3:
                samples.append((k, img))
            last = (k, img)
            bar.update(1)
    finally:
        bar.close()
    if not maps:
        raise ValueError(f"no frames could be read from {source}")
    if writer is not None:
        writer.close()
    shapes = {m.shape for m in maps}
    maps_arr = np.stack(maps) if len(shapes) == 1 else np.array(maps, dtype=object)
    keep = samples + ([last] if last[0] >= 3 else [])
    return {"video": out, "frames_dir": frames_dir if save_frames else None, "maps": maps_arr, "fps": fps,
            "n_frames": len(maps), "samples": keep}


# ----------------------------------------------------------------------------- the evaluation entry point
LAYOUTS = ("overlay", "side")


@dataclass
class VideoOptions(AttentionOptions):
    """Options of :func:`evaluate` (``vitscope video``)."""

    block: int = -1                     # -1: the last
    query: str = "cls"                  # cls, reg<k>, mean, centre, ...
    fusion: str = "mean"                # over heads: mean, max, min or sum
    short_side: int | None = None       # frames resized to this short side (default: the model's input size)
    layout: str = "overlay"             # overlay (map over the frame) or side (frame | map)
    cmap: str = "inferno"
    opacity: float = 0.6
    fps: float | None = None            # of the video written (default: the source's)
    max_frames: int | None = None       # stop after this many frames
    step: int = 1                       # every k-th frame
    batch_size: int = 8
    video: str | None = None            # write the heat-map video here (.mp4 / .gif); None: the maps only
    save_frames: bool = True            # with video: also the PNG frames in <video stem>_frames/
    progress: bool = False

    def validate(self) -> None:
        from vitscope.analysis.attention.maps import HEAD_FUSIONS

        self.check_int("block", minimum=None)
        self.check_query()
        self.check_choice("fusion", HEAD_FUSIONS)
        self.check_int("short_side", optional=True)
        self.check_choice("layout", LAYOUTS)
        self.check_number("fps", low=0, low_open=True, optional=True)
        self.check_int("max_frames", optional=True)
        self.check_int("step")
        self.check_int("batch_size")
        if self.video is not None:
            self.video = str(self.video)
            if Path(self.video).suffix.lower() not in (".gif", ".mp4", ".mov", ".mkv", ".avi"):
                raise OptionError("video", f"`video` must end in .mp4, .mov, .mkv, .avi or .gif, got {self.video!r}")
        self.check_display()

    def as_json(self, exclude=()) -> str:
        return super().as_json(tuple(exclude) + ("video", "save_frames"))


def evaluate(models, data=None, options: VideoOptions | None = None, **overrides) -> Result:
    """Per-frame attention of a video file or a folder of frames (probing-vits), and with ``options.video`` the
    heat-map video (and its PNG frames), written while the frames stream through.

    Args:
        models: one model (or ``{label: model}`` with one entry).
        data: a video file (mp4, GIF, anything ffmpeg reads) or a folder of frame images.
        options: :class:`VideoOptions` (keyword overrides are applied on top).

    Returns a :class:`~vitscope.analysis.api.Result`: one row per frame x patch (``metric`` ``attention``,
    ``frame``, ``row``, ``col``); ``arrays["maps"]`` (frames, rows, cols); ``meta``: ``fps``, ``n_frames``,
    ``video``. ``figures()``: a strip of the first and last rendered frames.
    """
    import pandas as pd

    from vitscope.analysis.api import tidy_table

    opts = options_of(VideoOptions, options, overrides)
    label, model = one_model(models)
    if data is None:
        raise ValueError("no video: give a video file or a folder of frames")
    b = check_block(model, opts.block)
    resolve_query(opts.query, model.token_layout(b), model.cfg)
    res = attention_video(model, data, opts.video, b, opts.query, opts.fusion, opts.short_side, opts.cmap,
                          opts.opacity, opts.layout, opts.fps, opts.max_frames, opts.step, opts.batch_size,
                          save_frames=opts.save_frames, progress=opts.progress)
    maps = res["maps"]
    if maps.dtype != object:                                     # every frame on one grid
        df = map_frame(maps, metric="attention", frame=list(range(len(maps))))
    else:
        df = pd.concat([map_frame(np.asarray(m)[None], metric="attention", frame=k) for k, m in enumerate(maps)],
                       ignore_index=True)
    df.insert(0, "model", label)
    df.insert(1, "block", b)
    table = tidy_table(df, "video", opts, dataset=str(data), weights={label: weights_of(model)})
    summary = (f"{label}: {opts.query} attention at block {b} over {res['n_frames']} frame(s) at {res['fps']:g} fps"
               + (f" -> {res['video']}" if res["video"] is not None else ""))
    arrays = {"maps": maps, "samples": res["samples"]}
    meta = {"model": label, "block": b, "source": str(data), "fps": res["fps"], "n_frames": res["n_frames"],
            "video": res["video"], "frames_dir": res["frames_dir"], "record": model_meta(model, label)}
    return Result("video", table, summary, opts, arrays, meta, draw=_draw)


def _draw(result: Result) -> dict:
    """The first three and the last rendered frames."""
    from vitscope.viz.attention import plot_frames

    o, m, a = result.options, result.meta, result.arrays
    fig = plot_frames([f for _, f in a["samples"]], [f"frame {k}" for k, _ in a["samples"]],
                      title=f"{o.query} attention, block {m['block']}, heads fused by {o.fusion}")
    maps = a["maps"]
    name = f"{Path(m['video']).stem}_summary" if m["video"] is not None else "video_summary"
    return {name: Drawn(fig, arrays={"maps": maps} if maps.dtype != object else {},
                        meta={**m["record"], "source": m["source"], "block": o.block, "query": o.query,
                              "fusion": o.fusion, "fps": m["fps"], "n_frames": m["n_frames"],
                              "video": None if m["video"] is None else str(m["video"])})}
