"""osp's Triton attention and fused modulate-norm against PyTorch on a CUDA GPU.

    python benchmarks/attention.py [--out benchmarks/results] [--dtype bf16]

Attention: TFLOP/s of the forward and forward+backward for Latte's spatial shapes (B·T rows, 16 heads,
L = 1024 / 4096 / 16384 tokens, head dim 72 and 64) and temporal shapes (B·H·W rows, L = 16 / 32 / 64
frames), osp's kernel against SDPA's flash and memory-efficient backends and flash-attn when installed.
FLOPs count the two matmuls (4·rows·heads·Lq·Lk·D forward; backward 2.5× that). Modulate-norm: GB/s of
one read of x and one write of y (shift/scale are negligible) against the unfused torch expression.

Writes ``<out>/attention_<gpu>.json`` and ``.md``. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from common import machine_info, markdown_report, print_report, write_results
from torch.nn.attention import SDPBackend, sdpa_kernel

SPATIAL = [(16, 1024, 72), (4, 4096, 72), (1, 16384, 72), (16, 1024, 64), (4, 4096, 64)]  # (rows, L, D)
TEMPORAL = [(2048, 16, 72), (1024, 32, 72), (512, 64, 72)]  # (rows = B·H·W, frames, D)
HEADS = 16


def bench_ms(fn: Callable[[], Any]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100))


def sdpa_with(backend: SDPBackend) -> Callable[..., torch.Tensor]:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def attention_impls() -> dict[str, Callable[..., torch.Tensor]]:
    from osp.kernels import attention

    impls = {
        "osp": lambda q, k, v: attention(q, k, v),
        "sdpa-flash": sdpa_with(SDPBackend.FLASH_ATTENTION),
        "sdpa-efficient": sdpa_with(SDPBackend.EFFICIENT_ATTENTION),
    }
    try:
        from flash_attn import flash_attn_func

        impls["flash-attn"] = lambda q, k, v: flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)
    except ImportError:
        pass
    return impls


def time_attention(
    fn: Callable[..., torch.Tensor], rows: int, length: int, d: int, dtype: torch.dtype
) -> tuple[float, float]:
    """(forward ms, forward+backward ms); NaN where the implementation refuses the shape."""
    q, k, v = (
        torch.randn(rows, HEADS, length, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)
    )
    grad = torch.randn_like(q)
    try:
        with torch.no_grad():
            fwd = bench_ms(lambda: fn(q, k, v))
        both = bench_ms(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad))
    except RuntimeError:  # e.g. SDPA's flash backend refuses head dim 72 on some builds
        return float("nan"), float("nan")
    return fwd, both


def time_modulate_norm(dtype: torch.dtype) -> list[dict[str, Any]]:
    from osp.kernels import modulate_norm, modulate_norm_reference

    rows = []
    for shape in [(2, 16, 1024, 1152), (2, 1024, 16, 1152), (8, 4096, 1152)]:
        x = torch.randn(*shape, device="cuda", dtype=dtype)
        shift, scale = (
            torch.randn(shape[0], *([1] * (len(shape) - 2)), shape[-1], device="cuda", dtype=dtype)
            for _ in range(2)
        )
        nbytes = 2 * x.numel() * x.element_size()
        impls: dict[str, Callable[..., torch.Tensor]] = {
            "osp": modulate_norm,
            "torch": modulate_norm_reference,
        }
        for name, fn in impls.items():
            ms = bench_ms(partial(fn, x, shift, scale))
            rows.append({"shape": list(shape), "impl": name, "ms": ms, "gb_s": nbytes / ms / 1e6})
    return rows


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path(__file__).parent / "results")
@click.option("--dtype", type=click.Choice(["bf16", "fp16"]), default="bf16")
def main(out: Path, dtype: str) -> None:
    if not torch.cuda.is_available():
        click.echo(
            "benchmarks/attention.py needs a CUDA GPU (the Triton kernels run there); nothing written."
        )
        return
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    results: list[dict[str, Any]] = []
    cases = [("spatial", *c) for c in SPATIAL] + [("temporal", *c) for c in TEMPORAL]
    for kind, rows, length, d in cases:
        flops = 4 * rows * HEADS * length * length * d
        for name, fn in attention_impls().items():
            fwd, both = time_attention(fn, rows, length, d, torch_dtype)
            results.append({"kind": kind, "rows": rows, "heads": HEADS, "length": length, "head_dim": d,
                            "impl": name, "fwd_ms": fwd, "fwd_bwd_ms": both,
                            "fwd_tflops": flops / fwd / 1e9, "fwd_bwd_tflops": 3.5 * flops / both / 1e9})  # fmt: skip
    norm = time_modulate_norm(torch_dtype)
    gpu = torch.cuda.get_device_name(0)
    header = ["shape", "L", "D", "impl", "fwd TFLOP/s", "fwd+bwd TFLOP/s"]
    table = [[f"{r['kind']} {r['rows']}×{r['heads']}", str(r["length"]), str(r["head_dim"]), r["impl"],
              f"{r['fwd_tflops']:.1f}", f"{r['fwd_bwd_tflops']:.1f}"] for r in results]  # fmt: skip
    table += [
        [f"modulate-norm {tuple(r['shape'])}", "", "", r["impl"], f"{r['gb_s']:.0f} GB/s", ""] for r in norm
    ]
    notes = [f"{gpu}, {dtype}; times from triton.testing.do_bench (median).",
             "FLOPs: 4·rows·heads·L²·D forward, 3.5× that forward+backward; nan = the backend refused the shape."]  # fmt: skip
    print_report("osp attention", header, table, notes)
    out.mkdir(parents=True, exist_ok=True)
    stem = "attention_" + re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    data = {"machine": machine_info(), "dtype": dtype, "attention": results, "modulate_norm": norm}
    paths = write_results(out, stem, data, markdown_report("osp attention", header, table, notes))
    click.echo(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
