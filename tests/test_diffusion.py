"""Schedules, the IDDPM hybrid loss and the flow objective, each against a formula written out here in
NumPy/torch from the papers (DDPM eqs. 4-7, IDDPM eqs. 15-17, SD3 eq. 23) or against diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from torch.distributions import Normal, kl_divergence

from osp.diffusion import (
    GaussianConfig,
    GaussianDiffusion,
    alphas_cumprod,
    cosine_betas,
    flow,
    flow_sigmas,
    linear_betas,
    make_scheduler,
    respace_betas,
    sample_timesteps,
    space_timesteps,
)
from osp.errors import ConfigError, ShapeError

SHAPE = (3, 4, 2, 3, 3)  # (B, C, T, H, W)
BETAS = np.linspace(1e-4, 0.02, 1000)
ABAR = np.cumprod(1 - BETAS)
ABAR_PREV = np.append(1.0, ABAR[:-1])
POST_VAR = BETAS * (1 - ABAR_PREV) / (1 - ABAR)  # β̃_t, DDPM eq. 7
# β̃_0 = 0 has no log; IDDPM (and so DiT) use β̃_1 in its place.
LOG_POST_VAR = np.log(np.append(POST_VAR[1], POST_VAR[1:]))


def bcast(values: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values[t.numpy()]).view(-1, 1, 1, 1, 1)


def tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x0 (within [-1, 1] like DiT's data), ε, a model ε̂ and a model v in (-1, 1), all float64."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 1.8 - 0.9
    noise, eps_hat = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 2 - 1
    return x0, noise, eps_hat, v


# -- schedules ---------------------------------------------------------------------------------------


def test_linear_schedule_matches_numpy_and_diffusers() -> None:
    np.testing.assert_allclose(linear_betas().numpy(), BETAS, rtol=1e-12)
    np.testing.assert_allclose(alphas_cumprod(linear_betas()).numpy(), ABAR, rtol=1e-10)
    np.testing.assert_allclose(ABAR, DDPMScheduler().alphas_cumprod.numpy(), rtol=1e-5)


def test_cosine_schedule_telescopes_to_the_cosine_alpha_bar() -> None:
    f = np.cos((np.arange(1001) / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    abar = alphas_cumprod(cosine_betas()).numpy()
    np.testing.assert_allclose(abar[:-1], (f[1:] / f[0])[:-1], rtol=1e-9)  # the last beta is clipped
    diffusers_betas = DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas.numpy()
    np.testing.assert_allclose(cosine_betas().numpy(), diffusers_betas, rtol=1e-5, atol=1e-7)


def test_space_timesteps_follows_dits_rules() -> None:
    fifty = space_timesteps(1000, "50")
    assert fifty == sorted(set(np.round(np.linspace(0, 999, 50)).astype(int).tolist()))
    assert fifty[0] == 0 and fifty[-1] == 999 and len(fifty) == 50
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    sections = space_timesteps(300, "10,15,20")
    assert len(sections) == 45
    assert [sum(lo <= s < lo + 100 for s in sections) for lo in (0, 100, 200)] == [10, 15, 20]
    assert {0, 99, 100, 199, 200, 299} <= set(sections)
    assert space_timesteps(1000, 1000) == list(range(1000))
    for bad in ("ddim999", "fifty", "0", "20,200"):
        with pytest.raises(ConfigError, match="timestep respacing"):
            space_timesteps(100 if bad == "20,200" else 1000, bad)


def test_respaced_betas_are_ratios_of_consecutive_alpha_bars() -> None:
    keep = space_timesteps(1000, "50")
    expected, last = [], 1.0
    for k in keep:  # DiT's SpacedDiffusion, written out
        expected.append(1 - ABAR[k] / last)
        last = ABAR[k]
    betas, index_map = respace_betas(linear_betas(), keep)
    np.testing.assert_allclose(betas.numpy(), expected, rtol=1e-10)
    assert index_map.tolist() == keep
    spaced = GaussianDiffusion(linear_betas()).respaced("50")
    np.testing.assert_allclose(spaced.alphas_cumprod.numpy(), ABAR[keep], rtol=1e-10)
    assert spaced.timestep_map.tolist() == keep and spaced.num_timesteps == 50


def test_flow_sigmas_and_shift_match_diffusers() -> None:
    for shift in (1.0, 3.0):
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        scheduler.set_timesteps(sigmas=np.linspace(1, 0, 11)[:-1].tolist())
        np.testing.assert_allclose(scheduler.sigmas.numpy(), flow_sigmas(10, shift).numpy(), atol=1e-6)
    s = torch.tensor([0.25])
    torch.testing.assert_close(flow_sigmas(4, 3.0)[3:4], 3 * s / (1 + 2 * s), check_dtype=False)
    np.testing.assert_allclose(
        make_scheduler("flow-euler", 10).sigmas.numpy(), flow_sigmas(10).numpy(), atol=1e-6
    )


# -- Gaussian diffusion ------------------------------------------------------------------------------


def test_q_sample_and_mse_term_by_hand() -> None:
    x0, noise, eps_hat, v = tensors()
    t = torch.tensor([0, 500, 999])
    diffusion = GaussianDiffusion(linear_betas())
    x_t = diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(x_t, bcast(np.sqrt(ABAR), t) * x0 + bcast(np.sqrt(1 - ABAR), t) * noise)
    out = torch.cat([eps_hat, v], dim=1)
    losses = diffusion.training_losses(lambda x, tt, c: out, x0, t, {}, noise)
    torch.testing.assert_close(losses["mse"], ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3, 4)))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])


def test_vb_term_for_t_positive_is_the_gaussian_kl() -> None:
    x0, noise, eps_hat, v = tensors(1)
    t = torch.tensor([1, 300, 999])
    diffusion = GaussianDiffusion(linear_betas())
    losses = diffusion.training_losses(lambda x, tt, c: torch.cat([eps_hat, v], 1), x0, t, {}, noise)

    # Independent reference: DDPM eq. 7 posterior, ε -> x0 by inverting eq. 4, IDDPM eq. 15 variance.
    x_t = bcast(np.sqrt(ABAR), t) * x0 + bcast(np.sqrt(1 - ABAR), t) * noise
    c1 = bcast(np.sqrt(ABAR_PREV) * BETAS / (1 - ABAR), t)
    c2 = bcast(np.sqrt(1 - BETAS) * (1 - ABAR_PREV) / (1 - ABAR), t)
    x0_hat = (x_t - bcast(np.sqrt(1 - ABAR), t) * eps_hat) / bcast(np.sqrt(ABAR), t)
    frac = (v + 1) / 2
    model_log_var = frac * bcast(np.log(BETAS), t) + (1 - frac) * bcast(LOG_POST_VAR, t)
    true = Normal(c1 * x0 + c2 * x_t, bcast(np.sqrt(POST_VAR), t).expand(SHAPE))
    model = Normal(c1 * x0_hat + c2 * x_t, (0.5 * model_log_var).exp())
    expected = kl_divergence(true, model).mean(dim=(1, 2, 3, 4)) / math.log(2)
    torch.testing.assert_close(losses["vb"], expected, rtol=1e-6, atol=1e-9)


def test_vb_term_at_t0_is_the_discretized_decoder_nll() -> None:
    x0, noise, eps_hat, v = tensors(2)
    x0[0, 0, 0, 0, :2] = torch.tensor([-1.0, 1.0])  # the open-ended edge bins
    # A fair model (ε̂ near ε): far in the tails IDDPM's tanh CDF approximation drifts from the exact one.
    eps_hat = noise + 0.3 * eps_hat
    t = torch.zeros(3, dtype=torch.long)
    diffusion = GaussianDiffusion(linear_betas())
    losses = diffusion.training_losses(lambda x, tt, c: torch.cat([eps_hat, v], 1), x0, t, {}, noise)

    # At t=0 the model mean is its x0 estimate; its log-variance mixes log β_0 and log β̃_1 (the clipped
    # β̃_0). Exact normal CDF here; IDDPM uses a tanh approximation.
    x_t = math.sqrt(ABAR[0]) * x0 + math.sqrt(1 - ABAR[0]) * noise
    mean = (x_t - math.sqrt(1 - ABAR[0]) * eps_hat) / math.sqrt(ABAR[0])
    frac = (v + 1) / 2
    std = (0.5 * (frac * math.log(BETAS[0]) + (1 - frac) * LOG_POST_VAR[0])).exp()
    upper = torch.special.ndtr((x0 + 1 / 255 - mean) / std)
    lower = torch.special.ndtr((x0 - 1 / 255 - mean) / std)
    prob = torch.where(x0 < -0.999, upper, torch.where(x0 > 0.999, 1 - lower, upper - lower))
    expected = -prob.clamp(min=1e-12).log().mean(dim=(1, 2, 3, 4)) / math.log(2)
    torch.testing.assert_close(losses["vb"], expected, rtol=5e-3, atol=1e-4)


def test_learned_range_endpoints_are_posterior_and_forward_variances() -> None:
    x0, _, eps_hat, _ = tensors(3)
    t = torch.tensor([1, 400, 999])
    diffusion = GaussianDiffusion(linear_betas())
    for v, expected in ((-1.0, POST_VAR), (1.0, BETAS)):
        out = torch.cat([eps_hat, torch.full_like(eps_hat, v)], dim=1)
        pm = diffusion.p_mean_variance(out, x0, t)
        torch.testing.assert_close(pm["variance"], bcast(expected, t).expand(SHAPE))


def test_vb_trains_only_the_variance_and_mse_only_the_mean() -> None:
    x0, noise, eps_hat, v = (x.float() for x in tensors(4))
    out = torch.cat([eps_hat, v], dim=1).requires_grad_()
    diffusion = GaussianDiffusion(linear_betas())
    losses = diffusion.training_losses(lambda x, t, c: out, x0, torch.tensor([5, 50, 500]), {}, noise)
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), out, retain_graph=True)
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), out)
    assert grad_vb[:, :4].abs().max() == 0 and grad_vb[:, 4:].abs().max() > 0
    assert grad_mse[:, 4:].abs().max() == 0 and grad_mse[:, :4].abs().max() > 0


def test_eps_only_models_use_plain_mse_and_fixed_variances() -> None:
    x0, noise, eps_hat, _ = tensors(5)
    t = torch.tensor([3, 30, 300])
    large = GaussianDiffusion(linear_betas(), learn_sigma=False)
    losses = large.training_losses(lambda x, tt, c: eps_hat, x0, t, {}, noise)
    assert set(losses) == {"loss", "mse"}
    torch.testing.assert_close(losses["loss"], ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3, 4)))
    torch.testing.assert_close(
        large.p_mean_variance(eps_hat, x0, t)["variance"], bcast(BETAS, t).expand(SHAPE)
    )
    small = GaussianDiffusion(linear_betas(), learn_sigma=False, sigma_small=True)
    torch.testing.assert_close(
        small.p_mean_variance(eps_hat, x0, t)["variance"], bcast(POST_VAR, t).expand(SHAPE)
    )


def test_respaced_diffusion_tells_the_model_trained_timesteps() -> None:
    x0, noise, eps_hat, v = tensors(6)
    seen: list[list[int]] = []
    spaced = GaussianDiffusion.from_config(GaussianConfig()).respaced("ddim10")

    def model(x: torch.Tensor, t: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(t.tolist())
        return torch.cat([eps_hat, v], dim=1)

    spaced.training_losses(model, x0, torch.tensor([0, 1, 9]), {}, noise)
    assert seen == [[0, 100, 900]]


def test_sample_timesteps_is_uniform_and_seeded() -> None:
    a = sample_timesteps(4096, 1000, generator=torch.Generator().manual_seed(0))
    b = sample_timesteps(4096, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() <= 999 and abs(a.float().mean().item() - 499.5) < 15


def test_gaussian_bad_inputs() -> None:
    x0, noise, eps_hat, _ = tensors()
    diffusion = GaussianDiffusion(linear_betas())
    with pytest.raises(ShapeError, match=r"model output.*8 channels"):
        diffusion.training_losses(lambda x, t, c: eps_hat, x0, torch.tensor([1, 2, 3]), {}, noise)
    with pytest.raises(ShapeError, match="t: expected shape"):
        diffusion.q_sample(x0, torch.tensor([1, 2]), noise)
    with pytest.raises(ShapeError, match=r"t: must hold integer step indices in \[0, 999\]"):
        diffusion.q_sample(x0, torch.tensor([1, 2, 1000]), noise)
    with pytest.raises(ConfigError, match="schedule"):
        GaussianConfig.from_dict({"schedule": "quad"})
    with pytest.raises(ConfigError, match="betas"):
        GaussianDiffusion(torch.tensor([0.1, 0.0]))


# -- flow matching -----------------------------------------------------------------------------------


def test_flow_loss_by_hand_and_model_timestep_is_1000_sigma() -> None:
    x0, noise, _, _ = (x.float() for x in tensors(7))
    sigma = torch.tensor([0.0, 0.25, 1.0])
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, t: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(t)
        return 0.3 * x

    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    torch.testing.assert_close(flow.interpolate(x0, noise, sigma), x_t)
    losses = flow.training_losses(model, x0, sigma, {}, noise)
    torch.testing.assert_close(seen[0], torch.tensor([0.0, 250.0, 1000.0]))
    torch.testing.assert_close(losses["loss"], ((0.3 * x_t - (noise - x0)) ** 2).mean(dim=(1, 2, 3, 4)))
    perfect = flow.training_losses(lambda x, t, c: noise - x0, x0, sigma, {}, noise)
    assert perfect["loss"].abs().max() == 0
    torch.testing.assert_close(flow.predict_x0(x_t, noise - x0, sigma), x0)


def test_sigma_sampling() -> None:
    for method in ("uniform", "logit_normal"):
        a = flow.sample_sigmas(20000, method=method, generator=torch.Generator().manual_seed(1))
        b = flow.sample_sigmas(20000, method=method, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and a.min() > 0 and a.max() < 1
    logits = torch.logit(a.double())  # a is logit-normal(0, 1): its logits are standard normal
    assert abs(logits.mean().item()) < 0.05 and abs(logits.std().item() - 1) < 0.05
    shifted = flow.sample_sigmas(8, shift=3.0, generator=torch.Generator().manual_seed(2))
    plain = flow.sample_sigmas(8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(shifted, 3 * plain / (1 + 2 * plain))
    with pytest.raises(ConfigError, match="sigma_sampling"):
        flow.sample_sigmas(2, method="cosine")  # type: ignore[arg-type]


def test_flow_bad_inputs() -> None:
    x0, noise, _, _ = tensors()
    with pytest.raises(ShapeError, match="sigma: expected a float tensor"):
        flow.training_losses(lambda x, t, c: x, x0, torch.tensor([1, 2, 3]), {}, noise)
    with pytest.raises(ShapeError, match=r"sigma: noise levels must lie in \[0, 1\]"):
        flow.training_losses(lambda x, t, c: x, x0, torch.tensor([0.5, 1.5, 0.1]), {}, noise)
    with pytest.raises(ShapeError, match="velocity model"):
        flow.training_losses(lambda x, t, c: x[:, :2], x0, torch.tensor([0.5, 0.5, 0.1]), {}, noise)
