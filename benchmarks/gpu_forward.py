"""Latte-T2V-XL/2 forward on a CUDA GPU, osp against diffusers' LatteTransformer3DModel with the same weights.

    python benchmarks/gpu_forward.py --out DIR [--budget-s 150]
    python benchmarks/gpu_forward.py --out DIR --smoke     # tiny preset on the CPU: checks the script

Per latent size (17x64x64 = 65x512², and 5x32x32 = 17x256²; CFG batch 2, 120 caption tokens, bf16):
median ms of one forward for diffusers eager, osp eager (automatic dispatch), osp with attention forced
to SDPA and the plain norm, osp replayed as a CUDA graph, and — at the large size — both with their
transformer blocks compiled (osp also compiled + graph). At the small size also: each side's bf16 output
against its own fp32 output (osp's bf16 error must be no larger than diffusers'), osp fp32 against
diffusers fp32, and a torch.profiler table of three forwards per side (top kernels by GPU time, host
time). Writes ``<out>/gpu_forward.json`` after every measurement, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import json
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

Fn = Callable[[], torch.Tensor]


def median_ms(fn: Fn, reps: int = 10, warmup: int = 3) -> float:
    """Median wall time of one call; on a GPU from CUDA events around the call, after a synchronise."""
    for _ in range(warmup):
        fn()
    cuda = torch.cuda.is_available()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def build(
    preset: str, frames: int, hw: int, dtype: torch.dtype, device: str
) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """diffusers' model and osp's, the same (seeded random) weights, on ``device`` in ``dtype``."""
    from diffusers import LatteTransformer3DModel

    from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V

    cfg = LATTE_T2V_CONFIGS[preset].replace(video_length=frames, sample_size=hw)
    torch.manual_seed(0)
    ref = LatteTransformer3DModel(
        num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.num_layers,
        cross_attention_dim=cfg.cross_attention_dim, attention_bias=cfg.attention_bias, sample_size=hw,
        patch_size=cfg.patch_size, activation_fn=cfg.activation_fn, num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=cfg.norm_elementwise_affine, norm_eps=cfg.norm_eps,
        caption_channels=cfg.caption_channels, video_length=frames,
    ).eval()  # fmt: skip
    ours = LatteT2V.from_state_dict(cfg, ref.state_dict()).eval()
    return ref.to(device, dtype), ours.to(device, dtype), cfg


def inputs(
    frames: int, hw: int, channels: int, text: int, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, 4, frames, hw, hw, device=device, generator=g).to(dtype)
    t = torch.tensor([500.0, 500.0], device=device)
    c = torch.randn(2, text, channels, device=device, generator=g).to(dtype)
    return x, t, c


def error(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = (a.float() - b.float()).abs()
    return {
        "max_abs": d.max().item(),
        "rms": d.pow(2).mean().sqrt().item(),
        "ref_std": b.float().std().item(),
    }


def profile(fn: Fn, top: int = 12) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = torch.cuda.is_available()
    fn()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total"
    kernels = sorted((e for e in events if getattr(e, attr, 0) > 0 and e.device_type.name == "CUDA"),
                     key=lambda e: -getattr(e, attr))  # fmt: skip
    ops = {
        e.key: e.count for e in events if e.key.startswith(("aten::copy_", "aten::contiguous", "aten::add"))
    }
    return {
        "cpu_ms_3_forwards": round(sum(e.self_cpu_time_total for e in events) / 1e3, 2),
        "gpu_ms_3_forwards": round(sum(getattr(e, attr) for e in kernels) / 1e3, 2),
        "top_kernels_us": [[e.key[:90], round(getattr(e, attr)), e.count] for e in kernels[:top]],
        "copy_and_add_calls": ops,
    }


class Run:
    """One run's settings, results and time budget; :meth:`size` measures one latent size."""

    def __init__(self, out: Path, budget_s: float, smoke: bool) -> None:
        self.out, self.smoke = out, smoke
        self.deadline = time.monotonic() + budget_s
        self.device = "cpu" if smoke else "cuda"
        # diffusers implements Latte-1's temporal position table; osp's latte-t2v-xl/2 scales it as
        # Open-Sora-Plan does (temporal_interpolation_scale 3): same compute, other outputs
        self.preset = "latte-t2v-tiny" if smoke else "latte-t2v-xl/2-latte1"
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        self.res: dict[str, Any] = {
            "gpu": gpu,
            "torch": torch.__version__,
            "preset": self.preset,
            "cases": [],
        }

    def left(self) -> bool:
        return time.monotonic() < self.deadline

    def save(self) -> None:
        (self.out / "gpu_forward.json").write_text(json.dumps(self.res, indent=1))

    def measure(self, case: dict[str, Any], name: str, fn: Fn, want: torch.Tensor | None) -> None:
        if not self.left():
            case["ms"][name] = "skipped: time budget"
            return
        try:
            y = fn()
            if want is not None:
                case["max_abs_vs_diffusers"][name] = error(y, want)["max_abs"]
            reps, warmup = (2, 1) if self.smoke else (10, 3)
            case["ms"][name] = round(median_ms(fn, reps, warmup), 2)
        except Exception as err:  # a side that fails is recorded, the others still run
            case["ms"][name] = f"{type(err).__name__}: {err}"[:300]
            traceback.print_exc()
        print(case["latent"], name, case["ms"][name], flush=True)
        self.save()

    def size(self, frames: int, hw: int, compiled: bool, extras: bool) -> None:
        """Every side at one latent size; ``extras``: the profiles and the bf16-vs-fp32 errors too."""
        from osp.export.compile import compile_blocks
        from osp.export.cudagraph import GraphedDenoiser
        from osp.layers.attention import forced_backend
        from osp.layers.norm import norm_backend
        from osp.pipelines.text_to_video import model_denoiser

        ref, ours, cfg = build(self.preset, frames, hw, torch.bfloat16, self.device)
        x, t, c = inputs(
            frames, hw, cfg.caption_channels, 8 if self.smoke else 120, torch.bfloat16, self.device
        )
        case: dict[str, Any] = {"latent": [frames, hw, hw], "ms": {}, "max_abs_vs_diffusers": {}}
        self.res["cases"].append(case)
        cond = {"encoder_hidden_states": c}

        def diffusers() -> torch.Tensor:
            return ref(x, encoder_hidden_states=c, timestep=t, return_dict=False)[0]

        def osp() -> torch.Tensor:
            return ours(x, t, c)

        def plain() -> torch.Tensor:
            with forced_backend("sdpa"), norm_backend("torch"):
                return ours(x, t, c)

        def graph() -> Fn:
            graphed = GraphedDenoiser(model_denoiser(ours), "cuda")
            return lambda: graphed(x, t, cond)

        with torch.inference_mode():
            want = diffusers()
            self.measure(case, "diffusers", diffusers, None)
            self.measure(case, "osp", osp, want)
            self.measure(case, "osp sdpa+plain norm", plain, want)
            if not self.smoke:
                self.measure(case, "osp cuda graph", graph(), want)
            if extras and self.left():
                case["profile"] = {"diffusers": profile(diffusers), "osp": profile(osp)}
                self.save()
            if compiled and self.left():
                start = time.perf_counter()
                compile_blocks(ours, dynamic=False)
                self.measure(case, "osp blocks compiled", osp, want)
                case["osp_compile_s"] = round(time.perf_counter() - start, 1)
                if not self.smoke:
                    self.measure(case, "osp compiled + cuda graph", graph(), want)
                for block in ref.modules():
                    if type(block).__name__ == "BasicTransformerBlock":
                        block.compile()
                self.measure(case, "diffusers blocks compiled", diffusers, None)
        if extras and self.left():
            ref32, ours32, _ = build(self.preset, frames, hw, torch.float32, self.device)
            case["bf16_error_vs_own_fp32"] = bf16_errors((ref, ours), (ref32, ours32), x, t, c)
            self.save()


