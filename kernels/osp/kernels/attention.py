"""Attention as torch custom ops: the Triton flash-attention kernels on CUDA, plain torch elsewhere.

Three ops, so that every consumer sees one node:

- ``osp::attention(q, k, v, key_padding_mask, scale) -> out``: the op inference, torch.compile, the ONNX
  exporter and TensorRT see. Its autograd recomputes the log-sum-exp in the backward.
- ``osp::attention_fwd(...) -> (out, lse)``: the same forward that also returns the per-row log-sum-exp;
  :func:`attention` uses it when gradients are needed, so the backward reuses the forward's statistics.
- ``osp::attention_backward(grad, q, k, v, key_padding_mask, out, lse, scale) -> (dq, dk, dv)``.

On CUDA (triton importable, fp16/bf16/fp32, head dim <= 256) the ops run the kernels of
``_attention_triton``; on any other device they run :func:`attention_reference` and its hand-written
backward, which is the same math in fp32. Tensors are (B, H, L, D); the key-padding mask is bool (B, Lk),
True = attend; a query whose keys are all masked gets output 0 (SDPA gives NaN there).

The ops are for graphs. A custom op costs tens of microseconds of host time per call in eager mode
(torch.library's dispatch and its Python autograd wrapper; ``benchmarks/dispatch_overhead.py`` measures
it), which a GPU finishes small attention calls in less than. So :func:`attention` calls the same
kernels through a plain ``torch.autograd.Function`` in eager mode, and the ops only while torch.compile,
torch.export or torch.jit.trace record a graph.
"""

import math

import torch

try:
    from . import _attention_triton as _tri
except ImportError:  # triton is optional: the ops then always run the reference
    _tri = None  # type: ignore[assignment]

Tensor = torch.Tensor


def _use_triton(q: Tensor) -> bool:
    # fp32 tiles hold twice the bytes and, without TF32, do their dots in registers: beyond head dim 128
    # no configuration compiles without spills (benchmarks/results/kernels_sm90.md), so the reference runs.
    return (
        _tri is not None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and q.shape[-1] <= (128 if q.dtype == torch.float32 else 256)
    )


def tracing() -> bool:
    """True while torch.compile, torch.export or torch.jit.trace record a graph (the ops' only users)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or _exporting()


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.7
    return bool(is_exporting is not None and is_exporting())


# ------------------------------------------------------------------------------------------ reference


def _reference_fwd(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ scale) v in fp32, and the natural-log log-sum-exp per query (+inf where no key is left)."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    if mask is None:
        lse = torch.logsumexp(s, -1)
        return torch.matmul(torch.exp(s - lse[..., None]), v.float()).to(q.dtype), lse
    keep = mask[:, None, None, :]  # (B, 1, 1, Lk)
    empty = ~keep.any(-1, keepdim=True)  # (B, 1, 1, 1): rows with no key to attend
    s = s.masked_fill(~keep, -math.inf)
    # Empty rows get a finite dummy log-sum-exp, so exp(-inf - lse) = 0 and no NaN enters the gradient.
    lse = torch.logsumexp(s.masked_fill(empty, 0.0), -1)
    out = torch.matmul(torch.exp(s - lse[..., None]), v.float()).to(q.dtype)
    return out, lse.masked_fill(empty[..., 0], math.inf)


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Plain-torch attention with the kernels' semantics; (B, H, Lq, D) -> (B, H, Lq, D)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _reference_fwd(q, k, v, key_padding_mask, scale)[0]


def _reference_bwd(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The kernels' backward in torch: probabilities rebuilt from lse, dS = P ∘ (dP - rowsum(dO ∘ O))."""
    qf, kf, vf, do = q.float(), k.float(), v.float(), grad.float()
    p = torch.exp(torch.matmul(qf, kf.transpose(-1, -2)) * scale - lse[..., None])  # (B, H, Lq, Lk)
    if mask is not None:
        p = p.masked_fill(~mask[:, None, None, :], 0.0)
    dv = torch.matmul(p.transpose(-1, -2), do)
    delta = (do * out.float()).sum(-1, keepdim=True)
    ds = p * (torch.matmul(do, vf.transpose(-1, -2)) - delta)
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _forward(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, use_triton: bool
) -> tuple[Tensor, Tensor]:
    if use_triton:
        assert _tri is not None
        return _tri.attention_fwd(q, k, v, mask, scale)
    return _reference_fwd(q, k, v, mask, scale)


