"""IFNetInterpolator: RIFE's IFNet (Practical-RIFE v4.25 family), a flow-based frame interpolator.

Given frames I0, I1 and a time t in (0, 1), a coarse-to-fine stack of IFBlocks estimates the flows
from the unknown frame It back to I0 and to I1 (4 channels), a fusion mask and a few feature
channels. Block k works at 1/scales[k] of the resolution: it sees both frames (warped by the flow so
far), a small learned encoding of each (warped alike), t as a constant plane, the previous mask and
features, and adds a flow correction. The frame is the two inputs warped by the final flows
(``grid_sample``, border padding; bilinear as released, or bicubic with ``final_warp``) and mixed by
the sigmoid of the mask:

    It = sigmoid(m) * warp(I0, F_t->0) + (1 - sigmoid(m)) * warp(I1, F_t->1)

so every output pixel is a mix of input pixels (a convex one when bilinear): no colour is invented.
Bilinear resampling at a sub-pixel offset is a low-pass filter, so where motion is a fraction of a
pixel (small frames) the bilinear frame is blurrier than a plain cross-fade of the inputs; the bicubic
final warp keeps that detail (the intermediate warps, which only steer the flow, stay bilinear). t is
an input, so x4 in time is one call per t in (1/4, 1/2, 3/4), not a recursion.

Module and parameter names follow the released ``flownet.pkl`` (``block{k}.conv0.0.0.weight``,
``block{k}.convblock.{j}.beta``, ``encode.cnn3.weight``, ...) after its ``module.`` prefix is dropped
(see osp/interpolate/convert.py). Layout: config -> warp -> head -> block -> model -> presets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from osp.config import Config
from osp.errors import ShapeError
from osp.io.weights import Pretrained
from osp.layers.symmetry import MIRRORS, turn, unturn
from osp.layers.tiling import AxisMap, tiled_apply

ProgressFn = Callable[[int, int], None]
Warp = Literal["bilinear", "bicubic"]  # how frames are resampled along a flow


class InterpolatorConfig(Config):
    block_channels: tuple[int, ...] = (192, 128, 96, 64, 32)
    scales: tuple[int, ...] = (16, 8, 4, 2, 1)  # per block: works at 1/scale of the (padded) frame
    res_blocks: int = Field(8, gt=0, description="residual 3x3 convolutions per block")
    head_channels: int = Field(16, gt=0, description="channels of the learned per-frame encoding")
    feat_channels: int = Field(8, ge=0, description="feature channels each block hands to the next")
    factors: tuple[int, ...] = (2, 4)  # the frame-rate multiples offered (t = k / factor)
    final_warp: Warp = Field(
        "bilinear",
        description="resampling of the two frames along the final flows (the release: bilinear; "
        "bicubic keeps the detail that bilinear blurs at sub-pixel motion)",
    )
    recursive: bool = Field(
        False,
        description="make x4 (x8, ...) as x2 again and again, every new frame at t = 0.5: for weights "
        "trained on the middle frame only (RIFE's releases before v4 did the same)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> InterpolatorConfig:
        if not self.block_channels or len(self.scales) != len(self.block_channels):
            raise ValueError("scales needs one entry per block (block_channels)")
        if any(s < 1 or s & (s - 1) for s in self.scales):
            raise ValueError(f"scales must be powers of two, got {list(self.scales)}")
        if any(c % 2 for c in self.block_channels):
            raise ValueError("block_channels must be even (each block's first convolution has half)")
        if not self.factors or any(f < 2 for f in self.factors):
            raise ValueError("factors: frame-rate multiples of at least 2")
        if self.recursive and any(f & (f - 1) for f in self.factors):
            raise ValueError(
                f"factors: a recursive interpolator makes powers of two only, got {list(self.factors)}"
            )
        return self

    @property
    def pad_multiple(self) -> int:
        """Frames are padded to a multiple of this: the coarsest block halves 1/scale twice."""
        return 4 * max(self.scales)


class InterpolateTiling(Config):
    """Spatial tiles (pixels) cross-faded over ``overlap``, and at most ``frames`` new frames at once.
    Motion larger than the overlap crosses tile borders, so tiles should be large (hundreds of pixels)."""

    size: int = Field(512, gt=0, description="spatial tile edge, in pixels")
    overlap: int = Field(64, ge=0, description="spatial overlap, in pixels")
    frames: int = Field(8, gt=0, description="new frames computed per chunk")

    @model_validator(mode="after")
    def _overlap_smaller_than_tile(self) -> InterpolateTiling:
        if self.overlap >= self.size:
            raise ValueError(f"overlap {self.overlap} must be smaller than size {self.size}")
        return self


def warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Backward warp: out(p) = x(p + flow(p)), resampled by ``mode`` (``grid_sample``'s bilinear or
    bicubic), edges clamped. flow (N, 2, H, W) in pixels."""
    h, w = flow.shape[2:]
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    # align_corners=True: -1 and 1 are the centres of the first and last pixels, so p -> 2p/(size-1) - 1.
    gx = (xs + flow[:, 0]) * (2.0 / (w - 1)) - 1.0  # (N, H, W)
    gy = (ys + flow[:, 1]) * (2.0 / (h - 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=True)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))


