"""Embeddings shared by the diffusion transformers: timesteps, labels, patches, sin-cos positions, RoPE.

Module and parameter names follow the checkpoints they must load: DiT/Latte (``mlp.0``,
``embedding_table``, ``proj``) and diffusers (``linear_1``, ``linear_2``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: int = 0
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos | sin] halves (GLIDE / DiT order),
    with frequencies exp(-ln(max_period) * i / (half - freq_shift)).

    Equals diffusers' ``get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=freq_shift)``
    bit for bit (same operation order). DiT / Latte / PixArt use ``freq_shift=0``; diffusers'
    ``DiTTransformer2DModel`` uses 1, even for weights converted from the original DiT.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t[:, None].float() * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """DiT / Latte naming: ``mlp.0`` and ``mlp.2``."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, freq_shift: int = 0) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_size, freq_shift=self.freq_shift)
        return self.mlp(freq.to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class TimestepEmbedding(nn.Module):
    """diffusers naming: ``linear_1`` and ``linear_2`` (same computation as :class:`TimestepEmbedder`)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.linear_1 = nn.Linear(frequency_size, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_size).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(freq)))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; index ``num_classes`` is the "no label" row used for classifier-free
    guidance, and labels are dropped to it with probability ``dropout_prob`` while training."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device, generator=generator) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Latents (B, C, H, W) -> (B, h*w, C*p*p) patches, or (B, C, T, H, W) -> (B, T, h*w, C*p*p).

    One copy of the (small) latents; each patch is flattened in (c, row, col) order, the order of a
    Conv2d weight's (C, p, p) axes, so ``patches @ conv.weight.flatten(1).T`` is the patch conv.
    """
    if x.dim() == 5:
        x = x.transpose(1, 2)  # (B, T, C, H, W)
    *lead, c, height, width = x.shape
    h, w = height // p, width // p
    x = x.unflatten(-1, (w, p)).unflatten(-3, (h, p))  # (..., C, h, p, w, p)
    n = len(lead)
    x = x.permute(*range(n), n + 1, n + 3, n, n + 2, n + 4)  # (..., h, w, C, p, p)
    return x.reshape(*lead, h * w, c * p * p)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens: (B, C, H, W) -> (B, h*w, D), (B, C, T, H, W) ->
    (B, T, h*w, D).

    ``proj`` is the Conv2d the checkpoints store; it runs as one matrix product over the patches,
    which leaves the tokens contiguous in (B, [T,] N, D) order. The conv would return (B*T, D, h, w),
    whose token view every following op (layer norm first) would have to copy.
    """

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_embed(self.proj, x)


def patch_embed(proj: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``proj`` (a stride = kernel Conv2d) applied to the patches of x, see :class:`PatchEmbed`."""
    return F.linear(patchify(x, proj.stride[0]), proj.weight.flatten(1), proj.bias)


def unpatchify(x: torch.Tensor, h: int, w: int, p: int, channels: int) -> torch.Tensor:
    """(B, h*w, p*p*C) tokens -> (B, C, h*p, w*p), or (B, T, h*w, p*p*C) -> (B, C, T, h*p, w*p): the
    inverse of :func:`patchify`'s layout, in one copy, contiguous. Only the first ``channels`` of the
    C per pixel the tokens hold are kept (SiT drops its sigma half this way without a second copy)."""
    *lead, _, values = x.shape
    x = x.reshape(*lead, h, w, p, p, values // (p * p))[..., :channels]  # (B, [T,] h, w, p, p, C)
    n = len(lead)
    # (B, C, [T,] h, p, w, p): channels go right after the batch axis, the patch rows next to the grid rows.
    x = x.permute(0, n + 4, *range(1, n), n, n + 2, n + 1, n + 3)
    return x.reshape(x.shape[0], channels, *lead[1:], h * p, w * p)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) [sin | cos] embedding (MAE / DiT), computed in float64."""
    omega = 1.0 / 10000 ** (
        torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    )
    out = positions.reshape(-1).double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(
    dim: int,
    height: int,
    width: int,
    base_size: int | None = None,
    interpolation_scale: float = 1.0,
    *,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """(height*width, dim) 2D sin-cos positions in row-major order; the first half encodes the column.

    Positions are ``i / (n / base_size) / interpolation_scale`` (PixArt / diffusers): with ``base_size``
    None they are plain indices (DiT / Latte). A grid larger than the training grid thus maps onto the
    trained position range (positional interpolation).

    Float32 on the CPU, or in ``like``'s dtype on its device: a forward passes its activations, so the
    table is built where it is used, never on the host and copied over. See :func:`_table` for caching.
    """
    return _table(_sincos_2d, (dim, height, width, base_size, interpolation_scale), like)


def sincos_frames(
    dim: int, frames: int, interpolation_scale: float = 1.0, *, like: torch.Tensor | None = None
) -> torch.Tensor:
    """(frames, dim) 1D sin-cos positions of frames ``0 .. frames-1``, divided by ``interpolation_scale``;
    float32 on the CPU or like ``like``, cached as :func:`sincos_2d`."""
    return _table(_sincos_frames, (dim, frames, interpolation_scale), like)


def _table(
    build: Callable[..., torch.Tensor], args: tuple[Any, ...], like: torch.Tensor | None
) -> torch.Tensor:
    """``build(*args, device)`` (float32) in like's dtype, cached per (args, device, dtype).

    A transformer asks for the same table at every sampling step, so eager calls are served from a
    cache: the returned tensor is shared and must not be modified in place. Under torch.compile the
    table is built uncached: the compiled graph computes it once as a constant, and Dynamo would
    otherwise warn that it sees through the cache wrapper.
    """
    device = torch.device("cpu") if like is None else like.device
    dtype = torch.float32 if like is None else like.dtype
    if torch.compiler.is_compiling():
        return build(*args, device).to(dtype)
    return _cached_table(build, args, device, dtype)


@functools.lru_cache(maxsize=32)
def _cached_table(
    build: Callable[..., torch.Tensor], args: tuple[Any, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    # A table first asked for under inference_mode must still serve later training forwards.
    with torch.inference_mode(False):
        return build(*args, device).to(dtype)


def _sincos_2d(
    dim: int,
    height: int,
    width: int,
    base_size: int | None,
    interpolation_scale: float,
    device: torch.device,
) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.float64, device=device)
    cols = torch.arange(width, dtype=torch.float64, device=device)
    if base_size is not None:
        rows, cols = rows / (height / base_size), cols / (width / base_size)
    rows, cols = rows / interpolation_scale, cols / interpolation_scale
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")  # (h, w) each
    return torch.cat([sincos_1d(dim // 2, grid_c), sincos_1d(dim // 2, grid_r)], dim=1).float()


def _sincos_frames(dim: int, frames: int, interpolation_scale: float, device: torch.device) -> torch.Tensor:
    positions = torch.arange(frames, dtype=torch.float64, device=device) / interpolation_scale
    return sincos_1d(dim, positions).float()


class RoPE2D(nn.Module):
    """2D rotary position embedding (FiT / EVA style) for spatial attention, with position interpolation.

    Half of each head's channels rotate with the row index, half with the column index. When the token
    grid is larger than ``train_size``, positions are scaled by (train - 1) / (size - 1) so that they stay
    in the range seen in training (positional interpolation, Chen et al. 2023).
    """

    def __init__(self, head_dim: int, train_size: tuple[int, int], theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.train_size = train_size
        self.theta = theta

    def angles(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(height*width, head_dim/2) rotation angles."""
        quarter = self.head_dim // 4
        freqs = 1.0 / self.theta ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)
        # Grids larger than the training grid squeeze back onto its range [0, train - 1].
        scale_h = (self.train_size[0] - 1) / (height - 1) if height > self.train_size[0] else 1.0
        scale_w = (self.train_size[1] - 1) / (width - 1) if width > self.train_size[1] else 1.0
        rows = torch.arange(height, dtype=torch.float32, device=device) * scale_h
        cols = torch.arange(width, dtype=torch.float32, device=device) * scale_w
        grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
        return torch.cat([grid_r.reshape(-1, 1) * freqs, grid_c.reshape(-1, 1) * freqs], dim=1)

    @staticmethod
    def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Rotate consecutive channel pairs of (B, H, L, D) by (L, D/2) angles."""
        pairs = x.float().reshape(*x.shape[:-1], -1, 2)
        cos, sin = angles.cos(), angles.sin()
        rotated = torch.stack(
            [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 0] * sin + pairs[..., 1] * cos], dim=-1
        )
        return rotated.flatten(-2).to(x.dtype)
