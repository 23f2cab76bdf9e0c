"""LatteT2V: the text-to-video Latte of Open-Sora-Plan v1.0 (diffusers' ``LatteTransformer3DModel``).

Separate spatial and temporal block lists, PixArt-style adaLN-single (one timestep MLP, a learned
per-block ``scale_shift_table``), caption projection and cross-attention in the spatial blocks.
Parameter names are diffusers', so a diffusers / Open-Sora-Plan state dict loads unchanged.

Hidden states travel as (B, T, N, D): batch, latent frames, tokens per frame, width. Spatial blocks
attend over N, temporal blocks over T, and timestep / caption conditioning broadcasts over the other
axis instead of being repeated per frame or per token.

Roadmap options, each a config flag: 2D RoPE with position interpolation in spatial attention,
PixArt-Sigma KV compression in spatial attention, dynamic masks (``latent_sizes``) for samples of
different size / duration in one padded batch, and gradient checkpointing.
Layout: attention -> feed-forward -> block -> model -> presets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from osp.config import Config
from osp.errors import ShapeError
from osp.io.convert import convert_latte_t2v
from osp.io.weights import Pretrained, read_config_json
from osp.layers.attention import attention
from osp.layers.dit_blocks import run_block
from osp.layers.embeddings import RoPE2D, TimestepEmbedding, sincos_1d, sincos_2d, unpatchify
from osp.layers.norm import modulated_norm


class LatteT2VConfig(Config):
    num_attention_heads: int = Field(16, gt=0)
    attention_head_dim: int = Field(72, gt=0)
    in_channels: int = Field(4, gt=0)
    out_channels: int | None = Field(8, gt=0, description="2 * in_channels = learned sigma")
    num_layers: int = Field(28, gt=0, description="spatial blocks (and as many temporal blocks)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    cross_attention_dim: int = Field(1152, gt=0)
    attention_bias: bool = True
    sample_size: int = Field(64, gt=0, description="latent height = width seen in training")
    patch_size: int = Field(2, gt=0)
    activation_fn: Literal["gelu-approximate", "geglu"] = "gelu-approximate"
    norm_elementwise_affine: bool = False
    norm_eps: float = Field(1e-6, gt=0)
    caption_channels: int = Field(4096, gt=0, description="text encoder width: 4096 T5-XXL, 384 MiniLM")
    video_length: int = Field(16, gt=0, description="latent frames seen in training")
    interpolation_scale: float | None = Field(None, gt=0, description="None: max(sample_size // 64, 1)")
    temporal_interpolation_scale: float = Field(
        1.0, gt=0, description="Open-Sora-Plan v1.0: video_length // 5"
    )
    rope: bool = False
    kv_compress: int = Field(1, ge=1, description="stride of spatial K/V token compression (PixArt-Sigma)")
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _cross_attention_reads_projected_captions(self) -> LatteT2VConfig:
        if self.cross_attention_dim != self.inner_dim:
            raise ValueError(
                f"cross_attention_dim ({self.cross_attention_dim}) must equal num_attention_heads * "
                f"attention_head_dim ({self.inner_dim}): captions are projected to the model width first"
            )
        return self

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def learned_sigma(self) -> bool:
        return (self.out_channels or self.in_channels) == 2 * self.in_channels


def _key_mask(valid: torch.Tensor) -> torch.Tensor:
    """(Q, L) key validity -> a mask where rows with no valid key attend to everything instead (their
    outputs are padding and get zeroed; all-masked rows would make softmax NaN)."""
    return valid | ~valid.any(dim=-1, keepdim=True)


class Attention(nn.Module):
    """Multi-head attention with diffusers' names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        bias: bool,
        context_dim: int | None = None,
        kv_compress: int = 1,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        self.kv_stride = kv_compress
        if kv_compress > 1:
            # PixArt-Sigma: a depthwise strided conv merges s x s neighbouring tokens into one K/V token.
            self.kv_compress = nn.Conv2d(dim, dim, kv_compress, stride=kv_compress, groups=dim)
            self.kv_norm = nn.LayerNorm(dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, L, H*d) -> (B, H, L, d)

    def compress(
        self, x: torch.Tensor, grid: tuple[int, int], valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, h*w, D) tokens -> (B, ceil(h/s)*ceil(w/s), D), with the key mask pooled alike."""
        s, (h, w) = self.kv_stride, grid
        pad_h, pad_w = -h % s, -w % s
        x = F.pad(x.transpose(1, 2).unflatten(2, (h, w)), (0, pad_w, 0, pad_h))  # (B, D, h', w')
        x = self.kv_norm(self.kv_compress(x).flatten(2).transpose(1, 2))
        if valid is None and (pad_h or pad_w):
            valid = torch.ones(x.shape[0], h * w, dtype=torch.bool, device=x.device)
        if valid is not None:
            grid_valid = F.pad(valid.unflatten(1, (h, w)).float(), (0, pad_w, 0, pad_h))
            valid = F.max_pool2d(grid_valid[:, None], s, stride=s).flatten(1) > 0
        return x, valid

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_valid: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """x (B, L, D); context (B, Lc, Dc) for cross-attention; key_valid (B, Lk) True = attend."""
        source = x if context is None else context
        if self.kv_stride > 1 and context is None and grid is not None:
            source, key_valid = self.compress(x, grid, key_valid)
        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(source)), self._heads(self.to_v(source))
        if rope is not None:
            q = RoPE2D.rotate(q, rope)
            if k.shape[2] == q.shape[2]:  # compressed keys have no per-token position
                k = RoPE2D.rotate(k, rope)
        mask = None if key_valid is None else _key_mask(key_valid)[:, None, None, :]
        out = attention(q, k, v, mask)  # (B, H, L, d)
        return self.to_out[1](self.to_out[0](out.transpose(1, 2).flatten(2)))


class Projection(nn.Module):
    """A holder whose only child is ``proj``: reproduces diffusers' ``ff.net.0.proj`` / ``pos_embed.proj``."""

    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.proj = proj


