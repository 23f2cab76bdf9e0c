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

Head dims that are not a power of two (72 in Latte-XL) are padded inside the kernel: tiles are BLOCK_D
wide, loads past HEAD_DIM read zeros (which add nothing to a dot product) and stores are masked.
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
def _fwd_inner(
    Q, K, V, Mask, Out, Lse, sm_scale,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, smb,
    H, Lq, Lk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, STORE_LSE: tl.constexpr,
):  # fmt: skip
    # Axis 0 is batch*heads: it may exceed the 65535 limit of grid axes 1 and 2 (temporal attention has
    # batch*H*W rows). int64 offsets: a (B*H, L, D) tensor can pass 2**31 elements.
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < Lq
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
    qk_scale = sm_scale * 1.4426950408889634  # scores in log2 units
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Lk
        if HAS_MASK:
            n_ok = n_ok & (tl.load(Mask + b * smb + offs_n, mask=n_ok, other=0) != 0)
        kv_mask = (offs_n < Lk)[:, None] & d_ok[None, :]
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), fp32 accumulate
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Until a row has seen one valid key its max is -inf; exp2(-inf - -inf) would be NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])  # fmt: skip
    if STORE_LSE:
        lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        tl.store(Lse + bh * Lq + offs_m, lse, mask=m_ok)


@triton.jit
def _attn_fwd(
    Q, K, V, Mask, Out, Lse, sm_scale,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, smb,
    H, Lq, Lk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, STORE_LSE: tl.constexpr,
):  # fmt: skip
    _fwd_inner(Q, K, V, Mask, Out, Lse, sm_scale, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
               sob, soh, som, smb, H, Lq, Lk, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_MASK, STORE_LSE)  # fmt: skip


