"""Fused adaLN modulate + LayerNorm: ``LayerNorm(x, no affine, eps) * (1 + scale) + shift`` in one pass.

Unfused, a DiT / Latte block reads and writes the (B, ..., L, C) activations three times around each
attention and MLP (norm, multiply, add); the kernel reads x once and writes y once, the op being
memory-bound. ``shift`` and ``scale`` broadcast against x; the kernels take the two layouts osp's blocks
produce without copying: one (C,) vector per sample (shape (B, 1, ..., 1, C)) or one per row (full shape).
Anything else is expanded to full shape first.

The forward gives each program a tile of several rows (:func:`fwd_config`): one row of 1152 channels is
2.3 KB, too little work per program to keep enough loads in flight to use HBM's bandwidth. The width is
covered by a power-of-two part and, when C is not a power of two, a second power-of-two part
(1152 = 1024 + 128) instead of one part padded to 2048, so no lane and no register is spent on padding.
x may be a strided view (up to three leading dimensions, unit stride along C), as a block's transposed
activations are: it is read in place instead of being copied first.

The backward recomputes each row's mean and 1/std (the row is read anyway) and accumulates the
per-sample dshift = Σ dy and dscale = Σ dy·x̂ in registers over a run of rows, writing one partial sum per
program; torch adds the few partials. No atomics, so the gradients are deterministic.

``osp::modulate_norm`` runs the kernels on CUDA and the plain-torch expression elsewhere; it is the node
graphs hold. In eager mode :func:`modulate_norm` calls the same code through a plain autograd Function,
which costs a fraction of a custom op's host time (see ``osp.kernels.attention``).
"""

import torch
import torch.nn.functional as F

from .attention import tracing

try:
    import triton
    import triton.language as tl

    from ._attention_triton import interpreting
except ImportError:
    triton = None

Tensor = torch.Tensor

