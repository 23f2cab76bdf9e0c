"""``task: upscale`` and ``task: interpolate`` end to end on CPU: the degradations, overfitting a tiny
clip past the baseline each model must beat, bit-exact resume, and bad settings."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("deepspeed", reason="training needs the train extra: pip install -e '.[train]'")
import torch
import yaml
from click.testing import CliRunner
from test_train import cli, metrics  # pytest puts tests/ on sys.path

from osp.cli.train import train as train_command
from osp.errors import ConfigError, WeightsError
from osp.io.samples import sample_video
from osp.io.video import from_model, read_video, write_video
from osp.io.weights import load_safetensors
from osp.metrics import psnr
from osp.upscale import SRVGGUpscaler
from osp_train.data import ManifestEntry, write_manifest
from osp_train.degrade import degrade, downscale
from osp_train.finish_config import DegradeConfig


def moving_square(dx: int, dy: int, frames: int = 3, size: int = 32) -> torch.Tensor:
    """(T, 3, H, W) uint8: an orange 8x8 square moving (dx, dy) pixels per frame over dark grey."""
    video = torch.full((frames, 3, size, size), 25, dtype=torch.uint8)
    for t in range(frames):
        x, y = 8 + dx * t, 8 + dy * t
        video[t, 0, y : y + 8, x : x + 8], video[t, 1, y : y + 8, x : x + 8] = 240, 150
    return video


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finish-train")
    real = read_video(sample_video("bikes"), num_frames=3, size=(32, 32), start_frame=40)
    write_video(root / "bikes.mp4", real.frames, real.fps)
    write_manifest(root / "real.jsonl", [ManifestEntry(root / "bikes.mp4", label=0)] * 2)
    squares = []
    for k, (dx, dy) in enumerate([(3, 0), (0, 3), (2, 2)]):
        squares.append(ManifestEntry(write_video(root / f"square{k}.mp4", moving_square(dx, dy), 8), label=k))
    write_manifest(root / "squares.jsonl", squares)
    return root


def write_config(clips: Path, out: Path, task: str, **changes: Any) -> Path:
    upscale = task == "upscale"
    data: dict[str, Any] = {
        "out": str(out),
        "task": task,
        "model": "srvgg-tiny-x4" if upscale else "rife-tiny",
        "data": {"manifest": str(clips / ("real.jsonl" if upscale else "squares.jsonl")), "num_frames": 3,
                 "size": [32, 32], "random_flip": False},
        "batch_size": 2,
        "steps": 40,
        "optim": {"lr": 1e-2 if upscale else 3e-3, "warmup_steps": 2},
        "ema_decay": 0.9,
        "log_every": 10,
        "checkpoint_every": 100,
        "log_tensorboard": False,
        "seed": 5,
    }  # fmt: skip
    data.update(changes)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_degradations() -> None:
    """Clean: exactly the antialiased bicubic downscale. Degraded: smaller, blurrier, not that."""
    clip = read_video(sample_video("bikes"), num_frames=3, size=(64, 64), start_frame=40).frames
    clean = degrade(clip, 4, DegradeConfig(clean=1.0), random.Random(0))
    expected = torch.nn.functional.interpolate(clip.float(), size=(16, 16), mode="bicubic", antialias=True)
    assert clean.shape == (3, 3, 16, 16) and torch.equal(clean, expected.round().clamp(0, 255).byte())
    assert torch.equal(clean, downscale(clip.float(), 4).round().clamp(0, 255).byte())
    rough = DegradeConfig(clean=0.0, noise_sigma=(20.0, 20.0), crf=(40, 40))
    a, b = degrade(clip, 4, rough, random.Random(1)), degrade(clip, 4, rough, random.Random(1))
    assert torch.equal(a, b)  # a clip's degradation is a function of the draw
    assert psnr(a, clean) < 30


def test_upscaler_overfits_a_clip_past_bicubic(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "up"
    config = write_config(
        clips, out, "upscale", upscale={"degrade": {"clean": 1.0}, "perceptual_weight": 0.0}
    )
    result = cli("--config", str(config), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    log = metrics(out)
    assert log[-1]["psnr"] > log[-1]["psnr_bicubic"] + 1.0, log
    assert SRVGGUpscaler.from_pretrained(out / "ema").config.scale == 4


def logged_steps(clips: Path, out: Path, **upscale: float) -> list[dict[str, float]]:
    """The logged rows of a 4-step upscale run with the given loss weights (no perceptual term)."""
    config = write_config(clips, out, "upscale", steps=4, log_every=1,
                          upscale={**upscale, "perceptual_weight": 0.0})  # fmt: skip
    result = cli("--config", str(config), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics(out)


def test_luma_term_is_bt601_luma(clips: Path, tmp_path: Path) -> None:
    """upscale.luma_weight adds the L1 of BT.601 luma (scikit-image's Y is 16 + 219 Y on [0, 1])."""
    from skimage.color import rgb2ycbcr

    from osp.metrics import luma

    rgb = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = (torch.from_numpy(rgb2ycbcr(rgb.permute(0, 2, 3, 1).numpy())[..., 0]) - 16) / 219
    torch.testing.assert_close(luma(rgb * 2 - 1)[:, 0], reference * 2 - 1)
    for row in logged_steps(clips, tmp_path / "luma", luma_weight=2.0):
        assert row["luma"] > 0 and row["loss"] == pytest.approx(row["l1"] + 2.0 * row["luma"], rel=1e-5)


def test_l2_term_is_the_squared_error_psnr_measures(clips: Path, tmp_path: Path) -> None:
    """upscale.l2_weight adds the mean squared error on [-1, 1]; the logged PSNR (output clamped to the
    range first, which can only bring it nearer the target) is 10 log10(4 / that error) or more."""
    for row in logged_steps(clips, tmp_path / "l2", l1_weight=0.0, l2_weight=3.0):
        assert row["l2"] > 0 and row["loss"] == pytest.approx(3.0 * row["l2"], rel=1e-5)
        assert row["psnr"] >= 10 * math.log10(4 / row["l2"]) - 1e-3, row


def test_temporal_term_is_the_flicker_of_the_drawn_frames(clips: Path, tmp_path: Path) -> None:
    """upscale.temporal_weight adds the mean |Δt output - Δt target| over the clip's frames; one frame
    has no change to compare, so a 1-frame run is refused."""
    for row in logged_steps(clips, tmp_path / "temporal", temporal_weight=0.5):
        assert row["temporal"] > 0 and row["loss"] == pytest.approx(
            row["l1"] + 0.5 * row["temporal"], rel=1e-5
        )
    single = write_config(clips, tmp_path / "single", "upscale", upscale={"temporal_weight": 0.5},
                          data={"manifest": str(clips / "real.jsonl"), "num_frames": 1, "size": [32, 32]})  # fmt: skip
    result = cli("--config", str(single), "--quiet")
    assert result.returncode == 2 and "upscale.temporal_weight" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "single").exists()


