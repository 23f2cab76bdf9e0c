"""Registers, spills, shared memory and instruction mix of osp's attention kernels, compiled for a GPU
without one (default sm_90: H100/H200).

    python benchmarks/kernel_resources.py [--out benchmarks/results] [--arch 90]

For every head dim osp's models use (40 ... 256) and the spatial, temporal and text-cross shapes, the
forward, dK/dV and dQ kernels are compiled with the tile configuration the launchers pick; ``ptxas -v``
gives registers and spills, the PTX the count of wgmma (Hopper warpgroup MMA), mma.sync, cp.async and
vector loads. Writes ``<out>/kernels_sm<arch>.json`` and ``.md``.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
from common import machine_info, markdown_report, print_report, write_results

SHAPES = {"spatial": (4096, 4096), "temporal": (17, 17), "cross": (4096, 120)}
HEAD_DIMS = (40, 64, 72, 80, 96, 128, 256)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("benchmarks/results"))
@click.option("--arch", type=int, default=90, show_default=True, help="compute capability x10")
def main(out: Path, arch: int) -> None:
    from osp.kernels.offline import attention_kernels

    rows, records = [], []
    for dname, dtype in DTYPES.items():
        for head_dim in HEAD_DIMS:
            if dtype == torch.float32 and head_dim > 128:
                continue  # the fp32 path takes head dims up to 128
            for shape, (lq, lk) in SHAPES.items():
                for r in attention_kernels(dtype, head_dim, lq, lk, masked=shape == "cross",
                                           capability=divmod(arch, 10)):  # fmt: skip
                    records.append({"shape": shape, **r.as_dict()})
                    cfg = r.config
                    tiles = f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']} d{cfg['D0']}+{cfg['D1']} w{cfg['num_warps']} s{cfg['num_stages']}"
                    rows.append([dname, str(head_dim), shape, r.kernel, tiles, str(r.registers),
                                 str(r.spill_bytes), f"{r.shared_bytes / 1024:.0f}", str(r.wgmma),
                                 str(r.mma_sync), str(r.cp_async)])  # fmt: skip
    header = [
        "dtype",
        "D",
        "shape",
        "kernel",
        "tiles",
        "regs",
        "spill B",
        "smem KiB",
        "wgmma",
        "mma.sync",
        "cp.async",
    ]
    notes = [
        f"Compiled for sm_{arch} on a machine without a GPU (triton.compile + ptxas -v); nothing ran.",
        "shapes: spatial Lq = Lk = 4096, temporal 17 frames, cross 4096 queries x 120 text tokens (masked).",
        "tiles: BLOCK_M x BLOCK_N, head dim as D0 + D1 power-of-two parts, warps, pipeline stages.",
    ]
    spills = sum(r["spill_bytes"] for r in records)
    notes.append(f"{len(records)} kernels, {spills} bytes of spills in all.")
    title = f"osp attention kernels compiled for sm_{arch}"
    print_report(title, header, rows, notes)
    data = {"machine": machine_info(), "arch": arch, "kernels": records}
    write_results(out, f"kernels_sm{arch}", data, markdown_report(title, header, rows, notes))


if __name__ == "__main__":
    main()
