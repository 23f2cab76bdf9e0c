"""Low-resolution training inputs made on the fly from high-resolution clips (``task: upscale``).

Every clip gets one degradation drawn from a :class:`random.Random`, applied to all its frames alike
(a camera or codec degrades a whole shot the same way; per-frame draws would teach the upscaler to
expect flicker). See :class:`~osp_train.finish_config.DegradeConfig` for the recipe.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import torch
import torch.nn.functional as F

from osp.io.video import sws_flags, x264_options
from osp_train.finish_config import DegradeConfig


def downscale(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """(T, 3, H, W) float -> (T, 3, H/scale, W/scale): antialiased bicubic, the classic SR benchmark
    (MATLAB's ``imresize``, which the SR literature measures with, is antialiased bicubic too)."""
    h, w = frames.shape[-2:]
    return F.interpolate(
        frames, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False
    )


def gaussian_blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """(T, C, H, W) float blurred by an isotropic Gaussian (separable, edges reflected)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=frames.dtype, device=frames.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = frames.shape[1]
    out = F.pad(frames, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def reencode(frames: torch.Tensor, crf: int) -> torch.Tensor:
    """(T, 3, H, W) uint8 through libx264 (yuv420p, ``crf``) and back, in memory: blocking, ringing,
    chroma at half resolution. H and W must be even. Converts as osp's video reader and writer do
    (:func:`osp.io.video.sws_flags`): swscale's default RGB <-> YUV path is biased by about -1 level, a
    shift an upscaler would learn to undo."""
    import av  # PyAV on first use, as osp.io.video

    sws = sws_flags()
    h, w = frames.shape[2:]
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = w, h, "yuv420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = x264_options(crf)
    packets = []
    for i, array in enumerate(frames.permute(0, 2, 3, 1).contiguous().numpy()):
        frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(
            format="yuv420p", interpolation=sws
        )
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)  # flush the frames x264 holds back for lookahead
    decoder = av.CodecContext.create("h264", "r")
    decoded = [f for packet in [*packets, None] for f in decoder.decode(packet)]
    rgb = [torch.from_numpy(f.to_ndarray(format="rgb24", interpolation=sws)) for f in decoded]
    return torch.stack(rgb).permute(0, 3, 1, 2).contiguous()


def _noise(frames: torch.Tensor, sigma: float, gray: bool, g: torch.Generator) -> torch.Tensor:
    shape = (frames.shape[0], 1, *frames.shape[2:]) if gray else frames.shape
    return frames + torch.randn(shape, generator=g) * sigma


def _quantize(frames: torch.Tensor) -> torch.Tensor:
    return frames.round().clamp(0, 255).to(torch.uint8)


def degrade(clip: torch.Tensor, scale: int, cfg: DegradeConfig, rng: random.Random) -> torch.Tensor:
    """(T, 3, H, W) uint8 high-resolution clip -> (T, 3, H/scale, W/scale) uint8 low-resolution clip."""
    x = clip.float()
    if rng.random() < cfg.clean:
        return _quantize(downscale(x, scale))
    g = torch.Generator().manual_seed(rng.getrandbits(63))
    x = gaussian_blur(x, rng.uniform(*cfg.blur_sigma))
    x = _noise(downscale(x, scale), rng.uniform(*cfg.noise_sigma), rng.random() < cfg.gray_noise, g)
    low = reencode(_quantize(x), rng.randint(*cfg.crf))
    if rng.random() < cfg.second_order:  # milder: half the blur and noise, the same codec range
        x = gaussian_blur(low.float(), rng.uniform(*cfg.blur_sigma) / 2)
        x = _noise(x, rng.uniform(*cfg.noise_sigma) / 2, rng.random() < cfg.gray_noise, g)
        low = reencode(_quantize(x), rng.randint(*cfg.crf))
    return low
