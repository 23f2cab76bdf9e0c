"""adaLN's modulated LayerNorm, ``LayerNorm(x) * (1 + scale) + shift``, through one entry point.

Every DiT / Latte block calls :func:`modulated_norm` twice and the final layer once. On CUDA with triton
installed it runs osp's fused kernel (``osp::modulate_norm``: one read of x, one write of y, where the
unfused expression reads and writes the activations three times); everywhere else, and whenever the
norm has affine parameters, the plain expression runs. Models never branch on hardware.

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

_KERNELS = (
    importlib.util.find_spec("osp.kernels") is not None and importlib.util.find_spec("triton") is not None
)
_FORCED: list[str] = []  # a stack of "osp" / "torch" / "" (automatic), as attention.forced_backend


@contextmanager
def norm_backend(name: str | None) -> Iterator[None]:
    """Within the block, :func:`modulated_norm` runs ``"osp"`` (the custom op, on any device; off CUDA it
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


def _fused(norm: nn.LayerNorm, x: torch.Tensor) -> bool:
    forced = _FORCED[-1] if _FORCED else ""
    if norm.weight is not None or norm.bias is not None or len(norm.normalized_shape) != 1:
        return False  # the kernel has no affine parameters; an affine norm keeps nn.LayerNorm
    if forced:
        return forced == "osp"
    if torch.compiler.is_compiling():
        return False
    return _KERNELS and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32)


def modulated_norm(
    norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` for x (..., C); ``shift`` and ``scale`` broadcast against x
    ((B, 1, ..., 1, C) per sample, or x's full shape)."""
    if _fused(norm, x):
        from osp.kernels import modulate_norm

        return modulate_norm(x, shift, scale, norm.eps)
    return norm(x) * (1 + scale) + shift
