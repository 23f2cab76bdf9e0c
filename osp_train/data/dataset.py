"""The training dataset: manifest rows → clips ``(C, T, H, W)`` in [-1, 1], deterministic per epoch.

Randomness (clip start, flip, joint images) comes from one ``torch.Generator`` per
``(seed, epoch, index)``, never from global state, so a resumed run draws exactly the samples the
interrupted run would have, whatever the worker count.

Images and videos (Open-Sora-Plan v1.0 joint training, ``use_image_num``):

* ``use_image_num == 0``: every manifest row is an item. An image row is a 1-frame video
  ``(C, 1, H, W)``; a video row gives ``num_frames`` frames. Mixed rows batch through a bucket with
  1 frame (:class:`~osp_train.data.buckets.BucketSampler`) or :func:`~osp_train.data.buckets.pad_collate`.
* ``use_image_num > 0``: the items are the video rows only. Each item also carries ``images``
  ``(use_image_num, C, H, W)`` at the clip's size, with ``image_captions`` / ``image_labels``: drawn at
  random from the manifest's image rows when it has any, else random frames of the item's own clip with
  its caption (v1.0's ``use_img_from_vid``; those frames are already decoded, so they cost nothing,
  whereas one frame at a random point of *another* video means decoding that file up to it, per image).
  v1.0 concatenates them after the video frames along T; keeping them apart lets the trainer choose.

Unreadable files (missing, empty, corrupt, truncated, too short) never crash a run: the request is
served by the next readable item (index+1, +2, ... wrapping), and the failure travels in the item's
``skipped`` list so the main process can count skips across DataLoader workers with a
:class:`SkipCounter`. Each worker also checks its own count and raises :class:`UnreadableDataError` when
more than ``max_skip_fraction`` of its requests failed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from pydantic import Field, field_validator
from torch.utils.data import Dataset

from osp.config import Config
from osp.errors import ConfigError, VideoReadError
from osp.io.video import STILL_FPS, probe_video, read_video, to_model
from osp_train.data.manifest import ManifestEntry, read_manifest

Shape = tuple[int, int, int]  # (frames, height, width) in pixels

# Skip fractions over fewer requests than this are noise (one bad file in the first three is 33%).
MIN_REQUESTS = 20
_EXAMPLES = 5  # skipped files named in the error message


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers; unlike ``hash()`` it is the same in every process."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def clip_span(frames: int, sample_rate: int) -> int:
    """Source frames a clip of ``frames`` frames at ``sample_rate`` covers."""
    return (frames - 1) * sample_rate + 1


class ColorJitter(Config):
    """A random hue rotation and chroma scale, one per clip (every frame alike), luma kept.

    Rotates the (I, Q) chroma plane of YIQ by up to ``hue`` turns either way and scales it by a factor
    drawn from ``saturation``: more colours for an autoencoder trained on footage of few. Not for
    captioned or labelled diffusion training, whose captions and labels can name colours.
    """

    p: float = Field(0.5, ge=0, le=1)  # probability that a clip is jittered
    hue: float = Field(0.5, ge=0, le=0.5)  # largest rotation, in turns (0.5: any hue)
    saturation: tuple[float, float] = (1.0, 1.0)  # chroma scale factor, drawn uniformly in [lo, hi]

    @field_validator("saturation")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError(f"saturation: expected 0 <= lo <= hi, got {list(value)}")
        return value


# RGB -> YIQ (NTSC); the inverse is computed, so the two are exact inverses in float64.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
                    dtype=torch.float64)  # fmt: skip


def jitter_color(frames: torch.Tensor, turns: float, scale: float) -> torch.Tensor:
    """(T, 3, H, W) uint8 with its chroma rotated by ``turns`` and scaled by ``scale``; luma unchanged."""
    c, s = scale * math.cos(2 * math.pi * turns), scale * math.sin(2 * math.pi * turns)
    chroma = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)
    matrix = (torch.linalg.inv(_YIQ) @ chroma @ _YIQ).float()
    out = torch.einsum("ij,tjhw->tihw", matrix, frames.float())
    return out.round_().clamp_(0, 255).to(torch.uint8)


class DataConfig(Config):
    """What the dataset reads and how it cuts clips."""

    manifest: Path
    num_frames: int = Field(17, gt=0)  # the VAE's 4n+1 rule is the VAE's to check
    sample_rate: int = Field(1, ge=1)  # take every sample_rate-th source frame
    size: tuple[int, int] = (256, 256)  # (H, W) after resize-to-cover + center crop
    random_flip: bool = True  # horizontal flip with probability 0.5
    color_jitter: ColorJitter | None = None  # per-clip hue rotation / chroma scale (autoencoders)
    use_image_num: int = Field(0, ge=0)  # extra images per video item (joint image-video training)
    max_skip_fraction: float = Field(0.05, ge=0.0, le=1.0)
    buckets: tuple[tuple[int, int, int], ...] | None = None  # (frames, H, W) shapes for BucketSampler
    seed: int = 0

    @field_validator("size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"height and width must be >= 1, got {value}")
        return value

    @field_validator("buckets")
    @classmethod
    def _valid_buckets(cls, value: tuple[Shape, ...] | None) -> tuple[Shape, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one (frames, H, W) bucket, or leave buckets out")
        for shape in value:
            if min(shape) < 1:
                raise ValueError(f"bucket {shape}: frames, H and W must be >= 1")
        if len(set(value)) != len(value):
            raise ValueError(f"buckets repeat a shape: {list(value)}")
        return value


class Skip(NamedTuple):
    """One request that its own file could not serve."""

    path: str
    reason: str


class SampleKey(NamedTuple):
    """A dataset index with the shape to produce it at and, optionally, the epoch (from a sampler)."""

    item: int  # not ``index``, which would shadow tuple.index
    shape: Shape | None = None
    epoch: int | None = None


class UnreadableDataError(ConfigError):
    """Too many manifest files cannot be read; the message gives counts and the first few files."""


class SkipCounter:
    """Counts requests and skips; raises when skips exceed ``max_fraction`` of at least ``min_requests``.

    One counter lives in each process (plain integers, picklable, no locks): the dataset's counts what
    its worker saw, and the trainer's counts whole batches through :meth:`update`.
    """

    def __init__(self, max_fraction: float, min_requests: int = MIN_REQUESTS, source: str = "dataset"):
        self.max_fraction = max_fraction
        self.min_requests = min_requests
        self.source = source
        self.requests = 0
        self.skipped = 0
        self.examples: list[Skip] = []

    @property
    def fraction(self) -> float:
        return self.skipped / self.requests if self.requests else 0.0

    def record(self, requests: int, skips: Sequence[Skip]) -> None:
        """Add ``requests`` served samples, of which ``skips`` were served by another file; then check."""
        self.requests += requests
        self.skipped += len(skips)
        self.examples.extend(skips[: _EXAMPLES - len(self.examples)])
        self.check()

    def update(self, batch: Mapping[str, Any]) -> None:
        """Count one collated batch (from :func:`~osp_train.data.buckets.collate`) in this process."""
        images = batch["images"].shape[1] if "images" in batch else 0
        self.record(len(batch["index"]) * (1 + images), batch["skipped"])

    def check(self) -> None:
        if self.requests >= self.min_requests and self.fraction > self.max_fraction:
            raise UnreadableDataError(
                f"{self.source}: {self.skipped} of {self.requests} samples read so far came from unreadable "
                f"files ({self.fraction:.0%} > max_skip_fraction={self.max_fraction:g}); "
                f"first: {describe(self.examples)}"
            )

    def summary(self) -> str:
        return f"{self.skipped} of {self.requests} samples skipped ({self.fraction:.1%})"


def describe(skips: Sequence[Skip]) -> str:
    return "; ".join(f"{skip.path}: {skip.reason}" for skip in skips)


def _reason(err: OSError, path: Path) -> str:
    # VideoReadError messages start with the path; the Skip already names it.
    text = str(err)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else f"{type(err).__name__}: {text}"


class VideoDataset(Dataset[dict[str, Any]]):
    """Items from a manifest: ``dataset[i]`` or ``dataset[(i, (t, h, w))]`` (a bucket's shape).

    An item is a dict: ``video`` (C, T, H, W) float in [-1, 1], ``caption`` (str) or ``label`` (int),
    ``index`` (the item actually served), ``size`` (t, h, w), ``fps`` (after ``sample_rate``), ``path``,
    ``skipped`` (list of :class:`Skip`), and with ``use_image_num`` also ``images`` (n, C, H, W) and
    ``image_captions`` / ``image_labels``. Image items are always 1 frame, whatever shape is asked.
    """

    def __init__(self, config: DataConfig, entries: Sequence[ManifestEntry] | None = None):
        self.config = config
        self.entries = list(read_manifest(config.manifest) if entries is None else entries)
        if not self.entries:
            raise ConfigError(f"{config.manifest}: the dataset has no entries")
        joint = config.use_image_num > 0
        # Item i reads entry self.items[i]; in joint training image rows are only the image pool.
        self.items = [e for e, entry in enumerate(self.entries) if not (joint and entry.is_image)]
        self.image_pool = [e for e, entry in enumerate(self.entries) if joint and entry.is_image]
        if not self.items:
            raise ConfigError(
                f"{config.manifest}: use_image_num={config.use_image_num} needs video rows, "
                "but the manifest has only images"
            )
        self.epoch = 0
        self.skips = SkipCounter(
            config.max_skip_fraction, min(MIN_REQUESTS, len(self.items)), str(config.manifest)
        )
        # (entry, frames) → reason: a file that failed once in this process is passed over without
        # decoding it again (a shorter request may still read it, hence the frame count in the key).
        self._bad: dict[tuple[int, int], str] = {}

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s samples (a sampler's :class:`SampleKey` epoch takes precedence)."""
        self.epoch = epoch

    def entry(self, index: int) -> ManifestEntry:
        """The manifest row of item ``index``."""
        return self.entries[self.items[index]]

    def default_shape(self, index: int) -> Shape:
        """The shape of item ``index`` without buckets: ``num_frames`` frames, or 1 for an image."""
        frames = 1 if self.entry(index).is_image else self.config.num_frames
        return (frames, *self.config.size)

    def generator(self, index: int, epoch: int | None = None) -> torch.Generator:
        """The random stream of item ``index`` in ``epoch`` (default: the dataset's epoch)."""
        epoch = self.epoch if epoch is None else epoch
        return torch.Generator().manual_seed(derive_seed(self.config.seed, epoch, index))

    # ------------------------------------------------------------------------------------------- items

    def __getitem__(self, key: int | Sequence[Any]) -> dict[str, Any]:
        index, asked, epoch = SampleKey(*key) if isinstance(key, Sequence) else SampleKey(int(key))
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        shape: Shape = self.default_shape(index) if asked is None else (asked[0], asked[1], asked[2])
        skipped: list[Skip] = []
        item = self._serve(index, shape, epoch, skipped)
        item["skipped"] = skipped
        self.skips.record(1 + self.config.use_image_num, skipped)
        return item

    def _serve(self, index: int, shape: Shape, epoch: int | None, skipped: list[Skip]) -> dict[str, Any]:
        """Item ``index``, or the next readable item that can fill ``shape``."""
        frames = shape[0]
        failures: list[Skip] = []  # for the message when nothing at all can be read
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            entry = self.entry(candidate)
            if step and entry.is_image and frames > 1:
                continue  # an image cannot stand in for a multi-frame clip
            key = (self.items[candidate], frames)
            reason = self._bad.get(key)
            if reason is None:
                try:
                    return self._read_item(candidate, shape, epoch, skipped)
                except OSError as err:  # VideoReadError is an OSError
                    reason = self._bad[key] = _reason(err, entry.path)
            failures.append(Skip(str(entry.path), reason))
            if step == 0:
                skipped.append(failures[0])  # only the request's own file counts as its skip
        raise UnreadableDataError(
            f"{self.skips.source}: none of the {len(self)} items can be read at shape {shape} "
            f"(frames, H, W); first: {describe(failures[:_EXAMPLES])}"
        )

    def _read_item(self, index: int, shape: Shape, epoch: int | None, skipped: list[Skip]) -> dict[str, Any]:
        cfg, entry = self.config, self.entry(index)
        g = self.generator(index, epoch)
        clip, fps = self._read_clip(entry, shape, g)  # (T, C, H, W) uint8
        item: dict[str, Any] = {
            "video": to_model(clip),  # (C, T, H, W)
            "index": index,
            "size": (clip.shape[0], clip.shape[2], clip.shape[3]),
            "fps": fps,
            "path": str(entry.path),
            **_condition(entry),
        }
        if cfg.use_image_num:
            item.update(self._images(clip, entry, g, skipped))
        return item

    def _read_clip(
        self, entry: ManifestEntry, shape: Shape, g: torch.Generator
    ) -> tuple[torch.Tensor, float]:
        """Decode a random ``shape`` clip (draws: start, flip, colour) → (T, C, H, W) uint8 and its fps."""
        cfg = self.config
        frames, height, width = (1, *shape[1:]) if entry.is_image else shape
        start = 0
        if not entry.is_image:
            # The header's frame count bounds the start; a file shorter than it claims fails in
            # read_video and is skipped like any other unreadable file.
            available = probe_video(entry.path).frames
            span = clip_span(frames, cfg.sample_rate)
            if available < span:
                raise VideoReadError(
                    f"{entry.path}: has {available} frames; {frames} frames at sample_rate="
                    f"{cfg.sample_rate} need {span}"
                )
            start = int(torch.randint(available - span + 1, (1,), generator=g))
        video = read_video(
            entry.path,
            num_frames=frames,
            sample_rate=cfg.sample_rate,
            start_frame=start,
            size=(height, width),
        )
        clip = self._jitter(self._flip(video.frames, g), g)
        fps = STILL_FPS if entry.is_image else (entry.fps / cfg.sample_rate if entry.fps else video.fps)
        return clip, fps

    def _flip(self, frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.config.random_flip and bool(torch.rand((), generator=g) < 0.5):
            return frames.flip(-1)  # (..., W): horizontal
        return frames

    def _jitter(self, frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        jitter = self.config.color_jitter
        if jitter is None:  # draws nothing: runs without jitter keep their samples
            return frames
        apply, turns, scale = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        if apply >= jitter.p:
            return frames
        lo, hi = jitter.saturation
        return jitter_color(frames, (2 * turns - 1) * jitter.hue, lo + (hi - lo) * scale)

    def _images(
        self, clip: torch.Tensor, entry: ManifestEntry, g: torch.Generator, skipped: list[Skip]
    ) -> dict[str, Any]:
        """``use_image_num`` images at the clip's (H, W): from the image pool, else frames of ``clip``."""
        n = self.config.use_image_num
        if not self.image_pool:
            count = clip.shape[0]
            # Distinct frames when the clip has enough; v1.0 asserts num_frames >= use_image_num instead.
            picks = (
                torch.randperm(count, generator=g)[:n]
                if n <= count
                else torch.randint(count, (n,), generator=g)
            )
            images = clip[picks]  # (n, C, H, W), already flipped with the clip
            conditions = [_condition(entry)] * n
        else:
            chosen = torch.randint(len(self.image_pool), (n,), generator=g).tolist()
            pairs = [self._pool_image(j, clip.shape[2:], g, skipped) for j in chosen]
            images = torch.cat([frame for frame, _ in pairs])  # (n, C, H, W)
            conditions = [_condition(image_entry) for _, image_entry in pairs]
        out: dict[str, Any] = {"images": to_model(images).transpose(0, 1)}  # (C, n, H, W) → (n, C, H, W)
        key = "caption" if entry.caption is not None else "label"
        out[f"image_{key}s"] = [c[key] for c in conditions]
        return out

    def _pool_image(
        self, pick: int, size: torch.Size, g: torch.Generator, skipped: list[Skip]
    ) -> tuple[torch.Tensor, ManifestEntry]:
        """Pool image ``pick``, or the next readable one: (1, C, H, W) uint8 and its row."""
        pool = self.image_pool
        failures: list[Skip] = []
        for step in range(len(pool)):
            e = pool[(pick + step) % len(pool)]
            entry = self.entries[e]
            reason = self._bad.get((e, 1))
            if reason is None:
                try:
                    frame = read_video(entry.path, num_frames=1, size=(size[0], size[1])).frames
                    return self._flip(frame, g), entry
                except OSError as err:
                    reason = self._bad[(e, 1)] = _reason(err, entry.path)
            failures.append(Skip(str(entry.path), reason))
            if step == 0:
                skipped.append(failures[0])
        raise UnreadableDataError(
            f"{self.skips.source}: none of the {len(pool)} images in the manifest can be read; "
            f"first: {describe(failures[:_EXAMPLES])}"
        )


def _condition(entry: ManifestEntry) -> dict[str, Any]:
    return {"caption": entry.caption} if entry.caption is not None else {"label": entry.label}
