"""VideoGPT's VQ-VAE (Yan et al. 2021, "VideoGPT: Video Generation using VQ-VAE and Transformers").

The architecture, module names and parameter names are those of wilson1yan/VideoGPT as shipped in
Open-Sora-Plan v1.0 (``opensora/models/ae/videobase/vqvae``), so their state dicts load with
``VQVAE.from_state_dict(config, state)`` and no key map.

Data flow: video -> Encoder (strided 3D convs, residual blocks with axial attention) -> pre_vq_conv ->
Codebook (nearest code, EMA-updated, straight-through gradient) -> post_vq_conv -> Decoder (residual
blocks, strided transposed 3D convs) -> video.

osp passes video in [-1, 1]; VideoGPT trained on [-0.5, 0.5] and its reconstruction loss divides by
that range's data variance (0.06). The model halves its input and doubles its output, exactly as
Open-Sora-Plan's VQVAETrainer (``x / 2``) and data transform (``x - 0.5`` on [0, 1]) do, so released
weights and the 0.06 constant apply unchanged.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from osp.config import Config
from osp.errors import ShapeError
from osp.io.weights import Pretrained
from osp.layers.attention import attention

Triple = tuple[int, int, int]

INPUT_SCALE = 0.5  # osp's [-1, 1] video -> VideoGPT's [-0.5, 0.5]
DATA_VARIANCE = 0.06  # VideoGPT divides the reconstruction MSE by the variance of its training data
LAPLACE_EPS = 1e-7  # keeps the EMA cluster sizes of unused codes away from zero before normalising


class VQVAEConfig(Config):
    """Hyper-parameters of a VideoGPT VQ-VAE; the names are the release's where it has them."""

    embedding_dim: int = Field(256, gt=0, description="width of each codebook vector")
    n_codes: int = Field(2048, gt=0, description="codebook size")
    n_hiddens: int = Field(240, gt=0, description="channels of the encoder/decoder trunk")
    n_res_layers: int = Field(4, ge=0, description="attention residual blocks in encoder and decoder each")
    downsample: Triple = Field((4, 4, 4), description="compression factor of (T, H, W), each a power of two")
    n_head: int = Field(2, gt=0, description="heads of the axial attention (VideoGPT hard-codes 2)")
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0, description="decay of the codebook's EMA statistics")
    commitment_cost: float = Field(0.25, ge=0.0, description="weight of ||z - sg(e)||² in the loss")

    @field_validator("downsample")
    @classmethod
    def _powers_of_two(cls, value: Triple) -> Triple:
        for axis, factor in zip("THW", value, strict=True):
            if factor < 1 or factor & (factor - 1):
                raise ValueError(f"the {axis} factor must be a power of two (1, 2, 4, ...), got {factor}")
        if max(value) < 2:
            raise ValueError("at least one factor must be 2 or more: the encoder needs a strided conv")
        return value

    @model_validator(mode="after")
    def _divisible_widths(self) -> VQVAEConfig:
        if self.n_hiddens % 2:
            raise ValueError(f"n_hiddens must be even (residual blocks halve it), got {self.n_hiddens}")
        if self.n_hiddens % self.n_head:
            raise ValueError(f"n_hiddens ({self.n_hiddens}) must be divisible by n_head ({self.n_head})")
        return self


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


# ----------------------------------------------------------------------------------------------------
# Convolutions with VideoGPT's "same" padding
# ----------------------------------------------------------------------------------------------------