class Head(nn.Module):
    """A learned per-frame encoding at full resolution (down 2x, two convs, back up 2x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(3, channels, 3, 2, 1)
        self.cnn1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.cnn2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(channels, channels, 4, 2, 1)
        self.relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.cnn0(x))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)


class ResConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, channels, 1, 1))  # a learned per-channel residual gain
        self.relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) * self.beta + x)


class IFBlock(nn.Module):
    """Inputs at 1/scale -> 2 stride-2 convs -> residual convs -> up 4x -> flow (4), mask (1), features."""

    def __init__(self, in_channels: int, channels: int, res_blocks: int, feat_channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, channels // 2, 2), _conv(channels // 2, channels, 2))
        self.convblock = nn.Sequential(*(ResConv(channels) for _ in range(res_blocks)))
        # A transposed conv (2x) into 4x the outputs, then a pixel shuffle (2x): back to 1/scale.
        self.lastconv = nn.Sequential(
            nn.ConvTranspose2d(channels, 4 * (5 + feat_channels), 4, 2, 1), nn.PixelShuffle(2)
        )

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = x.shape[2:]
        if scale != 1:
            x = F.interpolate(x, size=(h // scale, w // scale), mode="bilinear", align_corners=False)
        if flow is not None:
            if scale != 1:  # flows are in pixels, so they shrink with the frame
                flow = F.interpolate(
                    flow, size=(h // scale, w // scale), mode="bilinear", align_corners=False
                )
                flow = flow / scale
            x = torch.cat([x, flow], dim=1)
        out = self.lastconv(self.convblock(self.conv0(x)))  # (N, 5 + feat, h/scale, w/scale)
        if scale != 1:
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out[:, :4] * scale, out[:, 4:5], out[:, 5:]


Interpolate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def flip_ensemble(
    fn: Interpolate, frame0: torch.Tensor, frame1: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The mean of ``fn``'s frames for the pair as is and mirrored left-right, upside down and both
    ways, each mirrored back: an interpolator's errors in steering the flow differ between the mirror
    images, so their mean lies closer to the truth (the self-ensemble of image restoration), for 4x
    the time. With the transposes too (8 views) held-out bigbuckbunny at 64x64 gained no more."""
    total: torch.Tensor | None = None  # a running fp32 sum: one frame held at a time, not 4
    for view in MIRRORS:
        y = unturn(fn(turn(frame0, *view), turn(frame1, *view), t), *view).float()
        total = y if total is None else total + y
    assert total is not None
    return (total / len(MIRRORS)).to(frame0.dtype)


def _offset(progress: ProgressFn, done: int, total: int) -> ProgressFn:
    """One pass's progress, reported as frames ``done`` + its own out of ``total`` over all passes."""
    return lambda n, _: progress(done + n, total)


