"""What a run writes besides checkpoints: TensorBoard scalars, sample videos during training, and the
multi-node launch scripts (syntax only)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed", reason="training needs the train extra: pip install -e '.[train]'")
import test_train_vae  # pytest puts tests/ on sys.path
from test_train import assets, cli, metrics, write_config  # noqa: F401  # assets is a fixture

from osp.io.video import read_video
from osp.io.weights import load_safetensors
from osp_train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
clips = test_train_vae.clips  # the vae tests' module fixture


def test_tensorboard_gets_every_logged_metric(assets: Path, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    result = cli("--config", str(write_config(assets, out, steps=4, log_every=2)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/samples_per_s"} <= set(tags), tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([r["loss"] for r in metrics(out)])


def test_tensorboard_off(assets: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "off"
    result = cli("--config", str(write_config(assets, out, steps=2, log_tensorboard=False)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "tensorboard").exists()


def test_dit_samples_at_the_right_steps(assets: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "dit"
    config = write_config(assets, out, steps=6, sample_every=3, sample_labels=[0, 1], sample_steps=2)
    result = cli("--config", str(config), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == ["step-0000003.mp4", "step-0000003.png", "step-0000006.mp4", "step-0000006.png"]
    video = read_video(out / "samples" / "step-0000006.mp4")
    assert tuple(video.frames.shape) == (5, 3, 32, 64)  # two samples side by side
    # Sampling leaves training's randomness alone: the same run without it ends with the same weights.
    plain = tmp_path / "plain"
    result = cli("--config", str(write_config(assets, plain, steps=6)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    for folder in ("model", "ema"):
        with_samples = load_safetensors(out / folder / "model.safetensors")
        without = load_safetensors(plain / folder / "model.safetensors")
        assert all(torch.equal(with_samples[k], without[k]) for k in without), folder


@pytest.mark.parametrize("task", ["vae", "vqvae"])
def test_autoencoder_samples_reconstruct_the_first_batch(clips: Path, tmp_path: Path, task: str) -> None:
    out = tmp_path / task
    frames = 8 if task == "vqvae" else 5  # VideoGPT's VQ-VAE takes multiples of 4 frames
    data = {"manifest": str(clips / "manifest.jsonl"), "num_frames": frames, "size": [32, 32]}
    vq = {"task": "vqvae", "model": "vqvae-tiny", "vae_loss": None} if task == "vqvae" else {}
    vq["data"] = data
    config = test_train_vae.write_config(clips, out, steps=4, sample_every=2, log_every=2, **vq)
    result = cli("--config", str(config), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == ["step-0000002.mp4", "step-0000002.png", "step-0000004.mp4", "step-0000004.png"]
    video = read_video(out / "samples" / "step-0000004.mp4")
    assert tuple(video.frames.shape) == (frames, 3, 32, 4 * 32)  # 2 clips x (input | reconstruction)


def test_sampling_config_errors(assets: Path, tmp_path: Path) -> None:  # noqa: F811
    base = {"out": tmp_path / "x", "data": {"manifest": "m.jsonl"}, "steps": 1, "sample_every": 5}
    with pytest.raises(ValueError, match="vae: sample_every needs the VAE"):
        TrainConfig.model_validate({**base, "features": tmp_path})
    with pytest.raises(ValueError, match="sample_prompts"):
        TrainConfig.model_validate({**base, "vae": tmp_path, "conditioning": "text"})


@pytest.mark.parametrize("script", ["scripts/slurm/train.sbatch", "scripts/multinode_deepspeed.sh"])
def test_launch_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_text_flow_sampler_draws_one_clip_per_prompt(assets: Path, tmp_path: Path) -> None:  # noqa: F811
    from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
    from osp.vae import load_causal_vae
    from osp_train.samples import dit_sampler

    cfg = TrainConfig.model_validate(
        {
            "out": tmp_path / "t2v",
            "conditioning": "text",
            "objective": "flow",
            "text_max_length": 16,
            "vae": assets / "vae",
            "data": {"manifest": "m.jsonl", "num_frames": 5, "size": [32, 32]},
            "steps": 1,
            "sample_every": 1,
            "sample_prompts": ["a ramp", "another ramp"],
            "sample_steps": 2,
        }
    )
    config = LATTE_T2V_CONFIGS["latte-t2v-tiny"].replace(caption_channels=384, out_channels=4)
    model = LatteT2V(config).eval()
    vae = load_causal_vae(assets / "vae")
    videos, labels = dit_sampler(cfg, torch.device("cpu"), vae)(model, {})
    assert labels == ["a ramp", "another ramp"]
    assert [tuple(v.shape) for v in videos] == [(5, 3, 32, 32)] * 2