if triton is not None:

    @triton.jit
    def _modnorm_fwd(
        X, Shift, Scale, Y, n_rows, C, S1, S2, sx0, sx1, sx2, rows_per_group, s_shift, s_scale, eps,
        ROWS: tl.constexpr, C0: tl.constexpr, C1: tl.constexpr, ONE_GROUP: tl.constexpr,
    ):  # fmt: skip
        # Rows r of the program's tile, in x's logical order; x is read as (S0, S1, S2, C) with strides
        # (sx0, sx1, sx2, 1), y is written contiguous.
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < n_rows
        x_row = X + (rows // (S1 * S2)) * sx0 + ((rows // S2) % S1) * sx1 + (rows % S2) * sx2
        y_row = Y + rows * C
        # Part 0 holds channels [0, C0) with C0 <= C: only the row mask applies, so loads stay whole vectors.
        cols0 = tl.arange(0, C0)
        x0 = tl.load(x_row[:, None] + cols0[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        total = tl.sum(x0, 1)
        if C1 > 0:  # channels [C0, C), padded to the power of two C1
            cols1 = C0 + tl.arange(0, C1)
            ok1 = row_ok[:, None] & (cols1 < C)[None, :]
            x1 = tl.load(x_row[:, None] + cols1[None, :], mask=ok1, other=0.0).to(tl.float32)
            total += tl.sum(x1, 1)
        mean = total / C
        xc0 = x0 - mean[:, None]
        var = tl.sum(xc0 * xc0, 1)
        if C1 > 0:
            xc1 = tl.where(ok1, x1 - mean[:, None], 0.0)
            var += tl.sum(xc1 * xc1, 1)
        rstd = 1.0 / tl.sqrt(var / C + eps)
        if ONE_GROUP:  # every row of the tile shares one shift/scale row: load it once, as a vector
            group = (tl.program_id(0).to(tl.int64) * ROWS) // rows_per_group
            shift0 = tl.load(Shift + group * s_shift + cols0).to(tl.float32)[None, :]
            scale0 = tl.load(Scale + group * s_scale + cols0).to(tl.float32)[None, :]
        else:
            group = (rows // rows_per_group)[:, None]
            shift0 = tl.load(Shift + group * s_shift + cols0[None, :], mask=row_ok[:, None]).to(tl.float32)
            scale0 = tl.load(Scale + group * s_scale + cols0[None, :], mask=row_ok[:, None]).to(tl.float32)
        y0 = xc0 * rstd[:, None] * (1.0 + scale0) + shift0
        tl.store(y_row[:, None] + cols0[None, :], y0.to(Y.dtype.element_ty), mask=row_ok[:, None])
        if C1 > 0:
            if ONE_GROUP:
                shift1 = tl.load(Shift + group * s_shift + cols1, mask=cols1 < C).to(tl.float32)[None, :]
                scale1 = tl.load(Scale + group * s_scale + cols1, mask=cols1 < C).to(tl.float32)[None, :]
            else:
                shift1 = tl.load(Shift + group * s_shift + cols1[None, :], mask=ok1).to(tl.float32)
                scale1 = tl.load(Scale + group * s_scale + cols1[None, :], mask=ok1).to(tl.float32)
            y1 = xc1 * rstd[:, None] * (1.0 + scale1) + shift1
            tl.store(y_row[:, None] + cols1[None, :], y1.to(Y.dtype.element_ty), mask=ok1)

    @triton.jit
    def _modnorm_bwd(
        X, Scale, dY, dX, dShiftPart, dScalePart, C, rows_per_group, rows_per_prog, s_scale, eps,
        BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        # Program (g, s) handles rows [s*rows_per_prog, (s+1)*rows_per_prog) of group g.
        group = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        offs = tl.arange(0, BLOCK_C)
        ok = offs < C
        scale1 = 1.0 + tl.load(Scale + group * s_scale + offs, mask=ok, other=0.0).to(tl.float32)
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


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def fwd_config(channels: int) -> dict[str, int]:
    """The forward's tile for a width: ``C0`` + ``C1`` channels (two powers of two covering C), ``ROWS``
    rows per program and ``num_warps``.

    About 6K elements per tile and 32 per thread: each thread then has four to five 16-byte loads of x
    in flight, and its registers leave room for several programs per SM (1152 channels: 4 rows, 4 warps).
    """
    c0 = _pow2_floor(channels)
    c1 = 0 if channels == c0 else triton.next_power_of_2(channels - c0)
    rows = min(32, _pow2_floor(6144 // (c0 + c1)))
    warps = min(16, _pow2_floor(rows * (c0 + c1) // 1024))
    return {"C0": c0, "C1": c1, "ROWS": rows, "num_warps": warps}


def _row_view(x: Tensor) -> tuple[Tensor, list[int], list[int]]:
    """x (or a contiguous copy when it cannot be read so) with its rows as (S0, S1, S2) and their strides."""
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        x = x.contiguous()
    dims: list[list[int]] = []  # [size, stride] of the leading dimensions, merged where they are one run
    for size, stride in zip(x.shape[:-1], x.stride()[:-1], strict=True):
        if size == 1:
            continue
        if dims and dims[-1][1] == size * stride:
            dims[-1] = [dims[-1][0] * size, stride]
        else:
            dims.append([size, stride])
    if len(dims) > 3:
        x = x.contiguous()
        dims = [[x.numel() // x.shape[-1], x.shape[-1]]]
    dims += [[1, 0]] * (3 - len(dims))  # size-1 inner dims: a contiguous x reads as (rows, 1, 1)
    return x, [d[0] for d in dims], [d[1] for d in dims]


def _tables(x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, int, Tensor, int, int]:
    """shift and scale as row tables with their row strides (0: one row shared by every sample), and the
    number of consecutive rows of x that share a table row."""
    c = x.shape[-1]
    rows = x.numel() // c

    def per_sample(t: Tensor) -> bool:
        shape = (1,) * (x.dim() - t.dim()) + tuple(t.shape)
        return x.dim() >= 2 and shape[-1] == c and all(s == 1 for s in shape[1:-1])

    grouped = per_sample(shift) and per_sample(scale)

    def table(t: Tensor) -> tuple[Tensor, int]:
        # per sample: (1 or N, C); otherwise one row of the table per row of x
        t = t.reshape(-1, c) if grouped else t.expand(x.shape).reshape(rows, c)
        if t.stride(-1) != 1 and c > 1:
            t = t.contiguous()
        return t, t.stride(0) if t.shape[0] > 1 else 0

    (sh, s_sh), (sc, s_sc) = table(shift), table(scale)
    return sh, s_sh, sc, s_sc, rows // x.shape[0] if grouped else 1


def triton_modulate_norm_fwd(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float, config: dict[str, int] | None = None
) -> Tensor:
    """The forward kernel; ``config`` overrides :func:`fwd_config`'s ``ROWS`` / ``num_warps`` (benchmarks)."""
    assert triton is not None
    c = x.shape[-1]
    y = torch.empty(x.shape, dtype=_out_dtype(x, shift, scale), device=x.device)
    rows = x.numel() // max(c, 1)
    if rows == 0 or c == 0:
        return y
    x, sizes, strides = _row_view(x)
    sh, s_sh, sc, s_sc, rows_per_group = _tables(x, shift, scale)
    cfg = fwd_config(c) | (config or {})
    _modnorm_fwd[(triton.cdiv(rows, cfg["ROWS"]),)](
        x, sh, sc, y, rows, c, sizes[1], sizes[2], *strides, rows_per_group, s_sh, s_sc, eps,
        ROWS=cfg["ROWS"], C0=cfg["C0"], C1=cfg["C1"], ONE_GROUP=rows_per_group % cfg["ROWS"] == 0,
        num_warps=cfg["num_warps"],
    )  # fmt: skip
    return y


def triton_modulate_norm_bwd(
    grad: Tensor, x: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    assert triton is not None
    x, grad = x.contiguous(), grad.contiguous()
    _, _, sc, s_sc, rows_per_group = _tables(x, shift, scale)
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
        x, sc, grad, dx, part_shift, part_scale, c, rows_per_group, rows_per_prog, s_sc, eps,
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
    """The unfused expression the models compute: LayerNorm without affine, then adaLN modulation
    (shift + norm(x) * (1 + scale) in one addcmul, as osp.layers.norm spells it)."""
    return torch.addcmul(shift, F.layer_norm(x, (x.shape[-1],), eps=eps), 1 + scale)


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


def _forward(x: Tensor, shift: Tensor, scale: Tensor, eps: float, use_triton: bool) -> Tensor:
    if use_triton:
        return triton_modulate_norm_fwd(x, shift, scale, eps)
    return modulate_norm_reference(x, shift, scale, eps)


def _backward(
    grad: Tensor, x: Tensor, shift: Tensor, scale: Tensor, eps: float, use_triton: bool
) -> tuple[Tensor, Tensor, Tensor]:
    if use_triton:
        return triton_modulate_norm_bwd(grad, x, shift, scale, eps)
    return _reference_bwd(grad, x, shift, scale, eps)


@torch.library.custom_op("osp::modulate_norm", mutates_args=())
def modulate_norm_op(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    return _forward(x, shift, scale, eps, _use_triton(x))


@modulate_norm_op.register_fake
def _(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    return x.new_empty(x.shape, dtype=_out_dtype(x, shift, scale))


@torch.library.custom_op("osp::modulate_norm_backward", mutates_args=())
def modulate_norm_backward(
    grad: Tensor, x: Tensor, shift: Tensor, scale: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(grad, x, shift, scale, eps, _use_triton(x))


@modulate_norm_backward.register_fake
def _(grad: Tensor, x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(shift), torch.empty_like(scale)


def _setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, shift, scale, eps = inputs
    ctx.save_for_backward(x, shift, scale)
    ctx.eps = eps  # type: ignore[attr-defined]


def _backward_op(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
    x, shift, scale = ctx.saved_tensors  # type: ignore[attr-defined]
    dx, dshift, dscale = torch.ops.osp.modulate_norm_backward(grad, x, shift, scale, ctx.eps)  # type: ignore[attr-defined]
    return dx, dshift, dscale, None


modulate_norm_op.register_autograd(_backward_op, setup_context=_setup)


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    # What torch.broadcast_shapes(target, shape) == target says, at a twentieth of its host time.
    lead = len(target) - len(shape)
    return lead >= 0 and all(s in (1, t) for s, t in zip(shape, target[lead:], strict=True))


def modulate_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """``LayerNorm(x, no affine, eps) * (1 + scale) + shift`` for x (..., C).

    ``shift`` and ``scale`` broadcast against x, e.g. (N, 1, ..., 1, C) as osp's blocks pass them or the
    full shape of x; a (N, C) pair with a 3-D or higher x is taken per sample, as DiT's ``modulate``
    unsqueezes it.
    """
    if x.dim() >= 3 and shift.dim() == 2 and scale.dim() == 2 and shift.shape[0] == x.shape[0]:
        view = (x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
        shift, scale = shift.reshape(view), scale.reshape(view)
    if not (_broadcasts(shift.shape, x.shape) and _broadcasts(scale.shape, x.shape)):
        raise ValueError(
            f"modulate_norm: shift{tuple(shift.shape)} and scale{tuple(scale.shape)} must broadcast to "
            f"x{tuple(x.shape)}"
        )
    eps = float(eps)
    if tracing():
        return torch.ops.osp.modulate_norm(x, shift, scale, eps)
    use_triton = _use_triton(x)
    if torch.is_grad_enabled() and (x.requires_grad or shift.requires_grad or scale.requires_grad):
        return _ModulateNorm.apply(x, shift, scale, eps, use_triton)
    return _forward(x, shift, scale, eps, use_triton)


class _ModulateNorm(torch.autograd.Function):
    """The kernels (``use_triton``) or the reference with their own backward, without the ops' dispatch."""

    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor, scale: Tensor, eps: float, use_triton: bool) -> Tensor:
        ctx.save_for_backward(x, shift, scale)
        ctx.eps, ctx.use_triton = eps, use_triton
        return _forward(x, shift, scale, eps, use_triton)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        x, shift, scale = ctx.saved_tensors
        return (*_backward(grad, x, shift, scale, ctx.eps, ctx.use_triton), None, None)


def triton_modulate_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """The Triton kernels on any device Triton launches on (CPU under ``TRITON_INTERPRET=1``), with autograd."""
    if triton is None:
        raise ImportError("triton_modulate_norm needs triton (pip install 'osp[kernels]')")
    return _ModulateNorm.apply(x, shift, scale, float(eps), True)
