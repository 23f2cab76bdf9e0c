"""A prompt to a video from an ``osp export --bundle-for`` bundle: Python (osp's ONNX engine), Node.js
(onnxruntime-node) and headless Chromium (onnxruntime-web, WASM), per weight variant.

    python benchmarks/embed.py [--bundle DIR] [--runs 3] [--screenshot docs/images/embed_web.png]

Without ``--bundle`` the bundled model is exported first (fp32, fp16 and int8 variants; the export's
time is reported apart). Every row is a fresh process (a fresh page for Chromium) generating the
bundled model's default clip (17 frames at 64x64, 30 flow-Euler steps, guidance 2.5) for one prompt and
seed from the portable noise:

* ``load``: start of the process (or page navigation) until every ONNX session is ready;
* ``first frame``: until the first frame is in memory. The VAE decoder turns the whole latent into all
  frames in one call, so the first frame arrives with the last;
* ``total``: until the process is done (Python and Node: frames written to files) or, in Chromium, the
  clip plays.

Python runs ``OrtEngine`` (what ``osp generate --engine onnx`` runs) with its text encoder in PyTorch;
``osp generate`` itself is timed once as a user runs it. Each row's frames are compared with Python's
fp32 frames (max and mean |Δ| of uint8 values). Needs node, examples/js/node_modules (``npm ci``) and
Chromium. Results go to benchmarks/results/embed.{json,md}; the page's screenshot to --screenshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import machine_info, markdown_report, osp_cli, print_report, write_results
from PIL import Image

from osp.export.bundle import read_bundle
from osp.pipelines.bundled import bundled_model_dir

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "examples" / "js"
PROMPT = "a red circle moving left on a black background"
SEED = 3

# One clip in a fresh Python process; prints its timings (from the interpreter's start) as JSON and
# saves the frames as .npy.
PYTHON_CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
from osp.export.runtime import OrtEngine
from osp.pipelines.text_to_video import load_pipeline
model, folder, out, prompt, seed = sys.argv[1:6]
pipe = load_pipeline(model)
engine = OrtEngine(folder, model)
denoiser, decoder = engine.denoiser(), engine.decoder()
loaded = time.perf_counter()
result = pipe.generate([prompt], seed=int(seed), noise="portable", denoiser=denoiser, decoder=decoder)
frames = time.perf_counter()
np.save(out, result.videos[0].permute(0, 2, 3, 1).numpy())
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "first_frame_s": frames - start, "total_s": done - start}))
"""


def timed(command: list[str], cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed:\n{run.stderr[-3000:]}")
    return wall, run.stdout.strip().splitlines()[-1]


def python_row(bundle: Path, variant: str, out: Path) -> tuple[dict[str, float], np.ndarray]:
    command = [sys.executable, "-c", PYTHON_CHILD, str(bundled_model_dir()), str(bundle / variant), str(out),
               PROMPT, str(SEED)]  # fmt: skip
    wall, line = timed(command)
    return {**json.loads(line), "process_s": wall}, np.load(out)


def node_row(bundle: Path, variant: str, out: Path) -> tuple[dict[str, float], np.ndarray]:
    command = ["node", "cli.mjs", PROMPT, "--bundle", str(bundle), "--variant", variant, "--seed", str(SEED),
               "-q", "-o", str(out / "clip.png")]  # fmt: skip
    wall, line = timed(command, JS)
    report = json.loads(line)
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in report["written"]])
    return {k: report[k] for k in ("load_s", "first_frame_s", "total_s")} | {"process_s": wall}, frames


def chromium_row(
    bundle: Path, variant: str, out: Path, screenshot: Path
) -> tuple[dict[str, float], np.ndarray]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    command = ["node", "scripts/web-check.mjs", "--bundle", str(bundle), "--prompt", PROMPT, "--seed", str(SEED),
               "--variant", variant, "--chromium", chromium, "--screenshot", str(screenshot),
               "--frames", str(out / "clip.rgba")]  # fmt: skip
    wall, line = timed(command, JS)
    report = json.loads(line)
    frames = np.fromfile(out / "clip.rgba", dtype=np.uint8).reshape(report["frames"], report["height"],
                                                                     report["width"], 4)[..., :3]  # fmt: skip
    load = report["page_open_to_ready_s"]
    timings = {"load_s": load, "first_frame_s": load + report["click_to_done_s"],
               "total_s": load + report["click_to_done_s"], "process_s": wall}  # fmt: skip
    return timings, frames


