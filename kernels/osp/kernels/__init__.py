"""osp.kernels: Triton kernels (attention, fused adaLN modulate-norm) as torch custom ops.

Importing this package registers ``torch.ops.osp.attention``, ``osp::attention_fwd``,
``osp::attention_backward``, ``osp::modulate_norm`` and ``osp::modulate_norm_backward``. They run the
Triton kernels on CUDA and a plain-torch reference elsewhere; triton itself is optional.
"""

from pathlib import Path

import torch

from .attention import attention, attention_reference, triton_attention
from .modulate_norm import modulate_norm, modulate_norm_reference, triton_modulate_norm

_HERE = Path(__file__).resolve().parent
# Everything that decides what a compiled engine's plugin computes: hash these to key an engine cache.
PLUGIN_SOURCE_FILES: tuple[Path, ...] = tuple(
    _HERE / name for name in ("_attention_triton.py", "attention.py", "modulate_norm.py", "trt_plugin.py")
)


def available() -> bool:
    """True when the Triton kernels can run here: triton importable and a CUDA device present."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


__all__ = [
    "PLUGIN_SOURCE_FILES",
    "attention",
    "attention_reference",
    "available",
    "modulate_norm",
    "modulate_norm_reference",
    "triton_attention",
    "triton_modulate_norm",
]
