"""``task: vae`` and ``task: vqvae`` end to end on CPU: learning, the GAN switching on, exact resume, bad config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("deepspeed", reason="training needs the train extra: pip install -e '.[train]'")
import torch
import yaml
from click.testing import CliRunner
from test_train import _clip, cli, metrics  # pytest puts tests/ on sys.path

from osp.cli.train import train as train_command
from osp.io.video import write_video
from osp.io.weights import load_safetensors
from osp.vae import CausalVideoVAE
from osp.vae.vqvae import VQVAE
from osp_train.data import ManifestEntry, write_manifest
from osp_train.losses import LPIPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vae")
    entries = [ManifestEntry(write_video(root / f"clip{k}.mp4", _clip(k, t=8), 8), label=k) for k in range(2)]
    write_manifest(root / "manifest.jsonl", entries)
    return root


def write_config(clips: Path, out: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "out": str(out),
        "task": "vae",
        "model": "causalvae-tiny",
        "vae_loss": {"perceptual": "fallback", "disc_start": 1000, "disc_channels": 8, "disc_layers": 2},
        "data": {"manifest": str(clips / "manifest.jsonl"), "num_frames": 5, "size": [32, 32]},
        "batch_size": 2,
        "steps": 30,
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "ema_decay": 0.9,
        "log_every": 5,
        "checkpoint_every": 100,
        "seed": 3,
    }
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_vae_learns_and_gan_switches_on(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    loss = {"perceptual": "fallback", "disc_start": 20, "disc_channels": 8, "disc_layers": 2}
    result = cli("--config", str(write_config(clips, out, vae_loss=loss)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    log = metrics(out)
    l1 = [r["l1"] for r in log]
    assert l1[-1] < 0.6 * l1[0], l1
    assert log[-1]["psnr"] > log[0]["psnr"]
    assert all("d_loss" not in r for r in log if r["step"] <= 20)  # steps 0..19 train without the GAN
    late = [r for r in log if r["step"] > 20]
    assert late and all({"d_loss", "d_weight", "g_loss"} <= r.keys() for r in late), late
    assert all(0 <= r["d_weight"] <= 1e4 * 0.5 for r in late)
    vae = CausalVideoVAE.from_pretrained(out / "ema")
    assert vae.config.hidden_size == 8 and (out / "model" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step-0000030" / "discriminator.pt").is_file()


def test_vae_resume_is_bit_exact(clips: Path, tmp_path: Path) -> None:
    """Stop after a checkpoint (steps=8), then continue the same run to 16: equal to one run of 16."""
    loss = {"perceptual": "fallback", "disc_start": 4, "disc_channels": 8, "disc_layers": 2}
    settings = {"steps": 16, "checkpoint_every": 4, "log_every": 4, "vae_loss": loss}
    a, b = tmp_path / "a", tmp_path / "b"
    result = cli("--config", str(write_config(clips, a, **settings)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    config_b = write_config(clips, b, **settings)
    result = cli("--config", str(config_b), "--set", "steps=8", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    # The first leg ended at step 8 with steps=8, so its LR schedule (constant after warmup) is the same.
    result = cli("--config", str(config_b), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((b / "summary.json").read_text())["resumed_from"] == 8
    for folder in ("model", "ema"):
        wa = load_safetensors(a / folder / "model.safetensors")
        wb = load_safetensors(b / folder / "model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), folder
    da = torch.load(a / "checkpoints/step-0000016/discriminator.pt", weights_only=True)["model"]
    db = torch.load(b / "checkpoints/step-0000016/discriminator.pt", weights_only=True)["model"]
    assert all(torch.equal(da[k], db[k]) for k in da)
    strip = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in metrics(a)]
    assert strip == [{k: v for k, v in r.items() if k != "samples_per_s"} for r in metrics(b)]


def test_vqvae_lowers_its_loss(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "vq"
    config = write_config(
        clips,
        out,
        task="vqvae",
        model="vqvae-tiny",
        vae_loss=None,
        steps=25,
        data={"manifest": str(clips / "manifest.jsonl"), "num_frames": 8, "size": [32, 32]},
    )
    result = cli("--config", str(config), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    log = metrics(out)
    assert log[-1]["recon_loss"] < 0.5 * log[0]["recon_loss"], log
    assert {"commitment_loss", "perplexity", "psnr"} <= log[-1].keys()
    assert VQVAE.from_pretrained(out / "ema").config.n_codes == 64


def test_freeze_keeps_the_encoder_while_the_decoder_learns(clips: Path, tmp_path: Path) -> None:
    """``freeze: [encoder, quant_conv]`` fine-tunes the decoder alone: the encoder's weights (hence the
    latents a transformer was trained on) come out bit-identical in the trained and EMA folders."""
    from osp.vae import CAUSAL_VAE_CONFIGS

    torch.manual_seed(0)
    start = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).save_pretrained(tmp_path / "start")
    initial = load_safetensors(start / "model.safetensors")
    out = tmp_path / "run"
    config = write_config(
        clips, out, model=str(start), steps=4, log_every=2, freeze=["encoder", "quant_conv"]
    )
    result = cli("--config", str(config), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    for folder in ("model", "ema"):
        weights = load_safetensors(out / folder / "model.safetensors")
        kept = [k for k in initial if k.startswith(("encoder.", "quant_conv."))]
        assert kept and all(torch.equal(weights[k], initial[k]) for k in kept), folder
        moved = [k for k in initial if k.startswith("decoder.") and not torch.equal(weights[k], initial[k])]
        assert moved, f"{folder}: no decoder weight changed"

    result = cli(
        "--config", str(config), "--set", "freeze=[encodr]", "--set", f"out={tmp_path / 'bad'}", "--quiet"
    )
    said = result.stderr
    assert result.returncode == 2 and "freeze" in said and "encodr" in said, said[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("vae_loss.perceptual=vgg", "vae_loss.perceptual"),
        ("vae_loss.perceptual=lpips:/nonexistent.pth", "vae_loss.perceptual"),
        ("vae_loss.disc_weight=-1", "vae_loss.disc_weight"),
        ("vae_loss.kl_wieght=1", "vae_loss.kl_wieght"),
        ("task=vqvae", "vae_loss"),
    ],
)
def test_bad_vae_loss_config_exits_2(clips: Path, tmp_path: Path, change: str, field: str) -> None:
    config = write_config(clips, tmp_path / "bad")
    result = CliRunner().invoke(train_command, ["--config", str(config), "--set", change, "--dry-run"])
    assert result.exit_code == 2 and field in result.output, result.output
    assert "Traceback" not in result.output


def test_vae_demo_config_is_valid() -> None:
    config = str(ROOT / "configs/train/vae-tiny.yaml")
    result = CliRunner().invoke(train_command, ["--config", config, "--dry-run"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    """configs/train and configs/demo (the bundled model's recipe) all parse into a TrainConfig; their
    data and model paths are checked when a run starts, so this needs no data."""
    from osp.cli.train import load_config

    cfg = load_config(path, ())
    assert cfg.steps >= 1 and cfg.out


def test_lpips_loads_taming_layout(tmp_path: Path) -> None:
    """The LPIPS loader maps taming's ``net.slice*`` keys; identical inputs are at distance 0."""
    torch.manual_seed(0)
    net = LPIPS()
    state = {
        f"net.slice1.{k.removeprefix('features.')}": v for k, v in net.state_dict().items() if "features" in k
    }
    state |= {f"lin{i}.model.1.weight": net.lins[i].weight.abs() for i in range(5)}
    torch.save(state, tmp_path / "vgg.pth")
    loaded = LPIPS.from_file(tmp_path / "vgg.pth")
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(loaded(x, x), torch.zeros(2)) and (loaded(x, y) > 0).all()
