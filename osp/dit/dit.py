"""DiT and SiT: class-conditional image diffusion transformers (Peebles & Xie 2023; Ma et al. 2024).

The facebookresearch/DiT ``models.py`` network and parameter names, built from the same blocks as
Latte. SiT is this network trained with the flow / velocity objective; its release keeps the 2C-channel
"learned sigma" head and drops the second half of the output, which ``return_sigma=False`` reproduces
so that released SiT checkpoints load as they are.

Inputs are images (B, C, H, W) or one-frame videos (B, C, 1, H, W); the output has the input's layout.
``dit_from_diffusers`` converts a diffusers ``DiTTransformer2DModel`` state dict to this layout.

Layout: config -> model -> diffusers conversion -> presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from osp.config import Config
from osp.errors import ConfigError, ShapeError, WeightsError
from osp.io.weights import Pretrained
from osp.layers.dit_blocks import (
    FinalLayer,
    TransformerBlock,
    check_width,
    initialize_adaln_transformer,
    run_block,
)
from osp.layers.embeddings import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_2d, unpatchify


class DiTConfig(Config):
    input_size: int = Field(32, gt=0, description="latent height = width (32 for 256px images)")
    patch_size: int = Field(2, gt=0)
    in_channels: int = Field(4, gt=0)
    hidden_size: int = Field(1152, gt=0)
    depth: int = Field(28, gt=0)
    num_heads: int = Field(16, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    class_dropout_prob: float = Field(0.1, ge=0.0, le=1.0, description="label dropout for CFG")
    num_classes: int = Field(1000, gt=0)
    learn_sigma: bool = Field(True, description="the head predicts 2 * in_channels values per pixel")
    return_sigma: bool = Field(True, description="False: drop the sigma half of the output (SiT release)")
    # Two details in which diffusers' DiTTransformer2DModel differs from the DiT release; the defaults
    # are the release's, dit_config_from_diffusers sets diffusers' values.
    timestep_freq_shift: int = Field(0, ge=0, le=1, description="1 = diffusers' downscale_freq_shift")
    mlp_norm_eps: float = Field(
        1e-6, gt=0, description="eps of each block's pre-MLP norm; diffusers: norm_eps"
    )
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> DiTConfig:
        if self.input_size % self.patch_size:
            raise ValueError(
                f"input_size ({self.input_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        check_width(self.hidden_size, self.num_heads)
        return self

    @property
    def head_channels(self) -> int:
        """Channels the final layer predicts."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def out_channels(self) -> int:
        """Channels forward returns."""
        return self.head_channels if self.return_sigma else self.in_channels


