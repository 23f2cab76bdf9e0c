"""``osp data cut`` and ``osp data pan``: random training clips from real videos and still photographs.

``cut``: a real video gives many different small clips: each one starts at a random frame, crops a
random square covering ``min_scale``–1 of the short side at a random position, and resizes it to
``size``.

``pan``: a still photograph becomes a clip by moving a square window across it at constant speed, the
way a camera pans and zooms: the window starts and ends at random positions and sides (``min_scale``–1
of the short side, the end side within ``zoom`` of the start side, the centre travelling at most
``travel`` start sides over the clip), and each frame is the window resized to ``size`` (antialiased,
so large windows do not alias). It gives a video model real texture and colour that short sample videos
lack. Every frame is a true view of the photograph: nothing is interpolated between frames.

Clip ``i`` of a source depends only on ``(seed, source name, i)``. The output folder (``clips/``,
``manifest.jsonl`` whose caption names the source) appears only when complete.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from osp.errors import ConfigError
from osp.io.video import IMAGE_SUFFIXES, Video, read_video, resize_crop, write_video
from osp.io.weights import atomic_dir
from osp.progress import Update

# One clip from a source and the clip's own random stream: (T, 3, size, size) uint8 frames and their fps
MakeClip = Callable[[Video, random.Random], tuple[torch.Tensor, float]]


def _check(count: int, frames: int, size: int, min_scale: float, sample_rate: int = 1) -> None:
    if count < 1 or frames < 1 or size < 8 or sample_rate < 1:
        raise ConfigError("count/frames/size/sample-rate: must be positive (size >= 8)")
    if not 0 < min_scale <= 1:
        raise ConfigError(f"min_scale: must be in (0, 1], got {min_scale}")


def _write_clips(
    kind: str,
    sources: Sequence[Path],
    videos: Sequence[Video],
    out: Path,
    make: MakeClip,
    *,
    count: int,
    seed: int,
    overwrite: bool,
    progress: Update | None,
) -> Path:
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "clips").mkdir()
        rows, done, total = [], 0, count * len(sources)
        for path, video in zip(sources, videos, strict=True):
            for i in range(count):
                rng = random.Random(f"osp-{kind}:{seed}:{Path(path).name}:{i}")
                clip, fps = make(video, rng)
                name = f"clips/{Path(path).stem}_{i:05d}.mp4"
                write_video(tmp / name, clip, fps)
                rows.append(json.dumps({"path": name, "caption": f"a clip of {Path(path).stem}", "fps": fps}))
                done += 1
                if progress is not None:
                    progress(done, total)
        (tmp / "manifest.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return Path(out) / "manifest.jsonl"


def cut_clips(
    sources: Sequence[Path],
    out: Path,
    *,
    count: int,
    frames: int = 17,
    size: int = 64,
    sample_rate: int = 1,
    min_scale: float = 0.3,
    seed: int = 0,
    overwrite: bool = False,
    progress: Update | None = None,
) -> Path:
    """Write ``count`` clips per source video into ``out``; return the manifest path."""
    _check(count, frames, size, min_scale, sample_rate)
    videos = [read_video(path) for path in sources]  # VideoReadError names a bad file before any write
    span = (frames - 1) * sample_rate + 1
    for path, video in zip(sources, videos, strict=True):
        if video.num_frames < span:
            raise ConfigError(f"{path}: {video.num_frames} frames, a clip needs {span}")

    def make(video: Video, rng: random.Random) -> tuple[torch.Tensor, float]:
        h, w = video.height, video.width
        start = rng.randrange(video.num_frames - span + 1)
        side = max(8, round(min(h, w) * rng.uniform(min_scale, 1.0)))
        top, left = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
        clip = video.frames[start : start + span : sample_rate]
        return resize_crop(clip[..., top : top + side, left : left + side], size), video.fps / sample_rate

    return _write_clips(
        "cut", sources, videos, out, make, count=count, seed=seed, overwrite=overwrite, progress=progress
    )


def pan_windows(
    height: int, width: int, frames: int, rng: random.Random, *, min_scale: float, zoom: float, travel: float
) -> list[tuple[int, int, int]]:
    """``frames`` square windows ``(top, left, side)`` inside a ``height`` x ``width`` image, moving at
    constant speed from a random start window to a random end window (see the module docstring)."""
    short = min(height, width)
    lo = max(8, round(short * min_scale))
    side0 = rng.uniform(lo, short)
    side1 = min(short, max(lo, side0 * rng.uniform(1 / (1 + zoom), 1 + zoom)))

    def centre(side: float, near: tuple[float, float] | None) -> tuple[float, float]:
        ys, xs = (side / 2, height - side / 2), (side / 2, width - side / 2)
        if near is not None:  # the end centre: within travel * side0 of the start centre, still inside
            reach = travel * side0
            ys = (max(ys[0], near[0] - reach), min(ys[1], near[0] + reach))
            xs = (max(xs[0], near[1] - reach), min(xs[1], near[1] + reach))
            ys, xs = (ys if ys[0] <= ys[1] else (ys[1], ys[1])), (xs if xs[0] <= xs[1] else (xs[1], xs[1]))
        return rng.uniform(*ys), rng.uniform(*xs)

    c0 = centre(side0, None)
    c1 = centre(side1, c0)
    windows = []
    for t in range(frames):
        a = t / max(1, frames - 1)
        side = side0 + (side1 - side0) * a
        cy, cx = c0[0] + (c1[0] - c0[0]) * a, c0[1] + (c1[1] - c0[1]) * a
        s = max(1, min(short, round(side)))
        top = min(max(0, round(cy - s / 2)), height - s)
        left = min(max(0, round(cx - s / 2)), width - s)
        windows.append((top, left, s))
    return windows


def pan_clips(
    sources: Sequence[Path],
    out: Path,
    *,
    count: int,
    frames: int = 17,
    size: int = 64,
    min_scale: float = 0.3,
    zoom: float = 0.15,
    travel: float = 0.5,
    fps: float = 8.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: Update | None = None,
) -> Path:
    """Write ``count`` panning clips per still image into ``out``; return the manifest path."""
    _check(count, frames, size, min_scale)
    if zoom < 0 or travel < 0:
        raise ConfigError(f"zoom/travel: must be >= 0, got {zoom} / {travel}")
    if fps <= 0:
        raise ConfigError(f"fps: must be > 0, got {fps}")
    for path in sources:  # refused by name, before a video would be decoded to no purpose
        if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(f"{path}: not a still image (osp data cut takes videos)")
    videos = [read_video(path) for path in sources]  # VideoReadError names a bad file before any write
    for path, video in zip(sources, videos, strict=True):
        if min(video.height, video.width) < size:
            raise ConfigError(f"{path}: {video.width}x{video.height} is smaller than the clip side {size}")

    def make(video: Video, rng: random.Random) -> tuple[torch.Tensor, float]:
        image = video.frames[:1]
        windows = pan_windows(
            video.height, video.width, frames, rng, min_scale=min_scale, zoom=zoom, travel=travel
        )
        clip = [resize_crop(image[..., t : t + s, x : x + s], size) for t, x, s in windows]
        return torch.cat(clip), fps

    return _write_clips(
        "pan", sources, videos, out, make, count=count, seed=seed, overwrite=overwrite, progress=progress
    )
