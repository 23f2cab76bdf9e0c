"""``osp generate``: text (or class) to video with a model folder; ``--prompts FILE`` for batches."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from osp.cli.common import DTYPE_CHOICE, SIZE, console


class _KeepArgs(click.Command):
    """Keeps the command's own arguments, so ``--nproc N`` can start N copies of the same command line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["osp.argv"] = list(args)
        return super().parse_args(ctx, args)


@click.command(cls=_KeepArgs)
@click.argument("prompts", nargs=-1)
@click.option(
    "--model",
    "model",
    default=None,
    help="osp model folder (pipeline.json + transformer/ + vae/) or a model name from `osp models`; "
    "default: the bundled demo model.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=Path("out.mp4"),
    show_default=True,
    help="Video file; several prompts write OUT_0.mp4, OUT_1.mp4, ...; with --prompts, a folder.",
)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Batch: one clip per line of a .txt file, or per JSON line of a .jsonl file (prompt, and optional "
    "seed, negative_prompt, name), into the folder OUT with a manifest.jsonl; a re-run skips finished clips.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="--prompts: processes on this machine sharing the prompts (gloo on CPU, NCCL on GPU, one GPU "
    "each). Under torchrun leave it at 1.",
)
@click.option(
    "--engine",
    type=click.Choice(["torch", "compile", "onnx", "trt"]),
    default="torch",
    show_default=True,
    help="Which runtime evaluates the denoiser (and VAE decoder): eager, torch.compile, ONNX Runtime, TensorRT.",
)
@click.option(
    "--engine-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="onnx / trt engines: the folder osp export wrote for this model; compile: a folder of packages "
    "from osp export --target compile --out DIR (loaded, not compiled: no per-process compile).",
)
@click.option(
    "--freeze",
    is_flag=True,
    help="--engine compile: compile the whole transformer and the VAE decoder with their weights frozen in "
    "as constants (longer compile, faster steps and decode; on CPU the matmuls and convolutions run "
    "pre-packed for oneDNN).",
)
@click.option(
    "--cuda-graphs",
    is_flag=True,
    help="--engine torch or compile on a CUDA device: capture the denoiser as a CUDA graph once and replay "
    "it at every step (the host's kernel launches cost most of a step at small sizes).",
)
@click.option(
    "--frames", type=click.IntRange(min=1), default=None, help="Frames (4n+1); default from the model."
)
@click.option("--size", type=SIZE, default=None, help="S or HxW; default from the model.")
@click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="Sampling steps; default from the model."
)
@click.option(
    "--guidance", type=click.FloatRange(min=0), default=None, help="Classifier-free guidance scale."
)
@click.option(
    "--sampler", default=None, help="ddim, pndm, dpm++, euler, ddpm, flow-euler; default from the model."
)
@click.option("--negative-prompt", default=None, help="Prompt for the unconditional branch of guidance.")
@click.option(
    "--class-label", "class_labels", type=int, multiple=True, help="Class-conditional models: label(s)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Clip i uses seed + i.")
@click.option(
    "--noise",
    type=click.Choice(["torch", "portable"]),
    default="torch",
    show_default=True,
    help="Initial noise: torch's generator, or the portable one (Philox + Box-Muller) that the JavaScript "
    "runtime in examples/js reproduces from the same seed.",
)
@click.option("--interpolate", type=click.IntRange(min=1), default=None,
              help="Finish: N x the frame rate with the interpolator (before --upscale).")  # fmt: skip
@click.option("--upscale", type=click.IntRange(min=1), default=None,
              help="Finish: N x the size with the upscaler.")  # fmt: skip
@click.option("--interpolator", default=None, help="Interpolator folder or name; default the bundled one.")
@click.option("--upscaler", default=None,
              help="Upscaler folder or name; default the bundled one made for --upscale.")  # fmt: skip
@click.option("--upscale-denoise", type=click.FloatRange(0.0, 1.0), default=None,
              help="As osp upscale --denoise: blend the upscaler with its denoising partner.")  # fmt: skip
@click.option("--upscale-denoise-model", default=None,
              help="As osp upscale --denoise-model: the partner --upscale-denoise blends with (folder, name or "
              ".pth); default the upscaler's <name>-denoise folder.")  # fmt: skip
@click.option("--upscale-ensemble", is_flag=True,
              help="As osp upscale --ensemble: average 8 flips and transposes (8x the upscaling time).")  # fmt: skip
@click.option("--interpolate-warp", type=click.Choice(["bilinear", "bicubic"]), default=None,
              help="As osp interpolate --final-warp (eager only); default the interpolator's own.")  # fmt: skip
@click.option("--interpolate-ensemble", is_flag=True,
              help="As osp interpolate --ensemble: average 4 mirror images (4x the interpolation time).")  # fmt: skip
