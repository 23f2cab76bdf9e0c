"""Latte: class-conditional (or unconditional) video diffusion transformer (Ma et al. 2024, Vchitect/Latte ``models/latte.py``).

One ``blocks`` list alternates spatial blocks (attention over the h*w tokens of one frame) and temporal
blocks (attention over the frames of one token position), "variant 1" of the Latte paper. Conditioning
is DiT's adaLN-Zero on timestep + class embedding. Parameter names are the release's, including the
frozen sin-cos ``pos_embed`` / ``temp_embed`` that it stores as parameters, so a released checkpoint
loads with no key map.

Layout differences from the release, none of which change the numbers: inputs and outputs are
(B, C, T, H, W) (the release takes (B, T, C, H, W)); hidden states stay one contiguous (B, T, N, D)
tensor, spatial blocks attending over N and temporal blocks over T without transposing it (the
release reshapes to (B*N, T, D) and back around every temporal block), and the (B, D) conditioning
broadcasts instead of being repeated per frame and per token; other latent sizes than the configured
one get freshly computed sin-cos positions instead of failing.

Layout: config -> model (embed, blocks, final layer, unpatchify) -> presets.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from osp.config import Config
from osp.errors import ShapeError
from osp.io.weights import Pretrained
from osp.layers.dit_blocks import (
    FinalLayer,
    TransformerBlock,
    check_width,
    initialize_adaln_transformer,
    run_block,
)
from osp.layers.embeddings import (
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    sincos_2d,
    sincos_frames,
    unpatchify,
)


class LatteConfig(Config):
    input_size: int | tuple[int, int] = Field(32, description="latent height = width, or (height, width)")
    patch_size: int = Field(2, gt=0)
    in_channels: int = Field(4, gt=0)
    hidden_size: int = Field(1152, gt=0)
    depth: int = Field(28, gt=0, description="spatial + temporal blocks, alternating (28 = 14 + 14)")
    num_heads: int = Field(16, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    num_frames: int = Field(16, gt=0, description="latent frames seen in training")
    class_dropout_prob: float = Field(0.1, ge=0.0, le=1.0, description="label dropout for CFG")
    num_classes: int = Field(
        1000, ge=0, description="0: unconditional (the release's FFS / Sky / Taichi models)"
    )
    learn_sigma: bool = Field(True, description="predict the variance too: 2 * in_channels outputs")
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> LatteConfig:
        height, width = self.latent_size
        if height <= 0 or width <= 0 or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input_size {self.input_size} must be positive multiples of patch_size {self.patch_size}"
            )
        if self.depth % 2:
            raise ValueError(f"depth ({self.depth}) must be even: blocks alternate spatial and temporal")
        check_width(self.hidden_size, self.num_heads)
        return self

    @property
    def latent_size(self) -> tuple[int, int]:
        return (self.input_size, self.input_size) if isinstance(self.input_size, int) else self.input_size

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w) of the configured latent size."""
        height, width = self.latent_size
        return height // self.patch_size, width // self.patch_size

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def learned_sigma(self) -> bool:
        """What samplers ask every transformer config: are half the outputs a learned variance?"""
        return self.learn_sigma