def test_dihedral_turns_each_target_and_makes_its_input_from_it() -> None:
    """upscale.dihedral: every target is one of the square's 8 symmetries of its clip (the reference:
    torch.rot90 of the clip and of its mirror image), all frames alike, each drawn; the input is the
    turned target's downscale. Without it the targets are the clips."""
    from osp_train.finish_config import UpscaleTaskConfig
    from osp_train.finish_task import upscale_pairs

    clip = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    symmetries = [torch.rot90(c, k, dims=(-2, -1)) for c in (clip, clip.flip(-1)) for k in range(4)]
    assert all(not torch.equal(a, b) for i, a in enumerate(symmetries) for b in symmetries[:i])
    spec = UpscaleTaskConfig(degrade=DegradeConfig(clean=1.0), dihedral=True)
    low, hr = upscale_pairs(clip.expand(64, -1, -1, -1, -1), 2, spec, random.Random(3))
    drawn = [next(k for k, s in enumerate(symmetries) if torch.equal(target, s)) for target in hr]
    assert sorted(set(drawn)) == list(range(8))
    for lo, target in zip(low, hr, strict=True):
        expected = downscale(from_model(target).float(), 2).round().clamp(0, 255).byte()
        assert torch.equal(from_model(lo), expected)
    _, plain = upscale_pairs(clip[None], 2, spec.replace(dihedral=False), random.Random(3))
    assert torch.equal(plain[0], clip)


