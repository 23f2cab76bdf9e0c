"""Blocks of the adaLN-Zero diffusion transformers (DiT, SiT, class-conditional Latte).

Names follow the facebookresearch/DiT and Vchitect/Latte releases (``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``, ``adaLN_modulation.1``, ``final_layer.linear``), so their checkpoints load
without a key map. Blocks take contiguous hidden states (B, ..., D) and attend over one token axis
(``axis``): the axes before it fold into the batch, those after it into the heads, all as views
(:func:`heads_view`). Latte thus runs its spatial blocks (over N) and its temporal blocks (over T) on
the same (B, T, N, D) tensor, never transposing it, and the (B, D) conditioning broadcasts instead of
being repeated per frame or per token as the release does.

adaLN's ``norm(x) * (1 + scale) + shift`` goes through :func:`osp.layers.norm.modulated_norm` (the
fused kernel on CUDA). ``1 + scale``, not ``scale``, so a zero-initialised modulation is the identity.
Gated residuals ``x + gate * h`` are one ``addcmul``: one kernel, one rounding.

Layout: head folding -> attention -> MLP -> block -> final layer -> init.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from osp.layers.attention import attention
from osp.layers.embeddings import LabelEmbedder, PatchEmbed, TimestepEmbedder
from osp.layers.norm import modulated_norm


def _broadcastable(mod: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, k) conditioning -> (B, 1, ..., 1, k) with as many axes as ``like``."""
    return mod.reshape(mod.shape[0], *([1] * (like.dim() - 2)), mod.shape[-1])


def _linear(seq: nn.Module, index: int) -> nn.Linear:
    """The nn.Linear at ``seq[index]`` of an nn.Sequential, typed as such."""
    assert isinstance(seq, nn.Sequential)
    layer = seq[index]
    assert isinstance(layer, nn.Linear)
    return layer


def heads_view(shape: Sequence[int], axis: int, head_dim: int) -> tuple[int, ...]:
    """The view (B', L, H', d) of a (B, ..., L, ..., H*d) projection, flattened to rows, whose
    ``transpose(1, 2)`` is the (B', H', L, d) operand of attention over L (at ``axis`` of ``shape``).

    Axes before L fold into the batch B', axes after it into the heads H': each (b, n, h) of a
    (B, T, N, H*d) projection is one temporal attention problem. All of it is a view of the contiguous
    rows a linear layer writes: (B, T, N, H*d) gives (B, N*H, T, d) with strides (T*N*H*d, d, N*H*d,
    1), which attention kernels take as they are.
    """
    batch = 1
    for size in shape[:axis]:
        batch = batch * size
    return (batch, shape[axis], -1, head_dim)


# Older torch (2.5) has no is_exporting: its compiled graphs then take the exported layout too.
_exporting: Callable[[], bool] = getattr(torch.compiler, "is_exporting", torch.compiler.is_compiling)


def static_heads(x: torch.Tensor, axis: int) -> bool:
    """Whether attention over ``axis`` of x moves the tokens after it into the batch (a transpose)
    instead of folding them into the heads. Exported graphs do: ONNX Runtime's MultiHeadAttention and
    TensorRT plugins take the head count as a constant, which folded heads would tie to the token grid.
    """
    return axis != x.dim() - 2 and _exporting()


# CUDA attention kernels put the heads on one grid axis, which holds at most 65535 blocks
# (pytorch/pytorch#142228). The temporal fold makes N*H heads: 65536 at a 64x64 token grid and 16 heads.
MAX_GRID_HEADS = 65535


