"""Sampling through diffusers: exact oracles must be recovered, DDPM must retrace DiT's sampler, CFG is one
batched call. The references here are written from the DDPM/DDIM/flow equations, not from osp's code."""

from __future__ import annotations

import subprocess
import sys
import typing

import numpy as np
import pytest
import torch

from osp.diffusion import SAMPLER_NAMES, GaussianDiffusion, SamplerConfig, linear_betas, sample
from osp.diffusion.flow import from_sit
from osp.diffusion.guidance import classifier_free_guidance
from osp.errors import ConfigError, ShapeError

# diffusers' own numpy-2 deprecation noise from inside its schedulers.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPE = (2, 4, 3, 4, 4)  # (B, C, T, H, W)
# DiT/Latte's training schedule, computed independently of osp in float64.
ABAR = torch.from_numpy(np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000)))


def x0_and_noise(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def eps_oracle(x0: torch.Tensor, learned_sigma: bool = False):
    """The ε that x_t at trained step t implies for the known x0: ε = (x_t - √ᾱ_t x0) / √(1 - ᾱ_t)."""

    def denoiser(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        a = ABAR[t.round().long()].view(-1, 1, 1, 1, 1)
        eps = ((x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()
        return torch.cat([eps, torch.full_like(eps, 0.3)], dim=1) if learned_sigma else eps

    return denoiser


@pytest.mark.parametrize("sampler", ["ddim", "pndm", "dpm++", "euler"])
@pytest.mark.parametrize("steps", [7, 50])
@pytest.mark.parametrize("learned_sigma", [False, True])
def test_eps_oracle_is_recovered(sampler: str, steps: int, learned_sigma: bool) -> None:
    """All four solvers are exact for a constant-ε path once they end on ᾱ = 1 (7 steps: 1000 % 7 != 0)."""
    x0, noise = x0_and_noise()
    out = sample(
        eps_oracle(x0, learned_sigma),
        noise,
        sampler=sampler,
        steps=steps,
        cond={},
        learned_sigma=learned_sigma,
    )
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_flow_euler_with_exact_velocity_reaches_the_data() -> None:
    x0, noise = x0_and_noise(1)
    seen: list[torch.Tensor] = []

    def velocity(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(t)
        sigma = (t / 1000).view(-1, 1, 1, 1, 1)
        return (x - x0) / sigma  # the marginal velocity field of the single point x0

    out = sample(velocity, noise, sampler="flow-euler", steps=10, cond={})
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert seen[0].tolist() == [1000.0, 1000.0] and abs(seen[-1][0].item() - 100.0) < 1e-3


def test_sit_convention_adapter() -> None:
    x0, noise = x0_and_noise(2)

    def sit_velocity(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        # SiT: x_t = t x0 + (1 - t) ε, u = x0 - ε; for one data point u = (x0 - x_t) / (1 - t).
        return (x0 - x) / (1 - t).view(-1, 1, 1, 1, 1)

    out = sample(from_sit(sit_velocity), noise, sampler="flow-euler", steps=8, cond={})
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def toy_learned_sigma_model(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """A smooth, t-dependent stand-in for a DiT with learned sigma: (ε, v) with v in (-1, 1)."""
    tt = t.float().view(-1, 1, 1, 1, 1) / 1000
    eps = 0.6 * torch.tanh(x) + 0.2 * tt
    v = torch.tanh(x.sin() + 2 * tt - 1)
    return torch.cat([eps, v], dim=1) + 0 * cond["y"].view(-1, 1, 1, 1, 1)


def test_ddpm_scheduler_retraces_dits_p_sample_loop() -> None:
    _, noise = x0_and_noise(3)
    cond = {"y": torch.tensor([1.0, 2.0])}
    calls: dict[str, list[list[int]]] = {"dit": [], "diffusers": []}

    def recorder(name: str):
        def model(x: torch.Tensor, t: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
            calls[name].append(t.tolist())
            return toy_learned_sigma_model(x, t, c)

        return model

    dit = GaussianDiffusion(linear_betas(), learn_sigma=True).respaced("50")
    ref = dit.p_sample_loop(recorder("dit"), noise, cond, generator=torch.Generator().manual_seed(7))
    out = sample(
        recorder("diffusers"),
        noise,
        sampler="ddpm",
        steps=50,
        cond=cond,
        learned_sigma=True,
        generator=torch.Generator().manual_seed(7),
    )
    assert calls["dit"] == calls["diffusers"] and calls["dit"][0] == [999, 999] and calls["dit"][-1] == [0, 0]
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)
    # The learned variance is really used: the fixed-variance chain from the same noise ends elsewhere.
    fixed = GaussianDiffusion(linear_betas(), learn_sigma=False).respaced("50")
    other = fixed.p_sample_loop(
        lambda x, t, c: toy_learned_sigma_model(x, t, c)[:, :4],
        noise,
        cond,
        generator=torch.Generator().manual_seed(7),
    )
    assert (other - ref).abs().max() > 1e-2


class CountingModel:
    """Records the batch of every call; output depends on cond so guidance has something to do."""

    def __init__(self, learned_sigma: bool = False) -> None:
        self.batches: list[int] = []
        self.learned_sigma = learned_sigma

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        self.batches.append(x.shape[0])
        y = cond["emb"].mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        eps = 0.5 * x + y + t.float().view(-1, 1, 1, 1, 1) / 1000
        return torch.cat([eps, torch.tanh(x * y)], dim=1) if self.learned_sigma else eps


def embeddings() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    cond = {"emb": torch.randn(2, 3, 8, generator=g), "mask": torch.ones(2, 3, dtype=torch.long)}
    uncond = {"emb": torch.zeros(2, 3, 8), "mask": torch.ones(2, 3, dtype=torch.long)}
    return cond, uncond


@pytest.mark.parametrize("learned_sigma", [False, True])
def test_cfg_is_one_batched_call_equal_to_two_separate_calls(learned_sigma: bool) -> None:
    cond, uncond = embeddings()
    x, _ = x0_and_noise(4)
    t = torch.tensor([500, 500])
    model = CountingModel(learned_sigma)
    guided = classifier_free_guidance(model, uncond, 3.5, learned_sigma=learned_sigma)(x, t, cond)
    assert model.batches == [4]
    c, u = model(x, t, cond), model(x, t, uncond)
    if learned_sigma:
        expected = torch.cat([u[:, :4] + 3.5 * (c[:, :4] - u[:, :4]), c[:, 4:]], dim=1)
    else:
        expected = u + 3.5 * (c - u)
    torch.testing.assert_close(guided, expected)
    # Scale 1 is the conditional output, with no doubled batch.
    model.batches.clear()
    torch.testing.assert_close(classifier_free_guidance(model, uncond, 1.0)(x, t, cond), c)
    assert model.batches == [2]


def test_cfg_in_sample_calls_the_model_once_per_step_with_2b() -> None:
    cond, uncond = embeddings()
    _, noise = x0_and_noise(5)
    model = CountingModel(learned_sigma=True)
    sample(
        model,
        noise,
        sampler="ddim",
        steps=6,
        cond=cond,
        uncond=uncond,
        guidance_scale=4.0,
        learned_sigma=True,
    )
    assert model.batches == [4] * 6
    # A batch-1 null embedding broadcasts to the batch.
    model.batches.clear()
    null = {k: v[:1] for k, v in uncond.items()}
    sample(
        model, noise, sampler="dpm++", steps=3, cond=cond, uncond=null, guidance_scale=2.0, learned_sigma=True
    )
    assert model.batches == [4] * 3


def test_cfg_rejects_mismatched_conditions() -> None:
    cond, uncond = embeddings()
    x, _ = x0_and_noise()
    t = torch.tensor([10, 10])
    with pytest.raises(ConfigError, match="uncond: keys"):
        classifier_free_guidance(CountingModel(), {"emb": uncond["emb"]}, 2.0)(x, t, cond)
    with pytest.raises(ShapeError, match=r"cond\['emb'\]"):
        classifier_free_guidance(CountingModel(), {**uncond, "emb": torch.zeros(2, 5, 8)}, 2.0)(x, t, cond)


def test_timesteps_and_progress() -> None:
    seen: list[torch.Tensor] = []
    ticks: list[tuple[int, int]] = []

    def model(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x)

    _, noise = x0_and_noise()
    sample(model, noise, sampler="ddim", steps=5, cond={}, progress=lambda d, n: ticks.append((d, n)))
    assert [s.tolist() for s in seen] == [[t, t] for t in (999, 799, 599, 399, 199)]
    assert ticks == [(i, 5) for i in range(1, 6)]


@pytest.mark.parametrize("sampler", ["ddpm", "euler", "ddim"])
def test_seeded_generator_is_deterministic(sampler: str) -> None:
    _, noise = x0_and_noise(6)
    cond = {"y": torch.tensor([0.0, 1.0])}

    def run(seed: int) -> torch.Tensor:
        return sample(
            toy_learned_sigma_model,
            noise,
            sampler=sampler,
            steps=10,
            cond=cond,
            learned_sigma=True,
            generator=torch.Generator().manual_seed(seed),
        )

    torch.testing.assert_close(run(0), run(0), atol=0, rtol=0)
    if sampler == "ddpm":  # the only stochastic one of these: another seed gives another sample
        assert (run(0) - run(1)).abs().max() > 1e-3


def test_bad_settings_are_config_errors() -> None:
    _, noise = x0_and_noise()
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ConfigError, match=r"sampler: unknown name 'heun'.*ddim, pndm, dpm\+\+"):
        sample(zero, noise, sampler="heun", steps=10, cond={})
    for steps in (0, 1001):
        with pytest.raises(ConfigError, match="steps: must be an integer from 1 to 1000"):
            sample(zero, noise, sampler="ddim", steps=steps, cond={})
    with pytest.raises(ConfigError, match="uncond"):
        sample(zero, noise, sampler="ddim", steps=2, cond={}, guidance_scale=3.0)
    with pytest.raises(ShapeError, match="model output"):
        sample(zero, noise, sampler="ddim", steps=2, cond={}, learned_sigma=True)
    with pytest.raises(ConfigError, match="sampler"):
        SamplerConfig.from_dict({"sampler": "dpm"})
    assert set(typing.get_args(SamplerConfig.model_fields["sampler"].annotation)) == set(SAMPLER_NAMES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flow_euler_equals_diffusers_flow_match_euler(dtype: torch.dtype) -> None:
    """osp's FlowEuler (no diffusers import) and diffusers' FlowMatchEulerDiscreteScheduler (shift 1,
    the same sigmas), driven by the same velocity model with guidance: the same samples bit for bit."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from osp.diffusion.schedules import flow_sigmas

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 3, 6, 6, generator=gen).to(dtype)
    weight = torch.randn(4, 4, generator=gen).to(dtype) * 0.3

    def velocity(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        mixed = torch.einsum("oc,bcthw->bothw", weight, x)  # depends on x, t and the condition
        return torch.tanh(mixed) * (t / 1000).view(-1, 1, 1, 1, 1).to(x.dtype) + cond["c"]

    cond = {"c": torch.full((2, 1, 1, 1, 1), 0.5, dtype=dtype)}
    uncond = {"c": torch.zeros(2, 1, 1, 1, 1, dtype=dtype)}
    ours = sample(
        velocity, noise, sampler="flow-euler", steps=7, cond=cond, uncond=uncond, guidance_scale=2.5
    )
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    reference.set_timesteps(sigmas=flow_sigmas(7)[:-1].tolist())
    guided = classifier_free_guidance(velocity, uncond, 2.5)
    x = noise
    for t in reference.timesteps:
        x = reference.step(guided(x, t.expand(2), cond), t, x, return_dict=False)[0]
    assert ours.dtype == x.dtype == dtype and torch.equal(ours, x)


def test_bundled_sampler_path_imports_no_diffusers() -> None:
    """Sampling with flow-euler (the bundled model's sampler) leaves diffusers, SciPy and torch._dynamo
    unimported: about 2 s of a 2-core CPU that `osp generate` would otherwise pay on every run."""
    code = (
        "import sys, torch\n"
        "from osp.diffusion import sample\n"
        "sample(lambda x, t, c: -x, torch.randn(1, 4, 2, 4, 4), sampler='flow-euler', steps=3, cond={})\n"
        "print(sorted(m for m in ('diffusers', 'scipy.stats', 'torch._dynamo') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