def _same_padding(kernel: Triple, stride: Triple) -> tuple[int, ...]:
    """F.pad amounts that make a conv map L to L / stride: k - s in total per axis, odd extra in front."""
    pads: list[int] = []
    for k, s in zip(reversed(kernel), reversed(stride), strict=True):  # F.pad lists the last axis first
        total = k - s
        pads += [total - total // 2, total // 2]
    return tuple(pads)


def _triple(value: int | Triple) -> Triple:
    return (value, value, value) if isinstance(value, int) else value


class SamePadConv3d(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Triple,
        stride: int | Triple = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kernel, strides = _triple(kernel_size), _triple(stride)
        self.pad = _same_padding(kernel, strides)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=strides, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class SamePadConvTranspose3d(nn.Module):
    """Multiplies each axis by its stride: pad k - s, then a transposed conv that crops k - 1 each side."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Triple,
        stride: int | Triple = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kernel, strides = _triple(kernel_size), _triple(stride)
        self.pad = _same_padding(kernel, strides)
        crop = (kernel[0] - 1, kernel[1] - 1, kernel[2] - 1)
        self.convt = nn.ConvTranspose3d(
            in_channels, out_channels, kernel, stride=strides, bias=bias, padding=crop
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convt(F.pad(x, self.pad))


# ----------------------------------------------------------------------------------------------------
# Axial attention and the residual trunk
# ----------------------------------------------------------------------------------------------------


class AxialAttention(nn.Module):
    """Multi-head self-attention along one axis of a (B, T, H, W, C) tensor; the others act as batch.

    Named like VideoGPT's MultiHeadAttention (w_qs, w_ks, w_vs, fc) so its weights load.
    """

    def __init__(self, dim: int, n_head: int, axis: int) -> None:
        super().__init__()
        if axis not in (1, 2, 3):
            raise ValueError(f"axis must be 1 (T), 2 (H) or 3 (W), got {axis}")
        self.n_head, self.head_dim, self.axis = n_head, dim // n_head, axis
        self.w_qs = nn.Linear(dim, dim, bias=False)
        self.w_ks = nn.Linear(dim, dim, bias=False)
        self.w_vs = nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, dim, bias=True)
        # (B, T, H, W, heads, d) -> (others..., heads, axis, d): the attended axis becomes the sequence.
        others = [i for i in (0, 1, 2, 3) if i != axis]
        self.perm = (*others, 4, axis, 5)
        self.inverse = tuple(self.perm.index(i) for i in range(6))

    def _sequences(self, t: torch.Tensor) -> torch.Tensor:
        t = t.unflatten(-1, (self.n_head, self.head_dim))  # (B, T, H, W, heads, d)
        t = t.permute(self.perm)  # (B, X, Y, heads, L, d)
        return t.reshape(-1, *t.shape[-3:])  # (B * X * Y, heads, L, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._sequences(self.w_qs(x)), self._sequences(self.w_ks(x)), self._sequences(self.w_vs(x))
        out = attention(q, k, v, scale=self.head_dim**-0.5)  # (B * X * Y, heads, L, d)
        grouped = [x.shape[i] for i in self.perm[:3]]
        out = out.reshape(*grouped, *out.shape[1:])  # (B, X, Y, heads, L, d)
        out = out.permute(self.inverse).flatten(-2)  # (B, T, H, W, heads * d)
        return self.fc(out)


class AxialBlock(nn.Module):
    """Attention along W, H and T separately, summed (VideoGPT's factorised 3D attention)."""

    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.attn_w = AxialAttention(dim, n_head, axis=3)
        self.attn_h = AxialAttention(dim, n_head, axis=2)
        self.attn_t = AxialAttention(dim, n_head, axis=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)  # (B, C, T, H, W) -> (B, T, H, W, C)
        x = self.attn_w(x) + self.attn_h(x) + self.attn_t(x)
        return x.movedim(-1, 1)  # (B, C, T, H, W)


class AttentionResidualBlock(nn.Module):
    def __init__(self, n_hiddens: int, n_head: int) -> None:
        super().__init__()
        # Sequential indices are part of the release's parameter names (block.2.conv, block.8.attn_w, ...).
        self.block = nn.Sequential(
            nn.BatchNorm3d(n_hiddens),
            nn.ReLU(),
            SamePadConv3d(n_hiddens, n_hiddens // 2, 3, bias=False),
            nn.BatchNorm3d(n_hiddens // 2),
            nn.ReLU(),
            SamePadConv3d(n_hiddens // 2, n_hiddens, 1, bias=False),
            nn.BatchNorm3d(n_hiddens),
            nn.ReLU(),
            AxialBlock(n_hiddens, n_head),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _res_stack(n_hiddens: int, n_res_layers: int, n_head: int) -> nn.Sequential:
    return nn.Sequential(
        *[AttentionResidualBlock(n_hiddens, n_head) for _ in range(n_res_layers)],
        nn.BatchNorm3d(n_hiddens),
        nn.ReLU(),
    )


def _halvings(factors: Triple) -> list[int]:
    return [int(math.log2(f)) for f in factors]


class Encoder(nn.Module):
    def __init__(self, n_hiddens: int, n_res_layers: int, downsample: Triple, n_head: int) -> None:
        super().__init__()
        steps = _halvings(downsample)
        self.convs = nn.ModuleList()
        for i in range(max(steps)):
            # An axis is halved by the first log2(factor) convs and left alone by the rest.
            stride = (2 if steps[0] > i else 1, 2 if steps[1] > i else 1, 2 if steps[2] > i else 1)
            self.convs.append(SamePadConv3d(3 if i == 0 else n_hiddens, n_hiddens, 4, stride=stride))
        # The release passes the last loop's in_channels here, which is n_hiddens whenever a factor is >= 4.
        self.conv_last = SamePadConv3d(n_hiddens, n_hiddens, kernel_size=3)
        self.res_stack = _res_stack(n_hiddens, n_res_layers, n_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
        return self.res_stack(self.conv_last(h))


# ----------------------------------------------------------------------------------------------------
# Codebook
# ----------------------------------------------------------------------------------------------------


@dataclass
class Quantized:
    embeddings: torch.Tensor  # (B, D, t, h, w), straight-through: forward is e, gradient flows to z
    encodings: torch.Tensor  # (B, t, h, w) long
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


class Codebook(nn.Module):
    """Nearest-neighbour vector quantiser trained by exponential moving averages (van den Oord 2017, App. A.1).

    In training mode each forward (1) initialises the codes from the first batch, (2) moves the cluster
    sizes ``N`` and sums ``z_avg`` towards this batch's, (3) sets each code to its Laplace-smoothed cluster
    mean and (4) restarts codes whose EMA count fell below 1 at random encoder outputs. Eval mode only
    looks up.
    """

    embeddings: torch.Tensor
    N: torch.Tensor
    z_avg: torch.Tensor

    def __init__(
        self, n_codes: int, embedding_dim: int, decay: float = 0.99, commitment_cost: float = 0.25
    ) -> None:
        super().__init__()
        self.n_codes, self.embedding_dim = n_codes, embedding_dim
        self.decay, self.commitment_cost = decay, commitment_cost
        self.register_buffer("embeddings", torch.randn(n_codes, embedding_dim))
        self.register_buffer("N", torch.zeros(n_codes))
        self.register_buffer("z_avg", self.embeddings.clone())
        # The release keeps this flag out of the state dict and so re-initialised loaded models on their
        # first training step. We keep the key set of the release and derive the flag on load instead:
        # initialisation sets every N to 1 and the EMA never returns them all to 0, so all-zero N means
        # "never trained".
        self.needs_init = True
        self.register_load_state_dict_post_hook(_codebook_loaded)

    def _random_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """``n_codes`` random rows of ``flat``, repeated with small noise if there are fewer rows."""
        rows, width = flat.shape
        if rows < self.n_codes:
            flat = flat.repeat(math.ceil(self.n_codes / rows), 1)
            flat = flat + torch.randn_like(flat) * (0.01 / math.sqrt(width))
        picked = flat[torch.randperm(flat.shape[0], device=flat.device)][: self.n_codes]
        if _distributed():
            dist.broadcast(picked, 0)  # every rank must hold the same codebook
        return picked

    @torch.no_grad()
    def _init_embeddings(self, flat: torch.Tensor) -> None:
        picked = self._random_rows(flat)
        self.embeddings.copy_(picked)
        self.z_avg.copy_(picked)
        self.N.fill_(1.0)
        self.needs_init = False

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the closest code for each row of ``flat`` (rows, D) -> (rows,)."""
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True)
            - 2 * flat @ self.embeddings.t()
            + self.embeddings.pow(2).sum(dim=1)[None, :]
        )
        return distances.argmin(dim=1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors for integer ``codes`` of any shape: (...,) -> (..., D)."""
        return F.embedding(codes, self.embeddings)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, onehot: torch.Tensor) -> None:
        counts = onehot.sum(dim=0)  # (K,)
        sums = flat.t() @ onehot  # (D, K)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.N.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.z_avg.mul_(self.decay).add_(sums.t(), alpha=1 - self.decay)
        n = self.N.sum()
        # Laplace smoothing: a code with no assignments keeps a tiny positive size instead of 0.
        sizes = (self.N + LAPLACE_EPS) / (n + self.n_codes * LAPLACE_EPS) * n
        self.embeddings.copy_(self.z_avg / sizes[:, None])
        # Dead-code restart: a random row is drawn every step (as the release does) so all ranks stay in step.
        restart = self._random_rows(flat)
        self.embeddings.copy_(torch.where(self.N[:, None] >= 1, self.embeddings, restart))

    def forward(self, z: torch.Tensor) -> Quantized:
        b, d, t, h, w = z.shape
        flat = z.movedim(1, -1).reshape(-1, d)  # (B * t * h * w, D)
        if self.training and self.needs_init:
            self._init_embeddings(flat.detach())
        codes = self.nearest(flat.detach())  # (B * t * h * w,)
        onehot = F.one_hot(codes, self.n_codes).type_as(flat)
        e = self.lookup(codes).view(b, t, h, w, d).movedim(-1, 1)  # (B, D, t, h, w), codes before the update
        commitment_loss = self.commitment_cost * F.mse_loss(z, e.detach())
        if self.training:
            self._ema_update(flat.detach(), onehot)
        probs = onehot.mean(dim=0)
        perplexity = torch.exp(-torch.sum(probs * torch.log(probs + 1e-10)))
        return Quantized(
            embeddings=z + (e - z).detach(),  # straight-through estimator
            encodings=codes.view(b, t, h, w),
            commitment_loss=commitment_loss,
            perplexity=perplexity,
        )


def _codebook_loaded(module: nn.Module, incompatible_keys: Any) -> None:
    if isinstance(module, Codebook):
        module.needs_init = not bool(module.N.any())


# ----------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------


class Decoder(nn.Module):
    def __init__(self, n_hiddens: int, n_res_layers: int, upsample: Triple, n_head: int) -> None:
        super().__init__()
        self.res_stack = _res_stack(n_hiddens, n_res_layers, n_head)
        steps = _halvings(upsample)
        n_convs = max(steps)
        self.convts = nn.ModuleList()
        for i in range(n_convs):
            stride = (2 if steps[0] > i else 1, 2 if steps[1] > i else 1, 2 if steps[2] > i else 1)
            out_channels = 3 if i == n_convs - 1 else n_hiddens
            self.convts.append(SamePadConvTranspose3d(n_hiddens, out_channels, 4, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.res_stack(x)
        for i, convt in enumerate(self.convts):
            h = convt(h)
            if i < len(self.convts) - 1:
                h = F.relu(h)
        return h


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------


@dataclass
class VQOutput:
    reconstruction: torch.Tensor  # (B, 3, T, H, W) in the input's [-1, 1] range
    recon_loss: torch.Tensor  # MSE in VideoGPT's [-0.5, 0.5] range / 0.06, as the release trains
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    encodings: torch.Tensor  # (B, t, h, w) long

    @property
    def loss(self) -> torch.Tensor:
        return self.recon_loss + self.commitment_loss


class VQVAE(Pretrained):
    config_class = VQVAEConfig
    config: VQVAEConfig

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(c.n_hiddens, c.n_res_layers, c.downsample, c.n_head)
        self.decoder = Decoder(c.n_hiddens, c.n_res_layers, c.downsample, c.n_head)
        self.pre_vq_conv = SamePadConv3d(c.n_hiddens, c.embedding_dim, 1)
        self.post_vq_conv = SamePadConv3d(c.embedding_dim, c.n_hiddens, 1)
        self.codebook = Codebook(c.n_codes, c.embedding_dim, c.ema_decay, c.commitment_cost)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Convs and norms keep PyTorch's defaults; attention projections use VideoGPT's N(0, 1/dim)."""
        for module in self.modules():
            if isinstance(module, AxialAttention):
                std = module.w_qs.in_features**-0.5
                for linear in (module.w_qs, module.w_ks, module.w_vs, module.fc):
                    nn.init.normal_(linear.weight, std=std)

    def latent_shape(self, T: int, H: int, W: int) -> Triple:
        """(t, h, w) of the code grid for a (T, H, W) video."""
        for axis, size, factor in zip(("T", "H", "W"), (T, H, W), self.config.downsample, strict=True):
            if size <= 0 or size % factor:
                raise ShapeError(
                    f"VQVAE: {axis} = {size} must be a positive multiple of the {axis} downsample factor {factor}"
                )
        t, h, w = self.config.downsample
        return T // t, H // h, W // w

    def _check_video(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ShapeError(
                f"VQVAE takes video as (B, 3, T, H, W), got a {x.dim()}-D tensor {tuple(x.shape)}"
            )
        if x.shape[1] != 3:
            raise ShapeError(f"VQVAE: the channel dimension (dim 1) must be 3 (RGB), got {x.shape[1]}")
        self.latent_shape(*x.shape[2:])

    def _quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_video(x)
        x = x * INPUT_SCALE
        return x, self.pre_vq_conv(self.encoder(x))  # (B, D, t, h, w)

    def forward(self, x: torch.Tensor) -> VQOutput:
        """Encode, quantise (updating the codebook in training mode) and decode a (B, 3, T, H, W) video."""
        x, z = self._quantize_input(x)
        q = self.codebook(z)
        recon = self.decoder(self.post_vq_conv(q.embeddings))  # (B, 3, T, H, W)
        return VQOutput(
            reconstruction=recon / INPUT_SCALE,
            recon_loss=F.mse_loss(recon, x) / DATA_VARIANCE,
            commitment_loss=q.commitment_loss,
            perplexity=q.perplexity,
            encodings=q.encodings,
        )

    @overload
    def encode(self, x: torch.Tensor, *, return_embeddings: Literal[False] = ...) -> torch.Tensor: ...

    @overload
    def encode(
        self, x: torch.Tensor, *, return_embeddings: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode(
        self, x: torch.Tensor, *, return_embeddings: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, t, h, w) of a video; with ``return_embeddings`` also their vectors (B, D, t, h, w).

        Unlike the release, encoding never updates the codebook, even in training mode.
        """
        _, z = self._quantize_input(x)
        b, d, t, h, w = z.shape
        codes = self.codebook.nearest(z.movedim(1, -1).reshape(-1, d)).view(b, t, h, w)
        if not return_embeddings:
            return codes
        return codes, self.codebook.lookup(codes).movedim(-1, 1)  # (B, D, t, h, w)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] from integer codes (B, t, h, w)."""
        if codes.dim() != 4:
            raise ShapeError(f"VQVAE.decode takes codes as (B, t, h, w), got a {codes.dim()}-D tensor")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ShapeError(f"VQVAE.decode takes integer codes, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.n_codes):
            raise ShapeError(
                f"VQVAE.decode: codes must lie in [0, {self.config.n_codes}), got "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        e = self.codebook.lookup(codes.long()).movedim(-1, 1)  # (B, D, t, h, w)
        return self.decoder(self.post_vq_conv(e)) / INPUT_SCALE


# ----------------------------------------------------------------------------------------------------
# Presets and release configs
# ----------------------------------------------------------------------------------------------------

VQVAE_CONFIGS: dict[str, VQVAEConfig] = {
    # VideoGPT's UCF-101 / Kinetics releases and Open-Sora-Plan's VQVAEModel_4x4x4.
    "videogpt-4x4x4": VQVAEConfig(downsample=(4, 4, 4)),
    # Open-Sora-Plan's VQVAEModel_4x8x8: the same trunk with three spatial halvings.
    "videogpt-4x8x8": VQVAEConfig(downsample=(4, 8, 8)),
    # Tests: two strided convs per side, one residual block, a 64-code book.
    "vqvae-tiny": VQVAEConfig(
        embedding_dim=16, n_codes=64, n_hiddens=32, n_res_layers=1, downsample=(4, 4, 4)
    ),
}

# Release keys that carry the architecture; everything else in its hparams (resolution, sequence_length,
# no_pos_embd, lr, batch_size, ...) is about training or data and has no place in the model config.
_VIDEOGPT_KEYS = ("embedding_dim", "n_codes", "n_hiddens", "n_res_layers", "downsample")


def config_from_videogpt(hparams: Mapping[str, Any] | argparse.Namespace) -> VQVAEConfig:
    """Our config from a VideoGPT checkpoint's ``hyper_parameters['args']`` or an Open-Sora-Plan config.json.

    Missing keys take the release's defaults; ``downsample`` may be a sequence or a ``"4,4,4"`` string.
    """
    raw = vars(hparams) if isinstance(hparams, argparse.Namespace) else dict(hparams)
    picked = {key: raw[key] for key in _VIDEOGPT_KEYS if key in raw}
    downsample = picked.get("downsample")
    if isinstance(downsample, str):
        parts = downsample.split(",")
        if all(part.strip().isdigit() for part in parts):
            picked["downsample"] = tuple(int(part) for part in parts)
    elif downsample is not None:
        picked["downsample"] = tuple(downsample)
    return VQVAEConfig.from_dict(picked, source="VideoGPT hparams")
