"""The one attention entry point of osp.

Every model calls :func:`attention`. It runs one backend of a registry; each backend declares which
inputs it accepts (device, dtype, head dim, mask). Which one runs is measured, not ranked: on a CUDA GPU,
the fastest backend that accepts the call among those timed on that GPU model for the call's shape class
(``osp.layers.dispatch_table``, written by ``benchmarks/attention.py``), also inside graphs torch.compile
records (the choice is made while Dynamo traces, guarded on the shape's range). Everywhere else (the CPU,
a GPU or shape nobody measured) and while torch.export / torch.jit.trace record a graph that leaves the
process it is PyTorch's SDPA, which accepts everything and which compilers and exporters understand.
Exporters that want osp's single attention op in the graph force it with ``forced_backend("osp")``.

Registered backends: ``sdpa`` (SDPA choosing its own kernel), ``sdpa-cudnn`` / ``sdpa-flash`` /
``sdpa-efficient`` (SDPA held to one kernel; the math kernel stands in if that one refuses the inputs),
``osp`` (osp's Triton kernels, when ``osp.kernels`` is installed) and ``flash-attn`` (when installed).
Models never branch on hardware.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from osp.errors import ShapeError
from osp.layers import dispatch_table

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]
SupportsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], bool]


@dataclass(frozen=True)
class Backend:
    name: str
    fn: AttentionFn
    supports: SupportsFn


_BACKENDS: dict[str, Backend] = {}
_FORCED: list[str] = []  # a stack: forced_backend blocks nest
_CHOSEN: dict[tuple, Backend] = dispatch_table.choice_cache()  # per-shape choices, see select_backend


def register_backend(name: str, fn: AttentionFn, supports: SupportsFn) -> None:
    """Add (or replace) a backend. ``fn(q, k, v, mask, scale)`` takes (B, H, L, D) tensors; a dispatch
    table picks it by ``name``."""
    _BACKENDS[name] = Backend(name, fn, supports)
    _CHOSEN.clear()


def available_backends() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {', '.join(available_backends())}")
    return _BACKENDS[name]


@contextmanager
def forced_backend(name: str | None) -> Iterator[None]:
    """Within the block, every :func:`attention` call without ``backend=`` runs backend ``name``.

    Exporters trace with ``forced_backend("osp")`` so the graph holds osp's single attention op whatever
    the tracing device. ``None`` restores automatic selection inside an enclosing forced block.
    """
    if name is not None:
        get_backend(name)  # refuses unknown names before the block runs
    _FORCED.append(name or "")
    try:
        yield
    finally:
        _FORCED.pop()


def select_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> Backend:
    """The backend :func:`attention` runs for these inputs when none is forced."""
    if dispatch_table.tracing():
        return _traced_choice(q, k, v, mask) if dispatch_table.compiling() else _BACKENDS["sdpa"]
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    mask_key = None if mask is None else (mask.dtype, mask.shape)
    key = (q.device, q.dtype, k.dtype, v.dtype, q.shape, k.shape, v.shape, mask_key, training)
    chosen = _CHOSEN.get(key)
    if chosen is None:
        chosen = _CHOSEN[key] = _measured_choice(q, k, v, mask, training)
    return chosen


def _measured_choice(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, training: bool
) -> Backend:
    gpu = dispatch_table.gpu_for(q.device)
    if gpu is not None:
        ranking = dispatch_table.attention_ranking(
            gpu, q.dtype, q.shape[-1], q.shape[2], k.shape[2], mask is not None, training
        )
        for name in ranking:
            backend = _BACKENDS.get(name)
            if backend is not None and backend.supports(q, k, v, mask):
                return backend
    return _BACKENDS["sdpa"]


def _traced_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> Backend:
    """The measured choice while torch.compile traces (no per-shape cache: Dynamo's guards are the cache)."""
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    ranking = dispatch_table.traced_attention_ranking(
        q.device, q.dtype, q.shape[-1], q.shape[2], k.shape[2], mask is not None, training
    )
    for name in ranking:
        backend = _BACKENDS.get(name)
        if backend is not None and backend.supports(q, k, v, mask):
            return backend
    return _BACKENDS["sdpa"]


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
    chosen = select_backend(q, k, v, mask) if backend is None else get_backend(backend)
    return chosen.fn(q, k, v, mask, scale)


# ------------------------------------------------------------------------------------------- SDPA


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


register_backend("sdpa", _sdpa, lambda q, k, v, mask: True)

# SDPA's kernel switches, as (name, kernel, getter, setter). torch.nn.attention.sdpa_kernel does the same
# in ~20 µs of Python per call; four getters and eight setters cost a few.
_SWITCHES = [
    ("cudnn", SDPBackend.CUDNN_ATTENTION, torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.enable_cudnn_sdp),
    ("flash", SDPBackend.FLASH_ATTENTION, torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.enable_flash_sdp),
    ("efficient", SDPBackend.EFFICIENT_ATTENTION, torch.backends.cuda.mem_efficient_sdp_enabled,
     torch.backends.cuda.enable_mem_efficient_sdp),
    ("math", SDPBackend.MATH, torch.backends.cuda.math_sdp_enabled, torch.backends.cuda.enable_math_sdp),
]  # fmt: skip
SDPA_KERNELS = {f"sdpa-{name}": kernel for name, kernel, _, _ in _SWITCHES if name != "math"}


def _sdpa_held_to(kernel_name: str) -> AttentionFn:
    """SDPA allowed one kernel, and math (always last in SDPA's order) should that one refuse."""
    allowed = (kernel_name, "math")
    kernels = [kernel for name, kernel, _, _ in _SWITCHES if name in allowed]

    def run(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        if dispatch_table.tracing():  # the switches are process state Dynamo cannot record; this it can
            with sdpa_kernel(kernels):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        was = [get() for _, _, get, _ in _SWITCHES]
        for name, _, _, set_ in _SWITCHES:
            set_(name in allowed)
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        finally:
            for (_, _, _, set_), on in zip(_SWITCHES, was, strict=True):
                set_(on)

    return run


def _half_precision(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return q.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype == v.dtype


def _register_sdpa_kernels() -> None:
    # What each kernel takes, conservatively (a refusal would fall to the slow math kernel): flash and
    # cuDNN fp16/bf16 without a mask, head dims that are multiples of 8 up to 256 (cuDNN: 128); the
    # memory-efficient kernel also fp32 and masks.
    def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
        d = q.shape[-1]
        return (
            q.is_cuda
            and mask is None
            and _half_precision(q, k, v)
            and d % 8 == 0
            and d <= 256
            and (v.shape[-1] == d)
        )

    def cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
        return flash(q, k, v, mask) and q.shape[-1] <= 128

    def efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
        d = q.shape[-1]
        return (
            q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and q.dtype == k.dtype == v.dtype
            and d % 8 == 0
            and v.shape[-1] == d
        )

    register_backend("sdpa-cudnn", _sdpa_held_to("cudnn"), cudnn)
    register_backend("sdpa-flash", _sdpa_held_to("flash"), flash)
    register_backend("sdpa-efficient", _sdpa_held_to("efficient"), efficient)


_register_sdpa_kernels()


# ------------------------------------------------------------------------------------------- others


def _register_flash_attn() -> None:
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return

    def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
        return (
            q.is_cuda
            and mask is None
            and _half_precision(q, k, v)
            and q.shape[-1] <= 256
            and q.shape[-1] % 8 == 0
        )

    def run(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        # flash-attn wants (B, L, H, D).
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
        return out.transpose(1, 2)

    register_backend("flash-attn", run, supports)


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
    """osp's Triton kernels (``osp.kernels``, imported on first use): picked on CUDA where a table says they
    are fastest; forced by name they run anywhere (off CUDA they run their plain-torch reference)."""
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
        widest = 128 if q.dtype == torch.float32 else 256  # as the kernels' own check (osp.kernels.attention)
        if q.dtype != k.dtype or q.dtype != v.dtype or q.shape[-1] > widest or v.shape[-1] != q.shape[-1]:
            return False
        if mask is not None:
            key_padding = mask.dtype == torch.bool and (
                mask.dim() == 2 or (mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1)
            )
            if not key_padding or mask.shape[-1] != k.shape[2] or mask.shape[0] not in (1, q.shape[0]):
                return False
        return True

    register_backend("osp", run, supports)


_register_osp()
