"""Video reconstruction through a causal video VAE: read -> encode -> decode -> write -> measure.

``osp reconstruct`` builds a :class:`ReconstructConfig` and calls :func:`reconstruct`. The result
holds PSNR and SSIM against the (resized, cropped) input, and the paths of what was written: the
reconstruction, an input | reconstruction video and a PNG contact sheet of both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from osp.config import Config
from osp.errors import ConfigError
from osp.io.video import from_model, read_video, side_by_side, to_model, write_contact_sheet, write_video
from osp.metrics import psnr, ssim
from osp.progress import ProgressDisplay, silent
from osp.vae import CausalVideoVAE, TilingConfig, load_causal_vae

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ReconstructConfig(Config):
    video: Path
    out: Path
    vae: Path
    frames: int = Field(17, gt=0)
    sample_rate: int = Field(1, gt=0)
    target_fps: float | None = Field(None, gt=0)
    start_frame: int = Field(0, ge=0)
    size: tuple[int, int] | None = None  # (H, W); None keeps the file's size
    tile: bool = False
    tiling: TilingConfig = TilingConfig()
    sample_posterior: bool = False  # False decodes the posterior mean: deterministic
    seed: int = 0
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "cpu"
    compare: bool = True  # also write <out>_compare.mp4 and <out>_compare.png


@dataclass
class ReconstructResult:
    psnr: float
    ssim: float
    frames: int
    height: int
    width: int
    latent_shape: tuple[int, ...]
    seconds: dict[str, float]
    written: dict[str, Path] = field(default_factory=dict)


def compare_paths(out: Path) -> tuple[Path, Path]:
    stem = out.with_suffix("")
    return stem.with_name(stem.name + "_compare.mp4"), stem.with_name(stem.name + "_compare.png")


def reconstruct(
    cfg: ReconstructConfig, vae: CausalVideoVAE | None = None, progress: ProgressDisplay | None = None
) -> ReconstructResult:
    progress = progress or silent()
    seconds: dict[str, float] = {}
    dtype = DTYPES[cfg.dtype]
    if cfg.out.suffix.lower() != ".mp4":
        raise ConfigError(f"out: {cfg.out} must end in .mp4")

    # 1. Load the VAE and read the clip (sizes are checked before any heavy work).
    t0 = time.perf_counter()
    if vae is None:
        vae = load_causal_vae(cfg.vae, dtype=dtype, device=cfg.device)
    with progress.step("read video"):
        video = read_video(
            cfg.video,
            num_frames=cfg.frames,
            sample_rate=cfg.sample_rate,
            target_fps=cfg.target_fps,
            start_frame=cfg.start_frame,
            size=cfg.size,
        )
    latent_shape = vae.latent_shape(video.num_frames, video.height, video.width)
    x = to_model(video.frames)[None].to(device=cfg.device, dtype=dtype)  # (1, 3, T, H, W)
    seconds["load"] = time.perf_counter() - t0

    # 2. Encode and decode, tiled when asked.
    tiling = cfg.tiling if cfg.tile else None
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    with torch.inference_mode():
        t0 = time.perf_counter()
        with progress.step("encode") as update:
            posterior = vae.encode(x, tiling, update)
            z = posterior.sample(generator) if cfg.sample_posterior else posterior.mode()
        seconds["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with progress.step("decode") as update:
            y = vae.decode(z, tiling, update)
        seconds["decode"] = time.perf_counter() - t0
    recon = from_model(y[0].float().cpu())  # (T, 3, H, W) uint8

    # 3. Measure against the input as the VAE saw it (after resize/crop), on uint8 frames.
    result = ReconstructResult(
        psnr=psnr(recon, video.frames),
        ssim=ssim(recon, video.frames),
        frames=video.num_frames,
        height=video.height,
        width=video.width,
        latent_shape=latent_shape,
        seconds=seconds,
    )

    # 4. Write the reconstruction, then input | reconstruction as a video and a contact sheet.
    with progress.step("write"):
        result.written["reconstruction"] = write_video(cfg.out, recon, video.fps)
        if cfg.compare:
            video_path, sheet_path = compare_paths(cfg.out)
            result.written["compare_video"] = write_video(
                video_path, side_by_side(video.frames, recon), video.fps
            )
            picks = torch.linspace(0, video.num_frames - 1, min(8, video.num_frames)).round().long()
            result.written["compare_sheet"] = write_contact_sheet(
                sheet_path, [video.frames[picks], recon[picks]], labels=["input", "reconstruction"]
            )
    return result
