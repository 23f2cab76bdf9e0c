"""CUDA graphs for sampling: capture the denoiser once per input shape, replay it at every step.

A sampling run calls the denoiser 20-100 times with inputs of one shape. At small token counts the GPU
finishes a Latte forward faster than Python can launch its few thousand kernels, so the step time is the
host's. A CUDA graph records the kernels of one call and replays them with one launch: the host cost of
a step becomes a few input copies. This is the explicit form of what ``torch.compile(mode=
"reduce-overhead")`` does, and it works for eager, regionally compiled and frozen-compiled models alike
(without depending on the reduce-overhead path, which regressed in torch 2.10 on H100: pytorch#174575).

The denoiser must be capturable: no host synchronisation (``.item()``, ``.cpu()``, data-dependent
shapes) and no tensors created on the host inside its forward; osp's transformers are tested to run on
the ``meta`` device, which rules both out. Each new input signature (shapes, dtypes, which conditioning
entries are present) is captured once, after warm-up calls on a side stream that let lazy initialisation
(cuBLAS workspaces, Triton compilation, autotuning) happen outside the graph. All graphs share one memory
pool. The returned output is a copy: the graph's own output buffer is overwritten by the next replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from osp.diffusion import Denoiser
from osp.errors import ConfigError

Signature = tuple[tuple[str, tuple[int, ...] | None, torch.dtype | None], ...]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    t: torch.Tensor
    cond: dict[str, torch.Tensor | None]
    out: torch.Tensor


def signature(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor | None]) -> Signature:
    """What a captured graph is specialised to: every input's shape and dtype (None entries as None)."""
    entries: list[tuple[str, torch.Tensor | None]] = [("x", x), ("t", t), *sorted(cond.items())]
    return tuple(
        (name, None, None) if value is None else (name, tuple(value.shape), value.dtype)
        for name, value in entries
    )


class GraphedDenoiser:
    """A denoiser callable that runs ``denoiser`` through CUDA graphs, one per input signature.

    ``warmup``: eager calls on a side stream before each capture. Inputs may live on any device; they are
    copied into the graph's static buffers on the model's CUDA device.
    """

    def __init__(self, denoiser: Denoiser, device: torch.device | str, warmup: int = 2) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise ConfigError(f"--cuda-graphs: CUDA graphs need a CUDA device, the model is on {device}")
        self.denoiser = denoiser
        self.device = device
        self.warmup = warmup
        self.graphs: dict[Signature, _Captured] = {}
        self._pool: Any = None  # one memory pool for every graph of this denoiser

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        x, t = x.to(self.device), t.to(self.device)
        moved: dict[str, torch.Tensor | None] = {
            k: None if v is None else v.to(self.device) for k, v in cond.items()
        }
        key = signature(x, t, moved)
        captured = self.graphs.get(key)
        if captured is None:
            captured = self.graphs[key] = self._capture(x, t, moved)
        captured.x.copy_(x)
        captured.t.copy_(t)
        for name, value in moved.items():
            static = captured.cond[name]
            if static is not None and value is not None:
                static.copy_(value)
        captured.graph.replay()
        return captured.out.clone()

    def _capture(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor | None]) -> _Captured:
        static_x, static_t = x.clone(), t.clone()
        static_cond = {k: None if v is None else v.clone() for k, v in cond.items()}
        call_cond: dict[str, torch.Tensor] = static_cond  # type: ignore[assignment]  # None entries pass through
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.denoiser(static_x, static_t, call_cond)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.denoiser(static_x, static_t, call_cond)
        return _Captured(graph, static_x, static_t, static_cond, out)