def median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bundle, export_s = args.bundle, None
    if bundle is None:
        bundle = work / "bundle"
        start = time.perf_counter()
        osp_cli("export", "--model", "osp-demo-t2v", "--target", "onnx", "--bundle-for", "web",
                "--variants", "fp32,fp16,int8", "--out", str(bundle))  # fmt: skip
        export_s = time.perf_counter() - start
    manifest = read_bundle(bundle)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    reference = None
    for variant in manifest.variants:
        for runtime in ("python", "node", "chromium"):
            runs, frames = [], None
            for i in range(args.runs if runtime != "chromium" else args.web_runs):
                out = work / f"{runtime}-{variant}-{i}"
                out.mkdir()
                if runtime == "python":
                    timings, frames = python_row(bundle, variant, out / "clip.npy")
                elif runtime == "node":
                    timings, frames = node_row(bundle, variant, out)
                else:
                    shot = args.screenshot if variant == manifest.default_variant else out / "page.png"
                    timings, frames = chromium_row(bundle, variant, out, shot)
                runs.append(timings)
            assert frames is not None
            if reference is None:  # Python, fp32: the first row
                reference = frames.astype(np.int16)
            diff = np.abs(frames.astype(np.int16) - reference)
            rows.append({"runtime": runtime, "variant": variant, "runs": len(runs), **median(runs),
                         "max_abs_vs_python_fp32": int(diff.max()), "mean_abs_vs_python_fp32": float(diff.mean()),
                         "bytes": manifest.variants[variant].bytes})  # fmt: skip
            print(f"{runtime} {variant}: {rows[-1]}", flush=True)
    start = time.perf_counter()
    osp_cli("generate", PROMPT, "--engine", "onnx", "--engine-dir", str(bundle / "fp32"), "--noise", "portable",
            "--seed", str(SEED), "-q", "-o", str(work / "cli.mp4"))  # fmt: skip
    cli_s = time.perf_counter() - start
    return {
        "machine": machine_info(),
        "prompt": PROMPT,
        "seed": SEED,
        "bundle": {
            name: {
                "bytes": v.bytes,
                "files": {c: f.bytes for c, f in v.files.items()},
                "weights": v.weights,
                "max_rel_vs_eager": v.max_rel,
            }
            for name, v in manifest.variants.items()
        },
        "export_s": export_s,
        "osp_generate_cli_s": cli_s,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "rows": rows,
    }


def report(data: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    title = "A prompt to a video from an osp bundle: Python, Node.js and headless Chromium (WASM)"
    header = [
        "runtime",
        "weights",
        "download MB",
        "load s",
        "first frame s",
        "total s",
        "max / mean |Δ| vs Python fp32",
    ]
    names = {
        "python": "Python, osp OrtEngine",
        "node": "Node.js, onnxruntime-node",
        "chromium": "Chromium, onnxruntime-web WASM",
    }
    table = [[names[r["runtime"]], r["variant"], f"{r['bytes'] / 1e6:.1f}", f"{r['load_s']:.2f}",
              f"{r['first_frame_s']:.2f}", f"{r['total_s']:.2f}",
              f"{r['max_abs_vs_python_fp32']} / {r['mean_abs_vs_python_fp32']:.3f}"] for r in data["rows"]]  # fmt: skip
    machine = data["machine"]
    sizes = "; ".join(f"{name} {v['bytes'] / 1e6:.1f} MB (" + ", ".join(f"{c} {b / 1e6:.1f}" for c, b in v["files"].items())
                      + f"): {v['weights']}" for name, v in data["bundle"].items())  # fmt: skip
    before, after = data["load_average"]["before"][0], data["load_average"]["after"][0]
    notes = [
        f"Machine: {machine.get('cpu')}, {machine.get('usable_cores')} cores; {machine.get('date', '')}. The machine was shared "
        f"with other work while this ran (1-minute load average {before:.1f} before, {after:.1f} after, on "
        f"{machine.get('usable_cores')} cores): times vary by tens of percent between runs; compare rows, not runs.",
        f"Model: the bundled osp-demo-t2v, 17 frames at 64x64, 30 flow-Euler steps, guidance 2.5, prompt "
        f"'{data['prompt']}', seed {data['seed']}, portable noise. Medians of the rows' runs (Python and Node "
        "fresh processes; Chromium a fresh browser and page).",
        "load: process start (Chromium: navigation) to every ONNX session ready; Python's includes importing torch "
        "and loading the PyTorch text encoder its pipeline runs. first frame: to the first frame in memory; the "
        "VAE decoder makes all frames in one call, so it is also the last. total: to the frames written (Python "
        "an .npy, Node PNGs) or, in Chromium, to the clip playing.",
        "Threads: onnxruntime in Python and Node uses both cores; onnxruntime-web runs one WASM thread (its "
        "default on a 2-core machine, and the only choice without cross-origin isolation). No GPU; WebGPU absent.",
        "Python's rows encode the prompt with the PyTorch text encoder (osp's pipeline runs no ONNX text encoder), "
        "so its fp16 and int8 rows differ from fp32 through the transformer and decoder files alone; Node and "
        "Chromium run the variant's text encoder too, and the int8 one (states 5% off, relative max) moves the "
        "clip further: the same shape and motion, edges shifted by a pixel or so.",
        f"Bundle sizes: {sizes}.",
        f"`osp generate --engine onnx --engine-dir BUNDLE/fp32 --noise portable` as a user runs it (fresh "
        f"process, mp4 written): {data['osp_generate_cli_s']:.2f} s.",
    ]
    if data["export_s"] is not None:
        notes.append(f"One-off, not in the table: osp export --bundle-for web with all three variants "
                     f"(with parity checks): {data['export_s']:.0f} s.")  # fmt: skip
    return title, header, table, notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=None, help="an existing bundle of the bundled model")
    parser.add_argument("--runs", type=int, default=3, help="runs per Python / Node row (median)")
    parser.add_argument("--web-runs", type=int, default=1, help="runs per Chromium row (median)")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "images" / "embed_web.png")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if shutil.which("node") is None or not (JS / "node_modules").is_dir():
        raise SystemExit("needs node and examples/js/node_modules (cd examples/js && npm ci)")
    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="osp-embed-") as work:
        data = run(args, Path(work))
    title, header, table, notes = report(data)
    print_report(title, header, table, notes)
    paths = write_results(args.out, "embed", data, markdown_report(title, header, table, notes))
    print("wrote", *paths, args.screenshot)


if __name__ == "__main__":
    main()
