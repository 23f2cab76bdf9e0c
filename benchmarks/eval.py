"""Evaluation throughput: I3D features for FVD, and batch sampling in 1 vs N processes.

    python benchmarks/eval.py [--device cpu|cuda] [--clips 6] [--steps 4] [--nproc 2]

I3D: clips/s of :func:`osp.eval.fvd.i3d_features` (uint8 256x256 frames resized to 224x224, the
protocol's 16 frames, random weights: speed does not depend on their values), per batch size.

Batch sampling: ``osp generate --prompts`` with the bundled model, run as a user runs it, once with
1 process and once with ``--nproc N``. Two rates per run: end to end (wall time of the command:
imports, model loads, sampling, decode, mp4 writes) and steady state (the sampling time the command
reports: its slowest rank from the first clip to the last, model loading excluded). The scaling ratio
is the steady-state rate with N processes over the rate with one. On a CPU the processes
share the cores (each gets cores / N threads), so the ratio says how much better N narrow
processes use them than one wide one; on GPUs each process has its own device.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine_info, markdown_report, osp_cli, print_report, write_results

from osp.eval.fvd import i3d_features
from osp.eval.i3d import I3D

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow circle moving down", "a white square moving left", "a red triangle moving up"]  # fmt: skip


def i3d_throughput(device: str, batches: list[int], repeats: int) -> list[dict[str, float]]:
    model = I3D().eval().to(device)
    rows = []
    for batch in batches:
        clips = [torch.randint(0, 256, (16, 3, 256, 256), dtype=torch.uint8) for _ in range(batch)]
        i3d_features(model, clips)  # warm-up: allocator, oneDNN / cuDNN kernel choice
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            i3d_features(model, clips)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"batch": batch, "seconds": seconds, "clips_per_s": batch / seconds})
    return rows


def timed_batch(
    work: Path, count: int, nproc: int, threads: int | None, steps: int, device: str
) -> dict[str, float | int | None]:
    """Wall time of the whole command, and the sampling time it reports (slowest rank, loads excluded).
    ``threads``: OMP_NUM_THREADS of every process; None leaves it to osp (cores / nproc)."""
    prompts = work / "prompts.txt"
    prompts.write_text("".join(PROMPTS[i % len(PROMPTS)] + f" {i}\n" for i in range(count)))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = work / f"clips-{nproc}-{threads}"
    start = time.perf_counter()
    run = osp_cli("generate", "--prompts", str(prompts), "-o", str(out), "--steps", str(steps), "--device", device,
                  "--nproc", str(nproc), "-q", env=env)  # fmt: skip
    wall = time.perf_counter() - start
    match = re.search(r"\(sampling ([\d.]+) s", run.stdout)
    if match is None:
        raise SystemExit(f"osp generate printed no sampling time: {run.stdout!r}")
    sampling = float(match.group(1))
    return {"nproc": nproc, "threads": threads, "wall_s": wall, "sampling_s": sampling, "clips_per_s": count / sampling,
            "end_to_end_clips_per_s": count / wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,4", help="I3D batch sizes.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clips", type=int, default=6, help="Prompts of each sampling run.")
    parser.add_argument("--steps", type=int, default=4, help="Sampling steps of the bundled model.")
    parser.add_argument("--nproc", type=int, default=2, help="Processes to compare with one.")
    parser.add_argument("--note", default="", help="Said in the results, e.g. what else shared the machine.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    load_before = os.getloadavg()
    i3d = i3d_throughput(args.device, [int(b) for b in args.batches.split(",")], args.repeats)
    with tempfile.TemporaryDirectory(prefix="osp-bench-eval-") as tmp:
        runs = [(1, None), (1, 1), (args.nproc, None)]  # None: all cores for one process, cores / N for N
        sampling = [timed_batch(Path(tmp), args.clips, n, t, args.steps, args.device) for n, t in runs]
    load_after = os.getloadavg()
    rate = [float(r["clips_per_s"]) for r in sampling]  # type: ignore[arg-type]
    ratio, ratio_one_thread = rate[2] / rate[0], rate[2] / rate[1]
    info = machine_info()
    header = ["measurement", "setting", "s", "clips/s"]
    rows = [["I3D features (16x224x224)", f"batch {r['batch']}", f"{r['seconds']:.2f}", f"{r['clips_per_s']:.2f}"]
            for r in i3d]  # fmt: skip
    rows += [
        [f"osp generate --prompts, {r['nproc']} process(es), {r['threads'] or 'default'} thread(s) each",
         f"{args.clips} clips, {args.steps} steps",
         f"{r['sampling_s']:.1f} (wall {r['wall_s']:.1f})", f"{r['clips_per_s']:.3f} (end to end {r['end_to_end_clips_per_s']:.3f})"]
        for r in sampling
    ]  # fmt: skip
    device = info.get("gpu") or f"{info.get('cpu')}, {info.get('usable_cores')} cores"
    notes = [
        f"Device: {device} ({args.device}); torch {info.get('torch')}; {info.get('date')}.",
        f"Scaling {args.nproc} processes vs 1 in steady-state clips/s (clips over the sampling time the "
        "command reports, slowest rank, model loading excluded; 'wall' adds imports and loads, paid once "
        f"per process): {ratio:.2f}x against one process on every core (its default threads), "
        f"{ratio_one_thread:.2f}x against one single-threaded process. With {args.nproc} processes each "
        f"gets cores / {args.nproc} threads.",
        f"One process with its default {torch.get_num_threads()} threads sampled at {rate[0] / rate[1]:.2f}x "
        "the rate of one single-threaded process; below 1 means the cores were not free (OpenMP threads "
        "wait for each other whenever one is descheduled).",
        f"Load average (1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after on "
        f"{os.cpu_count()} cores: the machine was shared with other jobs, so these numbers are rough.",
        "I3D weights are random (speed does not depend on them); batch sampling uses the bundled model at "
        "its 17x64x64 with the given steps, one clip per call, mp4 writes included.",
    ]
    if args.note:
        notes.append(args.note)
    title = "Evaluation throughput: I3D features and batch sampling"
    print_report(title, header, rows, notes)
    data = {"machine": info, "i3d": i3d, "sampling": sampling, "scaling_ratio": ratio,
            "scaling_ratio_vs_one_thread": ratio_one_thread, "notes": notes,
            "settings": vars(args) | {"out": str(args.out)}}  # fmt: skip
    write_results(args.out, "eval", data, markdown_report(title, header, rows, notes))


if __name__ == "__main__":
    main()
