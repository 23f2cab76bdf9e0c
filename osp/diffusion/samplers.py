"""Sampling through diffusers' schedulers, behind one entry point with one signature.

diffusers maintains the solvers; this module only configures each one to match how osp models are
trained and drives the loop. DDPM-family schedulers get the training schedule of DiT/Latte/Open-Sora-Plan
v1.0: 1000 steps, linear betas 1e-4..0.02, ε prediction. Choices that differ from diffusers' defaults:

* ``clip_sample=False`` (DDIM, DDPM): clamping the x0 estimate to [-1, 1] is for pixels; latents are
  not bounded there, and DiT samples latents with ``clip_denoised=False``.
* ``set_alpha_to_one=True`` (DDIM, PNDM): the last step lands on ᾱ = 1, i.e. returns the x0 estimate,
  as DiT's DDIM does (its ᾱ_prev at t=0 is 1). PNDM's default (False) would leave √(1-ᾱ_0) ε = 1% noise.
* ``timestep_spacing="trailing"`` (DPM++, Euler, and DDIM/PNDM when N divides 1000): the first step
  is at t = 999, the noise level pure Gaussian noise actually has, and steps are evenly spaced down from
  there (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2). DiT's
  respacing also starts at 999; diffusers' "leading" default starts at 1000 - 1000/N. DDIM and PNDM
  step to ``t - 1000 // N``, not to the next listed timestep, so for N that do not divide 1000
  "trailing" lands up to one step off and can end on t = 0 instead of ᾱ = 1 (1% noise left for
  N = 7, 15, 80, ...). For those N, DDIM uses "linspace" (DiT's own respaced timesteps, 999 down to 0;
  DDIM re-derives x0 each step, so a step landing one trained step off the next timestep is harmless)
  and PNDM "leading" (its multistep formula needs the exact stride 1000 // N; starts at
  (N - 1)·(1000 // N) instead of 999).
* DDPM runs DiT's exact respaced chain: its custom timesteps are ``space_timesteps(1000, str(steps))``,
  so each step uses beta' = 1 - ᾱ_t/ᾱ_prev and ends at t = 0 without noise, like ``p_sample_loop``.
  Variance: ``learned_range`` with the full 2C output for learned-sigma models, else ``fixed_large``
  (β_t, DiT's default for ε-only models).
* PNDM skips the Runge-Kutta warm-up (``skip_prk_steps=True``: PLMS, as latent-diffusion samplers do)
  so N steps cost N+1 model calls, not about N+12.
* DPM++: ``dpmsolver++`` order 2 (recommended for guided sampling, Lu et al. 2022 §5), lower-order final
  steps, final σ = 0.
* flow-euler: Euler steps on the uniform grid σ = 1, 1-1/N, ..., 1/N -> 0 (``schedules.flow_sigmas``);
  the model is told t = 1000σ. :class:`FlowEuler` runs it with the arithmetic of diffusers'
  ``FlowMatchEulerDiscreteScheduler`` (1000 train steps, shift 1), without importing diffusers.

DDIM, PNDM, DPM++ and Euler consume only the first C output channels of a learned-sigma model (we slice;
DPM++'s own ``variance_type`` slicing assumes 3 channels).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Union

import torch
from pydantic import Field

from osp.config import Config
from osp.diffusion.guidance import classifier_free_guidance
from osp.diffusion.schedules import flow_sigmas, space_timesteps
from osp.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    from osp.diffusion import Denoiser

__all__ = [
    "SAMPLERS",
    "SAMPLER_NAMES",
    "TRAIN_STEPS",
    "FlowEuler",
    "SamplerConfig",
    "make_scheduler",
    "sample",
    "sampler_names",
]

TRAIN_STEPS = 1000
"""Training steps of every osp model (DDPM-family and flow alike); also the upper bound on ``steps``."""

SamplerName = Literal["ddim", "pndm", "dpm++", "euler", "ddpm", "flow-euler"]


class FlowEuler:
    """Euler steps of a flow-matching ODE on given noise levels: x <- x + (σ_next - σ) v.

    The arithmetic of diffusers' ``FlowMatchEulerDiscreteScheduler`` with shift 1 and custom sigmas
    (float32 σs, the step in float32, cast back to the model's dtype; tested equal to it bit for bit),
    written here because importing diffusers' scheduler costs about 2 s of a 2-core CPU (it pulls in
    ``torch._dynamo`` and SciPy), a quarter of the bundled model's whole ``osp generate``. ``step``
    returns a 1-tuple, as diffusers' ``return_dict=False`` does.
    """

    def __init__(self, num_train_timesteps: int = TRAIN_STEPS) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.sigmas = torch.zeros(1)
        self.timesteps = torch.zeros(0)
        self._index: int | None = None

    def set_timesteps(self, sigmas: list[float], device: torch.device | str | None = None) -> None:
        """``sigmas``: the levels to step from (σ = 0, where the chain ends, is appended)."""
        levels = torch.tensor(sigmas, dtype=torch.float32, device=device)
        self.timesteps = levels * self.num_train_timesteps
        self.sigmas = torch.cat([levels, torch.zeros(1, device=levels.device)])
        self._index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        if self._index is None:  # the chain may start part-way: find the first timestep's level
            self._index = int((self.timesteps == timestep.to(self.timesteps.device)).nonzero()[0, 0])
        dt = self.sigmas[self._index + 1] - self.sigmas[self._index]
        self._index += 1
        return ((sample.to(torch.float32) + dt * model_output).to(model_output.dtype),)


Scheduler = Union[
    "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
    "DDPMScheduler", FlowEuler,
]  # fmt: skip

SAMPLERS: dict[str, str] = {
    "ddim": "diffusers DDIMScheduler",
    "pndm": "diffusers PNDMScheduler",
    "dpm++": "diffusers DPMSolverMultistepScheduler",
    "euler": "diffusers EulerDiscreteScheduler",
    "ddpm": "diffusers DDPMScheduler",
    "flow-euler": "osp FlowEuler (diffusers' FlowMatchEulerDiscreteScheduler arithmetic)",
}
"""Each ``sampler`` name and what runs it. The diffusers schedulers are imported when first used."""
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
"""The CLI's ``--sampler`` choices."""