@click.option("--gif", is_flag=True, help="Also write a GIF next to each video.")
@click.option("--grid", is_flag=True, help="Also write OUT_grid.png: every clip's frames, one row per clip.")
@click.option("--dtype", type=DTYPE_CHOICE, default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def generate(
    prompts: tuple[str, ...],
    model: str | None,
    out: Path,
    prompts_file: Path | None,
    nproc: int,
    engine: str,
    engine_dir: Path | None,
    freeze: bool,
    cuda_graphs: bool,
    frames: int | None,
    size: tuple[int, int] | None,
    steps: int | None,
    guidance: float | None,
    sampler: str | None,
    negative_prompt: str | None,
    class_labels: tuple[int, ...],
    seed: int,
    noise: str,
    interpolate: int | None,
    upscale: int | None,
    interpolator: str | None,
    upscaler: str | None,
    upscale_denoise: float | None,
    upscale_denoise_model: str | None,
    upscale_ensemble: bool,
    interpolate_ensemble: bool,
    interpolate_warp: str | None,
    gif: bool,
    grid: bool,
    dtype: str,
    device: str,
    quiet: bool,
) -> None:
    """Generate a video for each PROMPT (or each --class-label) and write it to OUT.

    With --prompts FILE: one clip per prompt of FILE into the folder OUT, shared among --nproc local
    processes or the processes of `torchrun -m osp.cli.generate`.
    """
    from osp.errors import ConfigError
    from osp.pipelines.bundled import resolve_model
    from osp.pipelines.generate import GenerateConfig, run_generate
    from osp.progress import ProgressDisplay

    if prompts_file is None and nproc > 1:
        raise ConfigError("--nproc: several processes share a --prompts file; give --prompts FILE")
    if prompts_file is None and out.suffix.lower() != ".mp4":
        raise ConfigError(f"out: {out} must end in .mp4")
    if engine in ("onnx", "trt") and engine_dir is None:
        raise ConfigError(f"--engine-dir: --engine {engine} runs an exported folder; give --engine-dir DIR")
    if freeze and engine != "compile":
        raise ConfigError(f"--freeze: only --engine compile freezes weights (this is --engine {engine})")
    if freeze and engine_dir is not None:
        raise ConfigError(
            "--freeze: the packages in --engine-dir were compiled with frozen weights already; drop --freeze"
        )
    if cuda_graphs and (engine not in ("torch", "compile") or engine_dir is not None):
        raise ConfigError(
            "--cuda-graphs: only --engine torch or compile (without --engine-dir) capture CUDA graphs"
        )
    if cuda_graphs and not device.startswith("cuda"):
        raise ConfigError(f"--cuda-graphs: CUDA graphs need --device cuda, not {device!r}")
    cfg = GenerateConfig.from_dict(
        dict(
            prompts=list(prompts),
            model=resolve_model(model),
            out=out,
            engine=engine,
            engine_dir=engine_dir,
            freeze=freeze,
            cuda_graphs=cuda_graphs,
            frames=frames,
            size=size,
            steps=steps,
            guidance=guidance,
            sampler=sampler,
            negative_prompt=negative_prompt,
            class_labels=list(class_labels),
            seed=seed,
            noise=noise,
            interpolate=interpolate,
            upscale=upscale,
            interpolator=interpolator,
            upscaler=upscaler,
            upscale_denoise=upscale_denoise,
            upscale_denoise_model=upscale_denoise_model,
            upscale_ensemble=upscale_ensemble,
            interpolate_ensemble=interpolate_ensemble,
            interpolate_warp=interpolate_warp,
            gif=gif,
            grid=grid,
            dtype=dtype,
            device=device,
        ),
        source="options",
    )
    factory = None if engine == "torch" and not cuda_graphs else _engine_factory
    if prompts_file is not None:
        _batch(cfg, prompts_file, nproc, quiet, factory)
        return
    with ProgressDisplay(enabled=not quiet) as progress:
        written = run_generate(cfg, progress, engine=factory)
    for path in written:
        console.print(f"wrote {path}")


def _engine_factory(pipe: Any, cfg: Any) -> Any:
    """Build the chosen engine for the loaded pipeline; it checks the export folder before sampling."""
    from osp.export.runtime import make_engine

    count = len(cfg.prompts) or len(cfg.class_labels)
    return make_engine(
        cfg.engine, pipe, engine_dir=cfg.engine_dir, model_dir=cfg.model, batch=2 * count,
        frames=cfg.frames, size=cfg.size, freeze=cfg.freeze, cuda_graphs=cfg.cuda_graphs,
    )  # fmt: skip


def _batch(cfg: Any, prompts_file: Path, nproc: int, quiet: bool, factory: Any) -> None:
    from osp.pipelines.batch import describe, plan_batch, run_batch
    from osp.progress import ProgressDisplay

    plan = plan_batch(cfg, prompts_file)  # a bad file fails here, before any process starts
    if nproc > 1:
        from osp.errors import ConfigError
        from osp.launch import launch

        if "WORLD_SIZE" in os.environ:
            raise ConfigError("--nproc: this is already one of torchrun's processes; drop --nproc")

        argv = click.get_current_context().meta["osp.argv"]
        code = launch("osp.cli.generate", _without_nproc(argv), nproc, share_cores=True)
        if code:
            raise SystemExit(code)
        return
    lead = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 shows progress and reports
    with ProgressDisplay(enabled=not quiet and lead) as progress:
        summary = run_batch(plan, progress, engine=factory)
    if lead:
        console.print(describe(summary), highlight=False, soft_wrap=True)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


if __name__ == "__main__":  # python -m osp.cli.generate, as torchrun -m starts each rank
    from osp.cli.main import cli

    sys.exit(cli(["generate", *sys.argv[1:]], prog_name="osp"))
