"""Blocks of the adaLN-Zero diffusion transformers (DiT, SiT, class-conditional Latte).

Names follow the facebookresearch/DiT and Vchitect/Latte releases (``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``, ``adaLN_modulation.1``, ``final_layer.linear``), so their checkpoints load
without a key map. Blocks take hidden states of shape (B, ..., L, D): attention runs over L, every
leading axis after the batch is folded into the batch, and the (B, D) conditioning broadcasts over
them. Latte thus runs its spatial blocks on (B, T, N, D) and its temporal blocks on (B, N, T, D)
without repeating the conditioning per frame or per token as the release does.

adaLN's ``norm(x) * (1 + scale) + shift`` goes through :func:`osp.layers.norm.modulated_norm` (the
fused kernel on CUDA). ``1 + scale``, not ``scale``, so a zero-initialised modulation is the identity.

Layout: timestep embedder variant -> attention -> MLP -> block -> final layer -> init.
"""

from __future__ import annotations

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


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm layout, as DiT / Latte store it)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads)  # (N, L, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, L, d)
        out = attention(q, k, v)  # (N, H, L, d)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))  # (N, L, D)


class Mlp(nn.Module):
    """``fc1`` -> tanh-GELU -> ``fc2`` (DiT uses the tanh approximation; so must we, for parity)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


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

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, ..., L, D), c (B, D) -> (B, ..., L, D); attention over L only."""
        mods = _broadcastable(self.adaLN_modulation(c), x)  # (B, 1, ..., 1, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=-1)
        length, dim = x.shape[-2:]
        h = modulated_norm(self.norm1, x, shift_msa, scale_msa)
        h = self.attn(h.reshape(-1, length, dim)).reshape(x.shape)  # (B*..., L, D) -> (B, ..., L, D)
        x = x + gate_msa * h
        return x + gate_mlp * self.mlp(modulated_norm(self.norm2, x, shift_mlp, scale_mlp))


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
