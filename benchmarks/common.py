"""Pieces every benchmark script shares: what machine ran it, peak memory of a code window, stages run
in fresh processes, and result files (JSON for machines, markdown for people).

Benchmarks are scripts, not a package: a script imports this file as ``common`` because Python puts the
script's own folder first on ``sys.path``.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from osp.io.weights import atomic_write_text

MIB = 1024 * 1024

# Said once in every result file that reports memory, so that nobody reads ru_maxrss into the numbers.
MEMORY_NOTE = (
    "Memory is resident set size (RSS) of a fresh process that runs one stage. 'peak' is the highest RSS "
    "during the stage (absolute: interpreter + torch + weights + input + the stage's working set); 'extra' "
    "is that peak minus the RSS just before the stage started, i.e. what the stage itself added at its "
    "worst moment. Both come from the kernel's high-water mark (VmHWM), reset to the current RSS right "
    "before the stage by writing 5 to /proc/self/clear_refs. getrusage's ru_maxrss is recorded too but "
    "not used: a child started by fork+exec inherits the launching process's peak into ru_maxrss."
)


# ------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask; a container's CPU quota is not seen)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_ram_bytes() -> int | None:
    kib = _meminfo_kib("MemAvailable")
    return None if kib is None else kib * 1024


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, software versions and the date: enough to tell two result files apart."""
    total = _meminfo_kib("MemTotal")
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "ram_gib": None if total is None else round(total / 1024**2, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------- memory


def _status_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def _reset_peak_rss() -> bool:
    """Set this process's RSS high-water mark to its current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """RSS around one window of code, in MiB (filled in when the window closes)."""

    rss_before_mib: float = 0.0
    peak_mib: float = 0.0  # highest RSS inside the window (absolute)
    extra_mib: float = 0.0  # peak_mib - rss_before_mib: what the window added at its worst
    # False when the kernel refused the high-water reset: then peak_mib is the process's peak so far,
    # which may predate the window, and extra_mib is only a lower bound.
    exact: bool = True
    ru_maxrss_before_mib: float = 0.0
    ru_maxrss_after_mib: float = 0.0


def _ru_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def track_peak_memory() -> Iterator[PeakMemory]:
    """Measure the peak RSS of the code inside the ``with`` block; see :data:`MEMORY_NOTE`."""
    gc.collect()  # garbage from setup must not count as the window's baseline
    mem = PeakMemory(ru_maxrss_before_mib=_ru_maxrss_mib())
    mem.exact = _reset_peak_rss()
    before = _status_kib()
    mem.rss_before_mib = before["VmRSS"] / 1024
    yield mem
    after = _status_kib()
    mem.peak_mib = after["VmHWM"] / 1024
    mem.extra_mib = mem.peak_mib - mem.rss_before_mib
    mem.ru_maxrss_after_mib = _ru_maxrss_mib()


def limit_address_space(limit_bytes: int | None) -> None:
    """Cap this process's virtual memory, so that a stage too big for the machine fails with an
    allocation error inside its own process instead of waking the kernel's OOM killer (which may pick
    another process). Virtual size exceeds RSS by the libraries' mappings, so the cap is conservative."""
    if limit_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


# ------------------------------------------------------------------------------- fresh-process stages


@dataclass
class ChildRun:
    returncode: int
    seconds: float  # wall time of the whole child, start-up and setup included
    result: dict[str, Any] | None  # what the child wrote to its result file, None if it wrote nothing

    def failure(self) -> str | None:
        """One sentence on why the child gave no usable result, or None if it did."""
        if self.returncode == 0 and self.result is not None:
            return None
        if self.result is not None and "error" in self.result:
            return str(self.result["error"])
        if self.returncode == -signal.SIGKILL:
            return "killed by SIGKILL (the kernel's out-of-memory killer, or the time limit)"
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exited with status {self.returncode} and no result"


def run_child(args: Sequence[str], result_path: Path, timeout_s: float | None = None) -> ChildRun:
    """Run ``python <args>`` in a fresh interpreter (stdout/stderr pass through) and read the JSON it
    wrote to ``result_path``. Each run starts with an empty heap, so its peak memory is its own."""
    result_path.unlink(missing_ok=True)
    start = dt.datetime.now()
    try:
        returncode = subprocess.run([sys.executable, *args], timeout=timeout_s, check=False).returncode
    except subprocess.TimeoutExpired:  # subprocess.run has already killed the child
        returncode = -signal.SIGKILL
    seconds = (dt.datetime.now() - start).total_seconds()
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    return ChildRun(returncode, seconds, result)


# ------------------------------------------------------------------------------------------ results


def osp_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``osp ARGS`` (the installed command, as a user runs it); a failure stops the benchmark."""
    command = shutil.which("osp", path=str(Path(sys.executable).parent)) or shutil.which("osp")
    if command is None:
        raise SystemExit("the osp command is not on PATH: pip install -e . first")
    run = subprocess.run([command, *args], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"osp {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return run


def json_number(x: float) -> float | str:
    """``x``, or ``"inf"``/``"nan"`` (JSON has neither; a PSNR of identical tensors is inf)."""
    return x if math.isfinite(x) else str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown_report(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str]
) -> str:
    """A results page: title, table, then the notes as a bullet list."""
    bullets = "".join(f"- {note}\n" for note in notes)
    return f"# {title}\n\n{markdown_table(header, rows)}\n{bullets}"


def print_report(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str]
) -> None:
    """The table and its notes on stdout; a log file gets 200 columns instead of a squeezed 80."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in notes:
        console.print(f"• {note}")


def write_results(out_dir: Path, stem: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` atomically (a crash never leaves half a file)."""
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    atomic_write_text(md_path, markdown)
    return json_path, md_path
