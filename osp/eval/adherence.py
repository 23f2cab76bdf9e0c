"""Prompt adherence on the moving-shapes domain, measured from pixels without any learned model.

A clip of :mod:`osp.synth.shapes` is one flat-coloured shape on a black or white background, so its
attributes can be read off directly:

* background: the median of the border pixels, nearest of black and white;
* object: the pixels whose RGB distance from that background exceeds half the object's contrast. For
  an anti-aliased edge pixel that mixes a fraction ``a`` of the object, the distance is ``a`` times the
  contrast, so the mask keeps exactly the pixels more than half covered and the mask area matches the
  true area. The contrast comes from a first, fixed-threshold pass;
* colour: the per-channel median of the mask eroded by one pixel (edges and H.264's blurred chroma
  are left out), nearest palette colour by RGB distance;
* shape: the fraction of its bounding box the mask fills, median over frames (square 1, circle
  π/4 ≈ 0.785, upward triangle 1/2);
* direction: least-squares slopes of the mask centroid's x(t) and y(t); the larger total travel
  names the axis and its sign the direction. Too little travel, or an object missing from too many
  frames, is "none", which matches no direction.

:func:`score` compares measurements with expected labels and aggregates accuracy per attribute and
for all attributes at once, separately for training and held-out (color, shape, direction) combos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch

from osp.errors import ShapeError
from osp.synth.shapes import BACKGROUNDS, COLORS, HELD_OUT, ShapeClip, all_combos, caption_for

ATTRIBUTES = ("background", "color", "shape", "direction")
NONE = "none"  # predicted when the attribute cannot be seen; never an expected label

# A pixel this far (RGB distance) from the background may be object in the first pass. The palette's
# weakest contrast is green on black (213), so this keeps every object core and drops codec noise.
FIRST_PASS_DISTANCE = 64.0
# Fewer mask pixels than this is no object in that frame (the smallest object, a 14-pixel triangle,
# covers 98 pixels).
MIN_AREA = 16
# Fill-ratio thresholds at the midpoints of the gaps measured on ground truth, rendered and through
# H.264 (sizes 14–20): triangle 0.50–0.60 (above 1/2: the thin apex falls below half coverage), circle
# 0.73–0.84 (π/4 ≈ 0.785), square 0.94–1.
TRIANGLE_MAX_FILL = 0.66
CIRCLE_MAX_FILL = 0.89
# A colour farther than this from every palette colour is none of them. The closest palette pair,
# red and yellow, is 181 apart; ground truth measures within a few units.
MAX_COLOR_DISTANCE = 90.0
# Slowest speed counted as motion: a third of the data's slowest (1.5 px/frame).
MIN_SPEED = 0.5  # pixels per frame
# The object must be visible in at least this fraction of frames for a direction to be read.
MIN_PRESENCE = 0.5

Split = Literal["train", "heldout", "all"]


class Labels(NamedTuple):
    """The four attributes a prompt asks for (or a video shows)."""

    background: str
    color: str
    shape: str
    direction: str

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape, self.direction) in HELD_OUT

    @classmethod
    def of(cls, clip: ShapeClip) -> Labels:
        return cls(clip.background, clip.color, clip.shape, clip.direction)

    def caption(self, template: int = 0) -> str:
        return caption_for(self.color, self.shape, self.direction, self.background, template)


@dataclass(frozen=True)
class Measurement:
    """What one video shows: the predicted attributes and the raw numbers they came from."""

    background: str
    color: str
    shape: str
    direction: str
    background_rgb: tuple[float, float, float]  # median border pixel
    color_rgb: tuple[float, float, float] | None  # median core pixel of the object
    color_distance: float | None  # RGB distance to the nearest palette colour
    contrast: float | None  # RGB distance between object and background
    fill_ratio: float | None  # median over frames of mask area / bounding-box area
    object_frames: int  # frames in which an object was found
    frames: int
    travel: tuple[float, float] | None  # (dx, dy) pixels over the clip, from the fitted slopes

    @property
    def predicted(self) -> Labels:
        return Labels(self.background, self.color, self.shape, self.direction)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _as_thwc(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """float64 (T, H, W, 3) from osp's layouts: numpy (T, H, W, 3) as rendered, torch (T, 3, H, W)."""
    if isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] != 3:
            raise ShapeError(f"video: a tensor must be (T, 3, H, W), got shape {tuple(video.shape)}")
        array = video.detach().cpu().permute(0, 2, 3, 1).numpy()
    else:
        array = np.asarray(video)
        if array.ndim != 4 or array.shape[3] != 3:
            raise ShapeError(f"video: an array must be (T, H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ShapeError(f"video: must be uint8, got {array.dtype}")
    if min(array.shape) == 0 or array.shape[1] < 3 or array.shape[2] < 3:
        raise ShapeError(f"video: too small to measure, shape {array.shape}")
    return array.astype(np.float64)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    best = int(np.argmin(distances))
    return names[best], float(distances[best])


def _erode(mask: np.ndarray) -> np.ndarray:
    """3×3 binary erosion of (T, H, W) masks; outside the frame counts as background."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    h, w = mask.shape[1:]
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out &= padded[:, dy : dy + h, dx : dx + w]
    return out


def _fill_ratio(mask: np.ndarray) -> float:
    rows, cols = np.nonzero(mask)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    return float(rows.size / box)


def shape_for(fill_ratio: float) -> str:
    if fill_ratio < TRIANGLE_MAX_FILL:
        return "triangle"
    return "circle" if fill_ratio < CIRCLE_MAX_FILL else "square"


def direction_for(travel: tuple[float, float], frames: int) -> str:
    dx, dy = travel
    if max(abs(dx), abs(dy)) < MIN_SPEED * max(frames - 1, 1):
        return NONE
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def measure(video: np.ndarray | torch.Tensor) -> Measurement:
    """Measure one video: numpy ``(T, H, W, 3)`` (as :func:`osp.synth.shapes.render` gives) or torch
    ``(T, 3, H, W)`` (as pipelines and :func:`osp.io.video.read_video` give), uint8 RGB."""
    x = _as_thwc(video)  # (T, H, W, 3)
    frames = x.shape[0]
    # 1. Background: the border ring of every frame; the domain keeps the shape off the border.
    border = np.concatenate(
        [
            x[:, 0].reshape(-1, 3),
            x[:, -1].reshape(-1, 3),
            x[:, 1:-1, 0].reshape(-1, 3),
            x[:, 1:-1, -1].reshape(-1, 3),
        ]
    )
    background_rgb = np.median(border, axis=0)
    background, _ = _nearest(background_rgb, BACKGROUNDS)
    distance = np.linalg.norm(x - background_rgb, axis=-1)  # (T, H, W)

    # 2. Colour and contrast from the core of a coarse mask, then the half-contrast mask.
    coarse = distance > FIRST_PASS_DISTANCE
    core = _erode(coarse)
    core = core if core.any() else coarse
    if not core.any():
        return _no_object(background, background_rgb, frames)
    color_rgb = np.median(x[core], axis=0)
    color, color_distance = _nearest(color_rgb, COLORS)
    if color_distance > MAX_COLOR_DISTANCE:
        color = NONE
    contrast = float(np.linalg.norm(color_rgb - background_rgb))
    if contrast < FIRST_PASS_DISTANCE:  # the "core" is noise around the background colour
        return _no_object(background, background_rgb, frames)
    mask = distance > contrast / 2  # (T, H, W)
    present = mask.reshape(frames, -1).sum(axis=1) >= MIN_AREA
    if not present.any():
        return _no_object(background, background_rgb, frames)

    # 3. Shape: bounding-box fill, median over the frames that show the object.
    fill = float(np.median([_fill_ratio(mask[t]) for t in np.flatnonzero(present)]))

    # 4. Direction: least-squares slope of the centroid track, times the clip's length.
    travel: tuple[float, float] | None = None
    direction = NONE
    times = np.flatnonzero(present)
    if times.size >= max(2, MIN_PRESENCE * frames):
        ys, xs = [], []
        for t in times:
            rows, cols = np.nonzero(mask[t])
            ys.append(rows.mean())
            xs.append(cols.mean())
        slope_x = np.polyfit(times.astype(np.float64), np.array(xs), 1)[0]
        slope_y = np.polyfit(times.astype(np.float64), np.array(ys), 1)[0]
        travel = (float(slope_x * (frames - 1)), float(slope_y * (frames - 1)))
        direction = direction_for(travel, frames)
    return Measurement(
        background=background, color=color, shape=shape_for(fill), direction=direction,
        background_rgb=_rgb(background_rgb), color_rgb=_rgb(color_rgb), color_distance=color_distance,
        contrast=contrast, fill_ratio=fill, object_frames=int(present.sum()), frames=frames, travel=travel,
    )  # fmt: skip


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _no_object(background: str, background_rgb: np.ndarray, frames: int) -> Measurement:
    return Measurement(
        background=background, color=NONE, shape=NONE, direction=NONE, background_rgb=_rgb(background_rgb),
        color_rgb=None, color_distance=None, contrast=None, fill_ratio=None, object_frames=0,
        frames=frames, travel=None,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Scored:
    """One video: what was asked, what it shows, and which attributes match."""

    expected: Labels
    measurement: Measurement

    @property
    def correct(self) -> dict[str, bool]:
        predicted = self.measurement.predicted
        return {name: getattr(predicted, name) == getattr(self.expected, name) for name in ATTRIBUTES}

    @property
    def all_correct(self) -> bool:
        return all(self.correct.values())


@dataclass(frozen=True)
class SplitScore:
    """Accuracy over the videos of one split; ``accuracy`` has each attribute and ``"all"``."""

    count: int
    accuracy: dict[str, float]


def _split_score(items: Sequence[Scored]) -> SplitScore:
    accuracy = {name: sum(s.correct[name] for s in items) / len(items) for name in ATTRIBUTES}
    accuracy["all"] = sum(s.all_correct for s in items) / len(items)
    return SplitScore(len(items), accuracy)


def summarize(scored: Sequence[Scored]) -> dict[str, SplitScore]:
    """Accuracy for "train", "heldout" and "all" videos; a split with no videos is left out."""
    groups = {
        "train": [s for s in scored if not s.expected.held_out],
        "heldout": [s for s in scored if s.expected.held_out],
        "all": list(scored),
    }
    return {name: _split_score(items) for name, items in groups.items() if items}


def score(
    expected: Sequence[Labels | ShapeClip], videos: Sequence[np.ndarray | torch.Tensor]
) -> tuple[list[Scored], dict[str, SplitScore]]:
    """Measure every video, compare with its labels, and summarize per split."""
    if len(expected) != len(videos):
        raise ShapeError(f"score: {len(expected)} labels for {len(videos)} videos")
    scored = [
        Scored(label if isinstance(label, Labels) else Labels.of(label), measure(video))
        for label, video in zip(expected, videos, strict=True)
    ]
    return scored, summarize(scored)


# --------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Request:
    """One video to generate: the prompt of a combo and the noise seed."""

    labels: Labels
    prompt: str
    seed: int


def plan(split: Split, seeds: int, *, base_seed: int = 0, limit: int | None = None) -> list[Request]:
    """``seeds`` videos per (background, color, shape, direction) combo of ``split``.

    Video ``n`` (repeat-major, combos in :func:`all_combos` order) uses noise seed ``base_seed + n``,
    so every video has its own seed and batching several requests into one call changes nothing.
    ``limit`` keeps only the first combos, for a quick check.
    """
    combos = [Labels(*c) for c in all_combos(split)][:limit]
    return [
        Request(labels, labels.caption(template=0), base_seed + r * len(combos) + j)
        for r in range(seeds)
        for j, labels in enumerate(combos)
    ]
