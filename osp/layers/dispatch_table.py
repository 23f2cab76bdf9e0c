"""Which backend runs, by measured speed: one table of timings per GPU model, ``dispatch/<gpu>.json``.

``benchmarks/attention.py --write-dispatch`` times every attention backend, and the fused modulate-norm
against the plain expression, on the GPU it runs on and writes that GPU's file. An attention entry covers
one shape class (dtype, head dim, with or without a key-padding mask, a range of query lengths and one of
key lengths); a norm entry covers (dtype, channels, a range of rows). Each holds every backend's time in
inference (forward) and in training (forward + backward), since the two can rank backends differently.
A range reaches halfway, on a log scale, to the neighbouring measured length: a shape between two measured
points takes the nearer one's ranking. A GPU without a file, or a shape outside every range, gets no
ranking, and the callers fall back to their defaults (SDPA; the plain norm expression).

Callers memoise their choice per shape in a :func:`choice_cache`, so a lookup costs one dict access per
call; :func:`reset` empties those caches with the loaded tables (tests, or a table rewritten in-process).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TABLE_DIR = Path(__file__).with_name("dispatch")
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass(frozen=True)
class AttentionEntry:
    dtype: str
    head_dim: int
    masked: bool
    lq: tuple[int, int]  # [low, high) query lengths
    lk: tuple[int, int]  # [low, high) key lengths
    forward: tuple[str, ...]  # backend names, fastest first
    training: tuple[str, ...]


@dataclass(frozen=True)
class NormEntry:
    dtype: str
    channels: int
    rows: tuple[int, int]  # [low, high) rows (elements / channels)
    forward: tuple[str, ...]
    training: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    gpu: str
    attention: tuple[AttentionEntry, ...]
    modulate_norm: tuple[NormEntry, ...]


def table_path(gpu: str) -> Path:
    """``dispatch/nvidia-h200.json`` for "NVIDIA H200"."""
    return TABLE_DIR / (re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") + ".json")


def ranking(ms: dict[str, float | None]) -> tuple[str, ...]:
    """Backend names by measured time, fastest first; backends that refused the shape (None) are left out."""
    timed = [(t, name) for name, t in ms.items() if t is not None]
    return tuple(name for _, name in sorted(timed))


def parse_table(data: dict[str, Any]) -> Table:
    """A table from the JSON layout :func:`build_table` writes (times in ms per backend)."""
    attention = tuple(
        AttentionEntry(e["dtype"], e["head_dim"], e["masked"], (e["lq"][0], e["lq"][1]), (e["lk"][0], e["lk"][1]),
                       ranking(e["forward_ms"]), ranking(e["training_ms"]))
        for e in data["attention"]
    )  # fmt: skip
    norm = tuple(
        NormEntry(e["dtype"], e["channels"], (e["rows"][0], e["rows"][1]), ranking(e["forward_ms"]),
                  ranking(e["training_ms"]))
        for e in data["modulate_norm"]
    )  # fmt: skip
    return Table(data["gpu"], attention, norm)


# ------------------------------------------------------------------------------------------ writing

MODES = ("forward_ms", "training_ms")


def spans(points: list[int]) -> dict[int, tuple[int, int]]:
    """Each measured length's [low, high): up to the geometric midpoints with its neighbours, the outer
    ones as far outwards as inwards (a lone point: a factor of 2 each way)."""
    pts = sorted(set(points))
    if len(pts) == 1:
        return {pts[0]: ((pts[0] + 1) // 2, 2 * pts[0])}
    edges = [round(math.sqrt(a * b)) for a, b in itertools.pairwise(pts)]
    lows = [max(1, round(pts[0] ** 2 / edges[0])), *edges]
    highs = [*edges, round(pts[-1] ** 2 / edges[-1])]
    return {p: (lo, hi) for p, lo, hi in zip(pts, lows, highs, strict=True)}


def _entries(
    rows: list[dict[str, Any]], group: tuple[str, ...], points: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One entry per measured point of each group, its point fields turned into ranges; the times of rows
    measured at the same point add up (None, a refusal, stays None)."""
    merged: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[f] for f in group + points)
        entry = merged.setdefault(
            key, {**dict(zip(group + points, key, strict=True)), **{m: {} for m in MODES}}
        )
        for mode in MODES:
            for name, ms in row.get(mode, {}).items():
                before = entry[mode].get(name, 0.0)
                entry[mode][name] = None if ms is None or before is None else before + ms
    out = []
    for g in sorted({key[: len(group)] for key in merged}, key=str):
        members = [e for key, e in sorted(merged.items()) if key[: len(group)] == g]
        ranges = {f: spans([e[f] for e in members]) for f in points}
        for e in members:
            out.append(
                {**e, **{f: list(ranges[f][e[f]]) for f in points}, "measured_at": [e[f] for f in points]}
            )
    return out


def build_table(
    gpu: str, measured: dict[str, Any], attention: list[dict[str, Any]], norm: list[dict[str, Any]]
) -> dict[str, Any]:
    """The JSON of a table file, from timings in ms per backend (None where a backend refused the shape).

    ``attention`` rows have ``class`` (a shape class: its lengths get ranges of their own), ``dtype``,
    ``head_dim``, ``masked``, ``lq``, ``lk`` and the times; ``norm`` rows ``dtype``, ``channels``, ``rows``
    and the times. ``measured`` says where the numbers come from (date, torch, triton, source).
    """
    return {
        "gpu": gpu,
        "measured": measured,
        "attention": _entries(attention, ("class", "dtype", "head_dim", "masked"), ("lq", "lk")),
        "modulate_norm": _entries(norm, ("dtype", "channels"), ("rows",)),
    }