class IFNetInterpolator(Pretrained):
    config_class = InterpolatorConfig
    config: InterpolatorConfig

    def __init__(self, config: InterpolatorConfig) -> None:
        super().__init__()
        self.config = config
        hc, fc = config.head_channels, config.feat_channels
        first = 3 + 3 + 2 * hc + 1  # I0, I1, their encodings, t
        later = first + 1 + fc + 4  # ... + mask, features, flow (warped frames replace I0, I1)
        for k, c in enumerate(config.block_channels):  # block0, block1, ...: the release's names
            self.add_module(f"block{k}", IFBlock(first if k == 0 else later, c, config.res_blocks, fc))
        self.encode = Head(hc)

    @property
    def blocks(self) -> list[IFBlock]:
        return [getattr(self, f"block{k}") for k in range(len(self.config.block_channels))]

    def flows(
        self, img0: torch.Tensor, img1: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames in [0, 1], (N, 3, H, W) with H, W multiples of ``pad_multiple``; timestep (N,).
        Returns the frame at t, the flows t->0 and t->1 (N, 4, H, W) and the mask logits (N, 1, H, W)."""
        n, _, h, w = img0.shape
        t = timestep.to(img0.dtype).view(n, 1, 1, 1).expand(n, 1, h, w)
        f0, f1 = self.encode(img0), self.encode(img1)
        blocks, scales = self.blocks, self.config.scales
        flow, mask, feat = blocks[0](torch.cat([img0, img1, f0, f1, t], dim=1), None, scales[0])
        for block, scale in zip(blocks[1:], scales[1:], strict=True):
            # Each later block sees both frames and both encodings warped by the flow so far.
            warped0, warped1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
            wf0, wf1 = warp(f0, flow[:, :2]), warp(f1, flow[:, 2:4])
            x = torch.cat([warped0, warped1, wf0, wf1, t, mask, feat], dim=1)
            correction, mask, feat = block(x, flow, scale)
            flow = flow + correction
        mode = self.config.final_warp
        warped0, warped1 = warp(img0, flow[:, :2], mode), warp(img1, flow[:, 2:4], mode)
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight), flow, mask

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in [-1, 1] (any size), timestep (N,) in (0, 1) -> the frame at t."""
        if frame0.dim() != 4 or frame0.shape[1] != 3 or frame0.shape != frame1.shape:
            raise ShapeError(
                f"frames must be two (N, 3, H, W) tensors of one shape, got {tuple(frame0.shape)} "
                f"and {tuple(frame1.shape)}"
            )
        h, w = frame0.shape[2:]
        pad = self.padding(h, w)
        frame = self.predict(
            F.pad(frame0, pad, mode="replicate"), F.pad(frame1, pad, mode="replicate"), timestep
        )
        return frame[:, :, :h, :w]

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``F.pad`` widths that take a frame to multiples of ``pad_multiple``. Edges are repeated (the
        release's inference pads with black, which flows near the right and bottom edges then pull
        into the frame)."""
        m = self.config.pad_multiple
        return (0, (m - width % m) % m, 0, (m - height % m) % m)

    def predict(self, frame0: torch.Tensor, frame1: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for frames whose sizes are already multiples of ``pad_multiple`` (what the
        exported graphs take: a padding that depends on the size would pin the exported axes)."""
        frame, _, _ = self.flows((frame0 + 1) * 0.5, (frame1 + 1) * 0.5, timestep)
        return frame * 2 - 1

    def interpolate(
        self,
        video: torch.Tensor,
        factor: int = 2,
        tiling: InterpolateTiling | None = None,
        progress: ProgressFn | None = None,
        net: Interpolate | None = None,
        ensemble: bool = False,
    ) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, 3, (T - 1) * factor + 1, H, W): ``factor - 1`` new frames
        between each pair, at t = k / factor; the input frames are kept as they are (a ``recursive``
        model makes x4 as x2 twice). ``net`` stands in for :meth:`forward` (an exported engine of this
        model; untiled only). ``ensemble``: each new frame the mean over the pair's mirror images
        (:func:`flip_ensemble`), for 4x the time."""
        if factor not in self.config.factors:
            raise ShapeError(
                f"factor {factor}: this interpolator makes x{' or x'.join(map(str, self.config.factors))} "
                "the frame rate"
            )
        if video.dim() != 5 or video.shape[1] != 3 or video.shape[2] < 2 or min(video.shape) == 0:
            raise ShapeError(f"video must be (B, 3, T >= 2, H, W) in [-1, 1], got shape {tuple(video.shape)}")
        if self.config.recursive and factor > 2:
            # log2(factor) passes of x2; pass k makes 2**k * B * (T - 1) frames, reported as one run.
            passes = factor.bit_length() - 1
            pairs = video.shape[0] * (video.shape[2] - 1)
            done, total = 0, (factor - 1) * pairs
            for k in range(passes):
                shown = None if progress is None else _offset(progress, done, total)
                video = self._interpolate(video, 2, tiling, shown, net, ensemble)
                done += pairs << k
            return video
        return self._interpolate(video, factor, tiling, progress, net, ensemble)

    def _interpolate(
        self,
        video: torch.Tensor,
        factor: int,
        tiling: InterpolateTiling | None,
        progress: ProgressFn | None,
        net: Interpolate | None,
        ensemble: bool,
    ) -> torch.Tensor:
        b, _, frames, h, w = video.shape
        # Every new frame: (batch, pair, k), run in chunks of ``tiling.frames`` (all at once untiled).
        jobs = [(i, pair, k) for i in range(b) for pair in range(frames - 1) for k in range(1, factor)]
        chunk = tiling.frames if tiling is not None else len(jobs)
        fn: Interpolate = (net or self) if tiling is None else functools.partial(self._tiled, tiling=tiling)
        out = video.new_empty(b, 3, (frames - 1) * factor + 1, h, w)
        out[:, :, ::factor] = video
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            i = torch.tensor([j[0] for j in part])
            pair = torch.tensor([j[1] for j in part])
            t = torch.tensor([j[2] / factor for j in part], device=video.device)
            frame0, frame1 = video[i, :, pair], video[i, :, pair + 1]  # (n, 3, H, W)
            new = flip_ensemble(fn, frame0, frame1, t) if ensemble else fn(frame0, frame1, t)
            for (bi, p, k), frame in zip(part, new, strict=True):
                out[bi, :, p * factor + k] = frame
            if progress is not None:
                progress(start + len(part), len(jobs))
        return out

    def _tiled(
        self, frame0: torch.Tensor, frame1: torch.Tensor, t: torch.Tensor, tiling: InterpolateTiling
    ) -> torch.Tensor:
        pairs = torch.cat([frame0, frame1], dim=1)[:, :, None]  # (n, 6, 1, H, W): one "frame" per job

        def run(tile: torch.Tensor) -> torch.Tensor:
            return self(tile[:, :3, 0], tile[:, 3:, 0], t)[:, :, None]

        same = AxisMap(lambda a, n: (a, n), lambda a, n: (a, n))
        h, w = frame0.shape[2:]
        y = tiled_apply(
            run, pairs, (1, h, w), (1, tiling.size, tiling.size), (0, tiling.overlap, tiling.overlap),
            (same, same, same),
        )  # fmt: skip
        return y[:, :, 0]


INTERPOLATOR_CONFIGS: dict[str, InterpolatorConfig] = {
    # Practical-RIFE v4.25 (flownet.pkl): five blocks from 1/16 to full resolution, ~5.7M parameters.
    "rife-v4.25": InterpolatorConfig(),
    # The bundled x2 model (configs/demo/interpolate.yaml): three blocks, small enough to train on a CPU.
    "rife-demo": InterpolatorConfig(
        block_channels=(64, 48, 32), scales=(4, 2, 1), res_blocks=4, head_channels=8, feat_channels=4
    ),
    # For tests: every code path, a few thousand parameters.
    "rife-tiny": InterpolatorConfig(
        block_channels=(16, 8), scales=(2, 1), res_blocks=1, head_channels=4, feat_channels=2
    ),
}
