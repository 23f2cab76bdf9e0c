"""Host time per call of osp's custom ops in eager mode, against the same work without them, on the CPU.

    python benchmarks/dispatch_overhead.py [--out benchmarks/results] [--calls 2000]

On a GPU a small attention or modulate-norm finishes in microseconds, so the Python and dispatcher time
around each call decides the speed (a profile of Latte-T2V-XL/2 on an H200 showed ~180 µs of CPU per
``osp::modulate_norm`` and ~115 µs per ``osp::attention`` call, against 25-50 µs per aten op). The ops run
their plain-torch reference off CUDA through the same torch.library dispatch, so the CPU shows that cost:
with tensors too small for the arithmetic to matter, each row times one way of calling:

- ``op``: the custom op ``torch.ops.osp.*`` (what graphs hold);
- ``entry``: ``osp.kernels.attention`` / ``modulate_norm``, which call the kernels through an autograd
  Function in eager mode (or directly without gradients);
- ``direct``: the implementation itself (the reference here; Triton's launcher on a GPU);
- aten ops for scale, and the layer entry points the models call (``osp.layers.attention`` with its cached
  backend choice, ``osp.layers.norm.modulated_norm``).

Each row is the fastest of 7 repeats, in µs per call, without gradients and with inputs that require them
(the forward then also records the autograd node). Prints the table and writes
``<out>/dispatch_overhead.json`` and ``.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from common import machine_info, markdown_report, print_report, write_results
from torch import nn

import osp.kernels
from osp.layers.attention import attention as layer_attention
from osp.layers.norm import modulated_norm, norm_backend


def per_call_us(fn: Callable[[], Any], calls: int, repeats: int = 7) -> float:
    """The fastest of ``repeats`` runs of ``calls`` calls, per call: other processes only ever add time."""
    for _ in range(calls // 10 + 10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return min(times)


def cases(grad: bool) -> dict[str, Callable[[], Any]]:
    gen = torch.Generator().manual_seed(0)
    x, shift, scale = (
        torch.randn(*s, generator=gen, requires_grad=grad) for s in ((2, 4, 8), (2, 1, 8), (2, 1, 8))
    )
    q, k, v = (torch.randn(1, 2, 4, 8, generator=gen, requires_grad=grad) for _ in range(3))
    norm = nn.LayerNorm(8, elementwise_affine=False, eps=1e-6)

    def forced_norm() -> torch.Tensor:
        with norm_backend("osp"):
            return modulated_norm(norm, x, shift, scale)

    return {
        "aten add": lambda: torch.add(x, x),
        "aten layer_norm": lambda: F.layer_norm(x, (8,)),
        "aten scaled_dot_product_attention": lambda: F.scaled_dot_product_attention(q, k, v),
        "modulate-norm op": lambda: torch.ops.osp.modulate_norm(x, shift, scale, 1e-6),
        "modulate-norm entry": lambda: osp.kernels.modulate_norm(x, shift, scale, 1e-6),
        "modulate-norm direct": lambda: osp.kernels.modulate_norm_reference(x, shift, scale, 1e-6),
        "attention op": lambda: torch.ops.osp.attention(q, k, v, None, 0.35),
        "attention entry": lambda: osp.kernels.attention(q, k, v, None, 0.35),
        "attention direct": lambda: osp.kernels.attention_reference(q, k, v, None, 0.35),
        "layers.attention (auto: SDPA here)": lambda: layer_attention(q, k, v),
        "layers.attention (osp forced)": lambda: layer_attention(q, k, v, backend="osp"),
        "layers.modulated_norm (auto: plain here)": lambda: modulated_norm(norm, x, shift, scale),
        "layers.modulated_norm (osp forced)": forced_norm,
        "plain norm expression": lambda: norm(x) * (1 + scale) + shift,
    }


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path(__file__).parent / "results")
@click.option(
    "--calls", type=click.IntRange(min=10), default=2000, show_default=True, help="Calls per repeat."
)
def main(out: Path, calls: int) -> None:
    torch.set_num_threads(1)  # host time of one call, not the thread pool's
    rows: dict[str, dict[str, float]] = {}
    for grad in (False, True):
        for name, fn in cases(grad).items():
            rows.setdefault(name, {})["grad" if grad else "no_grad"] = per_call_us(fn, calls)
    overhead = {
        f"{kernel} {way} - direct": {mode: rows[f"{kernel} {way}"][mode] - rows[f"{kernel} direct"][mode]
                                     for mode in ("no_grad", "grad")}
        for kernel in ("modulate-norm", "attention") for way in ("op", "entry")
    }  # fmt: skip
    header = ["call", "µs, no grad", "µs, inputs require grad"]
    table = [[name, f"{r['no_grad']:.1f}", f"{r['grad']:.1f}"] for name, r in {**rows, **overhead}.items()]
    machine = machine_info()
    notes = [f"{machine['cpu']}, torch {machine['torch']}, one thread; fastest of 7 repeats of {calls} calls on "
             "tensors of 64 elements.",
             "'- direct' rows: what calling through the op or the eager entry adds to the implementation."]  # fmt: skip
    print_report("osp custom-op host overhead", header, table, notes)
    out.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine, "calls": calls, "us_per_call": rows, "overhead_us": overhead}
    paths = write_results(
        out, "dispatch_overhead", data, markdown_report("osp custom-op host overhead", header, table, notes)
    )
    click.echo(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
