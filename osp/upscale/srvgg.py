"""SRVGGUpscaler: Real-ESRGAN's compact super-resolution network (``SRVGGNetCompact``) for video.

The network is a plain stack of 3x3 convolutions at the low resolution, each followed by an
activation, and one pixel shuffle at the end: no convolution ever runs at the output size, which is
why it is the model people deploy (``realesr-general-x4v3`` is ~1.2M parameters) and why it exports
to every runtime. Its output is a residual over the nearest-neighbour up-sampled input, or with
``base: bicubic`` over the bicubic one: a small network then need not carry the input through all its
layers to redraw the smooth interpolation that nearest up-sampling leaves blocky, and spends its
channels on detail.

Temporal context: with ``temporal_radius = r`` the first convolution sees frames t-r .. t+r stacked
on the channel axis (the clip's first and last frames repeat at its ends), so the detail it draws
follows the neighbouring frames instead of being re-invented per frame, which is what flickers.
``r = 0`` is the released single-image network.

Parameter names follow the released checkpoint (``body.{i}.weight``: convolutions at even ``i``,
PReLU slopes at odd ``i``), so its weights load unchanged (see osp/upscale/convert.py).
Layout: config -> model (frames, video, tiled video) -> presets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from osp.config import Config
from osp.errors import ConfigError, ShapeError, WeightsError
from osp.io.weights import Pretrained
from osp.layers.symmetry import DIHEDRAL, turn, unturn
from osp.layers.tiling import AxisMap, tiled_apply

ProgressFn = Callable[[int, int], None]


class UpscalerConfig(Config):
    scale: int = Field(4, ge=2, le=4, description="output side / input side")
    num_feat: int = Field(64, gt=0, description="channels of every hidden convolution")
    num_conv: int = Field(32, ge=0, description="hidden 3x3 convolutions between the first and the last")
    act_type: Literal["prelu", "relu", "leakyrelu"] = "prelu"
    temporal_radius: int = Field(0, ge=0, le=3, description="frames seen on each side of the frame drawn")
    base: Literal["nearest", "bicubic"] = Field(
        "nearest",
        description="the up-sampling the network's output is a residual over (the release: nearest)",
    )

    @property
    def window(self) -> int:
        return 2 * self.temporal_radius + 1

    @property
    def scales(self) -> tuple[int, ...]:
        """Output scales this model makes: its own, and its divisors > 1 (drawn at ``scale``, then
        area-downsampled, as Real-ESRGAN's ``--outscale`` does)."""
        return tuple(s for s in range(2, self.scale + 1) if self.scale % s == 0)


class UpscaleTiling(Config):
    """Tiles in input pixels. Each frame's output depends only on its own window of frames, so time
    chunks are exact; spatial tiles are cross-faded over ``overlap`` (the network sees 1 + num_conv + 1
    convolutions, so an overlap of about that many pixels leaves the seams invisible)."""

    size: int = Field(128, gt=0, description="spatial tile edge, in input pixels")
    overlap: int = Field(16, ge=0, description="spatial overlap, in input pixels")
    frames: int = Field(8, gt=0, description="output frames per chunk")

    @model_validator(mode="after")
    def _overlap_smaller_than_tile(self) -> UpscaleTiling:
        if self.overlap >= self.size:
            raise ValueError(f"overlap {self.overlap} must be smaller than size {self.size}")
        return self


def _activation(kind: str, channels: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(negative_slope=0.1, inplace=True)


def bicubic_phases(scale: int) -> torch.Tensor:
    """(3 * scale², 1, 5, 5): a grouped convolution (edges replicated by 2 pixels first) whose outputs
    for input channel c are channels c * scale² .. (c + 1) * scale² - 1, the scale x scale sub-pixels of
    ``F.interpolate(mode="bicubic", align_corners=False)`` in the order ``nn.PixelShuffle`` reads them.
    Output pixel s*i + p lies at input coordinate i + (p + 0.5) / s - 0.5; Keys' cubic (a = -0.75)
    weighs the 4 inputs around it, all within i - 2 .. i + 2."""

    def keys(u: float) -> float:
        u, a = abs(u), -0.75
        if u <= 1:
            return ((a + 2) * u - (a + 3)) * u * u + 1
        return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a if u < 2 else 0.0

    taps = torch.zeros(scale, 5, dtype=torch.float64)  # phase p -> weights of inputs i - 2 .. i + 2
    for p in range(scale):
        at = (p + 0.5) / scale - 0.5
        for k in range(5):
            taps[p, k] = keys(at - (k - 2))
    phases = torch.einsum("pk,ql->pqkl", taps, taps).reshape(scale * scale, 5, 5)  # (row p, col q)
    return phases.repeat(3, 1, 1).unsqueeze(1).float()


def _offset(progress: ProgressFn, n: int, passes: int) -> ProgressFn:
    """Pass ``n`` of ``passes`` over the same tiles, reported as one run of ``passes`` x the tiles."""
    return lambda done, total: progress(n * total + done, passes * total)


class SRVGGUpscaler(Pretrained):
    config_class = UpscalerConfig
    config: UpscalerConfig
    base_kernel: torch.Tensor

    def __init__(self, config: UpscalerConfig) -> None:
        super().__init__()
        self.config = config
        c, s = config.num_feat, config.scale
        layers: list[nn.Module] = [nn.Conv2d(3 * config.window, c, 3, 1, 1), _activation(config.act_type, c)]
        for _ in range(config.num_conv):
            layers += [nn.Conv2d(c, c, 3, 1, 1), _activation(config.act_type, c)]
        layers.append(nn.Conv2d(c, 3 * s * s, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(s)
        # Bicubic up-sampling by s as one fixed convolution into the s*s sub-pixel phases that the pixel
        # shuffle lays out, like the nearest base; a buffer outside the state dict, so weights are the
        # release's either way.
        kernel = bicubic_phases(s) if config.base == "bicubic" else torch.zeros(0)
        self.register_buffer("base_kernel", kernel, persistent=False)

    def deepened(self, num_conv: int) -> SRVGGUpscaler:
        """This network with ``num_conv`` hidden convolutions, computing exactly what it computes now.

        The added layers are identities (a centre-tap 3x3 convolution, and a PReLU of slope 1, or a ReLU,
        which passes the non-negative output of the ReLU before it), spread between the trained ones; so
        a trained model can be made deeper and trained on from where it stands (Net2Net's idea)."""
        old = self.config.num_conv
        if num_conv < old:
            raise ShapeError(f"num_conv: a network is only deepened, {num_conv} < its {old}")
        if self.config.act_type == "leakyrelu" and num_conv > old:
            raise ShapeError("num_conv: a leaky-ReLU network has no identity layer to deepen it with")
        first = next(self.parameters())
        deeper = SRVGGUpscaler(self.config.replace(num_conv=num_conv)).to(first.device, first.dtype)
        c = self.config.num_feat
        kept = {round(k * num_conv / old): k for k in range(old)}  # new slot -> old layer (none if old = 0)
        with torch.no_grad():
            for slot in range(num_conv):
                conv, act = deeper.body[2 + 2 * slot], deeper.body[3 + 2 * slot]
                if slot in kept:
                    conv.load_state_dict(self.body[2 + 2 * kept[slot]].state_dict())
                    act.load_state_dict(self.body[3 + 2 * kept[slot]].state_dict())
                    continue
                assert isinstance(conv, nn.Conv2d)
                conv.weight.zero_()
                conv.bias.zero_()  # type: ignore[union-attr]
                conv.weight[torch.arange(c), torch.arange(c), 1, 1] = 1.0
                if isinstance(act, nn.PReLU):
                    act.weight.fill_(1.0)
            for outer in (0, 1, -1):  # the first convolution and activation, the last convolution
                deeper.body[outer].load_state_dict(self.body[outer].state_dict())
        return deeper.train(self.training)

    def widened(self, num_feat: int, noise: float = 0.0, seed: int = 0) -> SRVGGUpscaler:
        """This network with ``num_feat`` channels in every hidden layer, computing what it computes now.

        Net2Net's wider network: each new channel copies an existing one's incoming weights, bias and
        PReLU slope, and every copy's outgoing weights are divided among the copies, so the next layer
        sums what it summed before. The copies get the same gradients, so ``noise`` (a fraction of each
        outgoing weight tensor's standard deviation, added to the copies') lets them grow apart."""
        old = self.config.num_feat
        if num_feat < old:
            raise ShapeError(f"num_feat: a network is only widened, {num_feat} < its {old}")
        first = next(self.parameters())
        wider = SRVGGUpscaler(self.config.replace(num_feat=num_feat)).to(first.device, first.dtype)
        g = torch.Generator().manual_seed(seed)
        source = torch.cat([torch.arange(old), torch.randint(old, (num_feat - old,), generator=g)])
        # How many copies each channel's source has, and which channels are the new copies.
        share = torch.bincount(source, minlength=old)[source].to(first.device, first.dtype)
        copy = (torch.arange(num_feat) >= old).to(first.device, first.dtype).view(1, -1, 1, 1)
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        acts = [m for m in self.body if not isinstance(m, nn.Conv2d)]
        new_convs = [m for m in wider.body if isinstance(m, nn.Conv2d)]
        new_acts = [m for m in wider.body if not isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for i, (conv, new) in enumerate(zip(convs, new_convs, strict=True)):
                weight = conv.weight
                if i > 0:  # input channels were widened: split each one's weights among its copies
                    weight = weight[:, source] / share.view(1, -1, 1, 1)
                    if noise:
                        jitter = torch.randn(weight.shape, generator=g).to(weight) * noise * weight.std()
                        weight = weight + jitter * copy
                bias = conv.bias
                assert bias is not None
                if i < len(convs) - 1:  # output channels widened: copies
                    weight, bias = weight[source], bias[source]
                new.weight.copy_(weight)
                new.bias.copy_(bias)  # type: ignore[union-attr]
            for act, new_act in zip(acts, new_acts, strict=True):
                if isinstance(act, nn.PReLU) and isinstance(new_act, nn.PReLU):
                    new_act.weight.copy_(act.weight[source])
        return wider.train(self.training)

    def blended(self, other: SRVGGUpscaler, weight: float) -> SRVGGUpscaler:
        """The network whose every parameter is ``(1 - weight) * self's + weight * other's``.

        Two fine-tunes of one network (one for clean input, one for noisy, compressed input) blend into
        a model between them: Real-ESRGAN's denoise strength, which blends ``realesr-general-wdn-x4v3``
        with ``realesr-general-x4v3``. Networks trained apart have unrelated channels and do not blend."""
        if other.config != self.config:
            raise WeightsError(
                f"denoise: the two upscalers differ ({self.config.model_dump()} vs {other.config.model_dump()}); "
                "only fine-tunes of one network blend"
            )
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"denoise: {weight} is outside [0, 1]")
        first = next(self.parameters())
        mixed = SRVGGUpscaler(self.config).to(first.device, first.dtype)
        theirs = other.state_dict()
        with torch.no_grad():
            mixed.load_state_dict({
                name: torch.lerp(mine.float(), theirs[name].to(mine.device).float(), weight).to(mine.dtype)
                for name, mine in self.state_dict().items()
            })  # fmt: skip
        return mixed.train(self.training)

    # ---- frames ----
    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3 * window, h, w) in [0, 1], frames t-r .. t+r on channels -> (N, 3, s*h, s*w) in [0, 1]."""
        s, r = self.config.scale, self.config.temporal_radius
        out = x
        for layer in self.body:
            out = layer(out)
        # The residual base is frame t up-sampled by nearest neighbour. Repeating each channel s*s times
        # before the shuffle is exactly that up-sampling, so it rides on the one pixel shuffle instead of
        # a Resize (slow on ONNX Runtime's CPU kernels); the bicubic base rides on it the same way.
        centre = x[:, 3 * r : 3 * r + 3]
        if self.config.base == "bicubic":
            kernel = self.base_kernel.to(centre.dtype)
            base = F.conv2d(F.pad(centre, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
        else:
            base = centre.repeat_interleave(s * s, dim=1)
        return self.upsampler(out + base)

    def windows(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, h, w) in [0, 1] -> (B*T, 3 * window, h, w): each frame with its neighbours."""
        r = self.config.temporal_radius
        b, _, t, h, w = video.shape
        if r:
            first = video[:, :, :1].expand(b, 3, r, h, w)
            last = video[:, :, -1:].expand(b, 3, r, h, w)
            video = torch.cat([first, video, last], dim=2)  # (B, 3, T + 2r, h, w)
        return self._stack(video, t)

    def _stack(self, padded: torch.Tensor, t: int) -> torch.Tensor:
        """(B, 3, t + 2r, h, w), already padded in time -> (B*t, 3 * window, h, w)."""
        stacked = torch.cat([padded[:, :, k : k + t] for k in range(self.config.window)], dim=1)
        return stacked.transpose(1, 2).flatten(0, 1)  # (B, 3w, t, h, w) -> (B*t, 3w, h, w)

    # ---- video ----
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, h, w) in [-1, 1] -> (B, 3, T, s*h, s*w) in about [-1, 1], every frame at once."""
        self._check_video(video)
        b, _, t = video.shape[:3]
        y = self.forward_frames(self.windows((video + 1) * 0.5))  # (B*T, 3, sh, sw)
        return y.unflatten(0, (b, t)).transpose(1, 2) * 2 - 1

    def upscale(
        self,
        video: torch.Tensor,
        scale: int | None = None,
        tiling: UpscaleTiling | None = None,
        progress: ProgressFn | None = None,
        net: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ensemble: bool = False,
    ) -> torch.Tensor:
        """(B, 3, T, h, w) in [-1, 1] -> (B, 3, T, scale*h, scale*w): tiled when ``tiling`` is given,
        so memory is bounded by the tile, not the clip. ``scale`` must be one of ``config.scales``.
        ``net`` stands in for :meth:`forward` (an exported engine of this model; untiled only).
        ``ensemble``: the mean of the outputs for the frame's 8 flips and transposes, each undone (the
        SR literature's "self-ensemble", as in EDSR+): a little closer to the truth, for 8x the time."""
        self._check_video(video)
        scale = scale or self.config.scale
        if scale not in self.config.scales:
            raise ShapeError(
                f"scale {scale}: this upscaler makes x{' or x'.join(map(str, self.config.scales))}"
            )
        views = DIHEDRAL if ensemble else DIHEDRAL[:1]
        total: torch.Tensor | None = None  # a running sum: one output held at a time, not 8
        for n, (transpose, dims) in enumerate(views):
            x = turn(video, transpose, dims)
            if tiling is None:
                view = (net or self)(x)
            else:
                shown = None if progress is None else _offset(progress, n, len(views))
                view = self._tiled(x, tiling, shown)
            view = unturn(view, transpose, dims)
            if not ensemble:
                total = view
            else:  # summed in fp32: 8 bf16 outputs summed in bf16 would lose their last bits
                total = view.float() if total is None else total + view.float()
        assert total is not None
        y = (total / len(views)).to(video.dtype) if ensemble else total
        if scale != self.config.scale:
            k = self.config.scale // scale
            # Area down-sampling (each output pixel a k x k mean), in fp32: CPUs pool no bf16.
            y = F.avg_pool3d(y.float(), (1, k, k)).to(y.dtype)
        return y

    def _tiled(self, video: torch.Tensor, tiling: UpscaleTiling, progress: ProgressFn | None) -> torch.Tensor:
        r, s = self.config.temporal_radius, self.config.scale
        b, _, t, h, w = video.shape
        x = (video + 1) * 0.5
        padded = torch.cat([x[:, :, :1].expand(b, 3, r, h, w), x, x[:, :, -1:].expand(b, 3, r, h, w)], dim=2)

        def run(tile: torch.Tensor) -> torch.Tensor:  # (B, 3, k + 2r, th, tw) -> (B, 3, k, s*th, s*tw)
            k = tile.shape[2] - 2 * r
            return self.forward_frames(self._stack(tile, k)).unflatten(0, (b, k)).transpose(1, 2)

        # Output frames [a, a + n) need padded input frames [a, a + n + 2r); space maps pixel p to s*p.
        time = AxisMap(lambda a, n: (a, n + 2 * r), lambda a, n: (a, n))
        space = AxisMap(lambda a, n: (a, n), lambda a, n: (s * a, s * n))
        y = tiled_apply(
            run,
            padded,
            (t, h, w),
            (tiling.frames, tiling.size, tiling.size),
            (0, tiling.overlap, tiling.overlap),
            (time, space, space),
            progress,
        )
        return y * 2 - 1

    def _check_video(self, video: torch.Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != 3 or min(video.shape) == 0:
            raise ShapeError(f"video must be (B, 3, T, H, W) in [-1, 1], got shape {tuple(video.shape)}")


UPSCALER_CONFIGS: dict[str, UpscalerConfig] = {
    # Real-ESRGAN "realesr-general-x4v3": the released general-purpose compact model, ~1.21M parameters.
    "realesr-general-x4v3": UpscalerConfig(scale=4, num_feat=64, num_conv=32),
    # Real-ESRGAN "realesr-animevideov3": the same family for animation, ~0.62M parameters.
    "realesr-animevideov3": UpscalerConfig(scale=4, num_feat=64, num_conv=16),
    # The bundled x4 model (configs/demo/upscale.yaml): 3-frame context, small enough to train on a CPU.
    "srvgg-demo-x4": UpscalerConfig(scale=4, num_feat=32, num_conv=8, temporal_radius=1),
    "srvgg-demo-x2": UpscalerConfig(scale=2, num_feat=32, num_conv=8, temporal_radius=1),
    # For tests: every code path, a few thousand parameters.
    "srvgg-tiny-x4": UpscalerConfig(scale=4, num_feat=8, num_conv=2, temporal_radius=1),
    "srvgg-tiny-x2": UpscalerConfig(scale=2, num_feat=8, num_conv=2, temporal_radius=1),
}
