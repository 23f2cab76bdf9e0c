"""IDDPM Gaussian diffusion as DiT and Latte train it (Nichol & Dhariwal 2021, "Improved DDPM").

The model sees x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε (DDPM eq. 4) and predicts ε. With ``learn_sigma`` it also
predicts a per-element v in [-1, 1] (channels C..2C of its output) that picks the reverse-step variance
between the two DDPM choices, in log space (IDDPM eq. 15):

    Σ_θ = exp(v' log β_t + (1 - v') log β̃_t),   v' = (v + 1) / 2,

and is trained with the *hybrid* loss L_simple + L_vlb (IDDPM eq. 16), where the VLB term sees the
predicted mean with its gradient stopped, so only the variance channels learn from it (DiT's
``frozen_out``). DiT weighs the two terms 1:1 (its ``LossType.MSE``), and so do we. The VLB term is in
bits per dimension, like IDDPM.

Sampling for users goes through diffusers' schedulers (``osp.diffusion.samplers``); the ancestral
:meth:`GaussianDiffusion.p_sample_loop` here is DiT's DDPM sampler, kept as the reference the tests hold
diffusers' ``DDPMScheduler(variance_type="learned_range")`` against.

Shapes: any batch-first tensor; channels are dim 1, so the video latents are (B, C, T, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from osp.config import Config
from osp.diffusion.schedules import alphas_cumprod, cosine_betas, linear_betas, respace_betas, space_timesteps
from osp.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from osp.diffusion import Denoiser

__all__ = ["GaussianConfig", "GaussianDiffusion", "sample_timesteps"]


class GaussianConfig(Config):
    """How a DDPM-family model was trained. The defaults are DiT's / Latte's ``create_diffusion("")``."""

    steps: int = Field(1000, ge=1, description="training diffusion steps")
    schedule: Literal["linear", "cosine"] = "linear"
    learn_sigma: bool = Field(True, description="model outputs 2C channels: ε and the variance mix v")
    sigma_small: bool = Field(False, description="without learn_sigma: β̃_t (True) or β_t (False) variance")


class GaussianDiffusion:
    """The forward process, the hybrid training loss and DiT's ancestral sampler for one beta schedule.

    ``timestep_map`` (from :meth:`respaced`) says which trained timestep the model is told at each index
    of a shortened chain; it is the identity for a full schedule.
    """

    def __init__(
        self,
        betas: torch.Tensor,
        *,
        learn_sigma: bool = True,
        sigma_small: bool = False,
        timestep_map: torch.Tensor | None = None,
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ConfigError("betas: must be a non-empty 1-D tensor with every value in (0, 1]")
        n = betas.shape[0]
        self.learn_sigma = learn_sigma
        self.sigma_small = sigma_small
        self.timestep_map = torch.arange(n) if timestep_map is None else timestep_map.to(torch.long)
        if self.timestep_map.shape != (n,):
            raise ConfigError(
                f"timestep_map: must have one entry per beta ({n}), got {self.timestep_map.shape}"
            )

        self.betas = betas
        self.alphas_cumprod = alphas_cumprod(betas)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / self.alphas_cumprod - 1).sqrt()
        # Posterior q(x_{t-1} | x_t, x0) = N(coef1 x0 + coef2 x_t, β̃_t)  (DDPM eqs. 6-7).
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        # β̃_0 = 0, so its log is clipped to β̃_1's: it only enters the t=0 decoder term and learned range.
        clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]) if n > 1 else betas
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1 - self.alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - self.alphas_cumprod)
        )

    @classmethod
    def from_config(cls, config: GaussianConfig) -> GaussianDiffusion:
        betas = linear_betas(config.steps) if config.schedule == "linear" else cosine_betas(config.steps)
        return cls(betas, learn_sigma=config.learn_sigma, sigma_small=config.sigma_small)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def respaced(self, section_counts: str | int | Sequence[int]) -> GaussianDiffusion:
        """The same process visiting fewer steps (DiT's ``SpacedDiffusion``); see ``space_timesteps``."""
        keep = space_timesteps(self.num_timesteps, section_counts)
        betas, index_map = respace_betas(self.betas, keep)
        return GaussianDiffusion(
            betas,
            learn_sigma=self.learn_sigma,
            sigma_small=self.sigma_small,
            timestep_map=self.timestep_map[index_map],
        )

    # -- forward process ---------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x0) with the given ε (DDPM eq. 4)."""
        self._check_t(t, x0)
        if noise.shape != x0.shape:
            raise ShapeError(f"noise: shape {tuple(noise.shape)} must equal x0's {tuple(x0.shape)}")
        return (
            _at(self.sqrt_alphas_cumprod, t, x0) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7)."""
        mean = _at(self.posterior_mean_coef1, t, x_t) * x0 + _at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _at(self.posterior_variance, t, x_t), _at(self.posterior_log_variance_clipped, t, x_t)

    # -- reverse process ---------------------------------------------------------------------------

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *, clip_denoised: bool = False
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a model output: keys ``mean``, ``variance``, ``log_variance``, ``pred_xstart``.

        ``clip_denoised`` clamps the x0 prediction to [-1, 1], which suits pixels, not latents (DiT's
        latent sampling leaves it off).
        """
        self._check_t(t, x_t)
        eps = self._split_output(model_output, x_t)
        if self.learn_sigma:
            frac = (model_output[:, x_t.shape[1] :] + 1) / 2  # v in [-1, 1] -> v' in [0, 1]
            min_log = _at(self.posterior_log_variance_clipped, t, x_t)
            max_log = _at(self.betas.log(), t, x_t)
            log_variance = frac * max_log + (1 - frac) * min_log  # IDDPM eq. 15
        elif self.sigma_small:
            log_variance = _at(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        else:
            # β_t, except at t=0 where IDDPM uses β̃_1 for a better decoder log-likelihood.
            large = (
                torch.cat([self.posterior_variance[1:2], self.betas[1:]])
                if self.num_timesteps > 1
                else self.betas
            )
            log_variance = _at(large.log(), t, x_t).expand_as(x_t)
        # x0 from ε by inverting DDPM eq. 4.
        pred_xstart = (
            _at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": log_variance.exp(),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
        }

    @torch.no_grad()
    def p_sample_loop(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        cond: dict[str, torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        clip_denoised: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """DiT's ancestral DDPM sampler: x_{t-1} = μ_θ + exp(½ log Σ_θ) z, no noise at the last step.

        The model is told ``timestep_map[i]`` (trained units, 0..999). z is drawn with ``generator`` once
        per step with index > 0, in the same order as diffusers' ``DDPMScheduler.step``.
        """
        x = noise
        batch = x.shape[0]
        n = self.num_timesteps
        for done, i in enumerate(reversed(range(n)), start=1):
            t = torch.full((batch,), i, dtype=torch.long, device=x.device)
            out = denoiser(x, self.timestep_map.to(x.device)[t], cond)
            pm = self.p_mean_variance(out, x, t, clip_denoised=clip_denoised)
            x = pm["mean"]
            if i > 0:
                # Drawn on the generator's device (a CPU generator may drive CUDA sampling), as diffusers does.
                source = generator.device if generator is not None else x.device
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=source).to(x.device)
                x = x + (0.5 * pm["log_variance"]).exp() * z
            if progress is not None:
                progress(done, n)
        return x

    # -- training ----------------------------------------------------------------------------------

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One VLB term per sample, in bits/dim: KL(q(x_{t-1}|x_t,x0) ‖ p_θ(x_{t-1}|x_t)) for t > 0, and the
        discretized decoder NLL -log p_θ(x0|x1) at t = 0 (DDPM eq. 5, IDDPM §2.1).

        The decoder treats x0 as 8-bit data scaled to [-1, 1], as DiT does even for latents.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        pm = self.p_mean_variance(model_output, x_t, t)
        kl = _mean_flat(_normal_kl(true_mean, true_log_var, pm["mean"], pm["log_variance"])) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, pm["mean"], 0.5 * pm["log_variance"])
        return torch.where(t == 0, _mean_flat(nll) / math.log(2.0), kl)

    def training_losses(
        self,
        model_fn: Denoiser,
        x0: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor],
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses for one timestep each: ``loss`` (B,), ``mse`` (B,) and, with learn_sigma, ``vb`` (B,).

        ``loss = mse + vb`` (IDDPM's hybrid loss, DiT's weighting); without learn_sigma ``loss = mse``
        (L_simple, DDPM eq. 14). ``t`` indexes this diffusion's steps; the model is told
        ``timestep_map[t]``. ``noise`` defaults to ``torch.randn_like(x0)``.
        """
        self._check_t(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, self.timestep_map.to(t.device)[t], cond)
        eps = self._split_output(out, x_t)
        terms = {"mse": _mean_flat((noise - eps) ** 2)}
        if self.learn_sigma:
            # Stop the VLB gradient into the mean: L_vlb trains Σ_θ only (IDDPM §3.1).
            frozen = torch.cat([eps.detach(), out[:, x0.shape[1] :]], dim=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x0, x_t, t)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    # -- checks ------------------------------------------------------------------------------------

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        if t.shape != (x.shape[0],):
            raise ShapeError(
                f"t: expected shape ({x.shape[0]},), one timestep per sample, got {tuple(t.shape)}"
            )
        bad = t.dtype.is_floating_point
        # The range check reads values back, so it is skipped on accelerators (no host sync per step).
        if not bad and t.device.type == "cpu":
            bad = bool(((t < 0) | (t >= self.num_timesteps)).any())
        if bad:
            raise ShapeError(f"t: must hold integer step indices in [0, {self.num_timesteps - 1}]")

    def _split_output(self, out: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The ε channels of a model output, after checking its shape against x_t."""
        c = x_t.shape[1]
        want = 2 * c if self.learn_sigma else c
        if out.shape[0] != x_t.shape[0] or out.shape[1] != want or out.shape[2:] != x_t.shape[2:]:
            kind = "learned-sigma (ε and v)" if self.learn_sigma else "ε-only"
            raise ShapeError(
                f"model output: shape {tuple(out.shape)}, but an {kind} model must output {want} channels "
                f"for x_t of shape {tuple(x_t.shape)}"
            )
        return out[:, :c]


def sample_timesteps(
    batch_size: int,
    num_timesteps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform training timesteps (B,) in [0, num_timesteps), as DiT's ``UniformSampler``."""
    source = generator.device if generator is not None else device
    t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=source)
    return t.to(device) if device is not None else t


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped (B, 1, 1, ...) to broadcast over x; float32 unless x is float64."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = values.to(t.device)[t].to(dtype)
    return out.view(-1, *([1] * (x.ndim - 1)))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def _normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp()
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation IDDPM uses; kept so the VLB matches DiT-trained checkpoints' numbers.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log P(x) for a Gaussian integrated over x's 8-bit bin of width 2/255 (DDPM §3.3); the outermost
    bins extend to ±∞. In nats, elementwise."""
    centered = x - means
    inv_std = (-log_scales).exp()
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