class DiT(Pretrained):
    """DiT / SiT; ``forward(x, t, class_labels)`` is osp's ``denoiser(x_t, t, cond)``."""

    config_class = DiTConfig
    config: DiTConfig

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        d, grid = config.hidden_size, config.input_size // config.patch_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, freq_shift=config.timestep_freq_shift)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        # Fixed sin-cos positions, a frozen parameter because the release's state dict has it.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, d), requires_grad=False)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.num_heads, config.mlp_ratio, config.mlp_norm_eps)
            for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.head_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (adaLN-Zero: every block starts as the identity, the output as 0; see
        :func:`initialize_adaln_transformer`) plus the sin-cos positions."""
        initialize_adaln_transformer(
            self.x_embedder, self.t_embedder, self.y_embedder, self.blocks, self.final_layer
        )
        grid = self.config.input_size // self.config.patch_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.config.hidden_size, grid, grid)[None])

    def _check(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() == 5 and x.shape[2] != 1:
            raise ShapeError(
                f"DiT takes one-frame videos only: frames (dim 2) must be 1, got shape {tuple(x.shape)}"
            )
        if x.dim() not in (4, 5):
            raise ShapeError(f"DiT takes (B, C, H, W) or (B, C, 1, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != cfg.in_channels:
            raise ShapeError(f"channels (dim 1) must be {cfg.in_channels}, got shape {tuple(x.shape)}")
        if x.shape[-2] % cfg.patch_size or x.shape[-1] % cfg.patch_size:
            raise ShapeError(
                f"height and width must be multiples of patch_size={cfg.patch_size}, got {tuple(x.shape[-2:])}"
            )
        if t.shape != (x.shape[0],):
            raise ShapeError(f"timesteps must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        if class_labels.shape != (x.shape[0],):
            raise ShapeError(
                f"class_labels must have shape (B,) = ({x.shape[0]},), got {tuple(class_labels.shape)}"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) or (B, C, 1, H, W), t (B,), labels (B,) -> same layout with out_channels.

        ``class_labels == num_classes`` is the unconditional label for classifier-free guidance.
        """
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        self._check(x, t, class_labels)
        video = x.dim() == 5
        image = x[:, :, 0] if video else x  # (B, C, H, W)
        cfg, p = self.config, self.config.patch_size
        h, w = image.shape[-2] // p, image.shape[-1] // p
        grid = cfg.input_size // p
        # Other sizes than the training size get positions for their own grid (extrapolated).
        pos = self.pos_embed if (h, w) == (grid, grid) else sincos_2d(cfg.hidden_size, h, w, like=image)[None]

        hidden = self.x_embedder(image) + pos.to(image)  # (B, N, D)
        cond = self.t_embedder(t) + self.y_embedder(class_labels)  # (B, D)
        for block in self.blocks:
            hidden = run_block(block, cfg.gradient_checkpointing, hidden, cond)  # (B, N, D)
        out = self.final_layer(hidden, cond)  # (B, N, p*p*C_head)
        out = unpatchify(out, h, w, p, cfg.out_channels)  # (B, C_out, H, W); SiT drops the sigma half
        return out[:, :, None] if video else out


# ---- diffusers DiTTransformer2DModel -> DiT --------------------------------------------------------

_DIFFUSERS_BLOCK_RENAMES = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
_DIFFUSERS_TOP_RENAMES = {
    "pos_embed.proj": "x_embedder.proj",
    # diffusers splits proj_out_1's output as (shift, scale), the order DiT's final layer uses.
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
}
_DIFFUSERS_EMBEDDER_RENAMES = {
    "timestep_embedder.linear_1": "t_embedder.mlp.0",
    "timestep_embedder.linear_2": "t_embedder.mlp.2",
    "class_embedder.embedding_table": "y_embedder.embedding_table",
}


def dit_config_from_diffusers(config: Mapping[str, Any], *, source: str = "diffusers config") -> DiTConfig:
    """The :class:`DiTConfig` of a diffusers ``DiTTransformer2DModel`` config (its ``config.json``)."""
    fixed = {
        "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "norm_elementwise_affine": False,
    }
    for key, value in fixed.items():
        if config.get(key, value) != value:
            raise ConfigError(f"{source}: {key}: only {value!r} has a DiT equivalent, got {config[key]!r}")
    heads, head_dim = config.get("num_attention_heads", 16), config.get("attention_head_dim", 72)
    in_channels = config.get("in_channels", 4)
    out_channels = config.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ConfigError(
            f"{source}: out_channels: must be in_channels or 2 * in_channels, got {out_channels}"
        )
    fields = {
        "input_size": config.get("sample_size", 32),
        "patch_size": config.get("patch_size", 2),
        "in_channels": in_channels,
        "hidden_size": heads * head_dim,
        "depth": config.get("num_layers", 28),
        "num_heads": heads,
        "num_classes": config.get("num_embeds_ada_norm", 1000),
        "class_dropout_prob": 0.1,  # diffusers' CombinedTimestepLabelEmbeddings always has the null row
        "learn_sigma": out_channels == 2 * in_channels,
        "timestep_freq_shift": 1,
        "mlp_norm_eps": config.get("norm_eps", 1e-5),
    }
    return DiTConfig.from_dict(fields, source=source)