class Latte(Pretrained):
    """Latte; ``forward(x, t, class_labels)`` is osp's ``denoiser(x_t, t, cond)``."""

    config_class = LatteConfig
    config: LatteConfig

    def __init__(self, config: LatteConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        h, w = config.grid
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        # The release's unconditional models have no label embedder at all.
        self.y_embedder = (
            LabelEmbedder(config.num_classes, d, config.class_dropout_prob) if config.num_classes else None
        )
        # Fixed sin-cos positions, kept as frozen parameters because the release's state dict has them.
        self.pos_embed = nn.Parameter(torch.zeros(1, h * w, d), requires_grad=False)
        self.temp_embed = nn.Parameter(torch.zeros(1, config.num_frames, d), requires_grad=False)
        # Even indices attend over space, odd ones over time.
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (adaLN-Zero: every block starts as the identity, the output as 0; see
        :func:`initialize_adaln_transformer`) plus the sin-cos positions."""
        initialize_adaln_transformer(
            self.x_embedder, self.t_embedder, self.y_embedder, self.blocks, self.final_layer
        )
        with torch.no_grad():
            self.pos_embed.copy_(self.spatial_positions(*self.config.grid))
            self.temp_embed.copy_(self.temporal_positions(self.config.num_frames))

    # ---- positions ----
    def spatial_positions(self, h: int, w: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """(1, h*w, D) sin-cos positions of an h x w token grid, row-major (release layout); float32
        on the CPU, or on ``like``'s device in its dtype."""
        return sincos_2d(self.config.hidden_size, h, w, like=like)[None]

    def temporal_positions(self, frames: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """(1, frames, D) sin-cos positions of the frames, placed as :meth:`spatial_positions`."""
        return sincos_frames(self.config.hidden_size, frames, like=like)[None]

    def _positions(
        self, frames: int, h: int, w: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The stored tables for the training size; other sizes get positions for their own grid
        # (extrapolated, not interpolated: the release never saw them).
        spatial = self.pos_embed if (h, w) == self.config.grid else self.spatial_positions(h, w, like)
        temporal = (
            self.temp_embed if frames == self.config.num_frames else self.temporal_positions(frames, like)
        )
        return spatial.to(like), temporal.to(like)

    # ---- forward ----
    def _check(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> None:
        cfg = self.config
        if x.dim() != 5:
            raise ShapeError(
                f"Latte takes latents (B, C, T, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
            )
        if x.shape[1] != cfg.in_channels:
            raise ShapeError(f"latent channels (dim 1) must be {cfg.in_channels}, got shape {tuple(x.shape)}")
        if x.shape[3] % cfg.patch_size or x.shape[4] % cfg.patch_size:
            raise ShapeError(
                f"latent height and width (dims 3, 4) must be multiples of patch_size={cfg.patch_size}, "
                f"got {tuple(x.shape[3:])}"
            )
        if t.shape != (x.shape[0],):
            raise ShapeError(f"timesteps must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        if (class_labels is None) != (self.y_embedder is None):
            raise ShapeError(
                f"class_labels are {'required' if class_labels is None else 'not taken'}: this Latte has "
                f"num_classes={cfg.num_classes}"
            )
        if class_labels is not None and class_labels.shape != (x.shape[0],):
            raise ShapeError(
                f"class_labels must have shape (B,) = ({x.shape[0]},), got {tuple(class_labels.shape)}"
            )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latents x (B, C, T, H, W), timesteps t (B,), labels (B,) -> (B, C_out, T, H, W).

        ``class_labels == num_classes`` is the unconditional label for classifier-free guidance; in
        training mode labels are dropped to it with probability ``class_dropout_prob``. A model with
        ``num_classes=0`` is unconditional and takes no labels.
        """
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        self._check(x, t, class_labels)
        cfg, p = self.config, self.config.patch_size
        frames, height, width = x.shape[2:]
        h, w = height // p, width // p
        spatial_pos, temporal_pos = self._positions(frames, h, w, x)

        # 1. Patch tokens with spatial positions; one conditioning vector per sample.
        hidden = self.x_embedder(x) + spatial_pos  # (B, T, N, D)
        cond = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None and class_labels is not None:
            cond = cond + self.y_embedder(class_labels)

        # 2. Spatial block (attends over N, axis 2), then temporal block (over T, axis 1). Temporal
        #    positions are added once, before the first temporal block, as in the release.
        for i in range(0, cfg.depth, 2):
            hidden = run_block(self.blocks[i], cfg.gradient_checkpointing, hidden, cond, 2)
            if i == 0:
                hidden = hidden + temporal_pos[:, :, None]  # (1, T, 1, D)
            hidden = run_block(self.blocks[i + 1], cfg.gradient_checkpointing, hidden, cond, 1)

        # 3. Final adaLN + projection, then patches back to latents.
        out = self.final_layer(hidden, cond)  # (B, T, N, p*p*C_out)
        return unpatchify(out, h, w, p, cfg.out_channels)  # (B, C_out, T, H, W)


def _release(depth: int, hidden: int, heads: int, patch: int) -> LatteConfig:
    """A release model: 256x256 video (32x32 latents), 16 frames, ImageNet-sized label set."""
    return LatteConfig(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch)


LATTE_CONFIGS: dict[str, LatteConfig] = {
    **{f"latte-s/{p}": _release(12, 384, 6, p) for p in (2, 4, 8)},
    **{f"latte-b/{p}": _release(12, 768, 12, p) for p in (2, 4, 8)},
    **{f"latte-l/{p}": _release(24, 1024, 16, p) for p in (2, 4, 8)},
    **{f"latte-xl/{p}": _release(28, 1152, 16, p) for p in (2, 4, 8)},
    # For tests and CPU smoke runs: two spatial/temporal pairs on osp's causal-VAE latents
    # (17 frames -> 5 latent frames).
    "latte-tiny": LatteConfig(
        input_size=8, patch_size=2, hidden_size=64, depth=4, num_heads=4, num_frames=5, num_classes=10
    ),
}
