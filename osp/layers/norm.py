"""adaLN's modulated LayerNorm, ``LayerNorm(x) * (1 + scale) + shift``, through one entry point.

Every DiT / Latte block calls :func:`modulated_norm` twice and the final layer once. It runs either osp's
fused kernel (``osp.kernels.modulate_norm``: one read of x, one write of y, where the unfused expression
reads and writes the activations three times) or the plain expression, whichever was measured faster on
this GPU model for this width and number of rows, in inference or in training
(``osp.layers.dispatch_table``). Everywhere else — the CPU, unmeasured GPUs or shapes, a norm with affine
parameters — the plain expression runs. Models never branch on hardware.

Under ``torch.compile`` / ``torch.export`` the plain expression is traced: Inductor fuses it into one
kernel itself (with the neighbouring residual adds, which a custom op would fence off), and exported
graphs keep a standard ``LayerNormalization`` that every ONNX runtime knows.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from osp.layers import dispatch_table

_KERNELS = (
    importlib.util.find_spec("osp.kernels") is not None and importlib.util.find_spec("triton") is not None
)
_FORCED: list[str] = []  # a stack of "osp" / "torch" / "" (automatic), as attention.forced_backend
_CHOSEN: dict[tuple, bool] = dispatch_table.choice_cache()  # per-shape: fused or not


@contextmanager
def norm_backend(name: str | None) -> Iterator[None]:
    """Within the block, :func:`modulated_norm` runs ``"osp"`` (the fused op, on any device; off CUDA it
    runs its plain-torch reference) or ``"torch"`` (the plain expression). ``None`` restores automatic
    selection inside an enclosing block."""
    if name not in (None, "osp", "torch"):
        raise ValueError(f"unknown norm backend {name!r}; choose 'osp' or 'torch'")
    if name == "osp" and importlib.util.find_spec("osp.kernels") is None:
        raise ValueError("norm backend 'osp' needs osp.kernels")
    _FORCED.append(name or "")
    try:
        yield
    finally:
        _FORCED.pop()


def _fused(norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> bool:
    if norm.elementwise_affine or len(norm.normalized_shape) != 1:
        return False  # the kernel has no affine parameters; an affine norm keeps nn.LayerNorm
    forced = _FORCED[-1] if _FORCED else ""
    if forced:
        return forced == "osp"
    if not _KERNELS or dispatch_table.tracing():
        return False
    training = torch.is_grad_enabled() and (x.requires_grad or shift.requires_grad or scale.requires_grad)
    key = (x.device, x.dtype, x.shape, training)
    fused = _CHOSEN.get(key)
    if fused is None:
        gpu = dispatch_table.gpu_for(x.device)
        channels = x.shape[-1]
        ranking = () if gpu is None else dispatch_table.norm_ranking(
            gpu, x.dtype, channels, x.numel() // max(channels, 1), training
        )  # fmt: skip
        fused = _CHOSEN[key] = bool(ranking) and ranking[0] == "osp"
    return fused


def modulated_norm(
    norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` for x (..., C); ``shift`` and ``scale`` broadcast against x
    ((B, 1, ..., 1, C) per sample, or x's full shape)."""
    if _fused(norm, x, shift, scale):
        from osp.kernels import modulate_norm

        return modulate_norm(x, shift, scale, norm.eps)
    # one pass over the activations (shift + norm(x) * (1 + scale)) where `* (1 + scale) + shift` takes two
    return torch.addcmul(shift, norm(x), 1 + scale)
