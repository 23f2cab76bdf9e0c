"""Every attention backend osp can dispatch to, and the fused modulate-norm against the plain expression, on
a CUDA GPU; the results are the dispatch table osp picks backends from on that GPU model.

    python benchmarks/attention.py [--out benchmarks/results] [--dtype bf16] [--budget-s 600] [--write-dispatch]
    python benchmarks/attention.py --from-results benchmarks/results/attention_nvidia-h200.json --write-dispatch

Attention: forward and forward+backward time of each registered backend (osp's Triton kernel; SDPA choosing
its kernel and held to cuDNN, flash or memory-efficient; flash-attn when installed), called through
``osp.layers.attention`` as the models call it, on Latte's shape classes at head dim 72 (Latte-XL) and 64:

- spatial: B·T rows of L = H·W tokens (256 / 1024 / 4096 / 16384: 256² to 1024² video at patch 2);
- temporal: B·H·W rows of L frames (5 / 16 / 32 / 64; 17 and 65 frames make 5 and 17 latent frames);
- cross: the spatial queries against 120 caption tokens with a key-padding mask (LatteT2V).

16 heads. FLOPs count the two matmuls (4·rows·heads·Lq·Lk·D forward, 3.5× that forward+backward). A
backend that does not accept a shape (its constraint check, or an SDPA kernel refusing it) gets none.

Modulate-norm: the fused kernel and the plain expression through ``osp.layers.norm.modulated_norm``, forward
(GB/s of one read of x and one write of y) and forward+backward, at width 1152 on Latte's layouts and row
counts (a transposed (B, N, T, C) view too), and a sweep of the forward kernel's tile (rows per program,
warps) on the three shapes of the bandwidth target.

Writes ``<out>/attention_<gpu>.json`` and ``.md`` after each part. ``--write-dispatch`` also writes
``osp/layers/dispatch/<gpu>.json`` (entries of other dtypes already there are kept); ``--from-results``
rebuilds it from a results file without measuring. Parts past ``--budget-s`` seconds are skipped and listed.
Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from common import machine_info, markdown_report, print_report, write_results
from torch import nn
from torch.nn.attention import sdpa_kernel

from osp.io.weights import atomic_write_text
from osp.layers import dispatch_table
from osp.layers.attention import SDPA_KERNELS, attention, available_backends, get_backend
from osp.layers.norm import modulated_norm, norm_backend

DEVICE = "cuda"
HEADS = 16
HEAD_DIMS = (72, 64)
CAPTION_TOKENS = 120
# (class, rows, Lq, Lk, masked): about 16K query tokens per case, so every case fills the GPU.
CASES = [("spatial", 16384 // n, n, n, False) for n in (256, 1024, 4096, 16384)]
CASES += [("temporal", rows, n, n, False) for rows, n in ((6144, 5), (2048, 16), (1024, 32), (512, 64))]
CASES += [("cross", 16384 // n, n, CAPTION_TOKENS, True) for n in (256, 1024, 4096)]
WIDTH = 1152
# (x shape, transposed): Latte's spatial (B, T, N, C) and temporal (B, N, T, C) layouts at 17×64×64 latents
# and 16 frames, the second also as the transposed view of the first; more row counts for the ranges.
NORM_SHAPES = [((2, 16, 1024, WIDTH), False), ((2, 1024, 16, WIDTH), False), ((8, 4096, WIDTH), False),
               ((2, 1024, 16, WIDTH), True), ((2, 5, 256, WIDTH), False), ((2, 16, 256, WIDTH), False),
               ((8, 16, 1024, WIDTH), False)]  # fmt: skip
TILE_SHAPES = [(2, 16, 1024, WIDTH), (2, 1024, 16, WIDTH), (8, 4096, WIDTH)]
TILES = [(rows, warps) for rows in (1, 2, 4, 8, 16) for warps in (2, 4, 8, 16)]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class OutOfTime(Exception):
    """The time budget is spent."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime


def bench_ms(fn: Callable[[], Any], rep: int = 100) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=rep))


def _timed(fn: Callable[[], Any], budget: Budget) -> float | None:
    """Median ms of ``fn``; None when it raises (a kernel refusing the shape, or out of memory)."""
    budget.check()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SDPA warns about each kernel that refuses a shape
            return bench_ms(fn)
    except RuntimeError:
        return None