# ------------------------------------------------------------------------------------------ reading

_TABLES: dict[str, Table | None] = {}
_GPU_NAMES: dict[int, str] = {}
_CACHES: list[dict[Any, Any]] = []


def load_table(gpu: str) -> Table | None:
    """The table measured on ``gpu`` (a CUDA device name), None when nobody measured that GPU."""
    if gpu not in _TABLES:
        path = table_path(gpu)
        _TABLES[gpu] = parse_table(json.loads(path.read_text())) if path.is_file() else None
    return _TABLES[gpu]


def gpu_for(device: torch.device) -> str | None:
    """The name a table is kept under for ``device``: the CUDA device's name; None off CUDA (no tables)."""
    if device.type != "cuda":
        return None
    index = torch.cuda.current_device() if device.index is None else device.index
    if index not in _GPU_NAMES:
        _GPU_NAMES[index] = torch.cuda.get_device_name(index)
    return _GPU_NAMES[index]


AttentionRow = tuple[
    Any, ...
]  # (dtype, head dim, masked, lq low, lq high, lk low, lk high, forward, training)


def _attention_rows(gpu: str) -> tuple[AttentionRow, ...]:
    table = load_table(gpu)
    return tuple(
        (e.dtype, e.head_dim, e.masked, *e.lq, *e.lk, e.forward, e.training)
        for e in (table.attention if table is not None else ())
    )


def _match(
    rows: tuple[AttentionRow, ...],
    dtype: torch.dtype,
    head_dim: int,
    lq: int,
    lk: int,
    masked: bool,
    training: bool,
) -> tuple[str, ...]:
    """The ranking of the first row covering the shape; (). Sizes may be symbolic while Dynamo traces:
    each comparison with a range then becomes a guard."""
    name = DTYPE_NAMES.get(dtype)
    for dt, hd, m, lq_low, lq_high, lk_low, lk_high, forward, train in rows:
        if (
            dt == name
            and m == masked
            and hd == head_dim
            and lq_low <= lq < lq_high
            and lk_low <= lk < lk_high
        ):
            return train if training else forward
    return ()


def attention_ranking(
    gpu: str, dtype: torch.dtype, head_dim: int, lq: int, lk: int, masked: bool, training: bool
) -> tuple[str, ...]:
    """Backends measured for this shape class on ``gpu``, fastest first; () when it was not measured."""
    return _match(_attention_rows(gpu), dtype, head_dim, lq, lk, masked, training)


def compiling() -> bool:
    """True while torch.compile's Dynamo records a graph that runs in this process on the device it was
    traced for; False under torch.export and torch.jit.trace, whose graphs leave it (and on torch < 2.7,
    where an export cannot be told from a compile)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.7
    return (
        is_exporting is not None
        and torch.compiler.is_compiling()
        and not is_exporting()
        and not torch.jit.is_tracing()
    )


@torch.compiler.assume_constant_result
def attention_rows(device_type: str, device_index: int) -> tuple[AttentionRow, ...]:
    """The attention entries measured on this device's GPU as plain tuples (see :data:`AttentionRow`);
    () off CUDA or unmeasured. Dynamo runs this once per trace and keeps the result in the graph as a
    constant."""
    gpu = gpu_for(torch.device(device_type) if device_index < 0 else torch.device(device_type, device_index))
    return _attention_rows(gpu) if gpu is not None else ()


def traced_attention_ranking(
    device: torch.device, dtype: torch.dtype, head_dim: int, lq: int, lk: int, masked: bool, training: bool
) -> tuple[str, ...]:
    """:func:`attention_ranking` for code Dynamo traces: a size leaving its range recompiles the graph
    with that size's choice."""
    index = -1 if device.index is None else device.index
    return _match(attention_rows(device.type, index), dtype, head_dim, lq, lk, masked, training)


def norm_ranking(gpu: str, dtype: torch.dtype, channels: int, rows: int, training: bool) -> tuple[str, ...]:
    """``("osp", "torch")`` or the reverse where the modulate-norm was measured on ``gpu``; else ()."""
    table = load_table(gpu)
    name = DTYPE_NAMES.get(dtype)
    for e in table.modulate_norm if table is not None else ():
        if (e.dtype, e.channels) == (name, channels) and e.rows[0] <= rows < e.rows[1]:
            return e.training if training else e.forward
    return ()


def choice_cache() -> dict[Any, Any]:
    """A dict for a caller's per-shape choices, emptied by :func:`reset`."""
    cache: dict[Any, Any] = {}
    _CACHES.append(cache)
    return cache


def reset() -> None:
    """Forget the loaded tables, device names and every cached choice."""
    _TABLES.clear()
    _GPU_NAMES.clear()
    for cache in _CACHES:
        cache.clear()


def tracing() -> bool:
    """True while torch.compile, torch.export or torch.jit.trace records a graph: the dispatchers then
    pick the graph-friendly default instead of a measured eager backend."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.7
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or bool(is_exporting is not None and is_exporting())
    )
