"""Offline features: ``osp extract`` writes latents (+ text states) that match a direct encode, skips and
counts unreadable files, and ``task: dit`` trains from them with the same first loss as from pixels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("deepspeed", reason="training needs the train extra: pip install -e '.[train]'")
import torch
import yaml
from click.testing import CliRunner

from osp.cli.extract import extract as extract_command
from osp.errors import ConfigError
from osp.io.video import write_video
from osp.io.weights import load_safetensors
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE, load_causal_vae
from osp_train.data import (
    DataConfig,
    FeatureDataset,
    FeatureSampler,
    ManifestEntry,
    VideoDataset,
    collate_features,
    write_manifest,
)
from osp_train.data.features import read_features_info


def _clip(kind: int, t: int = 5, size: int = 32) -> torch.Tensor:
    ramp = torch.linspace(20, 200, size)
    image = ramp.view(1, size) if kind == 0 else ramp.view(size, 1)
    frames = image.expand(size, size)[None, None] + torch.arange(t).view(t, 1, 1, 1) * 10.0
    return frames.expand(t, 3, size, size).round().clamp(0, 255).to(torch.uint8).contiguous()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extract")
    torch.manual_seed(0)
    CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).save_pretrained(root / "vae")
    clips = [write_video(root / f"clip{k}.mp4", _clip(k), 8) for k in range(2)]
    (root / "bad.mp4").write_bytes(b"not a video at all")
    write_manifest(root / "clean.jsonl", [ManifestEntry(p, label=k) for k, p in enumerate(clips)])
    write_manifest(
        root / "mixed.jsonl",
        [
            ManifestEntry(clips[0], label=0),
            ManifestEntry(root / "bad.mp4", label=1),
            ManifestEntry(clips[1], label=1),
        ],
    )
    write_manifest(
        root / "captions.jsonl", [ManifestEntry(p, caption=f"a ramp number {k}") for k, p in enumerate(clips)]
    )
    return root


def write_config(assets: Path, out: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "out": str(out),
        "model": "latte-tiny",
        "conditioning": "class",
        "cond_dropout": 0.0,
        "vae": str(assets / "vae"),
        "vae_sample": False,
        "data": {
            "manifest": str(assets / "clean.jsonl"),
            "num_frames": 5,
            "size": [32, 32],
            "random_flip": False,
            "max_skip_fraction": 0.5,
        },
        "batch_size": 2,
        "steps": 30,
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "ema_decay": 0.9,
        "log_every": 5,
        "checkpoint_every": 100,
        "seed": 1,
    }
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def train_cli(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "osp.cli.train", "--config", str(config), "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def direct_latents(assets: Path, manifest: str) -> dict[str, torch.Tensor]:
    """path -> encode_latents(sample=False) of the clip as the dataset reads it in epoch 0."""
    vae = load_causal_vae(assets / "vae").eval()
    dataset = VideoDataset(
        DataConfig(
            manifest=assets / manifest, num_frames=5, size=(32, 32), random_flip=False, max_skip_fraction=1
        )
    )
    out = {}
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            if not item["skipped"]:
                out[item["path"]] = vae.encode_latents(item["video"][None], sample=False)[0]
    return out


@pytest.fixture(scope="module")
def class_features(assets: Path) -> Path:
    out = assets / "features-class"
    result = CliRunner().invoke(
        extract_command, ["--config", str(write_config(assets, assets / "x")), "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_extract_skips_corrupt_and_matches_direct_encode(assets: Path, tmp_path: Path) -> None:
    config = write_config(assets, tmp_path / "run", data__manifest=str(assets / "mixed.jsonl"))
    out = tmp_path / "features"
    result = CliRunner().invoke(
        extract_command, ["--config", str(config), "--out", str(out), "--shard-size", "1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "extracted 2 samples into 2 shard(s)" in said and "1 of 3 files were unreadable" in said
    rows = [json.loads(line) for line in (out / "features.jsonl").read_text().splitlines()]
    assert [r["shard"] for r in rows] == ["features-00000.safetensors", "features-00001.safetensors"]
    assert [r["label"] for r in rows] == [0, 1] and all(r["latent_shape"] == [4, 2, 4, 4] for r in rows)
    info = read_features_info(out)
    assert (info["requests"], info["skipped"], info["samples"]) == (3, 1, 2)
    want = direct_latents(assets, "mixed.jsonl")
    assert sorted(want) == sorted(r["path"] for r in rows)
    for row in rows:
        stored = load_safetensors(out / row["shard"])[f"{row['key']}.latents"]
        assert torch.equal(stored, want[row["path"]]), row
    dataset = FeatureDataset(out, cache_shards=1)
    batch = collate_features([dataset[i] for i in range(len(dataset))])
    assert batch["latents"].shape == (2, 4, 2, 4, 4) and batch["label"].tolist() == [0, 1]
    assert batch["skipped"] == [] and len(dataset._cache) == 1


def test_train_from_features_matches_pixels_and_loss_falls(
    assets: Path, class_features: Path, tmp_path: Path
) -> None:
    """Same seed, same sampler order, latents = the posterior mode: the first losses equal the pixel
    run's up to float rounding (the pixel run encodes a batch of 2, the extract one clip at a time)."""
    pixels, features = tmp_path / "pixels", tmp_path / "features"
    assert train_cli(write_config(assets, pixels, steps=2, log_every=1)).returncode == 0
    result = train_cli(write_config(assets, features, features=str(class_features), vae=None, log_every=1))
    assert result.returncode == 0, result.stderr[-3000:]
    curve = losses(features)
    assert curve[:2] == pytest.approx(losses(pixels), rel=1e-5)
    assert len(curve) == 30 and sum(curve[-5:]) < 0.5 * sum(curve[:5]), curve


