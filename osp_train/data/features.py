"""Offline features: the folder ``osp extract`` writes and the dataset that DiT training reads from it.

A features folder holds:

* ``features-00000.safetensors``, ... : per sample ``{key}.latents`` (C, t, h, w) float32, the frozen
  VAE's scaled posterior mode, and for text conditioning ``{key}.text_states`` (L, D) and
  ``{key}.text_mask`` (L,) bool.
* ``null_text.safetensors`` (text conditioning): the empty prompt's ``states`` (1, L, D) and ``mask``
  (1, L), what condition dropout swaps in.
* ``info.json``: how the features were made (VAE, text encoder, data settings, counts).
* ``features.jsonl``: one row per sample (shard, key, caption or class, latent shape, source path, ...),
  written last: a folder without it is an unfinished extract and is refused.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from osp.errors import ConfigError, ShapeError, WeightsError
from osp.io.weights import load_safetensors
from osp_train.data.buckets import BucketSampler, _conditions
from osp_train.data.dataset import SampleKey

INDEX_NAME = "features.jsonl"
INFO_NAME = "info.json"
NULL_TEXT_NAME = "null_text.safetensors"
FORMAT_VERSION = 1


def shard_name(number: int) -> str:
    return f"features-{number:05d}.safetensors"


def read_features_info(folder: str | Path) -> dict[str, Any]:
    """``info.json`` of a finished features folder; a ConfigError naming the folder otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"features: {folder} is not a folder (run `osp extract` to make it)")
    if not (folder / INDEX_NAME).is_file() or not (folder / INFO_NAME).is_file():
        raise ConfigError(
            f"features: {folder} has no {INDEX_NAME} / {INFO_NAME}; an extract that did not finish? "
            "Re-run `osp extract`"
        )
    try:
        info: dict[str, Any] = json.loads((folder / INFO_NAME).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"features: {folder / INFO_NAME} is not valid JSON ({err})") from None
    if info.get("format") != FORMAT_VERSION:
        raise ConfigError(f"features: {folder / INFO_NAME} has format {info.get('format')!r}, want 1")
    return info


def load_null_text(folder: str | Path, device: str | torch.device = "cpu") -> Any:
    """The stored empty-prompt :class:`~osp.text.base.TextEmbeddings` (1 row)."""
    from osp.text.base import TextEmbeddings

    path = Path(folder) / NULL_TEXT_NAME
    try:
        tensors = load_safetensors(path, device)
    except WeightsError as err:
        raise ConfigError(f"features: {err}") from None
    return TextEmbeddings(states=tensors["states"], mask=tensors["mask"])


class FeatureDataset(Dataset[dict[str, Any]]):
    """Items of a features folder: the dict the DiT step consumes, with ``latents`` (C, t, h, w) in
    place of ``video`` and, for text, ``text_states`` (L, D) / ``text_mask`` (L,) beside ``caption``.

    Shards are loaded when first needed and the ``cache_shards`` most recently used stay in memory (per
    DataLoader worker). ``dataset[i]`` and ``dataset[SampleKey(i, shape, epoch)]`` both work; features
    are fixed, so the epoch changes nothing.
    """

    def __init__(self, folder: str | Path, cache_shards: int = 2):
        self.folder = Path(folder)
        self.info = read_features_info(self.folder)
        self.rows: list[dict[str, Any]] = []
        for number, line in enumerate((self.folder / INDEX_NAME).read_text().splitlines(), 1):
            if line.strip():
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ConfigError(f"features: {self.folder / INDEX_NAME}:{number}: {err}") from None
        if not self.rows:
            raise ConfigError(f"features: {self.folder / INDEX_NAME} has no samples")
        # Latent shapes act as buckets: a batch never mixes them.
        shapes = sorted({tuple(row["latent_shape"][1:]) for row in self.rows})
        self.buckets: list[tuple[int, int, int]] = [(s[0], s[1], s[2]) for s in shapes]
        self.assignment = [self.buckets.index(tuple(row["latent_shape"][1:])) for row in self.rows]
        self.cache_shards = max(1, cache_shards)
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        try:
            tensors = load_safetensors(self.folder / name)
        except WeightsError as err:
            raise ConfigError(f"features: {err}") from None
        self._cache[name] = tensors
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return tensors

    def __getitem__(self, key: int | Sequence[Any]) -> dict[str, Any]:
        index = SampleKey(*key).item if isinstance(key, Sequence) else int(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} features")
        row = self.rows[index]
        tensors = self._shard(row["shard"])
        name = row["key"]
        if f"{name}.latents" not in tensors:
            raise ConfigError(f"features: {self.folder / row['shard']} has no sample {name!r}")
        item: dict[str, Any] = {
            "latents": tensors[f"{name}.latents"],
            "index": index,
            "size": tuple(row["size"]),
            "fps": row["fps"],
            "path": row["path"],
            "skipped": [],  # the extract counted unreadable files; features are all readable
        }
        if "caption" in row:
            item["caption"] = row["caption"]
        else:
            item["label"] = row["label"]
        if f"{name}.text_states" in tensors:
            item["text_states"] = tensors[f"{name}.text_states"]
            item["text_mask"] = tensors[f"{name}.text_mask"]
        return item


class FeatureSampler(BucketSampler):
    """:class:`BucketSampler`'s shuffling and rank split over a :class:`FeatureDataset`, with the stored
    latent shapes as buckets (no files to probe). With one shape and the same item count it draws the
    same batches as the pixel run's sampler, so pixel and feature runs see samples in the same order."""

    def __init__(
        self,
        dataset: FeatureDataset,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank: must be in [0, world_size={world_size}), got {rank}")
        self.buckets = list(dataset.buckets)
        self.assignment = list(dataset.assignment)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        if len(self) == 0:
            raise ConfigError(
                f"batch_size: {len(dataset)} features in {len(self.buckets)} latent shapes make fewer "
                f"than one batch of {batch_size} per rank for world_size={world_size}"
            )


def collate_features(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-shape feature items: ``latents`` (B, C, t, h, w), ``text_states`` (B, L, D),
    ``text_mask`` (B, L), plus the conditions and bookkeeping :func:`~osp_train.data.collate` gives."""
    if not items:
        raise ShapeError("collate_features: got an empty batch")
    shapes = {tuple(item["latents"].shape) for item in items}
    if len(shapes) > 1:
        raise ShapeError(f"collate_features: latents of different shapes {sorted(shapes)}")
    out = _conditions(items)
    out["latents"] = torch.stack([item["latents"] for item in items])
    if all("text_states" in item for item in items):
        out["text_states"] = torch.stack([item["text_states"] for item in items])
        out["text_mask"] = torch.stack([item["text_mask"] for item in items])
    return out
