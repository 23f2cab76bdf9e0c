"""Every GPU measurement osp needs, in one bounded run (about 8 minutes on one H100/H200).

    python benchmarks/gpu_suite.py --out DIR [--parts tests,attention,...] [--budget-s 480]
    python benchmarks/gpu_suite.py --out DIR --smoke     # the parts that can, on the CPU: checks the suite

Parts, in order (each a separate process with its own time limit, so a crash, a hang or an out-of-memory
in one leaves the others running):

- ``tests``: the GPU-marked tests (``pytest -m gpu``); the log goes to ``DIR/pytest_gpu.txt``.
- ``attention``: benchmarks/attention.py — every attention backend and the fused modulate-norm, forward and
  forward+backward (also copied to ``DIR/attention_<gpu>.json``: ``python benchmarks/attention.py
  --from-results DIR/attention_<gpu>.json --write-dispatch`` turns it into osp's dispatch table).
- ``forward``: benchmarks/gpu_forward.py — Latte-T2V-XL/2 against diffusers: eager, compiled, CUDA graphs,
  bf16 error against fp32, profiles.
- ``train``: benchmarks/train.py — Latte-T2V-XL/2 training steps/s, peak memory and MFU per option.
- ``tune``: benchmarks/attention_tune.py — the Triton kernels' tile sweep.
- ``vae``: benchmarks/gpu_vae.py — the release-size VAE decoding 65x512² tiled and untiled.
- ``aoti``: benchmarks/gpu_aoti.py — AOTInductor packages (a class-conditioned Latte-B/2 pipeline's
  transformer and VAE decoder) built with ``--device cuda``, loaded as ``osp generate``'s compile engine
  and timed against eager sampling.

No part reads or writes video or needs the bundled text encoder, so every part runs on a GPU machine
prepared with ``../shared/gpu/prepare.sh --no-av`` (osp imports PyAV only when a video file is touched).

Results are merged into ``DIR/suite.json`` and summarised in ``DIR/suite.md`` after every part; each part's
output goes to ``DIR/suite.log``. At most five files: the GPU machine returns only a few.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


# name: (command builder (scratch dir, smoke) -> argv or None when the part cannot run, time limit s)
def _tests(tmp: Path, smoke: bool) -> list[str]:
    return [PY, "-P", "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests"), "-rA", "-p", "no:cacheprovider"]


def _attention(tmp: Path, smoke: bool) -> list[str] | None:
    return None if smoke else [PY, str(HERE / "attention.py"), "--out", str(tmp), "--budget-s", "70"]


def _tune(tmp: Path, smoke: bool) -> list[str] | None:
    return None if smoke else [PY, str(HERE / "attention_tune.py"), "--out", str(tmp), "--budget-s", "55"]


def _forward(tmp: Path, smoke: bool) -> list[str]:
    return [
        PY,
        str(HERE / "gpu_forward.py"),
        "--out",
        str(tmp),
        "--budget-s",
        "120",
        *(["--smoke"] if smoke else []),
    ]


def _train(tmp: Path, smoke: bool) -> list[str] | None:
    return None if smoke else [PY, str(HERE / "train.py"), "--model", "latte-t2v-xl/2", "--latent", "64", "32",
                                "32", "--text-len", "120", "--grid", "speed", "--steps", "4", "--warmup", "2",
                                "--timeout", "90", "--out", str(tmp)]  # fmt: skip


def _vae(tmp: Path, smoke: bool) -> list[str]:
    return [
        PY,
        str(HERE / "gpu_vae.py"),
        "--out",
        str(tmp),
        "--budget-s",
        "40",
        *(["--smoke"] if smoke else []),
    ]


def _aoti(tmp: Path, smoke: bool) -> list[str] | None:
    return None if smoke else [PY, str(HERE / "gpu_aoti.py"), "--out", str(tmp)]


PARTS = {  # in order of what a short GPU session most needs
    "tests": (_tests, 110),
    "attention": (_attention, 100),
    "forward": (_forward, 170),
    "train": (_train, 150),
    "tune": (_tune, 80),
    "vae": (_vae, 70),
    "aoti": (_aoti, 200),
}


def _summary(results: dict[str, Any]) -> str:
    lines = [f"# osp GPU suite — {results['gpu'] or 'no GPU (smoke)'}", "", f"{results['versions']}", ""]
    lines += ["| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {part['status']} | {part['seconds']} |" for name, part in results["parts"].items()]
    forward = results["parts"].get("forward", {}).get("result")
    if forward:
        lines += ["", "## Latte-T2V-XL/2 forward, ms (CFG batch 2, bf16)", ""]
        for case in forward.get("cases", []):
            lines.append(f"- latents {'x'.join(map(str, case['latent']))}: " +
                         ", ".join(f"{k} {v}" for k, v in case["ms"].items()))  # fmt: skip
            if "bf16_error_vs_own_fp32" in case:
                errs = case["bf16_error_vs_own_fp32"]
                lines.append("  - bf16 vs own fp32, max abs: " + ", ".join(
                    f"{k} {v['max_abs']:.4f}" for k, v in errs.items() if isinstance(v, dict)))  # fmt: skip
    vae = results["parts"].get("vae", {}).get("result")
    if vae:
        lines += ["", f"## VAE decode {vae['preset']}, latents {vae['latents']}: {vae['decode']}"]
    aoti = results["parts"].get("aoti", {}).get("result")
    if aoti:
        lines += ["", "## AOTInductor packages on CUDA", ""]
        lines += [f"- {key}: {value}" for key, value in aoti.items()]
    return "\n".join(lines) + "\n"


def _versions() -> str:
    done = subprocess.run([PY, "-c", "import torch, triton; print('torch', torch.__version__, 'triton', "
                           "triton.__version__, 'cuda', torch.version.cuda)"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return (done.stdout or done.stderr).strip()


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--parts", default=",".join(PARTS), show_default=True, help="comma-separated parts to run")
@click.option("--budget-s", type=float, default=480.0, show_default=True, help="the whole suite ends by then")
@click.option("--smoke", is_flag=True, help="on the CPU: run the parts that have a smoke mode")
def main(out: Path, parts: str, budget_s: float, smoke: bool) -> None:
    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise click.BadParameter(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}",
                                 param_hint="--parts")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    results: dict[str, Any] = {"gpu": gpu, "versions": _versions(), "smoke": smoke, "parts": {},
                               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    deadline = time.monotonic() + budget_s
    log = out / "suite.log"
    log.write_text("")
    for name in chosen:
        build, limit = PARTS[name]
        tmp = Path(tempfile.mkdtemp(prefix=f"osp-{name}-"))
        argv = build(tmp, smoke)
        part: dict[str, Any] = {"seconds": 0.0}
        results["parts"][name] = part
        if argv is None:
            part["status"] = "no smoke mode" if smoke else "cannot run here"
        elif deadline - time.monotonic() < 20:
            part["status"] = "skipped: suite time budget"
        else:
            started = time.monotonic()
            limit = min(limit, int(deadline - started))  # the suite ends by its budget, whatever runs
            print(f"== {name} (limit {limit} s)", flush=True)
            try:
                done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
                part["status"] = "ok" if done.returncode == 0 else f"exit {done.returncode}"
                text = done.stdout + done.stderr
            except subprocess.TimeoutExpired as err:
                part["status"] = f"timed out after {limit} s (partial results kept)"
                text = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(
                    errors="replace"
                )
            part["seconds"] = round(time.monotonic() - started, 1)
            with log.open("a") as f:
                f.write(f"\n==== {name}: {part['status']} in {part['seconds']} s\n{text[-20000:]}\n")
            if name == "tests":
                (out / "pytest_gpu.txt").write_text(text)
            found = sorted(tmp.glob("*.json"))  # what the part wrote, complete or not
            if len(found) == 1:
                part["result"] = json.loads(found[0].read_text())
            elif found:
                part["result"] = {f.stem: json.loads(f.read_text()) for f in found}
            if (
                name == "attention"
            ):  # its own file too: `attention.py --from-results` builds the table from it
                for table in tmp.glob("attention_*.json"):
                    shutil.copy(table, out / table.name)
            print(f"   {part['status']} in {part['seconds']} s", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (out / "suite.json").write_text(json.dumps(results, indent=1))
        (out / "suite.md").write_text(_summary(results))
    print(_summary(results))


if __name__ == "__main__":
    main()
