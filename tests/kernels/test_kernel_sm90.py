"""osp's attention kernels compiled for an H100/H200 (sm_90) on a machine without a GPU: every tile
configuration the launchers pick compiles without register spills, the spatial 16-bit tiles run on
Hopper's warpgroup tensor-core instruction (wgmma), and loads are pipelined (cp.async) even at head dim
72, whose row stride Triton's argument specialisation alone does not prove aligned. The figures come from
the compiler itself (PTX and ``ptxas -v``); benchmarks/kernel_resources.py writes the full table."""

import pytest
import torch

pytest.importorskip("triton")

from osp.kernels._attention_triton import split_head_dim
from osp.kernels.offline import attention_kernels

SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90


@pytest.mark.parametrize(
    ("head_dim", "parts"),
    [(72, (64, 16)), (40, (32, 16)), (80, (64, 16)), (96, (64, 32)), (160, (128, 32)), (64, (64, 0)),
     (112, (128, 0)), (24, (32, 0)), (8, (16, 0)), (256, (256, 0))],
)  # fmt: skip
def test_head_dim_split(head_dim: int, parts: tuple[int, int]) -> None:
    """Two power-of-two parts (each >= 16, tl.dot's smallest) cover the head dim with less work than the
    next power of two, or one part when two would cost as much."""
    assert split_head_dim(head_dim) == parts
    d0, d1 = parts
    assert d0 + d1 >= head_dim and d0 >= 16 and (d1 == 0 or d1 >= 16)


CASES = [  # (dtype, head dim, Lq, Lk): Latte-XL's spatial, temporal and text-cross shapes; 64; fp32
    (torch.bfloat16, 72, 4096, 4096),
    (torch.bfloat16, 72, 17, 17),
    (torch.bfloat16, 72, 4096, 120),
    (torch.bfloat16, 64, 1024, 1024),
    (torch.float32, 72, 1024, 1024),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{str(c[0])[6:]}-d{c[1]}-{c[2]}x{c[3]}")
def test_kernels_compile_for_sm90_without_spills(case: tuple[torch.dtype, int, int, int]) -> None:
    dtype, head_dim, lq, lk = case
    rows = attention_kernels(dtype, head_dim, lq, lk, masked=lq != lk)
    assert [r.kernel for r in rows] == ["fwd", "bwd_dkdv", "bwd_dq"]
    for r in rows:
        assert r.spill_bytes == 0, r
        assert r.registers <= 255 and r.shared_bytes <= SHARED_LIMIT, r
        assert r.cp_async + r.vector_loads > 0, r  # no element-by-element loads
        if dtype != torch.float32 and lk > 64:
            # 64-row tiles per warpgroup: every dot a wgmma, none left on the older mma.sync path
            assert r.wgmma > 0 and r.mma_sync == 0, r
            assert r.cp_async > 0, r
