"""Diffusion for osp: schedules (pure functions), the IDDPM Gaussian loss with learned sigma, rectified-flow
training, classifier-free guidance and sampling through diffusers' schedulers.

Everything that runs a model takes a :data:`Denoiser`, the one interface that eager, compiled, ONNX
Runtime and TensorRT models all implement.
"""

from collections.abc import Callable

import torch

from osp.diffusion import flow, gaussian, schedules
from osp.diffusion.flow import FlowConfig
from osp.diffusion.gaussian import GaussianConfig, GaussianDiffusion, sample_timesteps
from osp.diffusion.guidance import classifier_free_guidance, combine_guidance
from osp.diffusion.samplers import (
    SAMPLER_NAMES,
    SAMPLERS,
    TRAIN_STEPS,
    SamplerConfig,
    make_scheduler,
    sample,
    sampler_names,
)
from osp.diffusion.schedules import (
    alphas_cumprod,
    cosine_betas,
    flow_sigmas,
    linear_betas,
    respace_betas,
    shift_sigmas,
    space_timesteps,
)

Denoiser = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
"""``denoiser(x_t, t, cond) -> output``.

* ``x_t``: latents, batch first — (B, C, T, H, W) for video, any (B, C, ...) works.
* ``t``: (B,) timesteps in the scheduler's units (0..999 for DDPM-family, 1000σ for flow matching),
  float or long.
* ``cond``: batch-first tensors passed to the model untouched, e.g. ``{"encoder_hidden_states": (B, L, D),
  "encoder_attention_mask": (B, L)}`` or ``{"class_labels": (B,)}``.
* output: the model's raw prediction (B, C_out, ...): ε, ε plus learned-variance channels (C_out = 2C),
  or a velocity for flow models.
"""

__all__ = [
    "SAMPLERS",
    "SAMPLER_NAMES",
    "TRAIN_STEPS",
    "Denoiser",
    "FlowConfig",
    "GaussianConfig",
    "GaussianDiffusion",
    "SamplerConfig",
    "alphas_cumprod",
    "classifier_free_guidance",
    "combine_guidance",
    "cosine_betas",
    "flow",
    "flow_sigmas",
    "gaussian",
    "linear_betas",
    "make_scheduler",
    "respace_betas",
    "sample",
    "sample_timesteps",
    "sampler_names",
    "schedules",
    "shift_sigmas",
    "space_timesteps",
]
