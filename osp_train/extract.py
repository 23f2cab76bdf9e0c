"""``osp extract``: encode a training manifest once — frozen-VAE latents and text-encoder states — into
a features folder (see :mod:`osp_train.data.features`) that ``task: dit`` trains from with ``features:``.

What is frozen, and why:

* Latents are the VAE posterior's **mode** times the scaling factor (``encode_latents(x, sample=False)``),
  so training from features equals training from pixels with ``vae_sample: false``. Posterior sampling
  at train time would need the mean and log-variance stored (twice the disk) for a noise term that
  matters little next to the diffusion noise; a run with ``features`` refuses ``vae_sample: true``.
* Clips are cut as the dataset would in **epoch 0** (clip start drawn from ``(data.seed, 0, index)``), and
  are **not flipped** unless ``flip=True`` (then epoch 0's coin decides, once): every training epoch then
  sees the same crop, the price of taking the VAE out of the loop.
* Unreadable files are skipped and counted exactly as in training, including the
  ``data.max_skip_fraction`` check.

Each shard is written atomically; ``features.jsonl`` is written last, so a folder without it is an
extract that did not finish, and training refuses it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from osp.errors import ConfigError
from osp.io.weights import atomic_write_text, save_safetensors
from osp.progress import ProgressDisplay
from osp.vae import load_causal_vae
from osp_train.config import TrainConfig
from osp_train.data import BucketSampler, SampleKey, VideoDataset
from osp_train.data.features import FORMAT_VERSION, INDEX_NAME, INFO_NAME, NULL_TEXT_NAME, shard_name


@dataclass(frozen=True)
class ExtractSummary:
    out: str
    samples: int  # feature rows written
    shards: int
    requests: int  # manifest items asked for
    skipped: int  # of which unreadable


def _clean(out: Path) -> None:
    """Forget a previous extract in ``out``: its index first, so it can never describe the new shards."""
    (out / INDEX_NAME).unlink(missing_ok=True)
    for old in out.glob("features-*.safetensors"):
        old.unlink()


def extract(
    cfg: TrainConfig,
    out: str | Path,
    *,
    shard_size: int = 256,
    flip: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> ExtractSummary:
    """Encode every readable item of ``cfg.data`` with ``cfg.vae`` (and ``cfg.text_encoder`` for text)
    into ``out``; ``shard_size`` samples per safetensors shard."""
    if cfg.task != "dit":
        raise ConfigError(f"task: extract makes features for task dit, not {cfg.task}")
    if cfg.vae is None:
        raise ConfigError("vae: extract needs the frozen VAE that makes the latents")
    if shard_size < 1:
        raise ConfigError(f"shard_size: must be >= 1, got {shard_size}")
    out = Path(out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The same VAE dtype rule as training: bf16 only on GPU, where the run itself is bf16.
    vae_dtype = torch.bfloat16 if cfg.precision == "bf16" and device.type == "cuda" else torch.float32
    vae = load_causal_vae(cfg.vae, dtype=vae_dtype, device=device).requires_grad_(False).eval()
    encoder = None
    if cfg.conditioning == "text":
        from osp.text import load_text_encoder

        encoder = load_text_encoder(cfg.text_encoder, max_length=cfg.text_max_length, device=device)

    # 1. The dataset as training reads it in epoch 0, with flips only when asked; per-item shapes from
    #    the buckets (each file probed once) or the dataset's default shape.
    data = cfg.data.replace(random_flip=flip)
    dataset = VideoDataset(data)
    dataset.set_epoch(0)
    if data.buckets:
        sampler = BucketSampler(dataset, 1, buckets=data.buckets, drop_last=False, seed=cfg.seed)
        shapes = [sampler.buckets[b] for b in sampler.assignment]
    else:
        shapes = [dataset.default_shape(i) for i in range(len(dataset))]

    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    rows: list[dict[str, Any]] = []
    shard: dict[str, torch.Tensor] = {}
    shards = skipped = 0
    console = console or Console(stderr=True)

    def flush() -> None:
        nonlocal shard, shards
        if shard:
            save_safetensors(shard, out / shard_name(shards))
            shard, shards = {}, shards + 1

    # 2. Encode item by item; a request its own file cannot serve is counted, not stored (the item that
    #    stood in for it is stored under its own index).
    with (
        ProgressDisplay(enabled=progress, console=console) as display,
        display.step("extract", total=len(dataset)) as update,
        torch.no_grad(),
    ):
        for index in range(len(dataset)):
            item = dataset[SampleKey(index, shapes[index], 0)]
            if item["skipped"] or item["index"] != index:
                skipped += 1
                update(index + 1, len(dataset))
                continue
            key = f"{index:08d}"
            latents = vae.encode_latents(item["video"][None].to(device, vae_dtype), sample=False)
            shard[f"{key}.latents"] = latents[0].float().cpu()  # (C, t, h, w)
            row: dict[str, Any] = {"shard": shard_name(shards), "key": key}
            if "caption" in item:
                row["caption"] = item["caption"]
            else:
                row["label"] = int(item["label"])
            if encoder is not None:
                text = encoder.encode([item["caption"]], device=device)
                shard[f"{key}.text_states"] = text.states[0].float().cpu()  # (L, D)
                shard[f"{key}.text_mask"] = text.mask[0].cpu()  # (L,)
            rows.append(
                {
                    **row,
                    "latent_shape": list(latents.shape[1:]),
                    "size": list(item["size"]),
                    "fps": float(item["fps"]),
                    "path": item["path"],
                    "index": index,
                }
            )
            if len(rows) % shard_size == 0:
                flush()
            update(index + 1, len(dataset))
    flush()
    if not rows:
        raise ConfigError(f"data.manifest: {cfg.data.manifest}: no readable items to extract")

    # 3. The empty prompt for condition dropout, how it was all made, then the index that finishes it.
    if encoder is not None:
        null = encoder.null(1, device=device)
        save_safetensors({"states": null.states.float(), "mask": null.mask}, out / NULL_TEXT_NAME)
    summary = ExtractSummary(str(out), len(rows), shards, len(dataset), skipped)
    info = {
        "format": FORMAT_VERSION,
        "vae": str(cfg.vae),
        "scaling_factor": vae.config.scaling_factor,
        "latent_channels": vae.config.embed_dim,
        "posterior": "mode",
        "conditioning": cfg.conditioning,
        "text_encoder": cfg.text_encoder if encoder is not None else None,
        "text_max_length": cfg.text_max_length if encoder is not None else None,
        "data": data.model_dump(mode="json"),
        "epoch": 0,
        **asdict(summary),
    }
    atomic_write_text(out / INFO_NAME, json.dumps(info, indent=2) + "\n")
    atomic_write_text(out / INDEX_NAME, "".join(json.dumps(row) + "\n" for row in rows))
    return summary
