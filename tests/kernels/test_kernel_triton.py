"""osp's Triton kernels, forward and backward, against plain torch (CPU: Triton's interpreter, fp32), their
compilation for an H100, and fp16/bf16 parity on a GPU (gpu-marked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from _interp_cases import ATTENTION_CASES, MODNORM_CASES

TOL = 1e-5  # fp32, errors relative to the largest reference value


@pytest.fixture(scope="module")
def interp() -> dict:
    """Every case, run once in a fresh interpreter process (TRITON_INTERPRET must not leak into this one)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    script = Path(__file__).with_name("_interp_cases.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention_kernel_matches_torch(interp: dict, case: str) -> None:
    errors = interp[f"attention/{case}"]
    assert set(errors) == {"out", "dq", "dk", "dv"}
    assert max(errors.values()) < TOL, errors


def test_attention_kernel_fully_masked_row_is_zero(interp: dict) -> None:
    result = interp["attention/fully-masked"]
    assert result["masked_out_abs"] == 0.0 and result["masked_grad_abs"] == 0.0
    assert result["grads_finite"] and result["other_out_err"] < TOL


@pytest.mark.parametrize("case", sorted(MODNORM_CASES))
def test_modulate_norm_kernel_matches_torch(interp: dict, case: str) -> None:
    errors = interp[f"modulate_norm/{case}"]
    assert set(errors) == {"out", "dx", "dshift", "dscale"}
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize(
    ("dtype", "head_dim", "masked"), [(torch.float16, 72, False), (torch.bfloat16, 64, True)]
)
def test_tensorrt_entry_compiles_for_h100(dtype: torch.dtype, head_dim: int, masked: bool) -> None:
    """The real (not interpreted) compiler lowers the forward to sm_90 PTX with TensorRT's argument order."""
    from osp.kernels.trt_plugin import compile_attention_ptx

    kernel = compile_attention_ptx(dtype, head_dim, 0.125, masked, capability=(9, 0))
    entry = kernel.ptx[kernel.ptx.index(f".entry {kernel.name}(") :]
    params = entry[: entry.index(")")].count(".param")
    # q, k, v, [mask], H, Lq, Lk, out, then Triton's two scratch pointers
    assert params == 3 + masked + 3 + 1 + 2
    assert kernel.num_warps * 32 <= 1024 and kernel.shared_mem <= 228 * 1024


# ------------------------------------------------------------------------------------------------ GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# fp32 runs IEEE fp32 dots unless torch.backends.cuda.matmul.allow_tf32 is set (PyTorch's default is off):
# its error against the fp32 reference is rounding-sized, not TF32's 1e-3.
GPU_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-4}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    ("batch", "heads", "length", "head_dim"), [(2, 16, 1024, 72), (512, 16, 17, 72), (2, 8, 333, 64)]
)
@pytest.mark.parametrize("masked", [False, True])
def test_attention_gpu_parity(
    dtype: torch.dtype, batch: int, heads: int, length: int, head_dim: int, masked: bool
) -> None:
    from osp.kernels import attention, attention_reference

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(
            batch, heads, length, head_dim, device="cuda", dtype=dtype, generator=gen
        ).requires_grad_()
        for _ in range(3)
    )
    mask = torch.rand(batch, length, device="cuda", generator=gen) > 0.2 if masked else None
    if mask is not None:
        mask[:, 0] = True
    grad = torch.randn_like(q)
    out = attention(q, k, v, mask)
    got = [out, *torch.autograd.grad(out, (q, k, v), grad)]
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = attention_reference(qf, kf, vf, mask)
    want = [ref, *torch.autograd.grad(ref, (qf, kf, vf), grad.float())]
    for a, b in zip(got, want, strict=True):
        err = (a.float() - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err < GPU_TOL[dtype] * (4 if a is not out else 1)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_modulate_norm_gpu_parity(dtype: torch.dtype) -> None:
    from osp.kernels import modulate_norm, modulate_norm_reference

    x = torch.randn(2, 8, 256, 1152, device="cuda", dtype=dtype, requires_grad=True)
    shift, scale = (
        torch.randn(2, 1, 1, 1152, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2)
    )
    grad = torch.randn_like(x)
    out = modulate_norm(x, shift, scale)
    got = [out, *torch.autograd.grad(out, (x, shift, scale), grad)]
    xf, sf, cf = (t.detach().float().requires_grad_() for t in (x, shift, scale))
    ref = modulate_norm_reference(xf, sf, cf)
    want = [ref, *torch.autograd.grad(ref, (xf, sf, cf), grad.float())]
    for a, b in zip(got, want, strict=True):
        err = (a.float() - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err < GPU_TOL[dtype] * 2


def test_fp32_dots_follow_pytorchs_tf32_switch() -> None:
    """fp32 attention gets TF32 tensor-core dots only where PyTorch's matmuls would."""
    from osp.kernels._attention_triton import dot_precision

    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert dot_precision(torch.float32) == "ieee"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert dot_precision(torch.float32) == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@gpu
def test_attention_gpu_fp32_with_tf32_allowed() -> None:
    from osp.kernels import attention, attention_reference

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 8, 333, 64, device="cuda", generator=gen) for _ in range(3))
    want = attention_reference(q.double(), k.double(), v.double())
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        err = (attention(q, k, v).double() - want).abs().max().item() / want.abs().max().item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert err < 4e-3  # TF32: 10-bit mantissa inputs, fp32 accumulation