def test_text_features_and_training(assets: Path, tmp_path: Path) -> None:
    from osp.text import load_text_encoder

    changes: dict[str, Any] = {
        "model": "latte-t2v-tiny",
        "model_overrides": {"caption_channels": 384, "out_channels": 4},
        "conditioning": "text",
        "cond_dropout": 0.5,
        "text_max_length": 16,
        "steps": 4,
        "log_every": 2,
        "data__manifest": str(assets / "captions.jsonl"),
    }
    out = tmp_path / "text-features"
    result = CliRunner().invoke(
        extract_command, ["--config", str(write_config(assets, tmp_path / "x", **changes)), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    encoder = load_text_encoder("minilm", max_length=16)
    dataset = FeatureDataset(out)
    for i in range(len(dataset)):
        item = dataset[i]
        text = encoder.encode([item["caption"]])
        assert torch.allclose(item["text_states"], text.states[0], atol=1e-6)
        assert torch.equal(item["text_mask"], text.mask[0])
    null = load_safetensors(out / "null_text.safetensors")
    assert torch.allclose(null["states"], encoder.null(1).states, atol=1e-6)

    run = tmp_path / "run"
    trained = train_cli(write_config(assets, run, features=str(out), vae=None, **changes))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert len(losses(run)) == 2 and all(torch.isfinite(torch.tensor(losses(run))))


def test_sampler_matches_pixel_sampler_order(assets: Path, class_features: Path) -> None:
    from osp_train.data import BucketSampler

    features = FeatureSampler(FeatureDataset(class_features), 1, seed=3)
    pixels = BucketSampler(
        VideoDataset(DataConfig(manifest=assets / "clean.jsonl", num_frames=5, size=(32, 32))),
        1,
        buckets=[(5, 32, 32)],
        seed=3,
    )
    for epoch in range(3):
        features.set_epoch(epoch)
        pixels.set_epoch(epoch)
        assert [[k.item for k in b] for b in features] == [[k.item for k in b] for b in pixels]


def test_bad_features_folder_exits_2_naming_it(assets: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = train_cli(write_config(assets, tmp_path / "run", features=str(missing), vae=None))
    assert proc.returncode == 2 and f"features: {missing}" in proc.stderr.replace("\n", ""), proc.stderr
    assert "Traceback" not in proc.stderr
    half = tmp_path / "half"
    half.mkdir()
    (half / "features-00000.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"half has no features\.jsonl"):
        FeatureDataset(half)
    config = write_config(assets, tmp_path / "b", features=str(half), vae=None, vae_sample=True)
    result = CliRunner().invoke(extract_command, ["--config", str(config)])
    assert result.exit_code == 2 and "vae_sample" in result.output, result.output
    config = write_config(assets, tmp_path / "c")
    result = CliRunner().invoke(extract_command, ["--config", str(config)])
    assert result.exit_code == 2 and "--out" in result.output, result.output
