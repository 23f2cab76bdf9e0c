"""Flash-attention forward and backward in Triton, and the launchers that size their tiles.

The math (Dao et al., FlashAttention, Alg. 1-2): each program owns a block of queries and streams the
keys and values past it, keeping a running row maximum ``m``, a running normaliser ``l`` and an unnormalised
output ``acc``, so the (Lq, Lk) score matrix never exists in memory. Exponentials are base 2 (``exp2`` is
one instruction; the scale folds ``log2 e`` in), and the forward stores the per-row log-sum-exp (natural
log) so the backward can rebuild every probability with one ``exp`` instead of a second softmax.

The backward first forms ``delta = rowsum(dO * O)`` (the softmax-Jacobian term), then runs two kernels:
one holds a block of keys and streams queries to accumulate dK and dV, the other holds a block of queries
and streams keys to accumulate dQ. Two kernels cost one extra QKᵀ recomputation but need no atomics, so the
result is deterministic.

Head dims that are not a power of two are split, not padded: ``tl.dot`` needs power-of-two tiles of at
least 16, so the head dim is covered by a D0-wide part and a D1-wide part (72 = 64 + 16, with 8 columns
masked), each with its own dot and accumulator. Latte-XL's 72 then costs 80 columns of work instead of
128 (FlashAttention-2/3 round 72 up to their 96-wide kernels). Loads past HEAD_DIM read zeros, which add
nothing to a dot product, and stores are masked.

Strides arrive divided by ALIGN (the largest of 8/4/2/1 elements dividing them all) and the kernels
multiply them back by that constant: the compiler then knows every row starts on an ALIGN-element
boundary and issues 16-byte vector loads and asynchronous copies. Triton's own argument specialisation
only records divisibility by 16, which a row stride of 72 misses; without the hint every element of a
head-dim-72 tile was loaded on its own.

A key-padding mask (B, Lk), nonzero = attend, turns masked scores into -inf. A query row with no key
left gets output 0 and log-sum-exp +inf, so every recomputed probability of that row is exp(-inf) = 0.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _load(base, offs_r, stride_r, r_ok, offs_d, HEAD_DIM: tl.constexpr, MASK_R: tl.constexpr,
          MASK_D: tl.constexpr):  # fmt: skip
    """A (rows, D) tile at base + row * stride_r + col, zeros outside the rows / HEAD_DIM columns.
    Masks are compile-time choices: the common full tiles load unmasked."""
    ptrs = base + offs_r[:, None] * stride_r + offs_d[None, :]
    if MASK_R and MASK_D:
        return tl.load(ptrs, mask=r_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    elif MASK_R:
        return tl.load(ptrs, mask=r_ok[:, None], other=0.0)
    elif MASK_D:
        return tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _store(base, offs_r, stride_r, r_ok, offs_d, value, HEAD_DIM: tl.constexpr, MASK_R: tl.constexpr,
           MASK_D: tl.constexpr):  # fmt: skip
    ptrs = base + offs_r[:, None] * stride_r + offs_d[None, :]
    value = value.to(base.dtype.element_ty)
    if MASK_R and MASK_D:
        tl.store(ptrs, value, mask=r_ok[:, None] & (offs_d < HEAD_DIM)[None, :])
    elif MASK_R:
        tl.store(ptrs, value, mask=r_ok[:, None])
    elif MASK_D:
        tl.store(ptrs, value, mask=(offs_d < HEAD_DIM)[None, :])
    else:
        tl.store(ptrs, value)


@triton.jit
def _fwd_inner(
    Q, K, V, Mask, Out, Lse, sm_scale,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, smb,
    H, Lq, Lk,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, STORE_LSE: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    ALIGN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # Axis 0 is batch*heads: it may exceed the 65535 limit of grid axes 1 and 2 (temporal attention has
    # batch*H*W rows). int64 offsets: a (B*H, L, D) tensor can pass 2**31 elements.
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    q_base = Q + b * (sqb * ALIGN) + h * (sqh * ALIGN)
    k_base = K + b * (skb * ALIGN) + h * (skh * ALIGN)
    v_base = V + b * (svb * ALIGN) + h * (svh * ALIGN)
    sqm, skn, svn = sqm * ALIGN, skn * ALIGN, svn * ALIGN
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Lq
    offs_d0 = tl.arange(0, D0)
    q0 = _load(q_base, offs_m, sqm, m_ok, offs_d0, HEAD_DIM, not EVEN_M, D0 > HEAD_DIM)
    acc0 = tl.zeros([BLOCK_M, D0], tl.float32)
    if D1 > 0:
        offs_d1 = D0 + tl.arange(0, D1)
        q1 = _load(q_base, offs_m, sqm, m_ok, offs_d1, HEAD_DIM, not EVEN_M, D0 + D1 > HEAD_DIM)
        acc1 = tl.zeros([BLOCK_M, D1], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # scores in log2 units
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_in = offs_n < Lk
        k0 = _load(k_base, offs_n, skn, n_in, offs_d0, HEAD_DIM, not EVEN_N, D0 > HEAD_DIM)
        v0 = _load(v_base, offs_n, svn, n_in, offs_d0, HEAD_DIM, not EVEN_N, D0 > HEAD_DIM)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N), fp32
        if D1 > 0:
            k1 = _load(k_base, offs_n, skn, n_in, offs_d1, HEAD_DIM, not EVEN_N, D0 + D1 > HEAD_DIM)
            v1 = _load(v_base, offs_n, svn, n_in, offs_d1, HEAD_DIM, not EVEN_N, D0 + D1 > HEAD_DIM)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=DOT_PRECISION)
        s = s * qk_scale
        if HAS_MASK:
            n_ok = n_in & (tl.load(Mask + b * smb + offs_n, mask=n_in, other=0) != 0)
            s = tl.where(n_ok[None, :], s, float("-inf"))
        elif not EVEN_N:
            s = tl.where(n_in[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if HAS_MASK:
            # Until a row has seen one valid key its max is -inf; exp2(-inf - -inf) would be NaN. Without
            # a mask the first key tile always holds a valid key, so the max is finite from the start.
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_ref = m_new
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        p_lo = p.to(v0.dtype)
        acc0 = tl.dot(p_lo, v0, acc0 * alpha[:, None], input_precision=DOT_PRECISION)
        if D1 > 0:
            acc1 = tl.dot(p_lo, v1, acc1 * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    empty = l_i == 0.0
    inv_l = 1.0 / tl.where(empty, 1.0, l_i)
    o_base = Out + b * (sob * ALIGN) + h * (soh * ALIGN)
    _store(o_base, offs_m, som * ALIGN, m_ok, offs_d0, acc0 * inv_l[:, None], HEAD_DIM, not EVEN_M,
           D0 > HEAD_DIM)  # fmt: skip
    if D1 > 0:
        _store(o_base, offs_m, som * ALIGN, m_ok, offs_d1, acc1 * inv_l[:, None], HEAD_DIM, not EVEN_M,
               D0 + D1 > HEAD_DIM)  # fmt: skip
    if STORE_LSE:
        lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        tl.store(Lse + bh * Lq + offs_m, lse, mask=m_ok)


@triton.jit
def _attn_fwd(
    Q, K, V, Mask, Out, Lse, sm_scale,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, smb,
    H, Lq, Lk,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, STORE_LSE: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    ALIGN: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    _fwd_inner(Q, K, V, Mask, Out, Lse, sm_scale, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
               sob, soh, som, smb, H, Lq, Lk, HEAD_DIM, D0, D1, BLOCK_M, BLOCK_N, HAS_MASK, STORE_LSE,
               EVEN_M, EVEN_N, ALIGN, DOT_PRECISION)  # fmt: skip


# TensorRT's ahead-of-time plugins launch a kernel as (inputs..., int32 scalars..., outputs...), so these
# entries take contiguous (B, H, L, D) tensors in that order and derive every stride from the shapes
# (HEAD_DIM is a constant there, so the compiler sees the row alignment without ALIGN).
@triton.jit
def _attn_fwd_trt(
    Q, K, V, H, Lq, Lk, Out, sm_scale: tl.constexpr,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    _fwd_inner(Q, K, V, Q, Out, Out, sm_scale, H * Lq * HEAD_DIM, Lq * HEAD_DIM, HEAD_DIM,
               H * Lk * HEAD_DIM, Lk * HEAD_DIM, HEAD_DIM, H * Lk * HEAD_DIM, Lk * HEAD_DIM, HEAD_DIM,
               H * Lq * HEAD_DIM, Lq * HEAD_DIM, HEAD_DIM, 0, H, Lq, Lk,
               HEAD_DIM, D0, D1, BLOCK_M, BLOCK_N, False, False, False, False, 1, "tf32")  # fmt: skip


@triton.jit
def _attn_fwd_trt_masked(
    Q, K, V, Mask, H, Lq, Lk, Out, sm_scale: tl.constexpr,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    _fwd_inner(Q, K, V, Mask, Out, Out, sm_scale, H * Lq * HEAD_DIM, Lq * HEAD_DIM, HEAD_DIM,
               H * Lk * HEAD_DIM, Lk * HEAD_DIM, HEAD_DIM, H * Lk * HEAD_DIM, Lk * HEAD_DIM, HEAD_DIM,
               H * Lq * HEAD_DIM, Lq * HEAD_DIM, HEAD_DIM, Lk, H, Lq, Lk,
               HEAD_DIM, D0, D1, BLOCK_M, BLOCK_N, True, False, False, False, 1, "tf32")  # fmt: skip


@triton.jit
def _bwd_delta(
    Out, dO, Delta, sob, soh, som, sdb, sdh, sdm, H, Lq,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    # delta_i = sum_d dO_id * O_id; Out and dO keep their strides (divided by ALIGN).
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Lq)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o_ptrs = Out + b * (sob * ALIGN) + h * (soh * ALIGN) + offs_m[:, None] * (som * ALIGN) + offs_d[None, :]
    do_ptrs = dO + b * (sdb * ALIGN) + h * (sdh * ALIGN) + offs_m[:, None] * (sdm * ALIGN) + offs_d[None, :]
    o = tl.load(o_ptrs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(do_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + bh * Lq + offs_m, tl.sum(o * do, 1), mask=offs_m < Lq)


@triton.jit
def _bwd_dkdv(
    Q, K, V, Mask, dO, Lse, Delta, dK, dV, sm_scale,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm, smb,
    H, Lq, Lk,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, ALIGN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # dK, dV, Lse and Delta are contiguous; q/k/v/dO keep their strides (divided by ALIGN).
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    q_base = Q + b * (sqb * ALIGN) + h * (sqh * ALIGN)
    k_base = K + b * (skb * ALIGN) + h * (skh * ALIGN)
    v_base = V + b * (svb * ALIGN) + h * (svh * ALIGN)
    do_base = dO + b * (sdb * ALIGN) + h * (sdh * ALIGN)
    sqm, skn, svn, sdm = sqm * ALIGN, skn * ALIGN, svn * ALIGN, sdm * ALIGN
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_in = offs_n < Lk
    offs_d0 = tl.arange(0, D0)
    k0 = _load(k_base, offs_n, skn, n_in, offs_d0, HEAD_DIM, not EVEN_N, D0 > HEAD_DIM)
    v0 = _load(v_base, offs_n, svn, n_in, offs_d0, HEAD_DIM, not EVEN_N, D0 > HEAD_DIM)
    dk0 = tl.zeros([BLOCK_N, D0], tl.float32)
    dv0 = tl.zeros([BLOCK_N, D0], tl.float32)
    if D1 > 0:
        offs_d1 = D0 + tl.arange(0, D1)
        k1 = _load(k_base, offs_n, skn, n_in, offs_d1, HEAD_DIM, not EVEN_N, D0 + D1 > HEAD_DIM)
        v1 = _load(v_base, offs_n, svn, n_in, offs_d1, HEAD_DIM, not EVEN_N, D0 + D1 > HEAD_DIM)
        dk1 = tl.zeros([BLOCK_N, D1], tl.float32)
        dv1 = tl.zeros([BLOCK_N, D1], tl.float32)
    if HAS_MASK:
        n_ok = n_in & (tl.load(Mask + b * smb + offs_n, mask=n_in, other=0) != 0)
    qk_scale = sm_scale * 1.4426950408889634
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < Lq
        q0 = _load(q_base, offs_m, sqm, m_ok, offs_d0, HEAD_DIM, not EVEN_M, D0 > HEAD_DIM)
        do0 = _load(do_base, offs_m, sdm, m_ok, offs_d0, HEAD_DIM, not EVEN_M, D0 > HEAD_DIM)
        # Rows past Lq get lse = +inf, hence p = 0: they add nothing. Padded keys (past Lk) give rows
        # of dK / dV that are never stored.
        lse = tl.load(Lse + bh * Lq + offs_m, mask=m_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(Delta + bh * Lq + offs_m, mask=m_ok, other=0.0)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if D1 > 0:
            q1 = _load(q_base, offs_m, sqm, m_ok, offs_d1, HEAD_DIM, not EVEN_M, D0 + D1 > HEAD_DIM)
            do1 = _load(do_base, offs_m, sdm, m_ok, offs_d1, HEAD_DIM, not EVEN_M, D0 + D1 > HEAD_DIM)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale - lse[:, None])
        if HAS_MASK:
            p = tl.where(n_ok[None, :], p, 0.0)
        p_t = tl.trans(p.to(do0.dtype))
        dv0 = tl.dot(p_t, do0, dv0, input_precision=DOT_PRECISION)
        dp = tl.dot(do0, tl.trans(v0), input_precision=DOT_PRECISION)
        if D1 > 0:
            dv1 = tl.dot(p_t, do1, dv1, input_precision=DOT_PRECISION)
            dp = tl.dot(do1, tl.trans(v1), dp, input_precision=DOT_PRECISION)
        ds_t = tl.trans((p * (dp - delta[:, None])).to(q0.dtype))
        dk0 = tl.dot(ds_t, q0, dk0, input_precision=DOT_PRECISION)
        if D1 > 0:
            dk1 = tl.dot(ds_t, q1, dk1, input_precision=DOT_PRECISION)
    out_base = bh * Lk * HEAD_DIM
    _store(
        dK + out_base, offs_n, HEAD_DIM, n_in, offs_d0, dk0 * sm_scale, HEAD_DIM, not EVEN_N, D0 > HEAD_DIM
    )
    _store(dV + out_base, offs_n, HEAD_DIM, n_in, offs_d0, dv0, HEAD_DIM, not EVEN_N, D0 > HEAD_DIM)
    if D1 > 0:
        _store(dK + out_base, offs_n, HEAD_DIM, n_in, offs_d1, dk1 * sm_scale, HEAD_DIM, not EVEN_N,
               D0 + D1 > HEAD_DIM)  # fmt: skip
        _store(dV + out_base, offs_n, HEAD_DIM, n_in, offs_d1, dv1, HEAD_DIM, not EVEN_N, D0 + D1 > HEAD_DIM)


@triton.jit
def _bwd_dq(
    Q, K, V, Mask, dO, Lse, Delta, dQ, sm_scale,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm, smb,
    H, Lq, Lk,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, ALIGN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    q_base = Q + b * (sqb * ALIGN) + h * (sqh * ALIGN)
    k_base = K + b * (skb * ALIGN) + h * (skh * ALIGN)
    v_base = V + b * (svb * ALIGN) + h * (svh * ALIGN)
    do_base = dO + b * (sdb * ALIGN) + h * (sdh * ALIGN)
    sqm, skn, svn, sdm = sqm * ALIGN, skn * ALIGN, svn * ALIGN, sdm * ALIGN
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Lq
    offs_d0 = tl.arange(0, D0)
    q0 = _load(q_base, offs_m, sqm, m_ok, offs_d0, HEAD_DIM, not EVEN_M, D0 > HEAD_DIM)
    do0 = _load(do_base, offs_m, sdm, m_ok, offs_d0, HEAD_DIM, not EVEN_M, D0 > HEAD_DIM)
    dq0 = tl.zeros([BLOCK_M, D0], tl.float32)
    if D1 > 0:
        offs_d1 = D0 + tl.arange(0, D1)
        q1 = _load(q_base, offs_m, sqm, m_ok, offs_d1, HEAD_DIM, not EVEN_M, D0 + D1 > HEAD_DIM)
        do1 = _load(do_base, offs_m, sdm, m_ok, offs_d1, HEAD_DIM, not EVEN_M, D0 + D1 > HEAD_DIM)
        dq1 = tl.zeros([BLOCK_M, D1], tl.float32)
    lse = tl.load(Lse + bh * Lq + offs_m, mask=m_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(Delta + bh * Lq + offs_m, mask=m_ok, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_in = offs_n < Lk
        k0 = _load(k_base, offs_n, skn, n_in, offs_d0, HEAD_DIM, not EVEN_N, D0 > HEAD_DIM)
        v0 = _load(v_base, offs_n, svn, n_in, offs_d0, HEAD_DIM, not EVEN_N, D0 > HEAD_DIM)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)
        dp = tl.dot(do0, tl.trans(v0), input_precision=DOT_PRECISION)
        if D1 > 0:
            k1 = _load(k_base, offs_n, skn, n_in, offs_d1, HEAD_DIM, not EVEN_N, D0 + D1 > HEAD_DIM)
            v1 = _load(v_base, offs_n, svn, n_in, offs_d1, HEAD_DIM, not EVEN_N, D0 + D1 > HEAD_DIM)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=DOT_PRECISION)
            dp = tl.dot(do1, tl.trans(v1), dp, input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale - lse[:, None])
        if HAS_MASK:
            p = tl.where(
                (n_in & (tl.load(Mask + b * smb + offs_n, mask=n_in, other=0) != 0))[None, :], p, 0.0
            )
        # Padded keys (past Lk) load as zero rows of K: whatever their ds, they add nothing to dQ.
        ds = (p * (dp - delta[:, None])).to(k0.dtype)
        dq0 = tl.dot(ds, k0, dq0, input_precision=DOT_PRECISION)
        if D1 > 0:
            dq1 = tl.dot(ds, k1, dq1, input_precision=DOT_PRECISION)
    dq_base = dQ + bh * Lq * HEAD_DIM
    _store(dq_base, offs_m, HEAD_DIM, m_ok, offs_d0, dq0 * sm_scale, HEAD_DIM, not EVEN_M, D0 > HEAD_DIM)
    if D1 > 0:
        _store(dq_base, offs_m, HEAD_DIM, m_ok, offs_d1, dq1 * sm_scale, HEAD_DIM, not EVEN_M,
               D0 + D1 > HEAD_DIM)  # fmt: skip


# ------------------------------------------------------------------------------------------ launchers


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def split_head_dim(head_dim: int) -> tuple[int, int]:
    """(D0, D1): the head dim as a power-of-two part and a smaller power-of-two part (0 when one suffices).

    Both are >= 16 (``tl.dot``'s smallest K). 72 -> (64, 16): 80 columns of work instead of 128; 40 ->
    (32, 16); 96 -> (64, 32). Where the two parts would cost as much as the next power of two (24, 112),
    one part of that width.
    """
    whole = _pow2(head_dim)
    d0 = max(16, 1 << (head_dim.bit_length() - 1))
    d1 = 0 if head_dim <= d0 else _pow2(head_dim - d0)
    if d1 and d0 + d1 >= whole:
        return whole, 0
    return (d0, d1) if d1 else (whole, 0)


def fwd_config(lq: int, lk: int, head_dim: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Tile sizes and warps of the forward kernel (Hopper-sized; the interpreter wants few, large tiles).

    Temporal attention (Lk <= 64) fits all keys in one tile, so the loop runs once and the kernel is a
    single pass over memory; spatial attention streams 64-key tiles past 128 queries. Up to 80 columns
    (head dim 72 is 64 + 16) one warpgroup owns the 128 rows: on an H200 it ran at 343 TFLOP/s against
    270 for two warpgroups at head dim 72, L 4096 (benchmarks/attention_tune.py). fp32 tiles are
    smaller: twice the bytes per element, and without TF32 its dots are FMAs in registers. Every
    configuration here compiles for sm_90 without register spills (tests/kernels/test_kernel_sm90.py).
    """
    dims = dict(zip(("D0", "D1"), split_head_dim(head_dim), strict=True))
    width = dims["D0"] + dims["D1"]
    if interpreting():
        return {"BLOCK_M": min(32, _pow2(lq)), "BLOCK_N": min(32, _pow2(lk)), **dims,
                "num_warps": 1, "num_stages": 1}  # fmt: skip
    if lk <= 64:
        if dtype == torch.float32:
            warps = 4 if lk <= 32 and width <= 96 else 8  # ptxas spills the other mixes
            return {
                "BLOCK_M": min(32, _pow2(lq)),
                "BLOCK_N": _pow2(lk),
                **dims,
                "num_warps": warps,
                "num_stages": 2,
            }
        return {"BLOCK_M": min(64, _pow2(lq)), "BLOCK_N": _pow2(lk), **dims, "num_warps": 4, "num_stages": 2}
    if dtype == torch.float32 or width > 128:
        return {"BLOCK_M": 64, "BLOCK_N": 32, **dims, "num_warps": 8, "num_stages": 2}
    return {"BLOCK_M": 128, "BLOCK_N": 64, **dims, "num_warps": 4 if width <= 80 else 8, "num_stages": 3}


def bwd_config(
    lq: int, lk: int, head_dim: int, dtype: torch.dtype = torch.bfloat16
) -> tuple[dict[str, int], dict[str, int]]:
    """Tile sizes and warps of the two backward kernels: (dK/dV kernel, dQ kernel).

    16-bit: 64x64 tiles, so every dot is a wgmma on 64 rows per warpgroup (32-row tiles fall back to
    mma.sync); eight warps above 64 columns keep dK and dV's accumulators in registers. fp32: the dK/dV
    kernel holds four accumulators and must stay narrow.
    """
    dims = dict(zip(("D0", "D1"), split_head_dim(head_dim), strict=True))
    width = dims["D0"] + dims["D1"]

    def cfg(block_m: int, block_n: int, warps: int, stages: int) -> dict[str, int]:
        return {"BLOCK_M": min(block_m, _pow2(lq)), "BLOCK_N": min(block_n, _pow2(lk)), **dims,
                "num_warps": warps, "num_stages": stages}  # fmt: skip

    if interpreting():
        one = cfg(32, 32, 1, 1)
        return one, one
    if dtype == torch.float32:
        return cfg(16, 32, 8, 1), cfg(32, 32, 4 if width <= 64 else 8, 2)
    if width > 128:
        return cfg(32, 32, 8, 1), cfg(32, 32, 8, 1)
    both = cfg(64, 64, 4 if width <= 64 else 8, 2)
    return both, both


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _mask_arg(q: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """A (B, Lk) int8 mask and its batch stride; without a mask any pointer does (never read)."""
    if mask is None:
        return q, 0
    m = mask.to(torch.int8).contiguous()
    return m, m.stride(0)


def _align(*tensors: torch.Tensor) -> int:
    """The largest of 8, 4, 2, 1 elements that divides every row stride and data pointer (vector loads)."""
    for n in (8, 4, 2):
        if all(t.data_ptr() % (n * t.element_size()) == 0 and all(s % n == 0 for s in t.stride()[:-1])
               for t in tensors):  # fmt: skip
            return n
    return 1


def _strides(align: int, *tensors: torch.Tensor) -> list[int]:
    """Batch, head and row strides of each (B, H, L, D) tensor, divided by ``align``."""
    return [st // align for t in tensors for st in t.stride()[:3]]


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: TF32 dots only where PyTorch allows TF32 matmuls (it does not by default), else IEEE."""
    if dtype != torch.float32:
        return "tf32"  # ignored for 16-bit inputs
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    out: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward: (out (B, H, Lq, D), lse (B, H, Lq) fp32 natural log); ``out`` may be given.

    ``config`` overrides :func:`fwd_config` (tile sizes, warps, stages), for tuning.
    """
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    if out is None:  # (B, H, L, D) as a view of (B, L, H, D) memory, as SDPA's kernels return it:
        # merging the heads back into (B, L, H·D) is then a view, not a copy
        out = torch.empty(batch, lq, heads, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty(batch, heads, lq, dtype=torch.float32, device=q.device)
    m, smb = _mask_arg(q, mask)
    cfg = config or fwd_config(lq, lk, d, q.dtype)
    grid = (batch * heads, triton.cdiv(lq, cfg["BLOCK_M"]))
    align = 1 if interpreting() else _align(q, k, v, out)
    _attn_fwd[grid](
        q, k, v, m, out, lse, scale, *_strides(align, q, k, v, out), smb,
        heads, lq, lk, HEAD_DIM=d, HAS_MASK=mask is not None, STORE_LSE=True,
        EVEN_M=lq % cfg["BLOCK_M"] == 0, EVEN_N=lk % cfg["BLOCK_N"] == 0, ALIGN=align,
        DOT_PRECISION=dot_precision(q.dtype), **cfg,
    )  # fmt: skip
    return out, lse


def attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    config: tuple[dict[str, int], dict[str, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward from the forward's output and log-sum-exp: (dq, dk, dv), contiguous; every input
    may be strided (last dim contiguous).

    ``config`` overrides :func:`bwd_config`: (dK/dV kernel's, dQ kernel's) tiles, warps and stages.
    """
    q, k, v, grad_out, out = (_last_dim_contiguous(t) for t in (q, k, v, grad_out, out))
    lse = lse.contiguous()
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    kv_cfg, q_cfg = config or bwd_config(lq, lk, d, q.dtype)
    align = 1 if interpreting() else _align(q, k, v, grad_out, out)
    delta = torch.empty_like(lse)
    _bwd_delta[(batch * heads, triton.cdiv(lq, q_cfg["BLOCK_M"]))](
        out, grad_out, delta, *_strides(align, out, grad_out), heads, lq,
        HEAD_DIM=d, BLOCK_D=_pow2(d), BLOCK_M=q_cfg["BLOCK_M"], ALIGN=align,
    )  # fmt: skip
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    m, smb = _mask_arg(q, mask)
    args = (*_strides(align, q, k, v, grad_out), smb, heads, lq, lk)
    flags = {
        "HEAD_DIM": d,
        "HAS_MASK": mask is not None,
        "ALIGN": align,
        "DOT_PRECISION": dot_precision(q.dtype),
    }

    def even(cfg: dict[str, int]) -> dict[str, bool]:
        return {"EVEN_M": lq % cfg["BLOCK_M"] == 0, "EVEN_N": lk % cfg["BLOCK_N"] == 0}

    _bwd_dkdv[(batch * heads, triton.cdiv(lk, kv_cfg["BLOCK_N"]))](
        q, k, v, m, grad_out, lse, delta, dk, dv, scale, *args, **flags, **even(kv_cfg), **kv_cfg
    )
    _bwd_dq[(batch * heads, triton.cdiv(lq, q_cfg["BLOCK_M"]))](
        q, k, v, m, grad_out, lse, delta, dq, scale, *args, **flags, **even(q_cfg), **q_cfg
    )
    return dq, dk, dv