def test_interpolator_overfits_moving_squares_past_blending(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "rife"
    # Played forwards only: with reversals the same pair of inputs also comes swapped, a harder problem
    # than a 40-step test can show learnt.
    config = write_config(clips, out, "interpolate", interpolate={"reverse": 0.0})
    result = cli("--config", str(config), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    log = metrics(out)
    assert log[-1]["psnr"] > log[-1]["psnr_linear"] + 5.0, log
    assert {"smooth", "l1"} <= log[-1].keys()


def test_resume_is_bit_exact(clips: Path, tmp_path: Path) -> None:
    """8 steps in one go == 4 steps, stop, 4 more: the degradations (blur, noise, H.264) are drawn from
    the step's generator, so the resumed run makes the same pairs. (Interpolation draws its clip
    reversals the same way, from the same generator.)"""
    task = "upscale"
    settings: dict[str, Any] = {"steps": 8, "checkpoint_every": 4, "log_every": 4}
    settings["upscale"] = {"degrade": {"clean": 0.3, "second_order": 0.5}}
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("--config", str(write_config(clips, a, task, **settings)), "--quiet").returncode == 0
    config_b = write_config(clips, b, task, **settings)
    assert cli("--config", str(config_b), "--set", "steps=4", "--quiet").returncode == 0
    result = cli("--config", str(config_b), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((b / "summary.json").read_text())["resumed_from"] == 4
    for folder in ("model", "ema"):
        wa = load_safetensors(a / folder / "model.safetensors")
        wb = load_safetensors(b / folder / "model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), folder
    strip = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in metrics(a)]
    assert strip == [{k: v for k, v in r.items() if k != "samples_per_s"} for r in metrics(b)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("upscale.degrade.crf=[30,20]", "upscale.degrade.crf: Value error, expected 0 <= lo <= hi"),
        ("upscale.degrade.crf=[20,60]", "upscale.degrade.crf: Value error, libx264 takes 0..51"),
        ("interpolate.reverse=0.1", "interpolate: only task interpolate reads it"),
        ("upscale.scale=5", "upscale.scale"),
    ],
)
def test_bad_settings_exit_2(clips: Path, tmp_path: Path, change: str, message: str) -> None:
    config = write_config(clips, tmp_path / "bad", "upscale")
    result = CliRunner().invoke(train_command, ["--config", str(config), "--set", change, "--dry-run"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("task", "change", "message"),
    [
        ("upscale", "data.size=[36,36]", "multiple of 2 * scale = 8"),
        ("upscale", "upscale.scale=2", "upscale.scale: 2, but the model draws x4"),
        ("upscale", "model=rife-tiny", "neither a SRVGGUpscaler preset"),
        ("upscale", "data.size=[32,40];upscale.dihedral=true", "upscale.dihedral: transposes a clip"),
        ("interpolate", "data.num_frames=2", "data.num_frames: 2"),
        ("interpolate", "data.size=[36,36]", "multiple of the model's 8"),
        ("interpolate", "model={up}", "does not hold a IFNetInterpolator"),
    ],
)
def test_task_refuses_what_the_model_cannot_train(
    clips: Path, tmp_path: Path, task: str, change: str, message: str
) -> None:
    """Checked when the task is built, before the first step (osp train prints the one line, exit 2)."""
    from osp.cli.train import load_config
    from osp_train.engine import DistInfo
    from osp_train.finish_task import finishing_task

    up = SRVGGUpscaler(SRVGGUpscaler.config_class()).save_pretrained(tmp_path / "up")
    config = write_config(clips, tmp_path / "bad", task)
    cfg = load_config(config, tuple(change.format(up=up).split(";")))
    with pytest.raises(ConfigError, match=re.escape(message)):
        finishing_task(
            cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")), torch.float32
        )


def test_num_conv_override_deepens_a_trained_upscaler(clips: Path, tmp_path: Path) -> None:
    """``model_overrides: {num_conv: N}`` on weights with fewer layers starts training from the same
    function (identity layers added), ``{num_feat: N}`` on narrower ones from nearly the same (copied
    channels, their outgoing weights a little apart); other overrides still load strictly."""
    from osp.cli.train import load_config
    from osp_train.finish_task import build_finisher

    torch.manual_seed(0)
    trained = SRVGGUpscaler(SRVGGUpscaler.config_class(num_feat=8, num_conv=2, temporal_radius=1)).eval()
    folder = trained.save_pretrained(tmp_path / "trained")
    config = write_config(clips, tmp_path / "deeper", "upscale", model=str(folder))
    deeper = build_finisher(load_config(config, ("model_overrides.num_conv=4",)))
    assert isinstance(deeper, SRVGGUpscaler) and deeper.config.num_conv == 4 and deeper.training
    video = torch.rand(1, 3, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(deeper.eval()(video), trained(video), atol=1e-6, rtol=1e-5)
    wider = build_finisher(load_config(config, ("model_overrides.num_feat=12",)))
    assert isinstance(wider, SRVGGUpscaler) and wider.config.num_feat == 12 and wider.training
    with torch.no_grad():
        assert psnr(wider.eval()(video), trained(video), data_range=2.0) > 50
        assert not torch.equal(wider.body[2].weight[:, 8:], wider.body[2].weight[:, :4])
    with pytest.raises(WeightsError, match="wrong shape"):  # narrower: the tensors do not fit
        build_finisher(load_config(config, ("model_overrides.num_feat=4",)))
