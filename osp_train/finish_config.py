"""Run settings of ``task: upscale`` and ``task: interpolate`` (the ``upscale:`` / ``interpolate:`` keys)."""

from __future__ import annotations

from pydantic import Field, field_validator

from osp.config import Config


class DegradeConfig(Config):
    """How a low-resolution clip is made from a high-resolution one, per clip (every frame alike).

    Real-ESRGAN's "second-order" degradation (Wang et al. 2021, Sec. 3.1), scaled down to video: blur
    -> downscale -> noise -> H.264 re-encode, and with probability ``second_order`` a milder blur ->
    noise -> re-encode again. With probability ``clean`` the clip is only downscaled (antialiased
    bicubic, the classic benchmark), the case a base model's clean low-resolution output is closest
    to; an upscaler trained on degraded clips alone smooths clean ones.
    """

    clean: float = Field(0.3, ge=0, le=1, description="probability of a plain bicubic downscale")
    blur_sigma: tuple[float, float] = (0.2, 2.0)  # Gaussian blur at high resolution, in HR pixels
    noise_sigma: tuple[float, float] = (1.0, 12.0)  # Gaussian noise at low resolution, in 8-bit levels
    gray_noise: float = Field(
        0.4, ge=0, le=1, description="probability that the noise is the same in R, G, B"
    )
    crf: tuple[int, int] = (18, 36)  # libx264 constant rate factor (higher: stronger compression)
    second_order: float = Field(0.3, ge=0, le=1)

    @field_validator("blur_sigma", "noise_sigma", "crf")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError(f"expected 0 <= lo <= hi, got {list(value)}")
        return value

    @field_validator("crf")
    @classmethod
    def _crf(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[1] > 51:
            raise ValueError(f"libx264 takes 0..51, got {list(value)}")
        return value


class UpscaleTaskConfig(Config):
    """``task: upscale``: pairs made on the fly from ``data`` clips (the high-resolution targets);
    loss = l1_weight * |y - x| + l2_weight * (y - x)^2 + luma_weight * |Y(y) - Y(x)|
    + perceptual_weight * P(y, x) + temporal_weight * |Δt y - Δt x|, averaged over frames, pixels in
    [-1, 1], Y the BT.601 luma (what the SR literature's PSNR and SSIM are measured on), Δt the change
    from one frame to the next (what flickers: an upscaler that redraws codec noise differently in each
    frame changes where the video does not).

    ``dihedral``: before its input is made, each clip (all its frames alike) is turned by one of the 8
    symmetries of the square, drawn from the step's generator, the augmentation of EDSR and RCAN. The
    dataset's ``random_flip`` gives only 2 of the 8; the others make a model that draws the same detail
    whichever way an edge runs, the equivariance ``osp upscale --ensemble`` otherwise buys at 8x the time."""

    scale: int | None = Field(None, ge=2, le=4, description="None: the model's own scale")
    degrade: DegradeConfig = DegradeConfig()
    l1_weight: float = Field(1.0, ge=0)
    l2_weight: float = Field(
        0.0,
        ge=0,
        description="squared error: what PSNR measures; EDSR-style PSNR fine-tuning after L1 training",
    )
    luma_weight: float = Field(0.0, ge=0)
    perceptual_weight: float = Field(0.1, ge=0)
    temporal_weight: float = Field(0.0, ge=0, description="needs data.num_frames >= 2")
    dihedral: bool = Field(
        False,
        description="turn each clip by one of the square's 8 flips and transposes (needs square data.size)",
    )
    # As vae_loss.perceptual: "lpips:/path/to/weights.pth", "fallback" (image-gradient L1) or "none".
    perceptual: str = "fallback"


class InterpolateTaskConfig(Config):
    """``task: interpolate``: clips of ``data.num_frames`` = n frames; the outer two are the inputs and
    the n - 2 inner ones the targets at t = k / (n - 1) (3 frames: one middle frame; 5: t = 1/4, 1/2,
    3/4). loss = l1_weight * |It - I| + warp_weight * (|warp(I0, F_t0) - I| + |warp(I1, F_t1) - I|) / 2
    + smooth_weight * (mean |flow gradient|), the flow in pixels.

    The warp term asks each flow on its own to reproduce the target. Without it a young network sits
    in the cross-fade (flows near zero, mask at one half), which the fused L1 alone rewards at first
    because small motions blend well; RIFE's distillation from a teacher that sees the target plays the
    same role at a larger cost."""

    l1_weight: float = Field(1.0, ge=0)
    warp_weight: float = Field(0.5, ge=0)
    smooth_weight: float = Field(0.01, ge=0)
    reverse: float = Field(0.5, ge=0, le=1, description="probability of playing a clip backwards")
