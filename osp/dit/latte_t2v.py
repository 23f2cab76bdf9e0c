"""LatteT2V: the text-to-video Latte of Open-Sora-Plan v1.0 (diffusers' ``LatteTransformer3DModel``).

Separate spatial and temporal block lists, PixArt-style adaLN-single (one timestep MLP, a learned
per-block ``scale_shift_table``), caption projection and cross-attention in the spatial blocks.
Parameter names are diffusers', so a diffusers / Open-Sora-Plan state dict loads unchanged.

Hidden states are one contiguous (B, T, N, D) tensor: batch, latent frames, tokens per frame, width.
Spatial blocks attend over N, temporal blocks over T of the same tensor (the frames of each token are
folded into the heads as a view, :func:`osp.layers.dit_blocks.heads_view`), so nothing is transposed
or copied between blocks (diffusers reshapes to (B*N, T, D) and back around every temporal block), and
timestep / caption conditioning broadcasts over the other axis instead of being repeated per frame or
per token.

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
from osp.layers.dit_blocks import attention_heads_last, heads_view, run_block, static_heads
from osp.layers.embeddings import RoPE2D, TimestepEmbedding, patch_embed, sincos_2d, sincos_frames, unpatchify
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
        axis: int = -2,
    ) -> torch.Tensor:
        """Attention over ``x.shape[axis]`` of a contiguous x (B, ..., D); context (B, Lc, Dc) for
        cross-attention (x then (B, L, D)); key_valid (B', Lk) True = attend, B' the batch axes folded."""
        axis %= x.dim()
        if static_heads(x, axis):  # the tokens after L join the batch: their key masks repeat
            n = x.shape[axis + 1 : -1].numel()
            valid = None if key_valid is None else key_valid[:, None].expand(-1, n, -1).flatten(0, 1)
            return self(x.transpose(axis, -2), context, valid, rope, grid).transpose(axis, -2)
        source, source_axis = x, axis
        if context is not None:
            source, source_axis = context, 1
        elif self.kv_stride > 1 and grid is not None:
            source, key_valid = self.compress(x.reshape(-1, *x.shape[axis:]), grid, key_valid)
            source_axis = 1
        rows, sources = x.reshape(-1, x.shape[-1]), source.reshape(-1, source.shape[-1])
        fold, source_fold = (
            heads_view(x.shape, axis, self.head_dim),
            heads_view(source.shape, source_axis, self.head_dim),
        )
        q = self.to_q(rows).view(fold).transpose(1, 2)  # (B', H', L, d)
        k = self.to_k(sources).view(source_fold).transpose(1, 2)
        v = self.to_v(sources).view(source_fold).transpose(1, 2)
        if rope is not None:
            q = RoPE2D.rotate(q, rope)
            if k.shape[2] == q.shape[2]:  # compressed keys have no per-token position
                k = RoPE2D.rotate(k, rope)
        mask = None if key_valid is None else _key_mask(key_valid)[:, None, None, :]
        out = attention_heads_last(q, k, v, mask)  # (B', L, H', d)
        out = self.to_out[1](self.to_out[0](out.reshape(rows.shape[0], -1)))
        return out.view(*x.shape[:-1], -1)


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
        h = cast(Projection, self.net[0]).proj(x.reshape(-1, x.shape[-1]))  # rows: fewer views
        if self.gated:
            h, gate = h.chunk(2, dim=-1)
            h = h * F.gelu(gate)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.net[2](self.net[1](h)).view(x.shape)


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
        axis: int = -2,
    ) -> torch.Tensor:
        """x (B, T, N, D) contiguous; self-attention over ``axis`` (2: spatial, 1: temporal); t_mod
        (B, 6, D); context (B, Lc, D) shared by all frames, or (B, T, Lc, D) one per frame."""
        mod = (self.scale_shift_table[None] + t_mod)[:, :, None, None, :]  # (B, 6, 1, 1, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(1)
        h = modulated_norm(self.norm1, x, shift_msa, scale_msa)
        x = torch.addcmul(x, gate_msa, self.attn1(h, None, key_valid, rope, grid, axis))
        if self.attn2 is not None and context is not None and context.dim() == 3:
            # PixArt applies no norm before cross-attention. Every frame of a sample attends to the
            # same caption, so all T*N queries of a sample share one K/V computation.
            x = x + self.attn2(x.flatten(1, 2), context, context_valid).reshape(x.shape)
        elif self.attn2 is not None and context is not None:
            # One caption per frame (joint image-video training): context (B, T, Lc, D).
            valid = None if context_valid is None else context_valid.flatten(0, 1)
            x = x + self.attn2(x.flatten(0, 1), context.flatten(0, 1), valid).reshape(x.shape)
        h = modulated_norm(self.norm2, x, shift_mlp, scale_mlp)
        return torch.addcmul(x, gate_mlp, self.ff(h))


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
    def spatial_positions(self, h: int, w: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """(h*w, D) sin-cos positions of an h x w token grid, PixArt-normalised to the training grid;
        float32 on the CPU, or on ``like``'s device in its dtype."""
        cfg = self.config
        scale = cfg.interpolation_scale or max(cfg.sample_size // 64, 1)
        base = cfg.sample_size // cfg.patch_size
        return sincos_2d(cfg.inner_dim, h, w, base_size=base, interpolation_scale=scale, like=like)

    def temporal_positions(self, frames: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """(T, D) sin-cos positions of the frames, placed as :meth:`spatial_positions`."""
        return sincos_frames(
            self.config.inner_dim, frames, self.config.temporal_interpolation_scale, like=like
        )

    def _embed(self, x: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        b, _, _, hh, ww = x.shape
        p = self.config.patch_size
        h, w = hh // p, ww // p
        tokens = patch_embed(cast(nn.Conv2d, self.pos_embed.proj), x)  # (B, T, N, D)
        if sizes is None:
            return tokens + self.spatial_positions(h, w, tokens)
        # Each sample's positions follow its own grid, so padding a sample does not move its tokens.
        pos = torch.zeros(b, 1, h, w, tokens.shape[-1], dtype=tokens.dtype, device=tokens.device)
        for i, (hi, wi) in enumerate((sizes[:, 1:] // p).tolist()):
            pos[i, 0, :hi, :wi] = self.spatial_positions(hi, wi, tokens).reshape(hi, wi, -1)
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
            # Per-frame captions: the video's (row 0) for its frames, each image's own (1..n) for the images.
            rows = (torch.arange(total, device=x.device) - (frames - 1)).clamp(min=0)
            context = context[:, rows]  # (B, T, L, D)
            if context_valid is not None:
                context_valid = context_valid[:, rows]  # (B, T, L)
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
            spatial_valid = grid_ok[:, None].expand(b, total, -1).reshape(b * total, -1)  # (B*T, N)
            temporal_valid = frame_ok[:, :frames]  # (B, T_video): the keys of every token's frames
            hidden = hidden * token_valid
        rope = None if self.rope is None else self.rope.angles(h, w, x.device)
        temporal_pos = self.temporal_positions(frames, hidden)[:, None]  # (T_video, 1, D)

        # 2. Spatial block (over N, axis 2) then temporal block (over T, axis 1), num_layers times.
        ckpt = cfg.gradient_checkpointing
        for i, (spatial, temporal) in enumerate(
            zip(self.transformer_blocks, self.temporal_transformer_blocks, strict=True)
        ):
            hidden = run_block(
                spatial, ckpt, hidden, t_mod, context, context_valid, spatial_valid, rope, (h, w), 2
            )
            video = hidden[:, :frames] if num_images else hidden  # images never attend over time
            if i == 0 and frames > 1:
                video = video + temporal_pos
            video = run_block(temporal, ckpt, video, t_mod, None, None, temporal_valid, None, None, 1)
            hidden = torch.cat([video, hidden[:, frames:]], dim=1) if num_images else video
            if token_valid is not None:
                hidden = hidden * token_valid  # padding stays exactly zero (and finite)

        # 3. Final adaLN modulation, projection, unpatchify.
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).unbind(1)  # (B, D) each
        hidden = modulated_norm(self.norm_out, hidden, shift[:, None, None], scale[:, None, None])
        out = self.proj_out(hidden)  # (B, T, N, p*p*C)
        if token_valid is not None:
            out = out * token_valid
        return unpatchify(out, h, w, p, self.out_channels)  # (B, C, T, H, W)


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
