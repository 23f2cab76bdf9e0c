"""Compile osp's attention kernels for a GPU without one, and read what the compiler made of them.

``triton.compile`` lowers a kernel for any target (``GPUTarget("cuda", 90, 32)`` is an H100/H200) on a
machine with no GPU; Triton's bundled ``ptxas -v`` then reports the registers per thread, the bytes of
spills and the shared memory of each kernel, and the PTX shows which instructions carry the work: Hopper's
warpgroup tensor-core instruction (``wgmma.mma_async``), asynchronous copies (``cp.async``) and 16-byte
vector loads (``ld.global.v4``).

:func:`attention_kernels` compiles the forward and both backward kernels with the tile configurations the
launchers pick (``fwd_config`` / ``bwd_config``) for the given shape; :func:`report` turns that into rows.
Pointer arguments are declared 16-byte aligned (as PyTorch allocates); integer arguments carry no
divisibility, the worst case, which is what the kernels' ALIGN hint exists for.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import _attention_triton as tri

_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_QKV_STRIDES = ["sqb", "sqh", "sqm", "skb", "skh", "skn", "svb", "svh", "svn"]
_FWD_INTS = [*_QKV_STRIDES, "sob", "soh", "som", "smb", "H", "Lq", "Lk"]  # + the output's strides
_BWD_INTS = [*_QKV_STRIDES, "sdb", "sdh", "sdm", "smb", "H", "Lq", "Lk"]  # + the output gradient's


@dataclass(frozen=True)
class KernelReport:
    kernel: str
    dtype: str
    head_dim: int
    lq: int
    lk: int
    masked: bool
    config: dict[str, int]
    registers: int
    spill_bytes: int  # spill stores + spill loads, bytes per thread
    shared_bytes: int
    wgmma: int  # wgmma.mma_async instructions in the PTX
    mma_sync: int  # pre-Hopper mma.sync instructions
    cp_async: int  # cp.async copies (global -> shared, pipelined)
    vector_loads: int  # ld.global.v4 / v2 loads

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ptxas_path(arch: int = 90) -> str:
    """The ptxas Triton itself uses for this architecture (or TRITON_PTXAS_PATH)."""
    env = os.environ.get("TRITON_PTXAS_PATH")
    if env:
        return env
    try:  # triton >= 3.4 picks a newer ptxas for sm_90 and up than its legacy one
        from triton.backends.nvidia.compiler import get_ptxas

        return str(get_ptxas(arch).path)
    except (ImportError, TypeError, AttributeError):
        import triton

        return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")


def ptxas_usage(ptx: str, arch: int = 90) -> tuple[int, int]:
    """(registers per thread, spill bytes) that ``ptxas -v`` reports for the PTX's one kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        done = subprocess.run(
            [
                ptxas_path(arch),
                "-v",
                f"--gpu-name=sm_{arch}{'a' if arch >= 90 else ''}",
                str(src),
                "-o",
                str(Path(tmp) / "k.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    text = done.stderr + done.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", text)
    if regs is None:
        raise RuntimeError(f"ptxas reported no register count:\n{text}")
    return int(regs.group(1)), sum(int(s) for s in spills)


def _compile(
    fn: Any, types: dict[str, str], constexprs: dict[str, Any], aligned: list[str], options: dict[str, int],
    capability: tuple[int, int],
) -> Any:  # fmt: skip
    """``triton.compile`` for a target; ``aligned`` pointer arguments are declared 16-byte aligned."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    signature = {name: "constexpr" if name in constexprs else types[name] for name in names}
    attrs = {(names.index(p),): [["tt.divisibility", 16]] for p in aligned}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    major, minor = capability
    return triton.compile(src, target=GPUTarget("cuda", major * 10 + minor, 32), options=options)


def attention_kernels(
    dtype: torch.dtype,
    head_dim: int,
    lq: int,
    lk: int,
    masked: bool = False,
    capability: tuple[int, int] = (9, 0),
) -> list[KernelReport]:
    """Compile the forward, dK/dV and dQ kernels as the launchers would for this shape; one row each."""
    elem = "*" + _TYPES[dtype]
    common = {"HEAD_DIM": head_dim, "HAS_MASK": masked, "ALIGN": 8, "DOT_PRECISION": tri.dot_precision(dtype)}
    rows = []
    kv_cfg, q_cfg = tri.bwd_config(lq, lk, head_dim, dtype)
    for name, fn, cfg, ints, tensors in (
        ("fwd", tri._attn_fwd, tri.fwd_config(lq, lk, head_dim, dtype), _FWD_INTS, ["Q", "K", "V", "Out"]),
        ("bwd_dkdv", tri._bwd_dkdv, kv_cfg, _BWD_INTS, ["Q", "K", "V", "dO", "dK", "dV"]),
        ("bwd_dq", tri._bwd_dq, q_cfg, _BWD_INTS, ["Q", "K", "V", "dO", "dQ"]),
    ):
        tiles = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
        even = {"EVEN_M": lq % cfg["BLOCK_M"] == 0, "EVEN_N": lk % cfg["BLOCK_N"] == 0}
        constexprs = {**common, **tiles, **even, **({"STORE_LSE": True} if name == "fwd" else {})}
        types = {**dict.fromkeys(tensors, elem), **dict.fromkeys(ints, "i32")}
        types |= {"Mask": "*i8", "sm_scale": "fp32", "Lse": "*fp32", "Delta": "*fp32"}
        options = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
        kernel = _compile(fn, types, constexprs, tensors, options, capability)
        ptx = kernel.asm["ptx"]
        regs, spills = ptxas_usage(ptx, capability[0] * 10 + capability[1])
        rows.append(
            KernelReport(
                kernel=name,
                dtype=_TYPES[dtype],
                head_dim=head_dim,
                lq=lq,
                lk=lk,
                masked=masked,
                config=dict(cfg),
                registers=regs,
                spill_bytes=spills,
                shared_bytes=int(kernel.metadata.shared),
                wgmma=len(re.findall(r"wgmma\.mma_async", ptx)),
                mma_sync=len(re.findall(r"\bmma\.sync", ptx)),
                cp_async=len(re.findall(r"cp\.async\.c[ag]", ptx)),
                vector_loads=len(re.findall(r"ld\.global(?:\.\w+)*\.v[24]", ptx)),
            )
        )
    return rows
