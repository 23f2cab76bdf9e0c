"""The osp command line: help, version, reconstruct end to end, and clear errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from osp import __version__
from osp.cli.main import cli
from osp.io.samples import sample_video
from osp.io.video import probe_video, read_video
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).save_pretrained(
        tmp_path_factory.mktemp("w") / "vae"
    )


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_version_and_help() -> None:
    code, out = run("--version")
    assert code == 0 and __version__ in out
    for command in (
        [],
        ["reconstruct"],
        ["vae"],
        ["vae", "convert"],
        ["vae", "init"],
        ["vae", "presets"],
        ["samples"],
    ):
        code, out = run(*command, "--help")
        assert code == 0 and "Usage:" in out, command


def test_entry_point_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "osp.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout


def test_reconstruct_end_to_end(tmp_path: Path, vae_dir: Path) -> None:
    out = tmp_path / "rec" / "bikes.mp4"
    code, text = run(
        "reconstruct", str(sample_video("bikes")), "--vae", str(vae_dir), "-o", str(out),
        "--frames", "9", "--size", "64x96", "--sample-rate", "2", "--json",
    )  # fmt: skip
    assert code == 0, text
    metrics = json.loads(text)
    assert metrics["latent_shape"] == [4, 3, 8, 12]
    assert 0 < metrics["psnr"] < 100 and -1 <= metrics["ssim"] <= 1
    info = probe_video(out)
    assert (info.frames, info.height, info.width) == (9, 64, 96)
    assert probe_video(tmp_path / "rec" / "bikes_compare.mp4").width == 192
    assert (tmp_path / "rec" / "bikes_compare.png").stat().st_size > 0
    assert read_video(out).fps == pytest.approx(25 / 2)


def test_reconstruct_tiled(tmp_path: Path, vae_dir: Path) -> None:
    out = tmp_path / "tiled.mp4"
    code, text = run(
        "reconstruct", str(sample_video("carphone_pristine")), "--vae", str(vae_dir), "-o", str(out),
        "--frames", "17", "--size", "96x128", "--tile", "--tile-size", "8", "--tile-frames", "3", "--no-compare", "-q",
    )  # fmt: skip
    assert code == 0, text
    assert "PSNR" in text and probe_video(out).frames == 17
    assert not (tmp_path / "tiled_compare.mp4").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "16"], "4n+1 frames"),
        (["--size", "60"], "multiples of 8"),
        (["--size", "abc"], "is not a size"),
        (["--frames", "400"], "has only 250 frames"),
        (["--vae", "/nonexistent/vae"], "/nonexistent/vae: no such file or folder"),
    ],
)
def test_reconstruct_bad_input(tmp_path: Path, vae_dir: Path, args: list[str], message: str) -> None:
    out = tmp_path / "x.mp4"
    base = [
        "reconstruct",
        str(sample_video("bikes")),
        "--vae",
        str(vae_dir),
        "-o",
        str(out),
        "--size",
        "64",
        "-q",
    ]
    code, text = run(*base, *args)
    assert code == 2, text
    assert message in text and "Traceback" not in text
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_unreadable_video(tmp_path: Path, vae_dir: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video")
    code, text = run("reconstruct", str(fake), "--vae", str(vae_dir), "-o", str(tmp_path / "o.mp4"), "-q")
    assert code == 2 and "notes.mp4" in text and "Traceback" not in text


def test_vae_init_and_presets(tmp_path: Path) -> None:
    code, text = run("vae", "presets")
    assert code == 0 and "causalvae-4x8x8" in text and "229.17M" in text
    code, text = run("vae", "init", "causalvae-tiny", "-o", str(tmp_path / "v"))
    assert code == 0 and (tmp_path / "v" / "model.safetensors").is_file()
    code, text = run("vae", "init", "nope", "-o", str(tmp_path / "w"))
    assert code == 2 and "causalvae-tiny" in text


def test_samples_command() -> None:
    code, text = run("samples", "bikes")
    assert code == 0 and text.strip().endswith("bikes.mp4")
    code, text = run("samples", "nope")
    assert code == 2 and "known names" in text
