"""The frames of a video file, read through imageio (ffmpeg for mp4 and friends, Pillow for GIF).

``ids`` are ``clip.mp4#frame=K`` with K the frame number in the file. Options: ``start`` (first frame),
``stride`` (every k-th frame), ``max_frames``. A folder of frame images is read as a flat folder instead
(natural order: ``frame2`` before ``frame10``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from vitscope.data.decode import ImageDecodeError


def _open_reader(path: str):
    import imageio.v2 as iio

    return iio.get_reader(path)


def count_frames(path: str | Path) -> int:
    """The number of frames of a video (exact: ffmpeg counts them)."""
    try:
        reader = _open_reader(str(path))
    except Exception as e:  # imageio raises many kinds for unreadable files
        raise ValueError(f"cannot read {path} as a video: {e}") from e
    try:
        n = reader.count_frames() if hasattr(reader, "count_frames") else len(reader)
        if n is None or (isinstance(n, float) and not math.isfinite(n)):
            n = sum(1 for _ in reader)
        return int(n)
    finally:
        reader.close()


def read_frames(path: str | Path, indices=None) -> np.ndarray:
    """Frames of a video as a (T, H, W, 3) uint8 array (all frames, or those of ``indices`` in order)."""
    reader = _open_reader(str(path))
    try:
        if indices is None:
            frames = [np.asarray(f) for f in reader]
        else:
            frames = [np.asarray(reader.get_data(int(k))) for k in indices]
    finally:
        reader.close()
    return np.stack([_rgb(f) for f in frames])


def _rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return a[..., :3].astype(np.uint8, copy=False)


class VideoSource:
    """Frames of one video file as samples (no labels)."""

    def __init__(self, path: str | Path, start: int = 0, stride: int = 1, max_frames: int | None = None) -> None:
        self.path = str(path)
        if stride < 1 or start < 0:
            raise ValueError(f"need stride >= 1 and start >= 0, got stride={stride}, start={start}")
        n = count_frames(path)
        frames = list(range(start, n, stride))
        if max_frames is not None:
            frames = frames[:max_frames]
        if not frames:
            raise ValueError(f"{path} has no frames to read ({n} frames, start={start}, stride={stride})")
        self.frames = frames
        self.ids = [f"{self.path}#frame={k}" for k in frames]
        self.paths = self.ids
        self.labels = np.full(len(frames), -1, dtype=np.int64)
        self.classes: list[str] = []
        self.description = f"video {self.path} ({len(frames)} of {n} frames)"
        self._reader = None
        self._pid = os.getpid()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_reader"] = None  # each process opens its own reader
        return d

    def load(self, i: int) -> Image.Image:
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own reader
            self._reader, self._pid = None, os.getpid()
        if self._reader is None:
            self._reader = _open_reader(self.path)
        try:
            frame = self._reader.get_data(self.frames[i])
        except (IndexError, RuntimeError, OSError, ValueError) as e:
            raise ImageDecodeError(f"{self.ids[i]} could not be decoded: {e}", "corrupt") from e
        return Image.fromarray(_rgb(np.asarray(frame)))


def video_source(path: str | Path, start: int = 0, stride: int = 1, max_frames: int | None = None) -> VideoSource:
    return VideoSource(path, start=start, stride=stride, max_frames=max_frames)