def sampler_names() -> tuple[str, ...]:
    """The valid ``sampler`` names (the CLI's ``--sampler`` choices)."""
    return SAMPLER_NAMES


# How DiT / Latte / Open-Sora-Plan v1.0 train: diffusers' names for the linear 1e-4..0.02 schedule.
_DDPM_TRAINING: dict[str, Any] = {
    "num_train_timesteps": TRAIN_STEPS,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


class SamplerConfig(Config):
    """What to sample with. ``guidance_scale`` 4.0 is DiT's ``sample.py`` default."""

    sampler: SamplerName = "dpm++"
    steps: int = Field(50, ge=1, le=TRAIN_STEPS)
    guidance_scale: float = Field(4.0, ge=0.0)


def make_scheduler(
    sampler: str, steps: int, *, learned_sigma: bool = False, device: torch.device | str | None = None
) -> Scheduler:
    """A diffusers scheduler configured for how osp models train, with its ``steps`` timesteps set.

    See the module docstring for why each setting.
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler: unknown name {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= TRAIN_STEPS:
        raise ConfigError(
            f"steps: must be an integer from 1 to {TRAIN_STEPS} (the training steps), got {steps!r}"
        )
    divides = TRAIN_STEPS % steps == 0
    # Any: the schedulers share set_timesteps/step by convention, not through a typed base class, and their
    # annotations (device, FloatTensor) are narrower than what they accept.
    scheduler: Any
    if sampler == "ddim":
        from diffusers.schedulers.scheduling_ddim import DDIMScheduler

        scheduler = DDIMScheduler(
            **_DDPM_TRAINING,
            clip_sample=False,
            set_alpha_to_one=True,
            timestep_spacing="trailing" if divides else "linspace",
        )
    elif sampler == "pndm":
        from diffusers.schedulers.scheduling_pndm import PNDMScheduler

        scheduler = PNDMScheduler(
            **_DDPM_TRAINING,
            skip_prk_steps=True,
            set_alpha_to_one=True,
            timestep_spacing="trailing" if divides else "leading",
        )
    elif sampler == "dpm++":
        from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler

        scheduler = DPMSolverMultistepScheduler(
            **_DDPM_TRAINING,
            algorithm_type="dpmsolver++",
            solver_order=2,
            lower_order_final=True,
            final_sigmas_type="zero",
            timestep_spacing="trailing",
        )
    elif sampler == "euler":
        from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler

        scheduler = EulerDiscreteScheduler(
            **_DDPM_TRAINING, timestep_spacing="trailing", final_sigmas_type="zero"
        )
    elif sampler == "ddpm":
        from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

        scheduler = DDPMScheduler(
            **_DDPM_TRAINING,
            clip_sample=False,
            variance_type="learned_range" if learned_sigma else "fixed_large",
        )
    else:
        scheduler = FlowEuler(TRAIN_STEPS)

    if sampler == "ddpm":  # DiT's respaced chain: ends at t = 0, where no noise is added
        scheduler.set_timesteps(timesteps=space_timesteps(TRAIN_STEPS, steps)[::-1], device=device)
    elif sampler == "flow-euler":
        scheduler.set_timesteps(sigmas=flow_sigmas(steps)[:-1].tolist(), device=device)
    else:
        scheduler.set_timesteps(steps, device=device)
    return scheduler


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    *,
    sampler: str,
    steps: int,
    cond: dict[str, torch.Tensor],
    uncond: dict[str, torch.Tensor] | None = None,
    guidance_scale: float = 1.0,
    learned_sigma: bool = False,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` (standard normal, (B, C, ...)) to a sample in ``steps`` steps of ``sampler``.

    The denoiser is called as ``denoiser(x, t, cond)`` with ``t`` the scheduler's timesteps expanded to
    (B,) (0..999 for DDPM-family, 1000σ for flow-euler) and ``x`` already passed through
    ``scale_model_input``. With ``guidance_scale != 1`` and ``uncond`` given, each step is one call of
    batch 2B (see ``guidance.py``). ``learned_sigma``: the model outputs 2C channels (ε, v). ``generator``
    drives the noise of stochastic steps (DDPM). ``progress(done, total)`` is called after each step.
    """
    # 1. Scheduler and its timesteps (checks sampler and steps).
    scheduler: Any = make_scheduler(sampler, steps, learned_sigma=learned_sigma, device=noise.device)
    if guidance_scale != 1.0 and uncond is None:
        raise ConfigError(f"uncond: guidance_scale {guidance_scale} needs unconditional inputs (uncond)")
    if noise.ndim < 2:
        raise ShapeError(f"noise: expected a batch-first tensor (B, C, ...), got shape {tuple(noise.shape)}")
    step_takes_generator = "generator" in inspect.signature(scheduler.step).parameters

    # 2. Guided denoiser: one [cond; uncond] call per step when guiding.
    model = classifier_free_guidance(denoiser, uncond, guidance_scale, learned_sigma=learned_sigma)
    channels = noise.shape[1]
    want = 2 * channels if learned_sigma else channels
    batch = noise.shape[0]

    # 3. Loop: scale input, predict, step.
    # Euler works in σ-space (x / √ᾱ), so it starts at σ_max ε; flow schedulers have no such attribute.
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    timesteps = scheduler.timesteps
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model(x_in, t.expand(batch), cond)
        if out.shape[:2] != (batch, want) or out.shape[2:] != x.shape[2:]:
            raise ShapeError(
                f"model output: shape {tuple(out.shape)}, expected {(batch, want, *x.shape[2:])} "
                f"({'ε and variance' if learned_sigma else 'one prediction'} for x of shape {tuple(x.shape)})"
            )
        if learned_sigma and sampler != "ddpm":
            out = out[:, :channels]  # only DDPM uses the learned variance
        kwargs: dict[str, Any] = {"generator": generator} if step_takes_generator else {}
        x = scheduler.step(out, t, x, return_dict=False, **kwargs)[0]
        if progress is not None:
            progress(i + 1, total)
    return x
