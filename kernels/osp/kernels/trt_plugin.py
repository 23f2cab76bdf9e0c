"""osp's attention as TensorRT Python plugins (``tensorrt.plugin``, TensorRT >= 10.7), namespace ``osp``.

An ONNX node ``attention`` (or ``attention_masked``) with ``plugin_namespace="osp"``, as
:func:`osp.kernels.onnx.translation_table` ("trt") writes it, is mapped by TensorRT's ONNX parser to the
plugin of that name once :func:`register_tensorrt_plugins` has run in the process that builds or loads the
engine. Each plugin has:

- a shape descriptor (``@trtp.register``): the output is shaped like q;
- an autotune declaration: fp32 / fp16 / bf16, linear layout; the mask is int32;
- a JIT implementation (``@trtp.impl``): the Triton forward launched from Python on TensorRT's stream;
- where the installed TensorRT has ``trtp.aot_impl`` (10.10+), an ahead-of-time implementation: the
  forward entry ``_attn_fwd_trt[_masked]`` compiled to PTX by Triton, which TensorRT embeds in the engine
  and launches without Python. Shapes reach it as int32 symbolic expressions; the head dim must be static.

Nothing here imports tensorrt at module import; :func:`compile_attention_ptx` needs only triton.
"""

from dataclasses import dataclass
from typing import Any

import torch

_registered = False


@dataclass(frozen=True)
class CompiledAttention:
    name: str  # the kernel's entry symbol in the PTX
    ptx: str
    num_warps: int
    shared_mem: int
    block_m: int  # queries per program: grid axis 1 is cdiv(Lq, block_m)


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_attention_ptx(
    dtype: torch.dtype,
    head_dim: int,
    scale: float,
    masked: bool,
    lq_hint: int = 4096,
    lk_hint: int = 4096,
    capability: tuple[int, int] | None = None,
) -> CompiledAttention:
    """Compile the TensorRT-order forward entry for one dtype / head dim / scale to PTX.

    The kernel's arguments are (q, k, v[, mask], H, Lq, Lk, out), as TensorRT's AOT launch passes them.
    ``lq_hint``/``lk_hint`` only pick tile sizes (any length runs correctly). ``capability`` defaults to
    the current CUDA device's; give it to compile without a GPU.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _attention_triton as tri

    if capability is None:
        capability = torch.cuda.get_device_capability()
    cfg = tri.fwd_config(lq_hint, lk_hint, head_dim, dtype)
    elem = "*" + _TRITON_TYPES[dtype]
    signature = {"Q": elem, "K": elem, "V": elem}
    if masked:
        signature["Mask"] = "*i32"
    signature |= {"H": "i32", "Lq": "i32", "Lk": "i32", "Out": elem}
    constexprs = {"sm_scale": float(scale), "HEAD_DIM": head_dim, "D0": cfg["D0"], "D1": cfg["D1"],
                  "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]}  # fmt: skip
    signature |= dict.fromkeys(constexprs, "constexpr")
    fn = tri._attn_fwd_trt_masked if masked else tri._attn_fwd_trt
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    major, minor = capability
    options = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    kernel = triton.compile(src, target=GPUTarget("cuda", major * 10 + minor, 32), options=options)
    return CompiledAttention(
        kernel.metadata.name,
        kernel.asm["ptx"],
        kernel.metadata.num_warps,
        kernel.metadata.shared,
        cfg["BLOCK_M"],
    )


def register_tensorrt_plugins() -> None:
    """Register ``osp::attention`` and ``osp::attention_masked`` with TensorRT (idempotent).

    Raises ImportError when tensorrt (>= 10.7, with ``tensorrt.plugin``) is not installed.
    """
    global _registered
    if _registered:
        return
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as err:
        raise ImportError("TensorRT plugins need tensorrt >= 10.7 (pip install 'osp[trt]')") from err
    _define_plugins(trt, trtp)
    _registered = True


def _define_plugins(trt: Any, trtp: Any) -> None:
    # The decorators read and check these functions' annotations, so they are real objects (trtp.TensorDesc,
    # float), defined here where trtp is imported; outputs, stream and tactic are left to TensorRT's defaults.
    from . import _attention_triton as tri

    dtypes = "FP32|FP16|BF16"
    to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}

    @trtp.register("osp::attention")
    def attention_desc(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float
    ) -> trtp.TensorDesc:
        return q.like()

    @trtp.register("osp::attention_masked")
    def attention_masked_desc(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        key_padding_mask: trtp.TensorDesc,
        scale: float,
    ) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune("osp::attention")
    def attention_autotune(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, outputs):
        return [trtp.AutoTuneCombination(f"{dtypes}, {dtypes}, {dtypes}, {dtypes}", "LINEAR")]

    @trtp.autotune("osp::attention_masked")
    def attention_masked_autotune(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, key_padding_mask: trtp.TensorDesc, outputs
    ):
        return [trtp.AutoTuneCombination(f"{dtypes}, {dtypes}, {dtypes}, INT32, {dtypes}", "LINEAR")]

    def run(tensors: list, mask: Any, scale: float, out: Any, stream: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            q, k, v = (torch.as_tensor(t, device="cuda") for t in tensors)
            m = None if mask is None else torch.as_tensor(mask, device="cuda") != 0
            tri.attention_fwd(q, k, v, m, scale, out=torch.as_tensor(out, device="cuda"))

    @trtp.impl("osp::attention")
    def attention_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, scale: float, outputs, stream):
        run([q, k, v], None, scale, outputs[0], stream)

    @trtp.impl("osp::attention_masked")
    def attention_masked_impl(
        q: trtp.Tensor,
        k: trtp.Tensor,
        v: trtp.Tensor,
        key_padding_mask: trtp.Tensor,
        scale: float,
        outputs,
        stream,
    ):
        run([q, k, v], key_padding_mask, scale, outputs[0], stream)

    if not hasattr(trtp, "aot_impl"):  # TensorRT < 10.10: JIT only
        return

    def aot(q: Any, k: Any, scale: float, masked: bool) -> tuple:
        dims_q, dims_k = q.shape_expr, k.shape_expr
        if not dims_q[3].is_constant:
            raise ValueError("osp::attention AOT plugin needs a static head dim")
        hint = lambda e: e.constant_value if e.is_constant else 4096  # noqa: E731  (tile choice only)
        kernel = compile_attention_ptx(
            to_torch[q.dtype], dims_q[3].constant_value, scale, masked, hint(dims_q[2]), hint(dims_k[2])
        )
        launch = trtp.KernelLaunchParams()
        launch.grid_x = dims_q[0] * dims_q[1]  # batch * heads
        launch.grid_y = trtp.cdiv(dims_q[2], kernel.block_m)
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (dims_q[1], dims_q[2], dims_k[2])])
        return kernel.name.encode(), kernel.ptx.encode(), launch, extra

    @trtp.aot_impl("osp::attention")
    def attention_aot(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float, outputs, tactic
    ):
        return aot(q, k, scale, masked=False)

    @trtp.aot_impl("osp::attention_masked")
    def attention_masked_aot(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        key_padding_mask: trtp.TensorDesc,
        scale: float,
        outputs,
        tactic,
    ):
        return aot(q, k, scale, masked=True)
