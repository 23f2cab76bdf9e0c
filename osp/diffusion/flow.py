"""Rectified flow / SiT-style velocity training, in diffusers' FlowMatchEuler convention.

The convention (diffusers ``FlowMatchEulerDiscreteScheduler``, SD3 — Esser et al. 2024, eqs. 1-3):

    x_σ = (1 - σ) x0 + σ ε,      σ ∈ [0, 1]: σ = 0 is data, σ = 1 is pure noise
    v   = dx_σ/dσ = ε - x0       the regression target of the model
    t   = 1000 σ                 what the model is told (float), the scheduler's timestep units

Sampling integrates dx/dσ = v from σ = 1 down to 0; one Euler step is x_{σ'} = x_σ + (σ' - σ) v, which
is exactly ``FlowMatchEulerDiscreteScheduler.step``, so models trained here sample through it unchanged.

SiT (Ma et al. 2024) runs time the other way: x_t = t x0 + (1 - t) ε with t ∈ [0, 1], target
u = x0 - ε. It is the same line, so σ = 1 - t and v = -u; :func:`from_sit` adapts a SiT-trained denoiser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from osp.config import Config
from osp.diffusion.schedules import shift_sigmas
from osp.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from osp.diffusion import Denoiser

__all__ = [
    "TIMESTEP_SCALE",
    "FlowConfig",
    "from_sit",
    "interpolate",
    "predict_x0",
    "sample_sigmas",
    "training_losses",
]

TIMESTEP_SCALE = 1000.0
"""The model is told t = σ · TIMESTEP_SCALE, matching diffusers' ``num_train_timesteps=1000``."""


class FlowConfig(Config):
    """How noise levels are drawn for flow-matching training."""

    sigma_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = Field(0.0, description="logit-normal location m (SD3 uses 0)")
    logit_std: float = Field(1.0, gt=0, description="logit-normal scale s (SD3 uses 1)")
    shift: float = Field(1.0, gt=0, description="SD3 resolution shift applied to drawn sigmas")


def interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 - σ) x0 + σ ε, with σ (B,) broadcast over the other dims."""
    s = _check_sigma(sigma, x0).view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The data estimate behind a velocity: x0 = x_σ - σ v (from x_σ = x0 + σ (ε - x0))."""
    s = _check_sigma(sigma, x_t).view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    return x_t - s * velocity


def training_losses(
    model_fn: Denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    cond: dict[str, torch.Tensor],
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample velocity regression: ``loss`` = ``mse`` = mean((v_θ(x_σ, 1000σ) - (ε - x0))²), each (B,).

    ``sigma`` is (B,) in [0, 1] (draw it with :func:`sample_sigmas`); the model is told ``1000 · sigma``.
    ``noise`` defaults to ``torch.randn_like(x0)``.
    """
    _check_sigma(sigma, x0)
    if noise is None:
        noise = torch.randn_like(x0)
    if noise.shape != x0.shape:
        raise ShapeError(f"noise: shape {tuple(noise.shape)} must equal x0's {tuple(x0.shape)}")
    x_t = interpolate(x0, noise, sigma)
    out = model_fn(x_t, sigma * TIMESTEP_SCALE, cond)
    if out.shape != x0.shape:
        raise ShapeError(
            f"model output: shape {tuple(out.shape)}, but a velocity model must output x_t's shape {tuple(x0.shape)}"
        )
    mse = ((out - (noise - x0)) ** 2).mean(dim=tuple(range(1, x0.ndim)))
    return {"loss": mse, "mse": mse}


def sample_sigmas(
    batch_size: int,
    *,
    method: Literal["uniform", "logit_normal"] = "uniform",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels σ (B,) in (0, 1).

    ``uniform``: σ ~ U(0, 1) (rectified flow, SiT). ``logit_normal``: σ = sigmoid(n), n ~ N(mean, std²),
    which puts more weight on the middle of the path (SD3 §3.1, eq. 19). ``shift`` then applies the SD3
    resolution shift (see ``schedules.shift_sigmas``).
    """
    source = generator.device if generator is not None else device
    if method == "uniform":
        sigma = torch.rand(batch_size, generator=generator, device=source)
    elif method == "logit_normal":
        sigma = torch.sigmoid(mean + std * torch.randn(batch_size, generator=generator, device=source))
    else:
        raise ConfigError(f"sigma_sampling: unknown method {method!r}; choose 'uniform' or 'logit_normal'")
    sigma = shift_sigmas(sigma, shift) if shift != 1.0 else sigma
    return sigma.to(device) if device is not None else sigma


def from_sit(denoiser: Denoiser) -> Denoiser:
    """Wrap a SiT-convention velocity model (told t_SiT ∈ [0, 1], predicts u = x0 - ε) as a denoiser in
    this module's convention (told 1000σ, predicts v = ε - x0): t_SiT = 1 - σ and v = -u."""

    def wrapped(x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return -denoiser(x_t, 1.0 - t / TIMESTEP_SCALE, cond)

    return wrapped


def _check_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if sigma.shape != (x.shape[0],) or not sigma.dtype.is_floating_point:
        raise ShapeError(
            f"sigma: expected a float tensor of shape ({x.shape[0]},), one noise level per sample, "
            f"got {sigma.dtype} {tuple(sigma.shape)}"
        )
    # Reading values back forces a sync, so the range check runs on CPU tensors only.
    if sigma.device.type == "cpu" and bool(((sigma < 0) | (sigma > 1)).any()):
        raise ShapeError("sigma: noise levels must lie in [0, 1] (σ = 0 is data, σ = 1 is pure noise)")
    return sigma
