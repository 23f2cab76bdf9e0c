"""``osp data cut``: random training clips cut from real videos (random time, crop scale and position).

A real video gives many different small clips: each one starts at a random frame, crops a random
square covering ``min_scale``–1 of the short side at a random position, and resizes it to ``size``.
Clip ``i`` of a source depends only on ``(seed, source name, i)``. The output folder (``clips/``,
``manifest.jsonl`` whose caption names the source) appears only when complete.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from osp.errors import ConfigError
from osp.io.video import read_video, resize_crop, write_video
from osp.io.weights import atomic_dir
from osp.progress import Update


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
    """Write ``count`` clips per source into ``out``; return the manifest path."""
    if count < 1 or frames < 1 or size < 8 or sample_rate < 1:
        raise ConfigError("count/frames/size/sample-rate: must be positive (size >= 8)")
    if not 0 < min_scale <= 1:
        raise ConfigError(f"min_scale: must be in (0, 1], got {min_scale}")
    out = Path(out)
    videos = [read_video(path) for path in sources]  # VideoReadError names a bad file before any write
    span = (frames - 1) * sample_rate + 1
    for path, video in zip(sources, videos, strict=True):
        if video.num_frames < span:
            raise ConfigError(f"{path}: {video.num_frames} frames, a clip needs {span}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "clips").mkdir()
        rows, done, total = [], 0, count * len(sources)
        for path, video in zip(sources, videos, strict=True):
            h, w = video.height, video.frames.shape[-1]
            for i in range(count):
                rng = random.Random(f"osp-cut:{seed}:{Path(path).name}:{i}")
                start = rng.randrange(video.num_frames - span + 1)
                side = max(8, round(min(h, w) * rng.uniform(min_scale, 1.0)))
                top, left = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
                clip = video.frames[start : start + span : sample_rate]
                name = f"clips/{Path(path).stem}_{i:05d}.mp4"
                fps = video.fps / sample_rate
                write_video(
                    tmp / name, resize_crop(clip[..., top : top + side, left : left + side], size), fps
                )
                rows.append(json.dumps({"path": name, "caption": f"a clip of {Path(path).stem}", "fps": fps}))
                done += 1
                if progress is not None:
                    progress(done, total)
        (tmp / "manifest.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out / "manifest.jsonl"
