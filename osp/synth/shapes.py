"""The moving-shapes domain: one colored shape sliding across a plain background.

Every clip is drawn from a :class:`ShapeClip` (its labels plus geometry), deterministically from a
seed, so the same seed always gives the same pixels and the same caption. Shapes are rendered at 4×
resolution and box-filtered down, so edges are anti-aliased the way a camera would see them.

Six (color, shape, direction) combinations never appear in training data, on either background: a
model that draws them has composed attributes it only saw apart.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

Background = Literal["black", "white"]
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255)}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
}
SHAPES = ("circle", "square", "triangle")
# Unit steps in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "triangle", "up"),
        ("green", "circle", "left"),
        ("blue", "square", "right"),
        ("yellow", "circle", "down"),
        ("yellow", "square", "up"),
        ("blue", "triangle", "left"),
    }
)

FRAMES = 17
SIZE = 64
FPS = 8.0
SHAPE_SIZE = (14, 20)  # pixels: circle diameter, square side, triangle base and height
SPEED = (1.5, 2.5)  # pixels per frame
_SUPERSAMPLE = 4

_ADVERB = {"left": "left", "right": "right", "up": "upward", "down": "downward"}
_TEMPLATES = (
    "a {color} {shape} moving {dir} on a {bg} background",
    "{color} {shape} moves {adv}, {bg} background",
    "on a {bg} background a {color} {shape} slides {dir}",
    "a {shape}, {color}, travels {dir} across a {bg} background",
    "{bg} background, a {color} {shape} drifting {adv}",
    "the {color} {shape} goes {dir} over a {bg} background",
)


@dataclass(frozen=True)
class ShapeClip:
    """The labels and geometry of one clip; ``render`` turns it into frames."""

    background: str
    color: str
    shape: str
    direction: str
    size: float  # pixels
    speed: float  # pixels per frame
    x0: float  # centre at frame 0, pixels
    y0: float
    caption: str

    @property
    def combo(self) -> tuple[str, str, str]:
        return (self.color, self.shape, self.direction)

    @property
    def held_out(self) -> bool:
        return self.combo in HELD_OUT

    def centre(self, frame: int) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        return self.x0 + dx * self.speed * frame, self.y0 + dy * self.speed * frame

    def labels(self) -> dict[str, object]:
        return asdict(self)


def caption_for(color: str, shape: str, direction: str, background: str, template: int = 0) -> str:
    return _TEMPLATES[template % len(_TEMPLATES)].format(
        color=color, shape=shape, dir=direction, adv=_ADVERB[direction], bg=background
    )


def all_combos(split: Literal["train", "heldout", "all"]) -> list[tuple[str, str, str, str]]:
    """(background, color, shape, direction) tuples of a split, in a fixed order."""
    combos = [
        (bg, color, shape, direction)
        for bg in BACKGROUNDS
        for color in COLORS
        for shape in SHAPES
        for direction in DIRECTIONS
    ]
    if split == "all":
        return combos
    keep_held = split == "heldout"
    return [c for c in combos if (c[1:] in HELD_OUT) == keep_held]


def make_clip(
    rng: random.Random,
    background: str,
    color: str,
    shape: str,
    direction: str,
    *,
    frames: int = FRAMES,
    size: int = SIZE,
    template: int | None = None,
) -> ShapeClip:
    """Random size, speed and a start from which the shape stays wholly in frame for every frame."""
    extent = rng.uniform(*SHAPE_SIZE)
    speed = rng.uniform(*SPEED)
    travel = speed * (frames - 1)
    half = extent / 2 + 1  # one pixel of margin for the anti-aliased edge
    dx, dy = DIRECTIONS[direction]

    def start(step: int) -> float:
        lo, hi = half, size - half
        if step > 0:
            hi -= travel
        elif step < 0:
            lo += travel
        if hi < lo:
            raise ValueError(
                f"a {size}-pixel frame cannot hold {frames} frames of motion at {speed:.2f} px/frame"
            )
        return rng.uniform(lo, hi)

    x0, y0 = start(dx), start(dy)
    template = rng.randrange(len(_TEMPLATES)) if template is None else template
    return ShapeClip(
        background, color, shape, direction, extent, speed, x0, y0,
        caption_for(color, shape, direction, background, template),
    )  # fmt: skip


def random_clip(
    rng: random.Random, split: Literal["train", "heldout", "all"] = "train", **kwargs: int
) -> ShapeClip:
    background, color, shape, direction = rng.choice(all_combos(split))
    return make_clip(rng, background, color, shape, direction, **kwargs)


def _polygon(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]] | None:
    h = extent / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # apex up, base at the bottom; the bounding box is extent × extent
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return None


def render(clip: ShapeClip, *, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames."""
    s = _SUPERSAMPLE
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        image = Image.new("RGB", (size * s, size * s), BACKGROUNDS[clip.background])
        draw = ImageDraw.Draw(image)
        cx, cy = clip.centre(t)
        cx, cy, extent = cx * s, cy * s, clip.size * s
        polygon = _polygon(clip.shape, cx, cy, extent)
        if polygon is None:
            h = extent / 2
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=COLORS[clip.color])
        else:
            draw.polygon(polygon, fill=COLORS[clip.color])
        out[t] = np.asarray(image.resize((size, size), Image.Resampling.BOX))
    return out
