"""The one attention entry point of osp.

Every model calls :func:`attention`. It picks a backend from a registry: each backend declares when it
can run (device, dtype, head dim, mask) and a priority; the highest-priority backend whose check passes
runs. PyTorch's SDPA is always registered and accepts everything, so it is the fallback on every
machine. Optional accelerators (flash-attn, osp's Triton kernels) register themselves when importable;
models never branch on hardware.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from osp.errors import ShapeError

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]
SupportsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], bool]


@dataclass(frozen=True)
class Backend:
    name: str
    fn: AttentionFn
    supports: SupportsFn
    priority: int


_BACKENDS: dict[str, Backend] = {}
_FORCED: list[str] = []  # a stack: forced_backend blocks nest


def register_backend(name: str, fn: AttentionFn, supports: SupportsFn, priority: int = 0) -> None:
    """Add (or replace) a backend. ``fn(q, k, v, mask, scale)`` takes (B, H, L, D) tensors."""
    _BACKENDS[name] = Backend(name, fn, supports, priority)


def available_backends() -> list[str]:
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority)]


@contextmanager
def forced_backend(name: str | None) -> Iterator[None]:
    """Within the block, every :func:`attention` call without ``backend=`` runs backend ``name``.

    Exporters trace with ``forced_backend("osp")`` so the graph holds osp's single attention op whatever
    the tracing device. ``None`` restores automatic selection inside an enclosing forced block.
    """
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {', '.join(available_backends())}")
    _FORCED.append(name or "")
    try:
        yield
    finally:
        _FORCED.pop()


def select_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> Backend:
    for backend in sorted(_BACKENDS.values(), key=lambda b: -b.priority):
        if backend.supports(q, k, v, mask):
            return backend
    raise RuntimeError("no attention backend accepts these inputs")  # unreachable: SDPA accepts all


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v for (B, H, Lq, D) queries and (B, H, Lk, D) keys/values.

    ``mask`` is boolean (True = attend) or additive float, broadcastable to (B, H, Lq, Lk); a (B, Lk)
    boolean key-padding mask is accepted too. ``backend`` forces one registered backend by name.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ShapeError(
            f"attention takes (B, H, L, D) tensors, got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}"
        )
    if k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1] or q.shape[:2] != k.shape[:2]:
        raise ShapeError(f"attention shapes disagree: q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if mask is not None and mask.dim() == 2:
        mask = mask[:, None, None, :]  # (B, Lk) key padding -> (B, 1, 1, Lk)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend is None and _FORCED and _FORCED[-1]:
        backend = _FORCED[-1]
    if backend is not None:
        if backend not in _BACKENDS:
            raise ValueError(
                f"unknown attention backend {backend!r}; registered: {', '.join(available_backends())}"
            )
        chosen = _BACKENDS[backend]
    else:
        chosen = select_backend(q, k, v, mask)
    return chosen.fn(q, k, v, mask, scale)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


register_backend("sdpa", _sdpa, lambda q, k, v, mask: True, priority=0)


def _register_flash_attn() -> None:
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return

    def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
        return (
            q.is_cuda
            and mask is None
            and q.dtype in (torch.float16, torch.bfloat16)
            and q.dtype == k.dtype == v.dtype
            and q.shape[-1] <= 256
            and q.shape[-1] % 8 == 0
        )

    def run(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        # flash-attn wants (B, L, H, D).
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
        return out.transpose(1, 2)

    register_backend("flash_attn", run, supports, priority=10)


_register_flash_attn()


def _key_padding(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """A (B, 1, 1, Lk) or (B, Lk) boolean mask as the kernel's (B, Lk); anything else raises ValueError."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError("the osp attention backend takes boolean key-padding masks only")
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        mask = mask[:, 0, 0, :]
    if mask.dim() != 2 or mask.shape[-1] != k.shape[2]:
        raise ValueError(
            f"the osp attention backend takes a (B, Lk) key-padding mask, got {tuple(mask.shape)}"
        )
    return mask.expand(q.shape[0], k.shape[2])


def _register_osp() -> None:
    """osp's Triton kernels (``osp.kernels``, imported on first use): auto-selected on CUDA when triton is
    installed; forced by name they run anywhere (off CUDA the op runs its plain-torch reference)."""
    if importlib.util.find_spec("osp.kernels") is None:
        return
    kernels_ok = importlib.util.find_spec("triton") is not None

    def run(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        from osp.kernels import attention as osp_attention

        return osp_attention(q, k, v, _key_padding(q, k, mask), scale)

    def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
        if not (kernels_ok and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16, torch.float32)):
            return False
        if q.dtype != k.dtype or q.dtype != v.dtype or q.shape[-1] > 256 or v.shape[-1] != q.shape[-1]:
            return False
        if mask is not None:
            key_padding = mask.dtype == torch.bool and (
                mask.dim() == 2 or (mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1)
            )
            if not key_padding or mask.shape[-1] != k.shape[2] or mask.shape[0] not in (1, q.shape[0]):
                return False
        return True

    register_backend("osp", run, supports, priority=5)


_register_osp()
