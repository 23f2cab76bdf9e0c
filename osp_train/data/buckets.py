"""Batches of one shape: aspect-ratio / duration buckets, and the collate functions.

:class:`BucketSampler` puts every item in the nearest ``(frames, H, W)`` bucket of
``DataConfig.buckets`` and yields batches of :class:`~osp_train.data.dataset.SampleKey` drawn from one
bucket, so each batch stacks without padding. Use it as a DataLoader ``batch_sampler`` with
:func:`collate`. :func:`pad_collate` is the other way: mixed shapes padded to the largest, with the
real sizes for the transformer's dynamic masks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from osp.errors import ConfigError, ShapeError
from osp.io.video import VideoInfo, probe_video
from osp_train.data.dataset import SampleKey, Shape, VideoDataset, clip_span, derive_seed


def _aspect_distance(height: int, width: int, shape: Shape) -> float:
    # Log ratio, so 2:1 and 1:2 are equally far from 1:1; rounded so equal ratios at different
    # resolutions (256x448, 512x896) tie and the next rule decides.
    return round(abs(math.log((height / width) / (shape[1] / shape[2]))), 6)


def assign_bucket(info: VideoInfo | None, is_image: bool, buckets: Sequence[Shape], sample_rate: int) -> int:
    """Index of the bucket for a file with header ``info`` (None: unreadable).

    Candidates are the buckets the file can fill: 1-frame buckets for an image, buckets whose clip
    span fits the video's frame count for a video. Among them the nearest aspect ratio wins, then
    the most frames (use as much of the clip as fits), then the larger area. A file that fits no
    bucket, or cannot be probed, goes to the smallest bucket, where the dataset's skip accounting
    counts it when it fails to read.
    """
    order = sorted(range(len(buckets)), key=lambda b: (buckets[b][0], buckets[b][1] * buckets[b][2]))
    if is_image:
        order = [b for b in order if buckets[b][0] == 1]
    if info is None:
        return order[0]
    fits = [b for b in order if is_image or clip_span(buckets[b][0], sample_rate) <= info.frames]
    if not fits:
        return order[0]
    return min(
        fits,
        key=lambda b: (
            _aspect_distance(info.height, info.width, buckets[b]),
            -buckets[b][0],
            -buckets[b][1] * buckets[b][2],
        ),
    )


def _probe(dataset: VideoDataset, index: int) -> VideoInfo | None:
    try:
        return probe_video(dataset.entry(index).path)
    except OSError:  # VideoReadError included: the dataset will skip and count this file
        return None


class BucketSampler(Sampler[list[SampleKey]]):
    """Single-bucket batches, shuffled per ``(seed, epoch)``, split between ``world_size`` ranks.

    Every rank builds the same batch list (same probes, same seed) and takes every ``world_size``-th
    batch starting at ``rank``, so shares are disjoint and equally long. ``drop_last=True`` drops each
    bucket's partial batch and the batches left over after an equal split; ``drop_last=False`` fills a
    partial batch with items from the start of the same bucket and repeats batches from the start of
    the list until it splits evenly, so every item is seen and a few are seen twice. All buckets use the
    same ``batch_size``. Each file is probed once, here, at construction.
    """

    def __init__(
        self,
        dataset: VideoDataset,
        batch_size: int,
        *,
        buckets: Sequence[Shape] | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        seed: int | None = None,
    ):
        cfg = dataset.config
        shapes = list(buckets if buckets is not None else cfg.buckets or ())
        if not shapes:
            raise ConfigError("buckets: BucketSampler needs at least one (frames, H, W) bucket")
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank: must be in [0, world_size={world_size}), got {rank}")
        images = sum(dataset.entry(i).is_image for i in range(len(dataset)))
        if images and not any(shape[0] == 1 for shape in shapes):
            raise ConfigError(
                f"buckets: the manifest has {images} image rows but no bucket has 1 frame; "
                "add a (1, H, W) bucket, or set use_image_num to train them jointly with videos"
            )
        self.dataset = dataset
        self.buckets: list[Shape] = [tuple(shape) for shape in shapes]  # type: ignore[misc]
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.seed = cfg.seed if seed is None else seed
        self.epoch = 0
        self.start_batch = 0
        self.assignment: list[int] = [
            assign_bucket(_probe(dataset, i), dataset.entry(i).is_image, self.buckets, cfg.sample_rate)
            for i in range(len(dataset))
        ]
        if len(self) == 0:
            raise ConfigError(
                f"batch_size: {len(dataset)} items in {len(self.buckets)} buckets make fewer than one "
                f"batch of {batch_size} per rank for world_size={world_size}"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Shuffle for ``epoch``; ``start_batch`` skips this rank's first batches (mid-epoch resume)."""
        self.epoch, self.start_batch = epoch, start_batch

    def members(self) -> list[list[int]]:
        """Item indices per bucket, in bucket order."""
        out: list[list[int]] = [[] for _ in self.buckets]
        for index, bucket in enumerate(self.assignment):
            out[bucket].append(index)
        return out

    def _batches(self) -> list[tuple[int, list[int]]]:
        """All ranks' (bucket, item indices) batches of this epoch, before the split."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        batches: list[tuple[int, list[int]]] = []
        for bucket, indices in enumerate(self.members()):
            if not indices:
                continue
            order = [indices[k] for k in torch.randperm(len(indices), generator=g).tolist()]
            for first in range(0, len(order), self.batch_size):
                batch = order[first : first + self.batch_size]
                if len(batch) < self.batch_size:
                    if self.drop_last:
                        continue
                    batch += [order[k % len(order)] for k in range(self.batch_size - len(batch))]
                batches.append((bucket, batch))
        batches = [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
        if self.drop_last:
            return batches[: len(batches) - len(batches) % self.world_size]
        padding = -len(batches) % self.world_size
        return batches + [batches[k % len(batches)] for k in range(padding)] if batches else []

    def _share(self) -> list[tuple[int, list[int]]]:
        return self._batches()[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for bucket, batch in self._share()[self.start_batch :]:
            shape = self.buckets[bucket]
            yield [SampleKey(index, shape, self.epoch) for index in batch]

    def __len__(self) -> int:
        # Batch counts depend on bucket sizes only, not on the epoch's shuffle.
        per_bucket = [
            len(m) // self.batch_size if self.drop_last else math.ceil(len(m) / self.batch_size)
            for m in self.members()
        ]
        total = sum(per_bucket)
        share = total // self.world_size if self.drop_last else math.ceil(total / self.world_size)
        return max(0, share - self.start_batch)


# ------------------------------------------------------------------------------------------- collate


def _common(items: Sequence[dict[str, Any]], key: str) -> bool:
    return all(key in item for item in items)


def _conditions(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Captions as lists, labels as tensors, and the bookkeeping every batch carries."""
    out: dict[str, Any] = {
        "index": torch.tensor([item["index"] for item in items]),
        "sizes": torch.tensor([item["size"] for item in items]),  # (B, 3) pixel (t, h, w)
        "fps": torch.tensor([float(item["fps"]) for item in items]),
        "path": [item["path"] for item in items],
        "skipped": [skip for item in items for skip in item["skipped"]],
    }
    if _common(items, "caption"):
        out["caption"] = [item["caption"] for item in items]
    elif _common(items, "label"):
        out["label"] = torch.tensor([item["label"] for item in items])
    if _common(items, "image_captions"):
        out["image_captions"] = [item["image_captions"] for item in items]
    elif _common(items, "image_labels"):
        out["image_labels"] = torch.tensor([item["image_labels"] for item in items])
    return out


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-shape items: ``video`` (B, C, T, H, W), ``images`` (B, n, C, H, W), ``caption`` list or
    ``label`` (B,), ``index`` (B,), ``sizes`` (B, 3), ``fps`` (B,), ``path`` list, ``skipped`` (all items')."""
    if not items:
        raise ShapeError("collate: got an empty batch")
    shapes = {tuple(item["video"].shape) for item in items}
    if len(shapes) > 1:
        raise ShapeError(
            f"collate: items have different shapes {sorted(shapes)}; batch through a BucketSampler, "
            "or use pad_collate"
        )
    out = _conditions(items)
    out["video"] = torch.stack([item["video"] for item in items])
    if _common(items, "images"):
        out["images"] = torch.stack([item["images"] for item in items])
    return out


def _pad_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    # F.pad takes (left, right) pairs from the last dim backwards; pad only at the end of each dim,
    # which is where LatteT2V's masks expect the padding (positions >= size are invalid).
    pads: list[int] = []
    for have, want in zip(reversed(x.shape), reversed(shape), strict=True):
        pads += [0, want - have]
    return F.pad(x, pads)


def pad_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Like :func:`collate`, for mixed shapes: zero-pad ``video`` at the end of T, H and W to the batch's
    largest, ``images`` to the largest (H, W). ``sizes`` (B, 3) holds each item's real (t, h, w) in
    *pixels*; LatteT2V's ``latent_sizes`` wants latents, which the trainer gets from the VAE's strides
    (causal VAE 4x8x8: ``((t - 1) // 4 + 1, h // 8, w // 8)``). Zero is mid-grey in [-1, 1].
    """
    if not items:
        raise ShapeError("pad_collate: got an empty batch")
    out = _conditions(items)
    channels = items[0]["video"].shape[0]
    t, h, w = (max(item["video"].shape[d] for item in items) for d in (1, 2, 3))
    out["video"] = torch.stack([_pad_to(item["video"], (channels, t, h, w)) for item in items])
    if _common(items, "images"):
        n = items[0]["images"].shape[0]
        out["images"] = torch.stack([_pad_to(item["images"], (n, channels, h, w)) for item in items])
    return out
