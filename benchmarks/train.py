"""Training speed and memory of a diffusion transformer under osp_train, in Open-Sora-Plan's table format.

    python benchmarks/train.py                       # latte-t2v-small, latents 5x16x16, this CPU
    python benchmarks/train.py --grid speed          # compile x checkpointing mode, fused vs foreach AdamW
    python benchmarks/train.py --grid full           # every gradient checkpointing x precision x ZeRO x KV combination
    python benchmarks/train.py --model latte-t2v-xl/2 --latent 64 32 32 --text-len 120 --grid osp speed  # GPU

Open-Sora-Plan v1.0 published training speed and memory at batch 1 for combinations of gradient
checkpointing, mixed precision, xformers, feature pre-extraction, DeepSpeed ZeRO (+ offload) and KV
compression (A100, Latte-T2V-XL/2 at latents 64x32x32: 0.64 steps/s at 43 GB without ZeRO, 0.66 steps/s at
14 GB with ZeRO-2). This script measures the same rows with osp's own training pieces: the model from
``osp_train.train.build_model``, the DeepSpeed engine from ``osp_train.engine.build_engine`` and the loss
from ``osp_train.train.training_loss`` (IDDPM for learned-sigma models, flow otherwise), fed random
latents and caption states of the shapes ``osp extract`` writes (feature pre-extraction: no VAE or text
encoder in the loop). Attention is osp's one entry point (SDPA on CPU; osp's Triton kernel or
flash-attn on a GPU when their constraints hold), which stands in for xformers.

The ``speed`` grid measures osp's own throughput options at bf16 and ZeRO 0: regional torch.compile of
the transformer blocks (``compile``), gradient checkpointing ``none`` / ``full`` / ``selective`` (every
``--checkpoint-every``-th block), and torch's fused AdamW kernel against its foreach path (the fused
kernel runs on CUDA only; on a CPU both rows run torch's default). A compiled row's warm-up steps
include the compile; its first step's time is recorded as ``first_step_s``.

Each row runs in a fresh process, so its memory is its own: on a GPU the peak of
``torch.cuda.max_memory_allocated`` over the whole run (weights, optimizer states, activations); on a CPU
the peak resident memory the run added over the process after its imports (see ``common.MEMORY_NOTE``).
Steps/s is the median of ``--steps`` timed steps after ``--warmup`` untimed ones. MFU counts model FLOPs
(3x a forward's, as in PaLM and nanoGPT; the recomputed forward of gradient checkpointing is not counted)
against the dense bf16 / fp32 peak of the GPU, or, on a CPU, against the fp32 / bf16 matmul throughput
this script measures on it first (so CPU MFU is "of what a large matmul reaches here", not of a data sheet).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    MEMORY_NOTE,
    machine_info,
    markdown_report,
    print_report,
    run_child,
    track_peak_memory,
    write_results,
)


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    ckpt: str  # gradient_checkpointing: none | full | selective
    bf16: bool
    zero: int
    offload: bool = False
    kv: int = 1  # KV compression stride
    compile: bool = False
    fused: bool = True  # optim.fused (CUDA only)


# Open-Sora-Plan v1.0's published rows.
OSP_ROWS = [
    Row("full", True, 0),
    Row("full", True, 2),
    Row("full", True, 2, kv=2),
    Row("full", True, 2, offload=True),
    Row("full", True, 2, offload=True, kv=2),
]
# What each switch buys on its own, from the first row: drop checkpointing, drop mixed precision, ZeRO-1.
ABLATION_ROWS = [
    Row("none", True, 0),
    Row("full", False, 0),
    Row("none", False, 0),
    Row("full", True, 1),
]
# osp's throughput options, bf16 at ZeRO 0: each checkpointing mode eager and compiled, and the first
# row again with torch's foreach AdamW instead of the fused kernel.
# Eager rows first: a time-bounded run (the GPU suite) measures them before the compiles.
SPEED_ROWS = [
    *(
        Row(ckpt, True, 0, compile=compiled)
        for compiled in (False, True)
        for ckpt in ("full", "none", "selective")
    ),
    Row("full", True, 0, fused=False),
]
FULL_GRID = [
    Row(ckpt, bf16, stage, offload, kv)
    for ckpt, bf16, (stage, offload), kv in itertools.product(
        ("none", "selective", "full"),
        (False, True),
        ((0, False), (1, False), (2, False), (1, True), (2, True)),
        (1, 2),
    )
]
GRIDS = {"osp": OSP_ROWS + ABLATION_ROWS, "speed": SPEED_ROWS, "full": FULL_GRID}

# Dense tensor-core peaks from NVIDIA's data sheets (FLOP/s): bf16, and fp32 through TF32.
GPU_PEAKS = {"H100": (989.4e12, 494.7e12), "H200": (989.4e12, 494.7e12), "A100": (312e12, 156e12)}


# ------------------------------------------------------------------------------------------ one row


def _train_config(args: argparse.Namespace, row: Row) -> Any:
    from osp_train.config import TrainConfig

    learned_sigma = _learned_sigma(args.model)
    overrides: dict[str, Any] = {"kv_compress": row.kv} if row.kv > 1 else {}
    if args.caption_channels:
        overrides["caption_channels"] = args.caption_channels
    selective = {"gradient_checkpointing_every": args.checkpoint_every} if row.ckpt == "selective" else {}
    return TrainConfig.from_dict(
        {
            "out": str(Path(tempfile.gettempdir()) / "osp-bench-train"),
            "model": args.model,
            "model_overrides": overrides,
            "objective": "iddpm" if learned_sigma else "flow",
            "conditioning": "class"
            if args.model.startswith("latte-") and "t2v" not in args.model
            else "text",
            "features": "stored-latents",  # never read: the batches below stand in for them
            "vae_sample": False,
            "data": {"manifest": "unused.jsonl"},
            "batch_size": args.batch,
            "steps": args.warmup + args.steps,
            "optim": {"lr": 1e-4, "grad_clip": 1.0, "fused": row.fused},
            "precision": "bf16" if row.bf16 else "fp32",
            "gradient_checkpointing": row.ckpt,
            **selective,
            "compile": row.compile,
            "zero_stage": row.zero,
            "cpu_offload": row.offload,
            "log_tensorboard": False,
        },
        source="benchmarks/train.py",
    )


def _learned_sigma(model: str) -> bool:
    from osp.dit.latte import LATTE_CONFIGS
    from osp.dit.latte_t2v import LATTE_T2V_CONFIGS

    cfg: Any = LATTE_T2V_CONFIGS.get(model) or LATTE_CONFIGS[model]
    return bool(cfg.learned_sigma)


def _forward_flops(model: torch.nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs, **kwargs)
    return int(counter.get_total_flops())


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration, in this fresh process: build, warm up, time ``args.steps`` steps."""
    from osp_train.blocks import prepare_blocks
    from osp_train.engine import build_engine, init_distributed
    from osp_train.train import build_model, training_loss

    row = Row(**json.loads(args.row))
    cfg = _train_config(args, row)
    info = init_distributed()
    device, dtype = info.device, (torch.bfloat16 if row.bf16 else torch.float32)
    cuda = device.type == "cuda"
    frames, height, width = args.latent
    g = torch.Generator(device).manual_seed(info.rank)

    with track_peak_memory() as mem:
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        channels = model.config.in_channels  # type: ignore[attr-defined]
        x0 = torch.randn(cfg.batch_size, channels, frames, height, width, generator=g, device=device)
        if cfg.conditioning == "text":
            caption = model.config.caption_channels  # type: ignore[attr-defined]
            cond = {
                "encoder_hidden_states": torch.randn(
                    cfg.batch_size, args.text_len, caption, generator=g, device=device
                ),
                "encoder_attention_mask": torch.ones(cfg.batch_size, args.text_len, device=device),
            }
        else:
            cond = {"class_labels": torch.zeros(cfg.batch_size, dtype=torch.long, device=device)}
        flops = 3 * _forward_flops(model, (x0, torch.full((cfg.batch_size,), 500.0, device=device)), cond)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        # As osp_train.train.train does: checkpointing and compile from outside, then DeepSpeed.
        prepare_blocks(
            model, cfg.gradient_checkpointing, cfg.gradient_checkpointing_every, compile=cfg.compile
        )
        engine = build_engine(cfg, model, info.world_size)
        loss_fn = training_loss(cfg, model, device)
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}

        def model_fn(x_t: torch.Tensor, t: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
            return engine(x_t.to(dtype), t, **c).float()

        def step() -> float:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = loss_fn(model_fn, x0, cast, g)["loss"].mean()
            engine.backward(loss)
            engine.step()
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - start

        warmup = [step() for _ in range(args.warmup)]
        times = [step() for _ in range(args.steps)]
    step_s = statistics.median(times)
    gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return {
        "row": asdict(row),
        "fused_adamw": bool(engine.basic_optimizer.defaults.get("fused")),
        "first_step_s": warmup[0] if warmup else None,
        "parameters": params,
        "world_size": info.world_size,
        "step_s": times,
        "median_step_s": step_s,
        "steps_per_s": 1 / step_s,
        "samples_per_s": cfg.batch_size * info.world_size / step_s,
        "model_flops_per_step": flops,
        "achieved_flops": flops / step_s,
        "gpu_peak_allocated_mib": gpu_mib,
        "rss_peak_mib": mem.peak_mib,
        "rss_extra_mib": mem.extra_mib,
        "memory_mib": gpu_mib if gpu_mib is not None else mem.extra_mib,
    }


# --------------------------------------------------------------------------------------- the driver


def cpu_matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul on this CPU (the ceiling CPU MFU is quoted against)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peaks(gpu: str | None) -> tuple[dict[str, float], str]:
    """(bf16 and fp32 peak FLOP/s, where they come from)."""
    if gpu is not None:
        for key, (bf16, fp32) in GPU_PEAKS.items():
            if key in gpu:
                return {"bf16": bf16, "fp32": fp32}, f"{key} data-sheet dense peak"
        return {}, f"no peak known for {gpu}"
    bf16, fp32 = cpu_matmul_peak(torch.bfloat16), cpu_matmul_peak(torch.float32)
    return {"bf16": bf16, "fp32": fp32}, (
        f"this CPU's measured 2048^3 matmul: fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s"
    )


def run_row(args: argparse.Namespace, row: Row, out: Path) -> dict[str, Any]:
    child_args = [
        __file__, "--child", "--row", json.dumps(asdict(row)), "--result", str(out),
        "--model", args.model, "--latent", *map(str, args.latent), "--text-len", str(args.text_len),
        "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--caption-channels", str(args.caption_channels), "--checkpoint-every", str(args.checkpoint_every),
    ]  # fmt: skip
    if args.nproc > 1:
        child_args = [
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            *child_args,
        ]
    run = run_child(child_args, out, timeout_s=args.timeout)
    failure = run.failure()
    if failure is not None:
        return {"row": asdict(row), "error": failure}
    assert run.result is not None
    return run.result


def _tick(flag: bool) -> str:
    return "✔" if flag else "❌"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="latte-t2v-small")
    parser.add_argument("--latent", type=int, nargs=3, default=(5, 16, 16), metavar=("T", "H", "W"))
    parser.add_argument(
        "--text-len", type=int, default=24, help="caption tokens (MiniLM 24; T5 in v1.0: 120-300)"
    )
    parser.add_argument("--caption-channels", type=int, default=0, help="override the preset's caption width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--grid",
        nargs="+",
        choices=tuple(GRIDS),
        default=["osp"],
        help="osp: the published rows + ablations; speed: compile, checkpointing modes, fused AdamW",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=2, help="selective rows: recompute every k-th block"
    )
    parser.add_argument(
        "--nproc", type=int, default=1, help="processes per row (ZeRO partitions across them)"
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--note", default="", help="said in the results, e.g. what else shared the machine")
    parser.add_argument("--stem", default="train", help="result file name under --out")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        try:
            result = child(args)
        except Exception as err:  # reported in the table, the other rows still run
            result = {"error": f"{type(err).__name__}: {err}"}
        if int(os.environ.get("RANK", "0")) == 0:
            args.result.write_text(json.dumps(result))
        sys.exit(0 if "error" not in result else 1)

    info = machine_info()
    peak, peak_source = peaks(info["gpu"])
    rows = list(dict.fromkeys(row for grid in args.grid for row in GRIDS[grid]))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="osp-bench-train-") as tmp:
        for i, row in enumerate(rows):
            print(f"[{i + 1}/{len(rows)}] {row}", flush=True)
            result = run_row(args, row, Path(tmp) / f"row{i}.json")
            if "error" not in result:
                ref = peak.get("bf16" if row.bf16 else "fp32")
                result["mfu"] = result["achieved_flops"] / ref if ref else None
            results.append(result)
            # rewritten after every row: a run stopped part-way keeps the rows it measured
            report(args, info, peak, peak_source, results, final=i == len(rows) - 1)


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    peak: dict[str, float],
    peak_source: str,
    results: list[dict[str, Any]],
    final: bool,
) -> None:
    """The table and notes of the rows measured so far: printed at the end, written every time."""
    gpu = info["gpu"] is not None
    header = [
        "gradient checkpointing", "mixed precision", "feature pre-extraction", "deepspeed config",
        "compress kv", "compile", "fused AdamW", "training speed", "samples/s", "memory", "MFU",
    ]  # fmt: skip
    table = []
    for r in results:
        row = Row(**r["row"])
        zero = "❌" if row.zero == 0 else f"Zero{row.zero}" + (" offload" if row.offload else "")
        ckpt = {"none": "❌", "full": "✔", "selective": f"every {args.checkpoint_every}"}[row.ckpt]
        cells = [
            ckpt,
            "bf16" if row.bf16 else "❌ (fp32)",
            "✔",
            zero,
            f"✔ (stride {row.kv})" if row.kv > 1 else "❌",
            _tick(row.compile),
        ]
        if "error" in r:
            table.append([*cells, "-", "failed", "-", "-", r["error"][:80]])
            continue
        cells.append(_tick(r["fused_adamw"]))
        unit = "GiB" if gpu else "GiB RSS"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        table.append([*cells, f"{r['steps_per_s']:.2f} steps/sec", f"{r['samples_per_s']:.2f}",
                      f"{r['memory_mib'] / 1024:.2f} {unit}", mfu])  # fmt: skip
    first = next((r for r in results if "error" not in r), None)
    device = info["gpu"] or f"{info['cpu']}, {info['usable_cores']} cores"
    notes = [
        f"Device: {device}; torch {torch.__version__}; {info['date']}.",
        f"{args.model}"
        + (f" ({first['parameters'] / 1e6:.1f}M trainable parameters)" if first else "")
        + f", latents {args.batch}x{tuple(args.latent)}, {args.text_len} caption tokens, batch {args.batch} per "
        f"process, {args.nproc} process(es); median of {args.steps} steps after {args.warmup} warm-up steps.",
        "Feature pre-extraction: random latents and caption states of the extracted shapes, no VAE or text "
        "encoder in the loop (as the published table). Attention: osp.layers.attention (SDPA on CPU).",
        "Checkpointing: ✔ recomputes every transformer block in the backward pass, 'every k' blocks 0, k, "
        "2k, ... (osp_train.blocks). Compile: each block torch.compile'd (regional); warm-up steps include "
        "the compile. Fused AdamW: torch's fused kernel actually ran (CUDA only; else torch's default).",
        f"MFU: 3x forward FLOPs per step (FlopCounterMode) / step time / peak; peak = {peak_source}.",
        "Memory: " + ("peak torch.cuda.max_memory_allocated of the run." if gpu else MEMORY_NOTE),
        "ZeRO partitions optimizer states (and, at stage 2, gradients) across processes: with one process it "
        "saves nothing and costs its bookkeeping; offload moves optimizer states to CPU memory.",
    ]
    if args.note:
        notes.append(args.note)
    title = "Training speed and memory at batch 1 (Open-Sora-Plan v1.0 table format)"
    if final:
        print_report(title, header, table, notes)
    data: dict[str, Any] = {"machine": info, "args": {k: v for k, v in vars(args).items() if k not in ("child", "row", "result")},
            "peaks": peak, "results": results, "notes": notes}  # fmt: skip
    data["args"]["out"] = str(data["args"]["out"])
    write_results(args.out, args.stem, data, markdown_report(title, header, table, notes))


if __name__ == "__main__":
    main()
