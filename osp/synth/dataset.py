"""``osp data synth``: write moving-shape clips as mp4 files plus a training manifest.

The folder holds ``clips/NNNNNN.mp4``, ``manifest.jsonl`` (path + caption + fps: the format ``osp
train`` reads for real data) and ``labels.jsonl`` (every clip's labels and geometry, for evaluation).
Clip ``i`` depends only on ``(seed, i)``, so a larger ``count`` extends a smaller one. The folder is
written under a temporary name and renamed when complete: an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from osp.errors import ConfigError
from osp.io.video import write_video
from osp.io.weights import atomic_dir
from osp.progress import Update
from osp.synth.shapes import FPS, FRAMES, SIZE, ShapeClip, random_clip, render

Split = Literal["train", "heldout", "all"]


@dataclass(frozen=True)
class SynthResult:
    folder: Path
    manifest: Path
    labels: Path
    count: int


def clip_rng(seed: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and Python versions.
    return random.Random(f"osp-synth:{seed}:{index}")


def synth_clips(
    count: int, seed: int, split: Split, frames: int = FRAMES, size: int = SIZE
) -> list[ShapeClip]:
    return [random_clip(clip_rng(seed, i), split, frames=frames, size=size) for i in range(count)]


def write_synth_dataset(
    out: Path,
    *,
    count: int,
    seed: int = 0,
    split: Split = "train",
    frames: int = FRAMES,
    size: int = SIZE,
    overwrite: bool = False,
    progress: Update | None = None,
) -> SynthResult:
    if count < 1:
        raise ConfigError(f"count: must be at least 1, got {count}")
    if frames < 1 or size < 32:
        raise ConfigError(f"frames/size: need frames >= 1 and size >= 32, got {frames} and {size}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "clips").mkdir()
        manifest_rows, label_rows = [], []
        for i, clip in enumerate(synth_clips(count, seed, split, frames, size)):
            name = f"clips/{i:06d}.mp4"
            frames_thwc = torch.from_numpy(render(clip, frames=frames, size=size))
            write_video(tmp / name, frames_thwc.permute(0, 3, 1, 2), FPS)
            manifest_rows.append(json.dumps({"path": name, "caption": clip.caption, "fps": FPS}))
            label_rows.append(json.dumps({"path": name, **clip.labels()}))
            if progress is not None:
                progress(i + 1, count)
        (tmp / "manifest.jsonl").write_text("\n".join(manifest_rows) + "\n", encoding="utf-8")
        (tmp / "labels.jsonl").write_text("\n".join(label_rows) + "\n", encoding="utf-8")
    out = Path(out)
    return SynthResult(out, out / "manifest.jsonl", out / "labels.jsonl", count)


def read_labels(path: Path) -> list[ShapeClip]:
    """The clips of a ``labels.jsonl``; their ``path`` is relative to the file's folder."""
    clips = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        row.pop("path", None)
        try:
            clips.append(ShapeClip(**row))
        except TypeError as err:
            raise ConfigError(f"{path}:{n}: not a synth label row ({err})") from None
    return clips
