"""Noise schedules as pure functions that return tensors (the k-diffusion habit).

Everything here is float64: the products of a thousand ``1 - beta`` factors lose digits in float32, and
DiT/IDDPM keep these arrays in float64 for the same reason. Callers cast at the point of use.

Two families:

* DDPM-family (discrete, 1000 training steps): ``betas`` -> ``alphas_cumprod`` (written ᾱ_t below),
  plus respacing of a trained schedule to fewer steps as IDDPM/DiT's ``space_timesteps`` and
  ``SpacedDiffusion`` do.
* Flow matching (continuous, σ in [0, 1]): ``flow_sigmas`` and the SD3 timestep shift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from osp.errors import ConfigError

__all__ = [
    "alphas_cumprod",
    "cosine_betas",
    "flow_sigmas",
    "linear_betas",
    "respace_betas",
    "shift_sigmas",
    "space_timesteps",
]


def linear_betas(n: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020's linear schedule: ``n`` betas evenly spaced from ``start`` to ``end``.

    The defaults are the schedule DiT, Latte and Open-Sora-Plan v1.0 train with (diffusers:
    ``beta_start=0.0001, beta_end=0.02, beta_schedule="linear"``). IDDPM's ``get_named_beta_schedule``
    scales both ends by ``1000 / n`` for other step counts; pass scaled values to get that.
    """
    _check_steps("n", n)
    if not 0.0 < start <= end < 1.0:
        raise ConfigError(f"linear_betas: need 0 < start <= end < 1, got start={start}, end={end}")
    return torch.linspace(start, end, n, dtype=torch.float64)


def cosine_betas(n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """IDDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17): ᾱ(t) = cos²((t/n + s)/(1 + s) · π/2).

    beta_t = 1 - ᾱ(t+1)/ᾱ(t), clipped at ``max_beta`` so the last step does not collapse to zero signal
    (the paper clips at 0.999 for that reason). diffusers calls it ``squaredcos_cap_v2``.
    """
    _check_steps("n", n)
    t = torch.arange(n + 1, dtype=torch.float64) / n
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s<=t} (1 - beta_s): the signal fraction of x_t (DDPM eq. 4: x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Pick which of ``num_timesteps`` trained steps to keep when sampling with fewer steps.

    Same rule as IDDPM/DiT's ``space_timesteps``: the trained steps are cut into equal sections and
    each section is strided (with rounding) to its count, so both ends (0 and T-1) are kept. ``"250"``
    or ``250`` is one section; ``"10,15,20"`` three. ``"ddimN"`` asks for the integer stride of the DDIM
    paper (``range(0, T, stride)`` with exactly N entries) and fails when no stride gives N.

    Returns the kept steps in increasing order.
    """
    _check_steps("num_timesteps", num_timesteps)
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            desired = _parse_int(spec[len("ddim") :], spec)
            for ddim_stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, ddim_stride)) == desired:
                    return list(range(0, num_timesteps, ddim_stride))
            raise ConfigError(
                f"timestep respacing {spec!r}: no integer stride gives exactly {desired} of "
                f"{num_timesteps} steps; use a plain count such as '{desired}'"
            )
        counts = [_parse_int(part, spec) for part in spec.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ConfigError(f"timestep respacing {section_counts!r}: every section needs at least 1 step")

    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: set[int] = set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(
                f"timestep respacing {section_counts!r}: section {i} has {size} steps, cannot take {count}"
            )
        # Fractional stride so both ends of the section are kept; round() as IDDPM does.
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return sorted(kept)


def respace_betas(betas: torch.Tensor, use_timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Betas of the shorter chain that visits only ``use_timesteps`` of a trained schedule.

    The new chain must have the same ᾱ at every kept step, so its betas are ratios of consecutive kept
    ᾱ's: beta'_i = 1 - ᾱ_{k_i} / ᾱ_{k_{i-1}} with ᾱ_{k_{-1}} = 1 (IDDPM's ``SpacedDiffusion``).

    Returns ``(new_betas, timestep_map)``: ``timestep_map[i]`` is the trained step the model must be
    told when the short chain is at index ``i``.
    """
    keep = sorted(set(int(k) for k in use_timesteps))
    n = betas.shape[0]
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ConfigError(f"respace_betas: timesteps must lie in [0, {n - 1}], got {keep[:3]}...{keep[-3:]}")
    abar = alphas_cumprod(betas)[keep]
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return 1.0 - abar / prev, torch.tensor(keep, dtype=torch.long)


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """The ``steps + 1`` noise levels of a flow-matching Euler sampler, from σ=1 (pure noise) to σ=0.

    Uniform in σ, then shifted by :func:`shift_sigmas` (identity for ``shift=1``, the rectified-flow /
    SiT grid).
    """
    _check_steps("steps", steps)
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift (Esser et al. 2024, eq. 23): σ' = s·σ / (1 + (s - 1)·σ).

    ``shift > 1`` spends more steps at high noise, which large latents need because their
    signal-to-noise ratio at a given σ is higher. diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s)``
    applies the same map.
    """
    if shift <= 0:
        raise ConfigError(f"shift: must be > 0, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _check_steps(field: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{field}: must be a positive integer, got {n!r}")


def _parse_int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"timestep respacing {spec!r}: expected a count ('50'), counts per section ('10,15,20') "
            "or 'ddimN'"
        ) from None
