"""DiT training end to end on CPU: overfit two clips, 2-process ZeRO-2, bit-exact resume after SIGKILL,
bad configs and --dry-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("deepspeed", reason="training needs the train extra: pip install -e '.[train]'")
import torch
import yaml
from click.testing import CliRunner

from osp.cli.train import train as train_command
from osp.io.video import write_video
from osp.io.weights import load_safetensors
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE
from osp_train.data import ManifestEntry, write_manifest

ROOT = Path(__file__).resolve().parents[1]


def _clip(kind: int, t: int = 5, size: int = 32) -> torch.Tensor:
    """Two easily told apart clips: a horizontal and a vertical ramp, brightening over time."""
    ramp = torch.linspace(20, 200, size)
    image = ramp.view(1, size) if kind == 0 else ramp.view(size, 1)
    frames = image.expand(size, size)[None, None] + torch.arange(t).view(t, 1, 1, 1) * 10.0
    return frames.expand(t, 3, size, size).round().clamp(0, 255).to(torch.uint8).contiguous()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).save_pretrained(root / "vae")
    entries = [ManifestEntry(write_video(root / f"clip{k}.mp4", _clip(k), 8), label=k) for k in range(2)]
    write_manifest(root / "manifest.jsonl", entries)
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
            "manifest": str(assets / "manifest.jsonl"),
            "num_frames": 5,
            "size": [32, 32],
            "random_flip": False,
        },
        "batch_size": 2,
        "steps": 40,
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "ema_decay": 0.9,
        "log_every": 5,
        "checkpoint_every": 100,
        "keep_last": 2,
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


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "osp.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_overfit_two_clips(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cli("--config", str(write_config(assets, out, steps=30)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [r["loss"] for r in metrics(out)]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["skipped"] == 0 and summary["requests"] == 60
    assert "0 of 60 samples came from unreadable files" in result.stdout
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000030"]
    assert (out / "ema" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()


def test_two_processes_zero2_gloo(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "zero2"
    config = write_config(
        assets,
        out,
        steps=10,
        batch_size=1,
        zero_stage=2,
        log_every=2,
        checkpoint_every=5,
        gradient_checkpointing="selective",  # wrapped blocks in ZeRO-2's flat buffers and its checkpoints
    )
    result = cli("--config", str(config), "--nproc", "2", "--quiet", timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["requests"] == 20
    first, second = summary["weights_sha256"]
    assert first == second  # ZeRO-2 partitions optimizer states and grads, never the weights' values
    losses = [r["loss"] for r in metrics(out)]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    engine = out / "checkpoints" / "step-0000010" / "engine"
    shards = sorted(p.name for p in engine.iterdir() if "optim_states" in p.name)
    assert len(shards) == 2, shards  # one optimizer shard per rank


@pytest.mark.parametrize(
    "speed",
    [
        pytest.param({}, id="eager"),
        # Compiled blocks, every other one recomputed in the backward pass inside its compiled graph.
        pytest.param(
            {"compile": True, "gradient_checkpointing": "selective"}, id="compiled", marks=pytest.mark.slow
        ),
    ],
)
def test_resume_after_sigkill_is_bit_exact(assets: Path, tmp_path: Path, speed: dict[str, Any]) -> None:
    settings = {"steps": 40, "checkpoint_every": 4, "log_every": 4, "cond_dropout": 0.3, "vae_sample": True}
    settings.update(speed, data__random_flip=True)
    a, b = tmp_path / "a", tmp_path / "b"
    result = cli("--config", str(write_config(assets, a, **settings)), "--quiet", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    config_b = write_config(assets, b, **settings)
    command = [sys.executable, "-m", "osp.cli.train", "--config", str(config_b), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (b / "checkpoints" / "step-0000008").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "run B ended before its second checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (b / "summary.json").exists(), "run B finished before the kill; nothing was resumed"

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((b / "summary.json").read_text())
    assert 8 <= summary["resumed_from"] < 40
    for folder in ("model", "ema"):
        wa = load_safetensors(a / folder / "model.safetensors")
        wb = load_safetensors(b / folder / "model.safetensors")
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (folder, key)
    strip = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in metrics(a)]
    assert strip == [{k: v for k, v in r.items() if k != "samples_per_s"} for r in metrics(b)]
    assert [p.name for p in sorted((b / "checkpoints").iterdir())] == ["step-0000036", "step-0000040"]


def test_bad_config_exits_2_naming_the_field(assets: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    config = write_config(assets, tmp_path / "bad", optim={"lrr": 1.0})
    result = runner.invoke(train_command, ["--config", str(config)])
    assert result.exit_code == 2 and "optim.lrr: unknown key" in result.output, result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        train_command, ["--config", str(config), "--set", "optim={}", "--set", "zero_stage=3"]
    )
    assert result.exit_code == 2 and "zero_stage" in result.output, result.output
    result = runner.invoke(
        train_command, ["--config", str(config), "--set", "optim={}", "--set", "batch_size=0"]
    )
    assert result.exit_code == 2 and "batch_size" in result.output, result.output
    for sets, field in (
        (["gradient_checkpointing=partial"], "gradient_checkpointing: Input should be 'none', 'full' or"),
        (
            ["gradient_checkpointing=selective", "gradient_checkpointing_every=0"],
            "gradient_checkpointing_every: Input should be greater than or equal to 2",
        ),
    ):
        args = ["--config", str(config), "--set", "optim={}", *(f"--set={s}" for s in sets)]
        result = runner.invoke(train_command, args)
        assert result.exit_code == 2 and field in result.output and "Traceback" not in result.output, (
            result.output
        )
    bad_model = ["--set", "optim={}", "--set", "model_overrides={depth: 3}"]
    result = runner.invoke(train_command, ["--config", str(config), *bad_model, "--dry-run"])
    assert result.exit_code == 0  # dry-run only resolves the run config; the model is checked at start


def test_dry_run_prints_resolved_config(assets: Path, tmp_path: Path) -> None:
    config = write_config(assets, tmp_path / "dry", zero_stage=2, cpu_offload=True)
    result = CliRunner().invoke(train_command, ["--config", str(config), "--dry-run", "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert "zero_stage: 2" in result.output and '"offload_optimizer"' in result.output
    assert '"train_batch_size": 4' in result.output
    assert not (tmp_path / "dry").exists()


def test_demo_config_is_valid() -> None:
    result = CliRunner().invoke(
        train_command, ["--config", str(ROOT / "configs/train/dit-tiny.yaml"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output


def test_joint_image_video_training(tmp_path: Path) -> None:
    """use_image_num: 2 images per clip from the manifest's image rows, each captioned, train beside the clips."""
    from PIL import Image

    torch.manual_seed(0)
    CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).save_pretrained(tmp_path / "vae")
    entries = [
        ManifestEntry(write_video(tmp_path / f"c{k}.mp4", _clip(k), 8), caption=f"ramp {k}") for k in range(2)
    ]
    for k in range(3):
        Image.fromarray(_clip(k % 2)[0].permute(1, 2, 0).numpy()).save(tmp_path / f"i{k}.png")
        entries.append(ManifestEntry(tmp_path / f"i{k}.png", caption=f"still {k}"))
    write_manifest(tmp_path / "m.jsonl", entries)
    base = {
        "model": "latte-t2v-tiny",
        "model_overrides": {"caption_channels": 384, "out_channels": 4},
        "objective": "flow",
        "conditioning": "text",
        "cond_dropout": 0.2,
        "text_max_length": 16,
        "vae": str(tmp_path / "vae"),
        "data": {
            "manifest": str(tmp_path / "m.jsonl"),
            "num_frames": 5,
            "size": [32, 32],
            "use_image_num": 2,
        },
        "batch_size": 2,
        "steps": 4,
        "log_every": 2,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**base, "out": str(tmp_path / "run")}))
    result = cli("--config", str(tmp_path / "run.yaml"), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["requests"] == 4 * 2 * (1 + 2)  # every clip came with its two images
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(tmp_path / "run"))

    # Features hold no images, and the class-conditional Latte has no joint mode: both refused up front.
    for change, word in ((("features", str(tmp_path)),), "features"), ((("conditioning", "class"),), "text"):
        (tmp_path / "bad.yaml").write_text(
            yaml.safe_dump({**base, **dict(change), "out": str(tmp_path / "b")})
        )
        bad = cli("--config", str(tmp_path / "bad.yaml"), "--quiet")
        assert bad.returncode == 2 and "data.use_image_num" in bad.stderr and word in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr


def test_text_flow_bf16_offload_smoke(tmp_path: Path) -> None:
    """Text conditioning (MiniLM, CFG dropout), the flow objective, bf16, ZeRO-1 + CPU offload, cosine LR."""
    torch.manual_seed(0)
    CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).save_pretrained(tmp_path / "vae")
    frames = (torch.rand(5, 3, 32, 32) * 255).to(torch.uint8)
    clips = [
        ManifestEntry(write_video(tmp_path / f"c{k}.mp4", frames, 8), caption=f"clip {k}") for k in range(2)
    ]
    write_manifest(tmp_path / "m.jsonl", clips)
    out = tmp_path / "run"
    config = {
        "out": str(out),
        "model": "latte-t2v-tiny",
        "model_overrides": {"caption_channels": 384, "out_channels": 4},
        "objective": "flow",
        "conditioning": "text",
        "cond_dropout": 0.5,
        "text_max_length": 16,
        "vae": str(tmp_path / "vae"),
        "data": {"manifest": str(tmp_path / "m.jsonl"), "num_frames": 5, "size": [32, 32]},
        "batch_size": 2,
        "steps": 4,
        "log_every": 2,
        "precision": "bf16",
        "zero_stage": 1,
        "cpu_offload": True,
        "gradient_checkpointing": True,
        "optim": {"schedule": "cosine", "warmup_steps": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = cli("--config", str(tmp_path / "run.yaml"), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    log = metrics(out)
    assert [r["step"] for r in log] == [2, 4] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert log[-1]["lr"] < log[0]["lr"]  # cosine decay
