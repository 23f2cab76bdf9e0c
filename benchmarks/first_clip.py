"""What one clip costs a new process, per engine: ``osp generate`` wall time, start to written file.

    python benchmarks/first_clip.py [--model runs/demo/osp-demo-t2v] [--runs 3]

In-process benchmarks (``engines.py``) time steps after every compile is done; a user who runs
``osp generate`` once pays the compiles too. Each row here is a fresh ``osp generate PROMPT`` process on
the bundled model (or ``--model``), as a user types it:

* ``torch``: eager, fp32 (the default) and bf16;
* ``compile --freeze``: the whole transformer and the VAE decoder compiled in the process, with an
  empty Inductor cache (``cold``: the first run on a machine) and with the cache the cold run left
  (``warm``: Inductor's on-disk cache is reused across processes);
* ``compile --engine-dir``: packages compiled ahead of time by ``osp export --target compile`` (fp32
  and, on CPUs with bf16 matrix instructions, bf16), loaded instead of compiled. The export's own time
  is reported apart: it is paid once per model, torch version and machine.

Medians of ``--runs`` (cold: one run, it is cold once). Every clip's frames are compared with the eager
fp32 clip (max |Δ| of uint8 pixels). Results go to benchmarks/results/first_clip.*.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine_info, markdown_report, osp_cli, print_report, write_results
from engines import cpu_bf16

from osp.io.video import read_video
from osp.pipelines.bundled import resolve_model

PROMPT = "a red circle moving left on a black background"


def timed_generate(model: Path, out: Path, extra: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    osp_cli("generate", PROMPT, "--model", str(model), "-o", str(out), "-q", *extra, env=env)
    return time.perf_counter() - start


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = Path(resolve_model(args.model))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache")}  # starts empty
    precisions = ["fp32", "bf16"] if cpu_bf16() and args.bf16 else ["fp32"]
    export_s = {}
    for precision in precisions:
        start = time.perf_counter()
        osp_cli("export", "--model", str(model), "--target", "compile", "--precision", precision,
                "--out", str(work / f"packages-{precision}"), env={**os.environ, "TORCHINDUCTOR_CACHE_DIR":
                str(work / f"export-cache-{precision}")})  # fmt: skip
        export_s[precision] = time.perf_counter() - start

    rows: dict[str, tuple[list[str], int]] = {"torch fp32": ([], args.runs)}
    if "bf16" in precisions:
        rows["torch bf16"] = (["--dtype", "bf16"], args.runs)
    rows["compile --freeze, cold cache"] = (["--engine", "compile", "--freeze"], 1)
    rows["compile --freeze, warm cache"] = (["--engine", "compile", "--freeze"], args.runs)
    for precision in precisions:
        dtype = [] if precision == "fp32" else ["--dtype", "bf16"]
        rows[f"compile --engine-dir, {precision} packages"] = (
            ["--engine", "compile", "--engine-dir", str(work / f"packages-{precision}"), *dtype],
            args.runs,
        )
    walls: dict[str, list[float]] = {}
    clips: dict[str, Path] = {}
    for name, (extra, runs) in rows.items():
        clips[name] = work / f"{len(clips)}.mp4"
        walls[name] = [timed_generate(model, clips[name], extra, env) for _ in range(runs)]
    reference = read_video(clips["torch fp32"]).frames.int()
    diff = {
        name: int((read_video(path).frames.int() - reference).abs().max()) for name, path in clips.items()
    }
    median = {name: statistics.median(times) for name, times in walls.items()}
    return {
        "model": str(model),
        "prompt": PROMPT,
        "export_s": export_s,
        "wall_s": walls,
        "median_wall_s": median,
        "vs_eager_fp32": {name: median["torch fp32"] / m for name, m in median.items()},
        "max_abs_diff_uint8_vs_eager_fp32": diff,
        "runs": args.runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Model folder or name; default: the bundled model.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="On a CPU with bf16 matrix instructions, also time bf16 rows.")  # fmt: skip
    parser.add_argument("--note", default="", help="Said in the results, e.g. what else shared the machine.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(
        prefix="osp-first-clip-"
    ) as work:  # models, exports, clips: removed after
        result = run(args, Path(work))
    info = machine_info()
    header = ["osp generate", "runs", "wall s (median)", "vs eager fp32", "max |Δ| uint8 vs eager fp32"]
    rows = [
        [name, str(len(result["wall_s"][name])), f"{m:.1f}", f"{result['vs_eager_fp32'][name]:.2f}x",
         str(result["max_abs_diff_uint8_vs_eager_fp32"][name])]
        for name, m in result["median_wall_s"].items()
    ]  # fmt: skip
    device = info.get("gpu") or f"{info.get('cpu')}, {info.get('usable_cores')} cores"
    notes = [
        f"Device: {device}; torch {info.get('torch')}; {info.get('date')}.",
        f"Model: {result['model']}; prompt {result['prompt']!r}; its default frames, size and steps. Each run "
        "is a fresh process (imports, model load, compile or package load, sampling, decode, mp4 write).",
        "One-off, not in the table: osp export --target compile (transformer + VAE decoder, AOTInductor, "
        "with parity checks) "
        + ", ".join(f"{p} {s:.0f} s" for p, s in result["export_s"].items())
        + ", once per model, torch version and machine.",
    ]
    if args.note:
        notes.append(args.note)
    title = "One clip in a new process: eager vs in-process compile vs compiled packages"
    print_report(title, header, rows, notes)
    write_results(args.out, "first_clip", {"machine": info, "result": result, "notes": notes},
                  markdown_report(title, header, rows, notes))  # fmt: skip


if __name__ == "__main__":
    main()
