"""CausalVideoVAE: the Open-Sora-Plan v1.0 causal video autoencoder (4x8x8, 4 latent channels).

Every 3D convolution is causal in time: instead of zero padding, the first frame is repeated in front
of the clip, so latent frame j never sees input frames after it and frame 0 is encoded exactly as an
image would be. A clip of T = 4n+1 frames becomes n+1 latent frames; an image is a 1-frame video.

Module and parameter names follow the released checkpoint (``encoder.down.{i}.block.{j}.conv1.conv``,
``quant_conv.conv``, ``decoder.up.{i}.upsample.conv.conv``, ...) so its weights load unchanged.
Layout: config -> stages -> encoder -> decoder -> model -> presets; the blocks are in causal_blocks.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from osp.config import Config
from osp.errors import ShapeError
from osp.io.weights import Pretrained
from osp.layers.tiling import AxisMap, TilingConfig, tiled_apply
from osp.vae.causal_blocks import (
    AttnBlock3D,
    CausalConv3d,
    ResnetBlock3D,
    SpatialDownsample2x,
    SpatialUpsample2x,
    TimeDownsample2x,
    TimeDownsampleRes2x,
    TimeUpsample2x,
    TimeUpsampleRes2x,
    VideoGroupNorm,
)

ProgressFn = Callable[[int, int], None]
TemporalDown = Literal["", "avg", "res"]
TemporalUp = Literal["", "trilinear", "res"]


class CausalVAEConfig(Config):
    hidden_size: int = Field(128, gt=0)
    hidden_size_mult: tuple[int, ...] = (1, 2, 4, 4)
    z_channels: int = Field(4, gt=0)
    embed_dim: int = Field(4, gt=0, description="latent channels")
    num_res_blocks: int = Field(2, gt=0)
    norm_groups: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Per encoder level i: halve H, W after level i; halve T ("avg" = the release's TimeDownsample2x,
    # "res" = TimeDownsampleRes2x, a learned mix of average pooling and a strided conv).
    spatial_down: tuple[bool, ...] = (True, True, True, False)
    temporal_down: tuple[TemporalDown, ...] = ("avg", "avg", "", "")
    # Per decoder level i (applied while going back up from the deepest level).
    spatial_up: tuple[bool, ...] = (False, True, True, True)
    temporal_up: tuple[TemporalUp, ...] = ("", "", "trilinear", "trilinear")
    # The release's mid-block attention reshapes (B, C, T, H, W) straight to (B*T, C, H*W), which mixes
    # channels and frames: its "per-frame" attention sees every frame, so the released encoder is not
    # strictly causal. Its weights were trained that way, so True reproduces them; False attends within
    # each frame (causal), which is what osp trains.
    attention_legacy_reshape: bool = True
    # The release's GroupNorm takes its statistics over all frames, another way later frames reach
    # earlier latents. True normalises each frame on its own (same parameters): with the attention
    # fix above, the encoder is strictly causal and frame 0 is encoded exactly as an image.
    norm_per_frame: bool = False
    scaling_factor: float = Field(0.18215, gt=0, description="latents for diffusion = z * scaling_factor")

    @model_validator(mode="after")
    def _levels_agree(self) -> CausalVAEConfig:
        n = len(self.hidden_size_mult)
        for name in ("spatial_down", "temporal_down", "spatial_up", "temporal_up"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs one entry per level ({n}), got {len(getattr(self, name))}")
        if sum(self.spatial_down) != sum(self.spatial_up):
            raise ValueError("spatial_down and spatial_up must halve/double the same number of times")
        if sum(bool(t) for t in self.temporal_down) != sum(bool(t) for t in self.temporal_up):
            raise ValueError("temporal_down and temporal_up must halve/double the same number of times")
        for mult in self.hidden_size_mult:
            if (self.hidden_size * mult) % self.norm_groups:
                raise ValueError(f"hidden_size*{mult} is not divisible by norm_groups={self.norm_groups}")
        return self

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_down)

    @property
    def spatial_compression(self) -> int:
        return 2 ** sum(self.spatial_down)


def _resnet(in_channels: int, out_channels: int, cfg: CausalVAEConfig) -> ResnetBlock3D:
    return ResnetBlock3D(in_channels, out_channels, cfg.dropout, cfg.norm_groups, cfg.norm_per_frame)


class MidBlock(nn.Module):
    def __init__(self, channels: int, cfg: CausalVAEConfig) -> None:
        super().__init__()
        self.block_1 = _resnet(channels, channels, cfg)
        self.attn_1 = AttnBlock3D(channels, cfg.norm_groups, cfg.attention_legacy_reshape, cfg.norm_per_frame)
        self.block_2 = _resnet(channels, channels, cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class EncoderStage(nn.Module):
    """Resnet blocks at one resolution, then optional 2x down-sampling in space and in time."""

    def __init__(self, block_in: int, block_out: int, level: int, cfg: CausalVAEConfig) -> None:
        super().__init__()
        ins = [block_in] + [block_out] * (cfg.num_res_blocks - 1)
        self.block = nn.ModuleList(_resnet(c, block_out, cfg) for c in ins)
        self.downsample = SpatialDownsample2x(block_out) if cfg.spatial_down[level] else None
        kind = cfg.temporal_down[level]
        self.time_downsample: nn.Module | None = (
            TimeDownsample2x() if kind == "avg" else TimeDownsampleRes2x(block_out) if kind == "res" else None
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            h = block(h)
        if self.downsample is not None:
            h = self.downsample(h)  # (B, C, T, H/2, W/2)
        if self.time_downsample is not None:
            h = self.time_downsample(h)  # (B, C, (T-1)/2+1, H, W)
        return h


class DecoderStage(nn.Module):
    """Resnet blocks at one resolution, then optional 2x up-sampling in space and in time."""

    def __init__(self, block_in: int, block_out: int, level: int, cfg: CausalVAEConfig) -> None:
        super().__init__()
        ins = [block_in] + [block_out] * cfg.num_res_blocks
        self.block = nn.ModuleList(_resnet(c, block_out, cfg) for c in ins)
        self.upsample = SpatialUpsample2x(block_out) if cfg.spatial_up[level] else None
        kind = cfg.temporal_up[level]
        self.time_upsample: nn.Module | None = (
            TimeUpsample2x()
            if kind == "trilinear"
            else TimeUpsampleRes2x(block_out)
            if kind == "res"
            else None
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            h = block(h)
        if self.upsample is not None:
            h = self.upsample(h)  # (B, C, t, 2h, 2w)
        if self.time_upsample is not None:
            h = self.time_upsample(h)  # (B, C, 2t-1, h, w)
        return h


class Encoder(nn.Module):
    def __init__(self, cfg: CausalVAEConfig) -> None:
        super().__init__()
        chans = [cfg.hidden_size * m for m in cfg.hidden_size_mult]
        self.conv_in = CausalConv3d(3, cfg.hidden_size, 3, padding=1)
        self.down = nn.ModuleList(
            EncoderStage(([cfg.hidden_size, *chans])[level], chans[level], level, cfg)
            for level in range(len(chans))
        )
        self.mid = MidBlock(chans[-1], cfg)
        self.norm_out = VideoGroupNorm(chans[-1], cfg.norm_groups, cfg.norm_per_frame)
        self.conv_out = CausalConv3d(chans[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, C0, T, H, W)
        for stage in self.down:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2*z, t, h, w): mean and log-variance


class Decoder(nn.Module):
    def __init__(self, cfg: CausalVAEConfig) -> None:
        super().__init__()
        chans = [cfg.hidden_size * m for m in cfg.hidden_size_mult]
        self.conv_in = CausalConv3d(cfg.z_channels, chans[-1], 3, padding=1)
        self.mid = MidBlock(chans[-1], cfg)
        # Indexed by level like the release (up[0] is the full-resolution stage); runs deepest first.
        self.up = nn.ModuleList(
            DecoderStage(([*chans, chans[-1]])[level + 1], chans[level], level, cfg)
            for level in range(len(chans))
        )
        self.norm_out = VideoGroupNorm(chans[0], cfg.norm_groups, cfg.norm_per_frame)
        self.conv_out = CausalConv3d(chans[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, T, H, W)


class DiagonalGaussian:
    """The posterior N(mean, exp(logvar)) from the encoder's 2*z channels (logvar clamped as released)."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over all but the batch dimension."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


