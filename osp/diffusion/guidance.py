"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

out = uncond + s · (cond - uncond), from ONE model call on the batch [cond; uncond] (x_t and t duplicated,
each conditioning tensor concatenated along dim 0), as DiT's ``forward_with_cfg`` and PixArt do: one call
of batch 2B keeps the accelerator busier than two calls of B and runs each layer's weights once.

Only the prediction channels (ε or velocity) are guided. A learned-sigma model's variance channels
(C..2C) are taken from the conditional half: extrapolating a log-variance mix has no meaning, and DiT
keeps them unguided the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from osp.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from osp.diffusion import Denoiser

__all__ = ["classifier_free_guidance", "combine_guidance", "concat_conditions"]


def classifier_free_guidance(
    denoiser: Denoiser,
    uncond: dict[str, torch.Tensor] | None,
    scale: float,
    *,
    learned_sigma: bool = False,
) -> Denoiser:
    """A denoiser that applies CFG with the fixed ``uncond`` inputs to whatever ``cond`` it is called with.

    The result keeps the one denoiser signature ``(x_t, t, cond) -> output``. With ``scale == 1`` or
    ``uncond is None`` guidance is a no-op and ``denoiser`` itself is returned (batch B, no doubling).
    ``uncond`` tensors may have batch 1 (a shared null embedding) or the batch of ``cond``.
    """
    if scale == 1.0 or uncond is None:
        return denoiser

    def guided(x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = x_t.shape[0]
        both = concat_conditions(cond, uncond, batch)
        out = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        if out.shape[0] != 2 * batch:
            raise ShapeError(
                f"model output: batch {out.shape[0]}, expected {2 * batch} for the [cond; uncond] call"
            )
        out_cond, out_uncond = out.chunk(2)
        return combine_guidance(out_cond, out_uncond, scale, x_t.shape[1] if learned_sigma else None)

    return guided


def combine_guidance(
    out_cond: torch.Tensor, out_uncond: torch.Tensor, scale: float, guided_channels: int | None = None
) -> torch.Tensor:
    """uncond + s · (cond - uncond) on the first ``guided_channels`` channels (all if None); the remaining
    channels (learned variance) come from ``out_cond``."""
    if guided_channels is None:
        return out_uncond + scale * (out_cond - out_uncond)
    if out_cond.shape[1] != 2 * guided_channels:
        raise ShapeError(
            f"model output: {out_cond.shape[1]} channels, but a learned-sigma model must output "
            f"2 × {guided_channels} (prediction and variance)"
        )
    c = guided_channels
    guided = out_uncond[:, :c] + scale * (out_cond[:, :c] - out_uncond[:, :c])
    return torch.cat([guided, out_cond[:, c:]], dim=1)


def concat_conditions(
    cond: dict[str, torch.Tensor], uncond: dict[str, torch.Tensor], batch: int
) -> dict[str, torch.Tensor]:
    """{k: cat([cond[k], uncond[k]])}, expanding batch-1 uncond tensors to ``batch``."""
    if set(cond) != set(uncond):
        raise ConfigError(
            f"uncond: keys {sorted(uncond)} must match cond's {sorted(cond)} for classifier-free guidance"
        )
    both = {}
    for key, c in cond.items():
        u = uncond[key]
        if u.shape[0] == 1 and batch != 1:
            u = u.expand(batch, *u.shape[1:])
        if c.shape[0] != batch or u.shape != c.shape:
            raise ShapeError(
                f"cond[{key!r}]: shape {tuple(c.shape)} and uncond[{key!r}]: shape {tuple(uncond[key].shape)} "
                f"must agree, with batch {batch} (uncond may have batch 1)"
            )
        both[key] = torch.cat([c, u.to(c.dtype)])
    return both
