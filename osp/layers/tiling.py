"""Tiled inference for video networks (the VAE, the upscaler, the interpolator): bounded memory for long and
large videos.

A video is cut into overlapping (time, height, width) tiles that are planned in *latent* units, so
the same plan serves the encoder (pixels in, latents out) and the decoder (latents in, pixels out).
Each tile runs through the network on its own; outputs are blended back with linear cross-fades over
every overlap, normalised by the summed weights, so any tile layout yields a convex combination.

Why ramps and not hard seams: a tile's border outputs see zero padding (space) or a missing past
(time, where a causal network treats the tile's first frame as an image), so they are the least
trustworthy values; the ramp gives them the smallest weight where a neighbour has better context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import Field, model_validator

from osp.config import Config


class TilingConfig(Config):
    """Tile sizes and overlaps in latent units (multiply by the compression for pixels)."""

    latent_size: int = Field(32, gt=0, description="spatial tile edge in latents (32 -> 256 px at 8x)")
    latent_overlap: int = Field(8, ge=0, description="spatial overlap in latents (8 -> 64 px at 8x)")
    latent_frames: int = Field(9, gt=0, description="temporal tile in latents (9 -> 33 frames at 4x)")
    latent_frame_overlap: int = Field(2, ge=0, description="temporal overlap in latents")

    @model_validator(mode="after")
    def _overlap_smaller_than_tile(self) -> TilingConfig:
        if self.latent_overlap >= self.latent_size:
            raise ValueError("latent_overlap must be smaller than latent_size")
        if self.latent_frame_overlap >= self.latent_frames:
            raise ValueError("latent_frame_overlap must be smaller than latent_frames")
        return self


def plan_axis(total: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, length) tiles covering ``range(total)``: full-size tiles, the last one shifted back to end
    exactly at ``total`` so that no tile is a thin sliver with little context."""
    if total <= tile:
        return [(0, total)]
    stride = tile - overlap
    starts = [*range(0, total - tile, stride), total - tile]
    return [(s, tile) for s in starts]


def axis_weights(intervals: list[tuple[int, int]], causal: bool = False) -> list[torch.Tensor]:
    """One 1-D blending weight per (start, end) interval, in output units.

    Across the overlap of neighbours A (earlier) and B (later) of length o, B rises and A falls by the
    same amount, so the pair always sums to one: a linear cross-fade. Spatially B rises as
    (j+1)/(o+1), never zero. On a causal axis B's first outputs were computed without the past (its
    first frame was treated as an image), so B rises as j/o from exactly zero: A, which saw that past,
    wins at the seam.
    """
    weights = []
    for i, (start, end) in enumerate(intervals):
        n = end - start
        w = torch.ones(n)
        if i > 0:
            o = min(max(0, intervals[i - 1][1] - start), n)
            w[:o] = torch.minimum(w[:o], _ramp(o, causal))
        if i + 1 < len(intervals):
            o = min(max(0, end - intervals[i + 1][0]), n)
            w[n - o :] = torch.minimum(w[n - o :], 1 - _ramp(o, causal))
        weights.append(w)
    return weights


def _ramp(o: int, causal: bool) -> torch.Tensor:
    j = torch.arange(o, dtype=torch.float32)
    return j / o if causal else (j + 1) / (o + 1)


@dataclass(frozen=True)
class AxisMap:
    """How latent-unit tiles map to the input and output of one network along one axis."""

    to_input: Callable[[int, int], tuple[int, int]]  # latent (start, length) -> input (start, length)
    to_output: Callable[[int, int], tuple[int, int]]  # latent (start, length) -> output (start, length)


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    latent_shape: tuple[int, int, int],
    tiles: tuple[int, int, int],
    overlaps: tuple[int, int, int],
    maps: tuple[AxisMap, AxisMap, AxisMap],
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run ``fn`` over overlapping (T, H, W) tiles of ``x`` (B, C, T, H, W) and blend the outputs.

    ``latent_shape`` is the full (t, h, w) in latent units; ``tiles``/``overlaps`` are per-axis sizes in
    latent units; ``maps`` convert latent tiles to input slices and output placements per axis.
    ``progress(done, total)`` is called after every tile.
    """
    plans = [plan_axis(n, t, o) for n, t, o in zip(latent_shape, tiles, overlaps, strict=True)]
    out_intervals = [[m.to_output(s, n) for s, n in plan] for m, plan in zip(maps, plans, strict=True)]
    # Axis 0 is time, causal for these networks; axes 1 and 2 are space.
    weights = [
        axis_weights([(s, s + n) for s, n in iv], causal=axis == 0) for axis, iv in enumerate(out_intervals)
    ]
    full = [m.to_output(0, n) for m, n in zip(maps, latent_shape, strict=True)]
    out_size = tuple(start + n for start, n in full)

    out: torch.Tensor | None = None
    done, total = 0, len(plans[0]) * len(plans[1]) * len(plans[2])
    norm = torch.zeros(out_size, dtype=torch.float32, device=x.device)
    for it, (lt, nt) in enumerate(plans[0]):
        for ih, (lh, nh) in enumerate(plans[1]):
            for iw, (lw, nw) in enumerate(plans[2]):
                (st, kt), (sh, kh), (sw, kw) = (
                    maps[0].to_input(lt, nt),
                    maps[1].to_input(lh, nh),
                    maps[2].to_input(lw, nw),
                )
                y = fn(x[:, :, st : st + kt, sh : sh + kh, sw : sw + kw])  # (B, C', kt', kh', kw')
                (ot, kt_out), (oh, kh_out), (ow, kw_out) = (
                    out_intervals[0][it],
                    out_intervals[1][ih],
                    out_intervals[2][iw],
                )
                if tuple(y.shape[2:]) != (kt_out, kh_out, kw_out):
                    raise RuntimeError(
                        f"tile output {tuple(y.shape[2:])} != planned {(kt_out, kh_out, kw_out)}"
                    )
                w = (
                    weights[0][it][:, None, None]
                    * weights[1][ih][None, :, None]
                    * weights[2][iw][None, None, :]
                ).to(device=x.device)
                if out is None:
                    out = torch.zeros((*y.shape[:2], *out_size), dtype=torch.float32, device=x.device)
                region = (slice(ot, ot + kt_out), slice(oh, oh + kh_out), slice(ow, ow + kw_out))
                out[:, :, region[0], region[1], region[2]] += y.float() * w
                norm[region] += w
                done += 1
                if progress is not None:
                    progress(done, total)
    assert out is not None
    return (out / norm).to(x.dtype)