class FeedForward(nn.Module):
    """diffusers' ``ff.net.0.proj`` / ``ff.net.2`` with tanh-GELU or GEGLU."""

    def __init__(self, dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.gated = activation == "geglu"
        act = Projection(nn.Linear(dim, 4 * dim * (2 if self.gated else 1)))
        self.net = nn.ModuleList([act, nn.Dropout(dropout), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = cast(Projection, self.net[0]).proj(x)
        if self.gated:
            h, gate = h.chunk(2, dim=-1)
            h = h * F.gelu(gate)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.net[2](self.net[1](h))


class LatteBlock(nn.Module):
    """adaLN-single transformer block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, cfg: LatteT2VConfig, cross: bool, kv_compress: int = 1) -> None:
        super().__init__()
        d = cfg.inner_dim
        affine, eps = cfg.norm_elementwise_affine, cfg.norm_eps
        self.norm1 = nn.LayerNorm(d, eps=eps, elementwise_affine=affine)
        self.attn1 = Attention(
            d, cfg.num_attention_heads, cfg.attention_head_dim, cfg.attention_bias, None, kv_compress
        )
        self.attn2 = (
            Attention(
                d,
                cfg.num_attention_heads,
                cfg.attention_head_dim,
                cfg.attention_bias,
                cfg.cross_attention_dim,
            )
            if cross
            else None
        )
        self.norm2 = nn.LayerNorm(d, eps=eps, elementwise_affine=affine)
        self.ff = FeedForward(d, cfg.activation_fn, cfg.dropout)
        self.scale_shift_table = nn.Parameter(torch.randn(6, d) / d**0.5)

    def forward(
        self,
        x: torch.Tensor,
        t_mod: torch.Tensor,
        context: torch.Tensor | None,
        context_valid: torch.Tensor | None,
        key_valid: torch.Tensor | None,
        rope: torch.Tensor | None,
        grid: tuple[int, int] | None,
    ) -> torch.Tensor:
        """x (B, S, L, D): attention runs over L for each of the S rows; t_mod (B, 6, D); context
        (B, Lc, D) shared by all rows, or (B, S, Lc, D) one per row."""
        b, s, length, d = x.shape
        mod = (self.scale_shift_table[None] + t_mod)[:, :, None, None, :]  # (B, 6, 1, 1, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(1)
        h = modulated_norm(self.norm1, x, shift_msa, scale_msa)
        h = self.attn1(h.reshape(b * s, length, d), None, key_valid, rope, grid).reshape(b, s, length, d)
        x = x + gate_msa * h
        if self.attn2 is not None and context is not None and context.dim() == 3:
            # PixArt applies no norm before cross-attention. Every row of a sample attends to the same
            # caption, so all S*L queries of a sample share one K/V computation.
            h = self.attn2(x.reshape(b, s * length, d), context, context_valid)
            x = x + h.reshape(b, s, length, d)
        elif self.attn2 is not None and context is not None:
            # One caption per row (joint image-video training): context (B, S, Lc, D).
            valid = None if context_valid is None else context_valid.flatten(0, 1)
            h = self.attn2(x.reshape(b * s, length, d), context.flatten(0, 1), valid)
            x = x + h.reshape(b, s, length, d)
        h = modulated_norm(self.norm2, x, shift_mlp, scale_mlp)
        return x + gate_mlp * self.ff(h)


class AdaLayerNormSingle(nn.Module):
    """PixArt adaLN-single: one timestep embedding, projected once to the 6 modulation vectors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.emb = nn.ModuleDict({"timestep_embedder": TimestepEmbedding(dim)})  # diffusers' key path
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.emb["timestep_embedder"](t)  # (B, D)
        return self.linear(F.silu(embedded)).unflatten(1, (6, -1)), embedded  # (B, 6, D), (B, D)


class CaptionProjection(nn.Module):
    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(caption), approximate="tanh"))


class LatteT2V(Pretrained):
    config_class = LatteT2VConfig
    config: LatteT2VConfig

    def __init__(self, config: LatteT2VConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.inner_dim, config.patch_size
        self.pos_embed = Projection(
            nn.Conv2d(config.in_channels, d, p, stride=p)
        )  # diffusers' pos_embed.proj
        self.transformer_blocks = nn.ModuleList(
            LatteBlock(config, cross=True, kv_compress=config.kv_compress) for _ in range(config.num_layers)
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            LatteBlock(config, cross=False) for _ in range(config.num_layers)
        )
        self.out_channels = config.out_channels or config.in_channels
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.proj_out = nn.Linear(d, p * p * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(d)
        self.caption_projection = CaptionProjection(config.caption_channels, d)
        base = config.sample_size // p
        self.rope = RoPE2D(config.attention_head_dim, (base, base)) if config.rope else None

    # ---- positions ----
    def spatial_positions(self, h: int, w: int) -> torch.Tensor:
        """(h*w, D) sin-cos positions of an h x w token grid, PixArt-normalised to the training grid."""
        cfg = self.config
        scale = cfg.interpolation_scale or max(cfg.sample_size // 64, 1)
        return sincos_2d(
            cfg.inner_dim, h, w, base_size=cfg.sample_size // cfg.patch_size, interpolation_scale=scale
        )

    def temporal_positions(self, frames: int) -> torch.Tensor:
        positions = torch.arange(frames, dtype=torch.float64) / self.config.temporal_interpolation_scale
        return sincos_1d(self.config.inner_dim, positions).float()  # (T, D)

    def _embed(self, x: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        b, c, t, hh, ww = x.shape
        p = self.config.patch_size
        h, w = hh // p, ww // p
        tokens = self.pos_embed.proj(x.transpose(1, 2).reshape(b * t, c, hh, ww))  # (B*T, D, h, w)
        tokens = tokens.flatten(2).transpose(1, 2).reshape(b, t, h * w, -1)  # (B, T, N, D)
        if sizes is None:
            return tokens + self.spatial_positions(h, w).to(tokens)
        # Each sample's positions follow its own grid, so padding a sample does not move its tokens.
        pos = torch.zeros(b, 1, h, w, tokens.shape[-1], dtype=tokens.dtype, device=tokens.device)
        for i, (hi, wi) in enumerate((sizes[:, 1:] // p).tolist()):
            pos[i, 0, :hi, :wi] = self.spatial_positions(hi, wi).to(tokens).reshape(hi, wi, -1)
        return tokens + pos.flatten(2, 3)

    # ---- forward ----
    def _check(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None, num_images: int
    ) -> None:
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ShapeError(f"latents must be (B, {cfg.in_channels}, T, H, W), got shape {tuple(x.shape)}")
        if x.shape[3] % cfg.patch_size or x.shape[4] % cfg.patch_size:
            raise ShapeError(
                f"latent height and width must be multiples of patch_size={cfg.patch_size}, got {tuple(x.shape[3:])}"
            )
        if not 0 <= num_images < x.shape[2]:
            raise ShapeError(
                f"num_images must be in [0, {x.shape[2]}): the latents' {x.shape[2]} frames are video "
                f"frames followed by num_images images, and at least one must be video; got {num_images}"
            )
        b, c = x.shape[0], cfg.caption_channels
        want: tuple[int, ...] = (b, 1 + num_images) if num_images else (b,)
        n = len(want)
        if context.dim() != n + 2 or tuple(context.shape[:n]) != want or context.shape[-1] != c:
            # The message is built only here: formatting a traced batch size would pin it.
            shape = f"(B={b}, 1+num_images={1 + num_images}, L, {c})" if num_images else f"(B={b}, L, {c})"
            raise ShapeError(f"encoder_hidden_states must be {shape}, got {tuple(context.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(context.shape[:-1]):
            raise ShapeError(
                f"encoder_attention_mask must be {tuple(context.shape[:-1])} (encoder_hidden_states without "
                f"its width), got {tuple(mask.shape)}"
            )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        latent_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        num_images: int = 0,
    ) -> torch.Tensor:
        """Predict noise (and variance) for latents x (B, C, T, H, W) at timesteps t (B,).

        ``encoder_hidden_states`` (B, L, caption_channels) with ``encoder_attention_mask`` (B, L), True
        or 1 = real token. ``latent_sizes`` (B, 3) gives each sample's (t, h, w) in latents when the batch
        is padded to a common size: padding never changes the outputs at real positions, and the
        outputs at padded positions are zero.

        Joint image-video training (Open-Sora-Plan v1.0's ``use_image_num``): the last ``num_images`` of
        the T latent frames are still images, each encoded on its own. Captions are then (B, 1 +
        num_images, L, caption_channels) with a (B, 1 + num_images, L) mask: the video's caption, then
        one per image. Spatial blocks see every frame, each with its own caption; temporal blocks and
        temporal positions see only the video frames, so images and video never mix. ``latent_sizes``
        then gives the video's (t, h, w); images share its (h, w).
        """
        self._check(x, encoder_hidden_states, encoder_attention_mask, num_images)
        cfg, p = self.config, self.config.patch_size
        b, _, total, hh, ww = x.shape
        frames = total - num_images  # video latent frames; images follow them along T
        h, w = hh // p, ww // p
        sizes = None if latent_sizes is None else torch.as_tensor(latent_sizes, device=x.device).long()

        if sizes is not None:
            limit = torch.tensor([frames, hh, ww], device=x.device)
            if (
                sizes.shape != (b, 3)
                or (sizes < 1).any()
                or (sizes > limit).any()
                or (sizes[:, 1:] % p).any()
            ):
                raise ShapeError(
                    f"latent_sizes must be one (t, h, w) per sample, within {tuple(limit.tolist())} and h, w "
                    f"multiples of patch_size={p}; got {sizes.tolist()}"
                )

        # 1. Tokens, conditioning and masks.
        hidden = self._embed(x, sizes)  # (B, T, N, D)
        t_mod, t_emb = self.adaln_single(t.to(x.device))
        context = self.caption_projection(encoder_hidden_states)  # (B, [1+n,] L, D)
        context_valid = None if encoder_attention_mask is None else encoder_attention_mask.bool()
        if num_images:
            # Per-frame captions: the video's for its frames, each image's own for the images.
            rows = torch.cat([torch.zeros(frames, dtype=torch.long), torch.arange(1, 1 + num_images)])
            context = context[:, rows.to(x.device)]  # (B, T, L, D)
            if context_valid is not None:
                context_valid = context_valid[:, rows.to(x.device)]  # (B, T, L)
        token_valid = spatial_valid = temporal_valid = None
        if sizes is not None:
            frame_ok = torch.arange(frames, device=x.device)[None] < sizes[:, :1]  # (B, T_video)
            frame_ok = F.pad(frame_ok, (0, num_images), value=True)  # (B, T): images are always real
            row_ok = torch.arange(h, device=x.device)[None] < sizes[:, 1:2] // p  # (B, h)
            col_ok = torch.arange(w, device=x.device)[None] < sizes[:, 2:3] // p  # (B, w)
            grid_ok = (row_ok[:, :, None] & col_ok[:, None, :]).flatten(1)  # (B, N)
            token_valid = (frame_ok[:, :, None] & grid_ok[:, None, :])[..., None].to(
                hidden.dtype
            )  # (B, T, N, 1)
            spatial_valid = grid_ok[:, None].expand(b, total, -1).reshape(b * total, -1)
            temporal_valid = frame_ok[:, None, :frames].expand(b, h * w, -1).reshape(b * h * w, -1)
            hidden = hidden * token_valid
        rope = None if self.rope is None else self.rope.angles(h, w, x.device)
        temporal_pos = self.temporal_positions(frames).to(hidden)[:, None]  # (T_video, 1, D)

        # 2. Spatial block (over N) then temporal block (over T), num_layers times.
        for i, (spatial, temporal) in enumerate(
            zip(self.transformer_blocks, self.temporal_transformer_blocks, strict=True)
        ):
            hidden = run_block(
                spatial,
                cfg.gradient_checkpointing,
                hidden,
                t_mod,
                context,
                context_valid,
                spatial_valid,
                rope,
                (h, w),
            )
            hidden = hidden.transpose(1, 2)  # (B, N, T, D)
            video, images = hidden[:, :, :frames], hidden[:, :, frames:]
            if i == 0 and frames > 1:
                video = video + temporal_pos.transpose(0, 1)
            video = run_block(
                temporal, cfg.gradient_checkpointing, video, t_mod, None, None, temporal_valid, None, None
            )
            hidden = torch.cat([video, images], dim=2) if num_images else video
            hidden = hidden.transpose(1, 2)  # (B, T, N, D)
            if token_valid is not None:
                hidden = hidden * token_valid  # padding stays exactly zero (and finite)

        # 3. Final adaLN modulation, projection, unpatchify.
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).unbind(1)  # (B, D) each
        hidden = modulated_norm(self.norm_out, hidden, shift[:, None, None], scale[:, None, None])
        out = self.proj_out(hidden)  # (B, T, N, p*p*C)
        if token_valid is not None:
            out = out * token_valid
        out = unpatchify(out.reshape(b * total, h * w, -1), h, w, p, self.out_channels)  # (B*T, C, H, W)
        return out.reshape(b, total, self.out_channels, hh, ww).transpose(1, 2)  # (B, C, T, H, W)


def load_latte_t2v(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> LatteT2V:
    """A LatteT2V from an osp weights folder, or a diffusers / Open-Sora-Plan v1.0 transformer folder."""
    path = Path(path)
    if path.is_dir() and read_config_json(path).get("_class_name") == LatteT2V.__name__:
        return LatteT2V.from_pretrained(path, dtype=dtype, device=device)
    fields, state = convert_latte_t2v(path)
    config = LatteT2VConfig.from_dict(fields, source=str(path))
    return LatteT2V.from_state_dict(config, state, source=str(path), dtype=dtype, device=device)


LATTE_T2V_CONFIGS: dict[str, LatteT2VConfig] = {
    # Open-Sora-Plan v1.0 65x512x512 (T5-XXL captions, 17x64x64 latents) / Latte-1 (diffusers) layout.
    "latte-t2v-xl/2": LatteT2VConfig(video_length=17, temporal_interpolation_scale=3.0),
    "latte-t2v-xl/2-latte1": LatteT2VConfig(),
    # A small model for CPU training and the bundled MiniLM text encoder (384-d captions).
    "latte-t2v-small": LatteT2VConfig(
        num_attention_heads=6,
        attention_head_dim=64,
        num_layers=6,
        cross_attention_dim=384,
        sample_size=8,
        caption_channels=384,
        video_length=5,
    ),
    # The bundled demo model (configs/demo/dit.yaml): 4.6M parameters on 5x8x8 latents of 17x64x64
    # clips, flow matching (no learned sigma), MiniLM captions; trainable on two CPU cores.
    "latte-t2v-demo": LatteT2VConfig(
        num_attention_heads=3,
        attention_head_dim=64,
        out_channels=4,
        num_layers=4,
        cross_attention_dim=192,
        sample_size=8,
        caption_channels=384,
        video_length=5,
    ),
    # For tests: every code path in a few hundred thousand parameters.
    "latte-t2v-tiny": LatteT2VConfig(
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        cross_attention_dim=32,
        sample_size=8,
        caption_channels=24,
        video_length=3,
    ),
}
