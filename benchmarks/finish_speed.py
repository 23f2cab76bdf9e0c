"""How fast the finishing models run on this CPU, per engine, and the whole chained command.

    python benchmarks/finish_speed.py                 # the bundled models, 2 threads
    python benchmarks/finish_speed.py --threads 1 --runs 3

Measured (median of ``--runs`` after one warm-up call, inputs in [-1, 1]):

* upscaling 17x64x64 -> x4 (17x256x256) with the bundled upscaler;
* interpolating 17 -> 33 frames at 256x256 with the bundled interpolator;
* each again as its ensemble (``osp upscale --ensemble``: 8 flips and transposes; ``osp
  interpolate --ensemble``: 4 mirror images);

each in eager PyTorch (fp32), eager bf16, ONNX Runtime (``osp export --components upscaler,interpolator``,
traced at the bundled pipeline's 17x64x64 with dynamic axes) and an AOTInductor package (``--target
compile --out``, weights frozen), with each engine's time as a ratio to eager fp32 beside it; and
``osp generate PROMPT --interpolate 2 --upscale 4`` in a fresh process (import, load, sample, decode,
interpolate, upscale, write; median of ``--runs``), beside the same command without finishing.

Targets (without the ensembles, which trade time for quality): upscaling <= 1.0 s and interpolating
<= 2.0 s on the fastest engine; the chained command <= 20 s. Writes finish_speed.{json,md} to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import machine_info, markdown_report, osp_cli, print_report, write_results

from osp.export.aoti import export_compiled
from osp.export.onnx import export_onnx
from osp.export.runtime import AotiEngine, OrtEngine
from osp.interpolate import IFNetInterpolator
from osp.pipelines.bundled import DEFAULT_MODEL, bundled_model_dir
from osp.pipelines.finish import load_finisher, resolve_finisher
from osp.upscale import SRVGGUpscaler

PROMPT = "a red circle moving left on a black background"
TARGETS = {"upscale": 1.0, "interpolate": 2.0, "chain": 20.0}


def timed(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: first-call allocations, oneDNN primitive creation, lazy loading
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = bundled_model_dir(DEFAULT_MODEL)
    up = load_finisher("upscaler")
    rife = load_finisher("interpolator")
    assert isinstance(up, SRVGGUpscaler) and isinstance(rife, IFNetInterpolator)
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, 17, 64, 64, generator=g) * 2 - 1
    large = torch.rand(1, 3, 17, 256, 256, generator=g) * 2 - 1
    jobs: dict[str, Callable[[Callable[..., torch.Tensor] | None, torch.dtype], Callable[[], Any]]] = {
        "upscale 17x64x64 -> x4": lambda net, dt: lambda: up.to(dt).upscale(small.to(dt), 4, net=net),
        "interpolate 17 -> 33 frames, 256x256": lambda net, dt: lambda: rife.to(dt).interpolate(large.to(dt), 2, net=net),
        "upscale 17x64x64 -> x4, --ensemble": lambda net, dt: lambda: up.to(dt).upscale(small.to(dt), 4, net=net, ensemble=True),
        "interpolate 17 -> 33 frames, 256x256, --ensemble": lambda net, dt: lambda: rife.to(dt).interpolate(large.to(dt), 2, net=net, ensemble=True),
    }  # fmt: skip
    results: dict[str, dict[str, float]] = {name: {} for name in jobs}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        work = Path(tmp)
        components = ("upscaler", "interpolator")
        export_onnx(model_dir, work / "onnx", components=components)
        export_compiled(model_dir, work / "aoti", components=components)
        engines: dict[str, Any] = {
            "onnxruntime": OrtEngine(work / "onnx", model_dir, threads=args.threads),
            "aoti": AotiEngine(work / "aoti", model_dir),
        }
        for name, job in jobs.items():
            kind = "upscaler" if name.startswith("upscale") else "interpolator"  # the model the job runs
            results[name]["eager fp32"] = timed(job(None, torch.float32), args.runs)
            results[name]["eager bf16"] = timed(job(None, torch.bfloat16), max(1, args.runs // 2))
            for label, engine in engines.items():
                net = engine.finisher(kind, resolve_finisher(None, kind))
                results[name][label] = timed(job(net, torch.float32), args.runs)
        up.float()
        rife.float()
        chain, plain = [], []
        for i in range(args.runs if args.runs <= 3 else 3):
            start = time.perf_counter()
            osp_cli("generate", PROMPT, "-o", str(work / f"plain{i}.mp4"), "-q")
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            osp_cli(
                "generate",
                PROMPT,
                "--interpolate",
                "2",
                "--upscale",
                "4",
                "-o",
                str(work / f"chain{i}.mp4"),
                "-q",
            )
            chain.append(time.perf_counter() - start)

    header = ["job", "engine", "seconds", "x eager fp32", "target"]
    rows = []
    for job, times in results.items():
        target = TARGETS["upscale" if job.startswith("upscale") else "interpolate"]
        fastest = min(times, key=lambda k: times[k])
        for engine, seconds in times.items():
            mark = " (fastest)" if engine == fastest else ""
            rows.append([job, engine + mark, f"{seconds:.3f}", f"{seconds / times['eager fp32']:.2f}",
                         f"<= {target} s" if engine == fastest and "--ensemble" not in job else ""])  # fmt: skip
    rows.append(["osp generate, fresh process", "torch", f"{statistics.median(plain):.2f}", "", ""])
    rows.append(["osp generate --interpolate 2 --upscale 4 (33x256x256)", "torch",
                 f"{statistics.median(chain):.2f}", "", f"<= {TARGETS['chain']} s"])  # fmt: skip
    info = machine_info()
    notes = [
        f"{info['cpu']}, {args.threads} threads, torch {info['torch']}; load average at the end "
        "(1, 5, 15 min; 2 or more: the CPU was shared with other work): "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "ratios are each engine's median time over eager fp32's for the same job (< 1 is faster)",
        "onnxruntime and aoti were exported from the bundled models with dynamic axes (traced at 17x64x64)",
    ]
    print_report("Finishing models: CPU speed", header, rows, notes)
    data = {"machine": info, "threads": args.threads, "runs": args.runs, "targets": TARGETS, "seconds": results,
            "generate_plain_s": plain, "generate_chain_s": chain}  # fmt: skip
    write_results(
        args.out, "finish_speed", data, markdown_report("Finishing models: CPU speed", header, rows, notes)
    )


if __name__ == "__main__":
    main()