# ---------------------------------------------------------------------------------------- attention


def accepts(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether the dispatcher may pick ``name`` here, and, for SDPA held to one kernel, whether that kernel
    itself runs it (otherwise the math kernel would stand in and be timed under its name)."""
    if not get_backend(name).supports(q, k, v, mask):
        return False
    if name not in SDPA_KERNELS:
        return True
    try:
        with warnings.catch_warnings(), sdpa_kernel(SDPA_KERNELS[name]), torch.no_grad():
            warnings.simplefilter("ignore")
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    except RuntimeError:
        return False
    return True


def time_attention(case: tuple, head_dim: int, dtype: torch.dtype, budget: Budget) -> dict[str, Any]:
    kind, rows, lq, lk, masked = case
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = (
        torch.randn(rows, HEADS, n, head_dim, device=DEVICE, dtype=dtype, generator=gen, requires_grad=True)
        for n in (lq, lk, lk)
    )
    mask = None
    if masked:  # caption padding: each sample keeps a different number of tokens, at least one
        keep = torch.randint(1, lk + 1, (rows, 1), device=DEVICE, generator=gen)
        mask = (torch.arange(lk, device=DEVICE) < keep)[:, None, None, :]
    grad = torch.randn_like(q)
    forward: dict[str, float | None] = {}
    training: dict[str, float | None] = {}
    for name in available_backends():
        if not accepts(name, q, k, v, mask):
            forward[name] = training[name] = None
            continue

        def run(name: str = name) -> torch.Tensor:
            return attention(q, k, v, mask, backend=name)

        def step(run: Callable[[], torch.Tensor] = run) -> Any:
            return torch.autograd.grad(run(), (q, k, v), grad)

        with torch.no_grad():
            forward[name] = _timed(run, budget)
        training[name] = _timed(step, budget)
    flops = 4 * rows * HEADS * lq * lk * head_dim
    return {"class": kind, "dtype": _dtype_name(dtype), "rows": rows, "heads": HEADS, "lq": lq, "lk": lk,
            "head_dim": head_dim, "masked": masked, "forward_ms": forward, "training_ms": training,
            "forward_tflops": {n: _rate(flops, ms) for n, ms in forward.items()},
            "training_tflops": {n: _rate(3.5 * flops, ms) for n, ms in training.items()}}  # fmt: skip


def _rate(units: float, ms: float | None, scale: float = 1e9) -> float | None:
    return None if ms is None else units / ms / scale


def _dtype_name(dtype: torch.dtype) -> str:
    return dispatch_table.DTYPE_NAMES[dtype]


# -------------------------------------------------------------------------------------- modulate-norm


def _norm_inputs(shape: tuple[int, ...], transposed: bool, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    if transposed:
        x = torch.randn(shape[0], shape[2], shape[1], *shape[3:], device=DEVICE, dtype=dtype, generator=gen)
        x = x.transpose(1, 2)
    else:
        x = torch.randn(shape, device=DEVICE, dtype=dtype, generator=gen)
    mod = (shape[0], *([1] * (len(shape) - 2)), shape[-1])  # per sample, as the blocks pass them
    return [x, *(torch.randn(mod, device=DEVICE, dtype=dtype, generator=gen) for _ in range(2))]


def time_norm(shape: tuple[int, ...], transposed: bool, dtype: torch.dtype, budget: Budget) -> dict[str, Any]:
    x, shift, scale = _norm_inputs(shape, transposed, dtype)
    norm = nn.LayerNorm(shape[-1], elementwise_affine=False, eps=1e-6)
    grad = torch.randn(shape, device=DEVICE, dtype=dtype)
    forward: dict[str, float | None] = {}
    training: dict[str, float | None] = {}
    for name in ("osp", "torch"):

        def run(name: str = name) -> torch.Tensor:
            with norm_backend(name):
                return modulated_norm(norm, x, shift, scale)

        with torch.no_grad():
            forward[name] = _timed(run, budget)
        leaves = [t.detach().requires_grad_() for t in (x, shift, scale)]

        def step(name: str = name, leaves: list[torch.Tensor] = leaves) -> Any:
            with norm_backend(name):
                return torch.autograd.grad(modulated_norm(norm, *leaves), leaves, grad)

        training[name] = _timed(step, budget)
    nbytes = 2 * x.numel() * x.element_size()
    return {"shape": list(shape), "transposed": transposed, "dtype": _dtype_name(dtype), "channels": shape[-1],
            "rows": x.numel() // shape[-1], "forward_ms": forward, "training_ms": training,
            "forward_gb_s": {n: _rate(nbytes, ms, 1e6) for n, ms in forward.items()}}  # fmt: skip


def time_tiles(shape: tuple[int, ...], dtype: torch.dtype, budget: Budget) -> list[dict[str, Any]]:
    """The forward kernel alone at each tile (rows per program, warps)."""
    from osp.kernels.modulate_norm import triton_modulate_norm_fwd

    x, shift, scale = _norm_inputs(shape, False, dtype)
    out = []
    for rows, warps in TILES:
        budget.check()
        ms = bench_ms(
            partial(triton_modulate_norm_fwd, x, shift, scale, 1e-6, {"ROWS": rows, "num_warps": warps})
        )
        out.append({"shape": list(shape), "rows_per_program": rows, "num_warps": warps, "ms": ms,
                    "gb_s": 2 * x.numel() * x.element_size() / ms / 1e6})  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------ report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _fastest(times: dict[str, float | None]) -> str | None:
    ranked = dispatch_table.ranking(times)
    return ranked[0] if ranked else None


def report(data: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    header = ["case", "backend", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s", "fastest"]
    table = []
    for r in data["attention"]:
        case = f"{r['class']} {r['rows']}×{r['heads']} Lq {r['lq']} Lk {r['lk']} D {r['head_dim']}"
        wins = {mode: _fastest(r[f"{mode}_ms"]) for mode in ("forward", "training")}
        for name in r["forward_ms"]:
            fastest = ", ".join(mode for mode, winner in wins.items() if winner == name)
            table.append([case + (" masked" if r["masked"] else ""), name, _fmt(r["forward_ms"][name]),
                          _fmt(r["forward_tflops"][name], 1), _fmt(r["training_ms"][name]),
                          _fmt(r["training_tflops"][name], 1), fastest])  # fmt: skip
    for r in data["modulate_norm"]:
        case = f"modulate-norm {tuple(r['shape'])}" + (" transposed" if r["transposed"] else "")
        wins = {mode: _fastest(r[f"{mode}_ms"]) for mode in ("forward", "training")}
        for name in r["forward_ms"]:
            fastest = ", ".join(mode for mode, winner in wins.items() if winner == name)
            gb_s = r["forward_gb_s"][name]
            table.append([case, name, _fmt(r["forward_ms"][name]), f"{_fmt(gb_s, 0)} GB/s",
                          _fmt(r["training_ms"][name]), "", fastest])  # fmt: skip
    for shape in TILE_SHAPES:
        tiles = [t for t in data["modulate_norm_tiles"] if tuple(t["shape"]) == shape]
        if tiles:
            best = max(tiles, key=lambda t: t["gb_s"])
            table.append([f"modulate-norm {shape} best tile", f"{best['rows_per_program']} rows, "
                          f"{best['num_warps']} warps", _fmt(best["ms"]), f"{best['gb_s']:.0f} GB/s", "", "", ""])  # fmt: skip
    gpu = data["machine"]["gpu"]
    notes = [f"{gpu}, {data['dtype']}, torch {data['machine']['torch']}; times: triton.testing.do_bench "
             "(median) through osp.layers.attention / modulated_norm.",
             "FLOPs: 4·rows·heads·Lq·Lk·D forward, 3.5× that forward+backward; — = the backend does not take "
             "the shape. GB/s: one read of x and one write of y.",
             f"Skipped for time: {', '.join(data['skipped']) or 'nothing'}."]  # fmt: skip
    return header, table, notes


def dispatch_json(data: dict[str, Any]) -> dict[str, Any]:
    machine = data["machine"]
    measured = {data["dtype"]: {"date": machine["date"][:10], "torch": machine["torch"],
                                "triton": machine.get("triton"), "source": "benchmarks/attention.py"}}  # fmt: skip
    return dispatch_table.build_table(machine["gpu"], measured, data["attention"], data["modulate_norm"])


def install_dispatch(table: dict[str, Any]) -> Path:
    """Write ``table`` as its GPU's file. Entries it does not cover stay: other dtypes, and a part
    (attention or modulate_norm) a time-limited run did not reach for its dtype; ``measured`` then names
    where the kept part came from."""
    path = dispatch_table.table_path(table["gpu"])
    if path.is_file():
        old = json.loads(path.read_text())
        for part in ("attention", "modulate_norm"):
            covered = {e["dtype"] for e in table[part]}
            kept = [e for e in old[part] if e["dtype"] not in covered]
            for dtype in sorted({e["dtype"] for e in kept} & set(table["measured"])):
                earlier = old["measured"].get(dtype, {})
                table["measured"][dtype][f"{part}_from"] = earlier.get(f"{part}_from") or {
                    k: v for k, v in earlier.items() if not k.endswith("_from")
                }
            table[part] = kept + table[part]
        table["measured"] = {k: v for k, v in old["measured"].items() if k not in table["measured"]} | table[
            "measured"
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table, indent=1) + "\n")
    return path


def _save(out: Path, data: dict[str, Any]) -> tuple[Path, Path]:
    data["dispatch"] = dispatch_json(data)
    header, table, notes = report(data)
    stem = "attention_" + dispatch_table.table_path(data["machine"]["gpu"]).stem
    markdown = markdown_report("osp attention and modulate-norm backends", header, table, notes)
    return write_results(out, stem, data, markdown)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path(__file__).parent / "results")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="bf16")
@click.option("--budget-s", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Stop measuring after this many seconds; what was measured is written.")  # fmt: skip
@click.option("--write-dispatch", is_flag=True, help="Also write osp/layers/dispatch/<gpu>.json.")
@click.option("--from-results", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Build the dispatch file from this results JSON instead of measuring.")  # fmt: skip
def main(out: Path, dtype: str, budget_s: float, write_dispatch: bool, from_results: Path | None) -> None:
    if from_results is not None:
        dispatch = dispatch_json(json.loads(from_results.read_text()))
        click.echo(
            f"wrote {install_dispatch(dispatch)}" if write_dispatch else json.dumps(dispatch, indent=1)
        )
        return
    if not torch.cuda.is_available():
        click.echo(
            "benchmarks/attention.py times CUDA kernels and needs a CUDA GPU; nothing measured or written."
        )
        return
    import triton

    budget = Budget(budget_s)
    torch_dtype = DTYPES[dtype]
    data: dict[str, Any] = {"machine": machine_info() | {"triton": triton.__version__}, "dtype": dtype,
                            "attention": [], "modulate_norm": [], "modulate_norm_tiles": [], "skipped": []}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)

    def part(label: str, add: Callable[[Any], None], measure: Callable[..., Any], *args: Any) -> None:
        """Measure one part and save everything so far (a caller's timeout keeps what was done)."""
        try:
            add(measure(*args, torch_dtype, budget))
        except OutOfTime:
            data["skipped"].append(label)
            return
        _save(out, data)

    def attentions(head_dims: tuple[int, ...]) -> None:
        for head_dim in head_dims:
            for case in CASES:
                label = f"attention {case[0]} Lq {case[2]} Lk {case[3]} D {head_dim}"
                part(label, data["attention"].append, time_attention, case, head_dim)

    def norms(shapes: list[tuple[tuple[int, ...], bool]]) -> None:
        for shape, transposed in shapes:
            label = f"modulate-norm {shape}" + (" transposed" if transposed else "")
            part(label, data["modulate_norm"].append, time_norm, shape, transposed)

    # What a short budget most needs first: the released models' head dim, the norm's three benchmark
    # shapes, then the other head dims and row counts.
    attentions(HEAD_DIMS[:1])
    norms(NORM_SHAPES[:3])
    attentions(HEAD_DIMS[1:])
    norms(NORM_SHAPES[3:])
    for shape in TILE_SHAPES:
        part(f"tiles {shape}", data["modulate_norm_tiles"].extend, time_tiles, shape)
    header, table, notes = report(data)
    print_report("osp attention and modulate-norm backends", header, table, notes)
    json_path, md_path = _save(out, data)
    click.echo(f"wrote {json_path} and {md_path}")
    if write_dispatch:
        click.echo(f"wrote {install_dispatch(data['dispatch'])}")


if __name__ == "__main__":
    main()