def _backward(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, out: Tensor, lse: Tensor, scale: float,
    use_triton: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    if use_triton:
        assert _tri is not None
        return _tri.attention_bwd(grad, q, k, v, mask, out, lse, scale)
    return _reference_bwd(grad, q, k, v, mask, out, lse, scale)


# ---------------------------------------------------------------------------------------- custom ops


@torch.library.custom_op("osp::attention_fwd", mutates_args=())
def attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    return _forward(q, k, v, key_padding_mask, scale, _use_triton(q))


@attention_fwd.register_fake
def _(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("osp::attention_backward", mutates_args=())
def attention_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    out: Tensor,
    lse: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(grad, q, k, v, key_padding_mask, out, lse, scale, _use_triton(q))


@attention_backward.register_fake
def _(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    out: Tensor,
    lse: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.custom_op("osp::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, scale: float) -> Tensor:
    return _forward(q, k, v, key_padding_mask, scale, _use_triton(q))[0]


@attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, scale: float) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _setup_fwd(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    q, k, v, mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, mask, out, lse)
    ctx.scale = scale  # type: ignore[attr-defined]


def _backward_fwd(ctx: torch.autograd.function.FunctionCtx, grad: Tensor, _grad_lse: Tensor | None) -> tuple:
    # lse is a by-product for the backward; gradients flowing into it are not supported (none do in osp).
    q, k, v, mask, out, lse = ctx.saved_tensors  # type: ignore[attr-defined]
    dq, dk, dv = torch.ops.osp.attention_backward(grad, q, k, v, mask, out, lse, ctx.scale)  # type: ignore[attr-defined]
    return dq, dk, dv, None, None


def _setup_op(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    q, k, v, mask, scale = inputs
    ctx.save_for_backward(q, k, v, mask)
    ctx.scale = scale  # type: ignore[attr-defined]


def _backward_op(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
    # This op does not keep the log-sum-exp; recompute it (one forward pass) and run the same backward.
    q, k, v, mask = ctx.saved_tensors  # type: ignore[attr-defined]
    out, lse = torch.ops.osp.attention_fwd(q, k, v, mask, ctx.scale)  # type: ignore[attr-defined]
    dq, dk, dv = torch.ops.osp.attention_backward(grad, q, k, v, mask, out, lse, ctx.scale)  # type: ignore[attr-defined]
    return dq, dk, dv, None, None


attention_fwd.register_autograd(_backward_fwd, setup_context=_setup_fwd)
attention_op.register_autograd(_backward_op, setup_context=_setup_op)


def attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """softmax(q kᵀ · scale) v for q (B, H, Lq, D), k/v (B, H, Lk, D); mask (B, Lk) bool, True = attend.

    In eager mode the kernels run through :class:`_Attention` (its backward reuses the forward's
    log-sum-exp). While a graph is recorded: ``osp::attention_fwd`` when gradients are needed, otherwise
    (and always while exporting) the single-output ``osp::attention`` that exporters translate.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if tracing():
        if needs_grad and not _exporting():
            return torch.ops.osp.attention_fwd(q, k, v, key_padding_mask, scale)[0]
        return torch.ops.osp.attention(q, k, v, key_padding_mask, scale)
    if needs_grad:
        return _Attention.apply(q, k, v, key_padding_mask, scale, _use_triton(q))
    return _forward(q, k, v, key_padding_mask, scale, _use_triton(q))[0]


# ------------------------------------------------------------------------------------- eager entry


class _Attention(torch.autograd.Function):
    """The kernels (``use_triton``) or the reference with their own backward, without the ops' dispatch."""

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, use_triton: bool
    ) -> Tensor:
        out, lse = _forward(q, k, v, mask, scale, use_triton)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.scale, ctx.use_triton = scale, use_triton
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        q, k, v, mask, out, lse = ctx.saved_tensors
        return (*_backward(grad, q, k, v, mask, out, lse, ctx.scale, ctx.use_triton), None, None, None)


def triton_attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """The Triton kernels on any device Triton can launch on, bypassing the op's device dispatch.

    Under ``TRITON_INTERPRET=1`` (set before this module is imported) CPU tensors run in Triton's
    interpreter: slow, fp32 only (its bf16 dot is wrong), meant for tests.
    """
    if _tri is None:
        raise ImportError("triton_attention needs triton (pip install 'osp[kernels]')")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _Attention.apply(q, k, v, key_padding_mask, scale, True)
