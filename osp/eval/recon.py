"""Reconstruction quality of clips against their originals: PSNR, SSIM and, with weights, LPIPS.

Clips pair up by relative path without the suffix (``real/a/x.avi`` with ``recon/a/x.mp4``). A pair
compares its first ``min(T_real, T_recon)`` frames (a causal VAE returns 4n + 1 of them); frame sizes
must be equal. Per clip:

* PSNR over all its pixels in uint8 (data range 255, :func:`osp.metrics.psnr`); identical clips give
  ``inf``. The folder's PSNR is the mean of the clips' dB values, not the PSNR of a pooled MSE;
* SSIM per frame and channel (:func:`osp.metrics.ssim`: Gaussian 11-tap window, sigma 1.5, valid
  region, equal to scikit-image's ``structural_similarity(gaussian_weights=True,
  use_sample_covariance=False)``), averaged;
* LPIPS per frame, frames scaled to [-1, 1], averaged; the network is the caller's (``osp eval
  recon`` loads the LPIPS-VGG weights file that training uses).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from osp.errors import ConfigError, ShapeError
from osp.eval.folders import list_videos
from osp.io.video import read_video
from osp.metrics import psnr, ssim
from osp.progress import ProgressDisplay, silent

Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``net(x, y) -> (N,)`` distances of ``(N, 3, H, W)`` frames in [-1, 1]."""

METRICS = ("psnr", "ssim", "lpips")


def recon_metrics(
    real: torch.Tensor,
    recon: torch.Tensor,
    perceptual: Perceptual | None = None,
    *,
    device: str | torch.device = "cpu",
    batch: int = 16,
) -> dict[str, float]:
    """PSNR, SSIM (and LPIPS with ``perceptual``, which runs on ``device``) of two uint8 ``(T, 3, H, W)``
    clips of equal shape."""
    if real.shape != recon.shape:
        raise ShapeError(f"recon: clips differ in shape, {tuple(real.shape)} vs {tuple(recon.shape)}")
    out = {"psnr": psnr(real, recon), "ssim": ssim(real, recon)}
    if perceptual is not None:
        total = 0.0
        with torch.inference_mode():
            for a, b in zip(real.split(batch), recon.split(batch), strict=True):
                x, y = (t.to(device).float() / 127.5 - 1 for t in (a, b))  # (n, 3, H, W) in [-1, 1]
                total += float(perceptual(x, y).double().sum())
        out["lpips"] = total / real.shape[0]
    return out


def pair_videos(real: Path, recon: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Matching (real, recon) files and a note per side on files without a partner."""

    def by_stem(folder: Path, what: str) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in list_videos(folder, what):
            key = path.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise ConfigError(f"{what}: {found[key]} and {path} differ only in suffix; keep one")
            found[key] = path
        return found

    a, b = by_stem(real, "real"), by_stem(recon, "recon")
    keys = sorted(a.keys() & b.keys())
    if not keys:
        raise ConfigError(f"recon: no file of {recon} has the name of a file of {real}")
    notes = [
        f"{what}: {len(extra)} files without a partner (first: {sorted(extra)[0]})"
        for what, extra in (("real", a.keys() - b.keys()), ("recon", b.keys() - a.keys()))
        if extra
    ]
    return [(a[k], b[k]) for k in keys], notes


@dataclass
class ReconResult:
    clips: list[dict[str, object]]
    mean: dict[str, float]
    notes: list[str] = field(default_factory=list)


def recon_folders(
    real: str | Path,
    recon: str | Path,
    perceptual: Perceptual | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: ProgressDisplay | None = None,
) -> ReconResult:
    """Metrics of every pair of clips of two folders, and their means over clips."""
    real, recon = Path(real), Path(recon)
    pairs, notes = pair_videos(real, recon)
    progress = progress or silent()
    clips: list[dict[str, object]] = []
    short = 0
    with progress.step("reconstruction metrics", len(pairs)) as update:
        for i, (a_path, b_path) in enumerate(pairs):
            a, b = read_video(a_path).frames, read_video(b_path).frames
            frames = min(a.shape[0], b.shape[0])
            short += a.shape[0] != b.shape[0]
            if a.shape[1:] != b.shape[1:]:
                raise ShapeError(
                    f"recon: {b_path} has {b.shape[3]}x{b.shape[2]} frames, {a_path} {a.shape[3]}x{a.shape[2]}"
                )
            values = recon_metrics(a[:frames], b[:frames], perceptual, device=device)
            clips.append({"file": a_path.relative_to(real).as_posix(), "frames": frames, **values})
            update(i + 1, len(pairs))
    if short:
        notes.append(f"{short} pairs differ in length; each compares its first min(T) frames")
    names = [m for m in METRICS if m in clips[0]]
    mean = {m: math.fsum(float(c[m]) for c in clips) / len(clips) for m in names}  # type: ignore[arg-type]
    return ReconResult(clips, mean, notes)