# TensorRT's ahead-of-time plugins launch a kernel as (inputs..., int32 scalars..., outputs...), so these
# entries take contiguous (B, H, L, D) tensors in that order and derive every stride from the shapes.
@triton.jit
def _attn_fwd_trt(
    Q, K, V, H, Lq, Lk, Out, sm_scale: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    _fwd_inner(Q, K, V, Q, Out, Out, sm_scale, H * Lq * HEAD_DIM, Lq * HEAD_DIM, HEAD_DIM,
               H * Lk * HEAD_DIM, Lk * HEAD_DIM, HEAD_DIM, H * Lk * HEAD_DIM, Lk * HEAD_DIM, HEAD_DIM,
               H * Lq * HEAD_DIM, Lq * HEAD_DIM, HEAD_DIM, 0, H, Lq, Lk,
               HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, False, False)  # fmt: skip


@triton.jit
def _attn_fwd_trt_masked(
    Q, K, V, Mask, H, Lq, Lk, Out, sm_scale: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    _fwd_inner(Q, K, V, Mask, Out, Out, sm_scale, H * Lq * HEAD_DIM, Lq * HEAD_DIM, HEAD_DIM,
               H * Lk * HEAD_DIM, Lk * HEAD_DIM, HEAD_DIM, H * Lk * HEAD_DIM, Lk * HEAD_DIM, HEAD_DIM,
               H * Lq * HEAD_DIM, Lq * HEAD_DIM, HEAD_DIM, Lk, H, Lq, Lk,
               HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, True, False)  # fmt: skip


@triton.jit
def _bwd_delta(Out, dO, Delta, Lq, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    # Out and dO are contiguous (B*H, Lq, HEAD_DIM); delta_i = sum_d dO_id * O_id.
    bh = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Lq)[:, None] & (offs_d < HEAD_DIM)[None, :]
    ptrs = bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(Out + ptrs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(dO + ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + bh * Lq + offs_m, tl.sum(o * do, 1), mask=offs_m < Lq)


@triton.jit
def _bwd_dkdv(
    Q, K, V, Mask, dO, Lse, Delta, dK, dV, sm_scale,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smb,
    H, Lq, Lk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
):  # fmt: skip
    # dO, dK, dV, Lse and Delta are contiguous; q/k/v keep their strides.
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_in = offs_n < Lk
    n_ok = n_in
    if HAS_MASK:
        n_ok = n_ok & (tl.load(Mask + b * smb + offs_n, mask=n_in, other=0) != 0)
    kv_mask = n_in[:, None] & d_ok[None, :]
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < Lq
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(dO + bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                     mask=q_mask, other=0.0)  # fmt: skip
        # Rows past Lq get lse = +inf, hence p = 0: they add nothing.
        lse = tl.load(Lse + bh * Lq + offs_m, mask=m_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(Delta + bh * Lq + offs_m, mask=m_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)) * (sm_scale * 1.4426950408889634)  # (BLOCK_M, BLOCK_N), log2 units
        p = tl.exp2(s - lse[:, None])
        p = tl.where(n_ok[None, :], p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    out_off = bh * Lk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(dK + out_off, (dk * sm_scale).to(dK.dtype.element_ty), mask=kv_mask)
    tl.store(dV + out_off, dv.to(dV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq(
    Q, K, V, Mask, dO, Lse, Delta, dQ, sm_scale,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smb,
    H, Lq, Lk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < Lq
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(dO + bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                 mask=q_mask, other=0.0)  # fmt: skip
    lse = tl.load(Lse + bh * Lq + offs_m, mask=m_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(Delta + bh * Lq + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_in = offs_n < Lk
        n_ok = n_in
        if HAS_MASK:
            n_ok = n_ok & (tl.load(Mask + b * smb + offs_n, mask=n_in, other=0) != 0)
        kv_mask = n_in[:, None] & d_ok[None, :]
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * (sm_scale * 1.4426950408889634)
        p = tl.where(n_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(dQ + bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
             (dq * sm_scale).to(dQ.dtype.element_ty), mask=q_mask)  # fmt: skip


# ------------------------------------------------------------------------------------------ launchers


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def fwd_config(lq: int, lk: int, head_dim: int) -> dict[str, int]:
    """Tile sizes and warps of the forward kernel (H100-sized; the interpreter wants few, large tiles).

    Temporal attention (Lk <= 64) fits all keys in one tile, so the loop runs once and the kernel is a
    single pass over memory; spatial attention streams 64-key tiles past 128 queries.
    """
    block_d = _pow2(head_dim)
    if interpreting():
        return {"BLOCK_M": min(32, _pow2(lq)), "BLOCK_N": min(32, _pow2(lk)), "BLOCK_D": block_d,
                "num_warps": 1, "num_stages": 1}  # fmt: skip
    if lk <= 64:
        return {"BLOCK_M": min(64, _pow2(lq)), "BLOCK_N": _pow2(lk), "BLOCK_D": block_d,
                "num_warps": 4, "num_stages": 2}  # fmt: skip
    if block_d <= 64:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": block_d, "num_warps": 4, "num_stages": 3}
    if block_d <= 128:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": block_d, "num_warps": 8, "num_stages": 2}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_D": block_d, "num_warps": 8, "num_stages": 2}


def _bwd_config(lq: int, lk: int, head_dim: int) -> dict[str, int]:
    block_d = _pow2(head_dim)
    if interpreting():
        return {"BLOCK_M": min(32, _pow2(lq)), "BLOCK_N": min(32, _pow2(lk)), "BLOCK_D": block_d,
                "num_warps": 1, "num_stages": 1}  # fmt: skip
    big = block_d > 64
    return {"BLOCK_M": min(32 if big else 64, _pow2(lq)), "BLOCK_N": min(64, _pow2(lk)), "BLOCK_D": block_d,
            "num_warps": 8 if big else 4, "num_stages": 2}  # fmt: skip


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _mask_arg(q: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """A (B, Lk) int8 mask and its batch stride; without a mask any pointer does (never read)."""
    if mask is None:
        return q, 0
    m = mask.to(torch.int8).contiguous()
    return m, m.stride(0)


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward: (out (B, H, Lq, D), lse (B, H, Lq) fp32 natural log); ``out`` may be given."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    if out is None:
        out = torch.empty(batch, heads, lq, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, lq, dtype=torch.float32, device=q.device)
    m, smb = _mask_arg(q, mask)
    cfg = fwd_config(lq, lk, d)
    grid = (batch * heads, triton.cdiv(lq, cfg["BLOCK_M"]))
    _attn_fwd[grid](
        q, k, v, m, out, lse, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), smb,
        heads, lq, lk, HEAD_DIM=d, HAS_MASK=mask is not None, STORE_LSE=True, **cfg,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward from the forward's output and log-sum-exp: (dq, dk, dv), contiguous."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    cfg = _bwd_config(lq, lk, d)
    delta = torch.empty_like(lse)
    _bwd_delta[(batch * heads, triton.cdiv(lq, cfg["BLOCK_M"]))](
        out, grad_out, delta, lq, HEAD_DIM=d, BLOCK_D=cfg["BLOCK_D"], BLOCK_M=cfg["BLOCK_M"]
    )
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    m, smb = _mask_arg(q, mask)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), smb)  # fmt: skip
    _bwd_dkdv[(batch * heads, triton.cdiv(lk, cfg["BLOCK_N"]))](
        q, k, v, m, grad_out, lse, delta, dk, dv, scale, *strides, heads, lq, lk,
        HEAD_DIM=d, HAS_MASK=mask is not None, **cfg,
    )  # fmt: skip
    _bwd_dq[(batch * heads, triton.cdiv(lq, cfg["BLOCK_M"]))](
        q, k, v, m, grad_out, lse, delta, dq, scale, *strides, heads, lq, lk,
        HEAD_DIM=d, HAS_MASK=mask is not None, **cfg,
    )  # fmt: skip
    return dq, dk, dv