class CausalVideoVAE(Pretrained):
    config_class = CausalVAEConfig
    config: CausalVAEConfig

    def __init__(self, config: CausalVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = CausalConv3d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = CausalConv3d(config.embed_dim, config.z_channels, 1)

    # ---- shapes ----
    @property
    def latent_channels(self) -> int:
        return self.config.embed_dim

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of the latents of a (frames, height, width) video; checks the sizes."""
        self._check_sizes(frames, height, width, "video")
        ct, cs = self.config.temporal_compression, self.config.spatial_compression
        return (self.latent_channels, (frames - 1) // ct + 1, height // cs, width // cs)

    def _check_sizes(self, frames: int, height: int, width: int, what: str) -> None:
        ct, cs = self.config.temporal_compression, self.config.spatial_compression
        if (frames - 1) % ct:
            lo = (frames - 1) // ct * ct + 1
            raise ShapeError(
                f"{what} has {frames} frames; this VAE needs {ct}n+1 frames (e.g. {lo} or {lo + ct}): "
                "the first frame is encoded alone, then every group of "
                f"{ct} frames becomes one latent frame"
            )
        if height % cs or width % cs:
            raise ShapeError(f"{what} is {height}x{width}; height and width must be multiples of {cs}")

    def _check_video(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ShapeError(f"video must be (B, 3, T, H, W) in [-1, 1], got shape {tuple(x.shape)}")
        self._check_sizes(x.shape[2], x.shape[3], x.shape[4], "video")

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.dim() != 5 or z.shape[1] != self.latent_channels:
            raise ShapeError(
                f"latents must be (B, {self.latent_channels}, t, h, w), got shape {tuple(z.shape)}"
            )

    def _axis_maps(self) -> tuple[AxisMap, AxisMap, AxisMap]:
        ct, cs = self.config.temporal_compression, self.config.spatial_compression
        time = AxisMap(lambda s, n: (s * ct, (n - 1) * ct + 1), lambda s, n: (s, n))
        space = AxisMap(lambda s, n: (s * cs, n * cs), lambda s, n: (s, n))
        return time, space, space

    @staticmethod
    def _swap(m: AxisMap) -> AxisMap:
        return AxisMap(m.to_output, m.to_input)

    # ---- encode / decode ----
    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def encode(
        self, x: torch.Tensor, tiling: TilingConfig | None = None, progress: ProgressFn | None = None
    ) -> DiagonalGaussian:
        """Posterior over latents of a (B, 3, T, H, W) video in [-1, 1]; tiled if ``tiling`` is given."""
        self._check_video(x)
        if tiling is None:
            return DiagonalGaussian(self._encode_moments(x))
        _, t, h, w = self.latent_shape(*x.shape[2:])
        maps = self._axis_maps()
        moments = tiled_apply(
            self._encode_moments,
            x,
            (t, h, w),
            (tiling.latent_frames, tiling.latent_size, tiling.latent_size),
            (tiling.latent_frame_overlap, tiling.latent_overlap, tiling.latent_overlap),
            maps,
            progress,
        )
        return DiagonalGaussian(moments)

    def decode(
        self, z: torch.Tensor, tiling: TilingConfig | None = None, progress: ProgressFn | None = None
    ) -> torch.Tensor:
        """(B, 3, T, H, W) video in about [-1, 1] from unscaled latents; tiled if ``tiling`` is given."""
        self._check_latents(z)
        if tiling is None:
            return self._decode_raw(z)
        maps = tuple(self._swap(m) for m in self._axis_maps())
        return tiled_apply(
            self._decode_raw,
            z,
            tuple(z.shape[2:]),  # type: ignore[arg-type]
            (tiling.latent_frames, tiling.latent_size, tiling.latent_size),
            (tiling.latent_frame_overlap, tiling.latent_overlap, tiling.latent_overlap),
            maps,  # type: ignore[arg-type]
            progress,
        )

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    # ---- latents for diffusion ----
    def encode_latents(
        self,
        x: torch.Tensor,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
        tiling: TilingConfig | None = None,
    ) -> torch.Tensor:
        """Scaled latents (z * scaling_factor), as the diffusion transformer sees them."""
        posterior = self.encode(x, tiling)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.config.scaling_factor

    def decode_latents(
        self, latents: torch.Tensor, tiling: TilingConfig | None = None, progress: ProgressFn | None = None
    ) -> torch.Tensor:
        return self.decode(latents / self.config.scaling_factor, tiling, progress)

    def get_last_layer(self) -> torch.Tensor:
        """The decoder's output weight (adaptive GAN weighting differentiates through it)."""
        return self.decoder.conv_out.conv.weight


CAUSAL_VAE_CONFIGS: dict[str, CausalVAEConfig] = {
    # Open-Sora-Plan v1.0 "CausalVAEModel_4x8x8" (release.json): 4x8x8, 4 channels, ~239M params.
    "causalvae-4x8x8": CausalVAEConfig(),
    # Small enough to train on a CPU; same 4x8x8 compression and 4 latent channels, strictly causal.
    "causalvae-small": CausalVAEConfig(
        hidden_size=32,
        hidden_size_mult=(1, 2, 2, 4),
        norm_groups=8,
        attention_legacy_reshape=False,
        norm_per_frame=True,
    ),
    # The bundled demo model's VAE (configs/demo/vae.yaml): 4x8x8, 4 channels, ~2.6M parameters, about
    # a second per 4x9x64x64 training step on two CPU cores.
    "causalvae-demo": CausalVAEConfig(
        hidden_size=16,
        hidden_size_mult=(1, 2, 4, 4),
        num_res_blocks=1,
        norm_groups=8,
        attention_legacy_reshape=False,
        norm_per_frame=True,
    ),
    # For tests: every code path, ~0.2M parameters.
    "causalvae-tiny": CausalVAEConfig(
        hidden_size=8,
        hidden_size_mult=(1, 2, 2, 2),
        num_res_blocks=1,
        norm_groups=4,
        attention_legacy_reshape=False,
        norm_per_frame=True,
    ),
}