def run(out: Path, budget_s: float, smoke: bool = False) -> dict[str, Any]:
    state = Run(out, budget_s, smoke)
    # smoke: one small size, no compile (Inductor takes minutes on a CPU), only to run every other path
    sizes = ((3, 8, False),) if smoke else ((5, 32, False), (17, 64, True))
    for i, (frames, hw, compiled) in enumerate(sizes):
        state.size(frames, hw, compiled, extras=i == 0)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return state.res


def bf16_errors(
    bf16: tuple[torch.nn.Module, torch.nn.Module],
    fp32: tuple[torch.nn.Module, torch.nn.Module],
    x: torch.Tensor,
    t: torch.Tensor,
    c: torch.Tensor,
) -> dict[str, Any]:
    """Each side's bf16 output against its own fp32 output (the fp32 models are the same seeded weights
    before the cast, buffers included), and fp32 osp against fp32 diffusers."""
    (ref, ours), (ref32, ours32) = bf16, fp32
    with torch.inference_mode():
        lo_ref = ref(x, encoder_hidden_states=c, timestep=t, return_dict=False)[0]
        lo_ours = ours(x, t, c)
        hi_ref = ref32(x.float(), encoder_hidden_states=c.float(), timestep=t, return_dict=False)[0]
        hi_ours = ours32(x.float(), t, c.float())
    return {
        "diffusers_bf16_vs_fp32": error(lo_ref, hi_ref),
        "osp_bf16_vs_fp32": error(lo_ours, hi_ours),
        "osp_fp32_vs_diffusers_fp32": error(hi_ours, hi_ref),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--budget-s", type=float, default=150.0, show_default=True, help="start no measurement after this"
)
@click.option("--smoke", is_flag=True, help="tiny preset on the CPU, to check the script without a GPU")
def main(out: Path, budget_s: float, smoke: bool) -> None:
    if not smoke and not torch.cuda.is_available():
        click.echo("gpu_forward: no CUDA device; nothing measured")
        return
    out.mkdir(parents=True, exist_ok=True)
    run(out, budget_s, smoke)


if __name__ == "__main__":
    main()