def dit_from_diffusers(state_dict: Mapping[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """A diffusers ``DiTTransformer2DModel`` state dict in DiT names, for a ``DiT(config)``.

    diffusers gives every block its own timestep + label embedder (inside ``norm1.emb``) and feeds
    block 0's to the final layer; DiT has one shared embedder. Checkpoints converted from DiT hold the
    same embedder in every block, and only those can be represented: differing embedders raise
    :class:`WeightsError`. q/k/v are fused into ``attn.qkv``; the sin-cos ``pos_embed``, which diffusers
    does not store, is computed for ``config``.
    """
    out: dict[str, torch.Tensor] = {}
    block_embedders: dict[str, dict[int, torch.Tensor]] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if key.startswith("transformer_blocks."):
            _, index_text, rest = key.split(".", 2)
            i = int(index_text)
            if rest.startswith("norm1.emb."):
                block_embedders.setdefault(rest.removeprefix("norm1.emb."), {})[i] = tensor
            elif rest.startswith(("attn1.to_q.", "attn1.to_k.", "attn1.to_v.")):
                qkv.setdefault(i, {})[rest.removeprefix("attn1.to_")] = tensor
            elif (name := rest.rsplit(".", 1)[0]) in _DIFFUSERS_BLOCK_RENAMES:
                out[f"blocks.{i}.{_DIFFUSERS_BLOCK_RENAMES[name]}.{rest.rsplit('.', 1)[1]}"] = tensor
            else:
                unknown.append(key)
        elif (name := key.rsplit(".", 1)[0]) in _DIFFUSERS_TOP_RENAMES:
            out[f"{_DIFFUSERS_TOP_RENAMES[name]}.{key.rsplit('.', 1)[1]}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"not a diffusers DiTTransformer2DModel state dict: unknown keys {unknown[:5]}")

    for i, parts in sorted(qkv.items()):
        for kind in ("weight", "bias"):
            names = [f"{c}.{kind}" for c in "qkv"]
            if missing := [n for n in names if n not in parts]:
                raise WeightsError(
                    f"diffusers DiT state dict lacks transformer_blocks.{i}.attn1.to_{missing[0]}"
                )
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in names], dim=0)

    for name, per_block in block_embedders.items():
        if sorted(per_block) != list(range(config.depth)):
            raise WeightsError(f"diffusers DiT state dict lacks some transformer_blocks.*.norm1.emb.{name}")
        for i, tensor in sorted(per_block.items()):
            if not torch.equal(tensor, per_block[0]):
                raise WeightsError(
                    f"transformer_blocks.{i}.norm1.emb.{name} differs from block 0's: this diffusers DiT has "
                    "a separate timestep/label embedder per block, which the DiT layout (one shared "
                    "embedder) cannot represent"
                )
        module, kind = name.rsplit(".", 1)
        if module not in _DIFFUSERS_EMBEDDER_RENAMES:
            raise WeightsError(f"not a diffusers DiT state dict: unknown key norm1.emb.{name}")
        out[f"{_DIFFUSERS_EMBEDDER_RENAMES[module]}.{kind}"] = per_block[0]

    grid = config.input_size // config.patch_size
    out["pos_embed"] = sincos_2d(config.hidden_size, grid, grid)[None].clone()  # the table is shared
    return out


def _release(depth: int, hidden: int, heads: int, patch: int, **changes: Any) -> DiTConfig:
    return DiTConfig(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, **changes)


_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}

DIT_CONFIGS: dict[str, DiTConfig] = {
    **{f"dit-{size}/{p}": _release(*dims, p) for size, dims in _SIZES.items() for p in (2, 4, 8)},
    "dit-xl/2-512": _release(28, 1152, 16, 2, input_size=64),  # the 512x512 release
    "dit-tiny": DiTConfig(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10),
}

# SiT: same network; the release's head keeps the sigma channels but forward returns the first C.
SIT_CONFIGS: dict[str, DiTConfig] = {
    name.replace("dit-", "sit-", 1): config.replace(return_sigma=False)
    for name, config in DIT_CONFIGS.items()
    if name != "dit-xl/2-512"  # SiT was released at 256x256 only
}
