"""Tile sweep of osp's Triton attention on a CUDA GPU: which BLOCK_M / BLOCK_N / warps / stages are fastest.

    python benchmarks/attention_tune.py --out DIR [--budget-s 60]

For Latte-XL's shapes (head dim 72; 64 for comparison; 16 heads, bf16) it times the forward kernel over a
grid of tile configurations and each backward kernel (dK/dV, dQ) over a smaller grid with the other one
held at its default, and reports each shape's fastest configuration beside the one the launchers pick
today (``fwd_config`` / ``bwd_config``), in TFLOP/s of the whole backward. A configuration that fails to
compile or launch (too much shared memory) is recorded as such. The shapes run in the order a short
session most needs: the head-dim-72 backward (never swept yet), the temporal forwards, then the rest.
Writes ``<out>/attention_tune.json`` after every shape; exits 0 with a message without CUDA.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import click
import torch

HEADS = 16
# (kind, rows, L, D), in order of need
SHAPES = [("bwd", 4, 4096, 72), ("fwd", 1024, 32, 72), ("fwd", 2048, 16, 72), ("bwd", 4, 4096, 64),
          ("fwd", 4, 4096, 72), ("fwd", 16, 1024, 72), ("fwd", 4, 4096, 64)]  # fmt: skip


def tflops(rows: int, length: int, d: int, ms: float, passes: float) -> float:
    return round(4 * rows * HEADS * length * length * d * passes / ms / 1e9, 1)


def fwd_grid(length: int) -> list[dict[str, int]]:
    if length <= 64:
        n = max(16, 1 << (length - 1).bit_length())
        return [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}
                for m, w, s in itertools.product((16, 32, 64, 128), (2, 4, 8), (1, 2))]  # fmt: skip
    return [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}
            for m, n, w, s in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4))]  # fmt: skip


def bwd_grid() -> list[dict[str, int]]:
    # 32-row tiles fall back to mma.sync and 128x128 holds too many accumulators for four warps.
    tiles = [(64, 64, w) for w in (4, 8)] + [(64, 128, w) for w in (4, 8)] + [(128, 64, w) for w in (4, 8)]
    return [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}
            for (m, n, w), s in itertools.product([*tiles, (128, 128, 8)], (1, 2, 3))]  # fmt: skip


def _try(entry: dict[str, Any], cfg: Any, fn: Any, flops: Any, deadline: float) -> None:
    import triton.testing

    if time.monotonic() > deadline:
        return
    try:
        entry["tried"].append([cfg, flops(float(triton.testing.do_bench(fn, warmup=10, rep=40)))])
    except Exception as err:  # out of shared memory, or a tile the compiler refuses
        entry["tried"].append([cfg, f"{type(err).__name__}: {str(err)[:80]}"])


def tune_fwd(rows: int, length: int, d: int, deadline: float) -> dict[str, Any]:
    from osp.kernels import _attention_triton as tri

    q, k, v = (torch.randn(rows, HEADS, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    dims = dict(zip(("D0", "D1"), tri.split_head_dim(d), strict=True))
    default = tri.fwd_config(length, length, d, q.dtype)
    entry: dict[str, Any] = {"rows": rows, "L": length, "D": d, "default": default, "tried": []}
    for cfg in [default, *({**c, **dims} for c in fwd_grid(length))]:
        _try(entry, cfg, lambda cfg=cfg: tri.attention_fwd(q, k, v, None, d**-0.5, config=cfg),
             lambda ms: tflops(rows, length, d, ms, 1.0), deadline)  # fmt: skip
    return entry


def tune_bwd(rows: int, length: int, d: int, deadline: float) -> dict[str, Any]:
    from osp.kernels import _attention_triton as tri

    q, k, v = (torch.randn(rows, HEADS, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out, lse = tri.attention_fwd(q, k, v, None, d**-0.5)
    grad = torch.randn_like(q)
    dims = dict(zip(("D0", "D1"), tri.split_head_dim(d), strict=True))
    kv_default, q_default = default = tri.bwd_config(length, length, d, q.dtype)
    entry: dict[str, Any] = {"rows": rows, "L": length, "D": d, "default": list(default), "tried": []}
    grid = [{**c, **dims} for c in bwd_grid()]
    pairs = [default, *((c, q_default) for c in grid), *((kv_default, c) for c in grid)]  # one kernel varies
    for pair in pairs:
        _try(entry, list(pair),
             lambda p=pair: tri.attention_bwd(grad, q, k, v, None, out, lse, d**-0.5, config=p),
             lambda ms: tflops(rows, length, d, ms, 2.5), deadline)  # fmt: skip
    return entry


def run(out: Path, budget_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + budget_s
    res: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "fwd": [],
        "bwd": [],
    }
    for key, rows, length, d in SHAPES:
        if time.monotonic() > deadline:
            break
        entry = (tune_fwd if key == "fwd" else tune_bwd)(rows, length, d, deadline)
        timed = [t for t in entry["tried"] if isinstance(t[1], float)]
        if timed:
            entry["best"] = max(timed, key=lambda t: t[1])
            entry["default_tflops"] = timed[0][1] if timed[0][0] == entry["default"] else None
            print(key, rows, length, d, "default", entry["default_tflops"], "best", entry["best"], flush=True)
        res[key].append(entry)
        (out / "attention_tune.json").write_text(json.dumps(res, indent=1))
    return res


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--budget-s", type=float, default=60.0, show_default=True)
def main(out: Path, budget_s: float) -> None:
    if not torch.cuda.is_available():
        click.echo("attention_tune: no CUDA device; nothing measured")
        return
    out.mkdir(parents=True, exist_ok=True)
    run(out, budget_s)


if __name__ == "__main__":
    main()
