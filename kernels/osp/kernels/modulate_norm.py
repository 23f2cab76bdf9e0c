"""Fused adaLN modulate + LayerNorm: ``LayerNorm(x, no affine, eps) * (1 + scale) + shift`` in one pass.

Unfused, a DiT / Latte block reads and writes the (B, ..., L, C) activations three times around each
attention and MLP (norm, multiply, add); the kernel reads x once and writes y once, the op being
memory-bound. ``shift`` and ``scale`` broadcast against x; the kernels take the two layouts osp's blocks
produce without copying: one (C,) vector per sample (shape (B, 1, ..., 1, C)) or one per row (full shape).
Anything else is expanded to full shape first.

The backward recomputes each row's mean and 1/std (the row is read anyway) and accumulates the
per-sample dshift = Σ dy and dscale = Σ dy·x̂ in registers over a run of rows, writing one partial sum per
program; torch adds the few partials. No atomics, so the gradients are deterministic.

``osp::modulate_norm`` runs the kernels on CUDA and the plain-torch expression elsewhere.
"""

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl

    from ._attention_triton import interpreting
except ImportError:
    triton = None

Tensor = torch.Tensor

if triton is not None:

    @triton.jit
    def _modnorm_fwd(X, Shift, Scale, Y, C, rows_per_group, eps, BLOCK_C: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        group = row // rows_per_group
        offs = tl.arange(0, BLOCK_C)
        ok = offs < C
        x = tl.load(X + row * C + offs, mask=ok, other=0.0).to(tl.float32)
        xc = tl.where(ok, x - tl.sum(x, 0) / C, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / C + eps)
        shift = tl.load(Shift + group * C + offs, mask=ok, other=0.0).to(tl.float32)
        scale = tl.load(Scale + group * C + offs, mask=ok, other=0.0).to(tl.float32)
        y = xc * rstd * (1.0 + scale) + shift
        tl.store(Y + row * C + offs, y.to(Y.dtype.element_ty), mask=ok)

    @triton.jit
    def _modnorm_bwd(
        X, Scale, dY, dX, dShiftPart, dScalePart, C, rows_per_group, rows_per_prog, eps,
        BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # Program (g, s) handles rows [s*rows_per_prog, (s+1)*rows_per_prog) of group g.
        group = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        offs = tl.arange(0, BLOCK_C)
        ok = offs < C
        scale1 = 1.0 + tl.load(Scale + group * C + offs, mask=ok, other=0.0).to(tl.float32)
        acc_shift = tl.zeros([BLOCK_C], tl.float32)
        acc_scale = tl.zeros([BLOCK_C], tl.float32)
        start = split * rows_per_prog
        for r in range(start, tl.minimum(start + rows_per_prog, rows_per_group)):
            row = group * rows_per_group + r
            x = tl.load(X + row * C + offs, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(dY + row * C + offs, mask=ok, other=0.0).to(tl.float32)
            xc = tl.where(ok, x - tl.sum(x, 0) / C, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / C + eps)
            xhat = xc * rstd
            acc_shift += dy
            acc_scale += dy * xhat
            # d LayerNorm: dx = rstd * (dx̂ - mean(dx̂) - x̂ * mean(dx̂ * x̂)), with dx̂ = dy * (1 + scale).
            dxhat = dy * scale1
            dx = (dxhat - tl.sum(dxhat, 0) / C - xhat * (tl.sum(dxhat * xhat, 0) / C)) * rstd
            tl.store(dX + row * C + offs, dx.to(dX.dtype.element_ty), mask=ok)
        part = (group * tl.num_programs(1) + split) * C
        tl.store(dShiftPart + part + offs, acc_shift, mask=ok)
        tl.store(dScalePart + part + offs, acc_scale, mask=ok)


def _grouped(x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, int]:
    """shift/scale as contiguous (G, C) tables and the number of consecutive rows of x sharing a row."""
    c = x.shape[-1]
    rows = x.numel() // c

    def per_sample(t: Tensor) -> bool:
        shape = (1,) * (x.dim() - t.dim()) + tuple(t.shape)
        return x.dim() >= 2 and shape[-1] == c and all(s == 1 for s in shape[1:-1])

    if per_sample(shift) and per_sample(scale):
        n = x.shape[0]
        table = [t.reshape(-1, c).expand(n, c).contiguous() for t in (shift, scale)]
        return table[0], table[1], rows // n
    return (
        shift.expand(x.shape).reshape(rows, c).contiguous(),
        scale.expand(x.shape).reshape(rows, c).contiguous(),
        1,
    )


def triton_modulate_norm_fwd(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    assert triton is not None
    x = x.contiguous()
    sh, sc, rows_per_group = _grouped(x, shift, scale)
    c = x.shape[-1]
    y = torch.empty(x.shape, dtype=_out_dtype(x, shift, scale), device=x.device)
    block_c = triton.next_power_of_2(c)
    warps = 1 if interpreting() else min(16, max(4, block_c // 256))
    _modnorm_fwd[(x.numel() // c,)](x, sh, sc, y, c, rows_per_group, eps, BLOCK_C=block_c, num_warps=warps)
    return y


def triton_modulate_norm_bwd(
    grad: Tensor, x: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    assert triton is not None
    x, grad = x.contiguous(), grad.contiguous()
    _, sc, rows_per_group = _grouped(x, shift, scale)
    c = x.shape[-1]
    groups = x.numel() // c // rows_per_group
    # Enough programs to fill the GPU (~4 per SM on an H100), each summing a run of rows of one group.
    target = 4 if interpreting() else 528
    split = max(1, min(rows_per_group, triton.cdiv(target, groups)))
    rows_per_prog = triton.cdiv(rows_per_group, split)
    split = triton.cdiv(rows_per_group, rows_per_prog)
    dx = torch.empty_like(x)
    part_shift = torch.empty(groups, split, c, dtype=torch.float32, device=x.device)
    part_scale = torch.empty_like(part_shift)
    block_c = triton.next_power_of_2(c)
    warps = 1 if interpreting() else min(16, max(4, block_c // 256))
    _modnorm_bwd[(groups, split)](
        x, sc, grad, dx, part_shift, part_scale, c, rows_per_group, rows_per_prog, eps,
        BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    return dx, _reduce(part_shift.sum(1), x, shift), _reduce(part_scale.sum(1), x, scale)


def _reduce(table: Tensor, x: Tensor, like: Tensor) -> Tensor:
    """A (G, C) gradient table back to the shape and dtype of the shift/scale it belongs to."""
    if table.shape[0] * table.shape[1] == x.numel():
        full = table.reshape(x.shape)
    else:
        full = table.reshape(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
    return full.sum_to_size(like.shape).to(like.dtype)


def _out_dtype(x: Tensor, shift: Tensor, scale: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(x.dtype, shift.dtype), scale.dtype)


# ------------------------------------------------------------------------------ reference and ops


def modulate_norm_reference(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """The unfused expression the models compute: LayerNorm without affine, then adaLN modulation."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale) + shift


def _reference_bwd(
    grad: Tensor, x: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    xf, g = x.float(), grad.float()
    xc = xf - xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
    xhat = xc * rstd
    dxhat = g * (1 + scale.float())
    dx = rstd * (dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True))
    # copy=True: for a full-shape shift, sum_to_size returns the incoming gradient itself, and a custom
    # op's outputs must not alias its inputs.
    dshift = g.sum_to_size(shift.shape).to(shift.dtype, copy=True)
    dscale = (g * xhat).sum_to_size(scale.shape).to(scale.dtype)
    return dx.to(x.dtype), dshift, dscale


def _use_triton(x: Tensor) -> bool:
    return triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32)


@torch.library.custom_op("osp::modulate_norm", mutates_args=())
def modulate_norm_op(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    if _use_triton(x):
        return triton_modulate_norm_fwd(x, shift, scale, eps)
    return modulate_norm_reference(x, shift, scale, eps)


@modulate_norm_op.register_fake
def _(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    return x.new_empty(x.shape, dtype=_out_dtype(x, shift, scale))


@torch.library.custom_op("osp::modulate_norm_backward", mutates_args=())
def modulate_norm_backward(
    grad: Tensor, x: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    if _use_triton(x):
        return triton_modulate_norm_bwd(grad, x, shift, scale, eps)
    return _reference_bwd(grad, x, shift, scale, eps)


@modulate_norm_backward.register_fake
def _(grad: Tensor, x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(shift), torch.empty_like(scale)


def _setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, shift, scale, eps = inputs
    ctx.save_for_backward(x, shift, scale)
    ctx.eps = eps  # type: ignore[attr-defined]


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
    x, shift, scale = ctx.saved_tensors  # type: ignore[attr-defined]
    dx, dshift, dscale = torch.ops.osp.modulate_norm_backward(grad, x, shift, scale, ctx.eps)  # type: ignore[attr-defined]
    return dx, dshift, dscale, None


modulate_norm_op.register_autograd(_backward, setup_context=_setup)


def modulate_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """``LayerNorm(x, no affine, eps) * (1 + scale) + shift`` for x (..., C).

    ``shift`` and ``scale`` broadcast against x, e.g. (N, 1, ..., 1, C) as osp's blocks pass them or the
    full shape of x; a (N, C) pair with a 3-D or higher x is taken per sample, as DiT's ``modulate``
    unsqueezes it.
    """
    if x.dim() >= 3 and shift.dim() == 2 and scale.dim() == 2 and shift.shape[0] == x.shape[0]:
        view = (x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
        shift, scale = shift.reshape(view), scale.reshape(view)
    try:
        shape: torch.Size | None = torch.broadcast_shapes(x.shape, shift.shape, scale.shape)
    except RuntimeError:  # torch's message for shapes that do not broadcast at all
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"modulate_norm: shift{tuple(shift.shape)} and scale{tuple(scale.shape)} must broadcast to "
            f"x{tuple(x.shape)}"
        )
    return torch.ops.osp.modulate_norm(x, shift, scale, float(eps))


def triton_modulate_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """The Triton kernels on any device Triton launches on (CPU under ``TRITON_INTERPRET=1``), with autograd."""
    if triton is None:
        raise ImportError("triton_modulate_norm needs triton (pip install 'osp[kernels]')")
    return _TritonModulateNorm.apply(x, shift, scale, float(eps))


class _TritonModulateNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(x, shift, scale)
        ctx.eps = eps
        return triton_modulate_norm_fwd(x, shift, scale, eps)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        x, shift, scale = ctx.saved_tensors
        return (*triton_modulate_norm_bwd(grad, x, shift, scale, ctx.eps), None)