def attention_heads_last(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`osp.layers.attention` of (B', H', L, d) operands, returned as (B', L, H', d): the
    layout in which merging the heads back is a view when the kernel wrote (B', L, H', d) rows.

    More heads than a CUDA grid axis holds run in chunks (one copy, to join them). Compiled and
    exported graphs skip the check, which would otherwise become a guard on the token grid's size.
    """
    heads = q.shape[1]
    if torch.compiler.is_compiling() or heads <= MAX_GRID_HEADS:
        return attention(q, k, v, mask).transpose(1, 2)
    step = MAX_GRID_HEADS
    parts = [
        attention(q[:, i : i + step], k[:, i : i + step], v[:, i : i + step], mask).transpose(1, 2)
        for i in range(0, heads, step)
    ]
    return torch.cat(parts, dim=2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm layout, as DiT / Latte store it)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, axis: int = -2) -> torch.Tensor:
        """x (B, ..., D) contiguous -> same shape; attention over ``x.shape[axis]``."""
        axis %= x.dim()
        if static_heads(x, axis):
            return self(x.transpose(axis, -2)).transpose(axis, -2)
        rows, fold = x.reshape(-1, x.shape[-1]), heads_view(x.shape, axis, x.shape[-1] // self.num_heads)
        if axis == x.dim() - 2:
            # (B', 3H, L, d) in the fused (3, H, d) order: q, k and v are its thirds along the heads.
            q, k, v = self.qkv(rows).view(fold).transpose(1, 2).chunk(3, dim=1)
        else:
            # Tokens after L must fold into the heads, which the fused (3, H, d) interleave forbids
            # without a copy: q, k and v come from the fused weight's row blocks (views) instead.
            biases = (None,) * 3 if self.qkv.bias is None else self.qkv.bias.chunk(3)
            q, k, v = (
                F.linear(rows, w, b).view(fold).transpose(1, 2)
                for w, b in zip(self.qkv.weight.chunk(3), biases, strict=True)
            )
        out = attention_heads_last(q, k, v)  # (B', L, H', d)
        return self.proj(out.reshape(rows.shape)).view(x.shape)


class Mlp(nn.Module):
    """``fc1`` -> tanh-GELU -> ``fc2`` (DiT uses the tanh approximation; so must we, for parity)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # a linear layer on N-D input adds two views per call
        return self.fc2(F.gelu(self.fc1(rows), approximate="tanh")).view(x.shape)


class TransformerBlock(nn.Module):
    """Pre-norm attention + MLP block with adaLN-Zero conditioning (DiT paper, Fig. 3).

    ``mlp_norm_eps`` is 1e-6 in DiT / Latte; diffusers' DiT uses its ``norm_eps`` (1e-5 by default) for
    this one norm, so it is a parameter.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, mlp_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, axis: int = -2) -> torch.Tensor:
        """x (B, ..., D) contiguous, c (B, D) -> x's shape; attention over ``x.shape[axis]`` only."""
        mods = _broadcastable(self.adaLN_modulation(c), x)  # (B, 1, ..., 1, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=-1)
        x = torch.addcmul(x, gate_msa, self.attn(modulated_norm(self.norm1, x, shift_msa, scale_msa), axis))
        return torch.addcmul(x, gate_mlp, self.mlp(modulated_norm(self.norm2, x, shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN (shift, scale; no gate) + linear projection to p*p*C_out values per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, ..., L, D), c (B, D) -> (B, ..., L, p*p*C_out)."""
        shift, scale = _broadcastable(self.adaLN_modulation(c), x).chunk(2, dim=-1)
        return self.linear(modulated_norm(self.norm_final, x, shift, scale))


def initialize_adaln_transformer(
    x_embedder: PatchEmbed,
    t_embedder: TimestepEmbedder,
    y_embedder: LabelEmbedder | None,
    blocks: nn.ModuleList,
    final_layer: FinalLayer,
) -> None:
    """The DiT initialisation, shared by DiT, SiT and Latte (positions are the caller's job).

    Linear layers (and the patch conv, seen as a linear map of the flattened patch) get Xavier-uniform
    weights and zero biases; label and timestep embeddings N(0, 0.02). adaLN-Zero: every block's
    modulation output starts at zero, so each residual branch is gated off and every block is the
    identity at step 0; the final layer's modulation and projection are zero too, so the untrained
    model predicts exactly 0. The DiT paper (Sec. 3.2, Fig. 5) found this the best of its conditioning
    schemes: the network starts as a shallow function and grows into its depth.
    """
    for module in (x_embedder, t_embedder, blocks, final_layer):
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    w = x_embedder.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    if x_embedder.proj.bias is not None:
        nn.init.zeros_(x_embedder.proj.bias)
    if y_embedder is not None:
        nn.init.normal_(y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(_linear(t_embedder.mlp, 0).weight, std=0.02)
    nn.init.normal_(_linear(t_embedder.mlp, 2).weight, std=0.02)
    zeroed = [_linear(block.adaLN_modulation, -1) for block in blocks if isinstance(block, TransformerBlock)]
    for layer in [*zeroed, _linear(final_layer.adaLN_modulation, -1)]:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    nn.init.zeros_(final_layer.linear.weight)
    nn.init.zeros_(final_layer.linear.bias)


def run_block(block: nn.Module, checkpointing: bool, *args: Any) -> torch.Tensor:
    """``block(*args)``, or the same through activation checkpointing when training with gradients:
    the block's activations are recomputed in the backward pass instead of being kept."""
    if checkpointing and block.training and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def check_width(hidden_size: int, num_heads: int) -> None:
    """The width rules of DiT-style configs; a ValueError names the offending values."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if hidden_size % 4:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by 4 (2D sin-cos positions)")
