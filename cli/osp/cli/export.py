"""``osp export``: a model folder to ONNX files, TensorRT engines or compiled (AOTInductor) packages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from osp.cli.common import SIZE, console

if TYPE_CHECKING:
    from osp.progress import ProgressDisplay


@click.command()
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="osp model folder (pipeline.json + transformer/ + vae/), or a model name from `osp models`.",
)
@click.option(
    "--target",
    type=click.Choice(["onnx", "tensorrt", "compile"]),
    default="onnx",
    show_default=True,
    help="onnx: files for ONNX Runtime / TensorRT; tensorrt: engines (needs tensorrt + CUDA); "
    "compile: with --out, AOTInductor packages (weights frozen) for osp generate --engine compile "
    "--engine-dir; without, compile the transformer in this process and check it against eager.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Export folder (onnx, tensorrt, compile)."
)
@click.option(
    "--frames",
    type=click.IntRange(min=1),
    default=None,
    help="Frames (4n+1) to trace at; default from the model.",
)
@click.option("--size", type=SIZE, default=None, help="S or HxW to trace at; default from the model.")
@click.option(
    "--flavour",
    type=click.Choice(["ort", "ort-mha", "trt"]),
    default=None,
    help="Attention node: ort = stock ONNX Attention (default for onnx), ort-mha = ONNX Runtime's "
    "com.microsoft MultiHeadAttention (its CUDA provider's fused kernels), trt = osp::attention plugin "
    "(default for tensorrt).",
)
@click.option(
    "--opset", type=int, default=None, help="ONNX opset, 18..25 (default 23; 18 for tensorrt + ort)."
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
    default=None,
    help="tensorrt: engine precision (default fp16); compile: package precision, fp32 (default) or bf16; "
    "onnx: fp32 (default) or int8 (the transformer's MatMul weights in int8, for CPU inference; the VAE "
    "and text encoder stay fp32).",
)
@click.option(
    "--components",
    default=None,
    help="Comma-separated: transformer, vae_decoder, vae_encoder, text_encoder, upscaler, interpolator "
    "(default transformer,vae_decoder,vae_encoder; tensorrt and compile: transformer,vae_decoder). The "
    "finishing components export the bundled upscaler / interpolator for osp generate --upscale / "
    "--interpolate with this engine.",
)
@click.option(
    "--upscaler",
    default=None,
    help="--components upscaler: the upscaler folder or name to export (default the bundled x4).",
)
@click.option(
    "--interpolator",
    default=None,
    help="--components interpolator: the interpolator folder or name to export (default the bundled one).",
)
@click.option(
    "--upscale-denoise",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="--components upscaler: export it blended with its denoising partner (the <name>-denoise folder "
    "beside it, or --upscale-denoise-model), as osp upscale --denoise; osp generate --upscale-denoise S runs it.",
)
@click.option(
    "--upscale-denoise-model",
    default=None,
    help="--upscale-denoise: the partner to blend with (folder, name or .pth), as osp upscale --denoise-model.",
)
@click.option(
    "--bundle-for",
    type=click.Choice(["node", "web"]),
    default=None,
    help="onnx: one folder for the JavaScript runtime in examples/js (Node.js, or a browser): text encoder, "
    "transformer and VAE decoder files, the tokenizer, and manifest.json with the sampler, shapes and noise "
    "generator. web refuses weights too large for one file per component.",
)
@click.option(
    "--variants",
    default=None,
    help="--bundle-for: weight variants, comma-separated from fp32, fp16 (weights stored as float16), int8 "
    "(int8 MatMul weights, the rest float16); default fp32. Each variant's size is printed and recorded.",
)
@click.option(
    "--mode",
    type=click.Choice(["default", "max-autotune"]),
    default="default",
    show_default=True,
    help="compile: torch.compile mode.",
)
@click.option(
    "--dynamic/--static",
    default=None,
    help="compile: symbolic shapes (packages: dynamic by default, one folder for every batch, length and "
    "size in range; --static specialises on the traced shape).",
)
@click.option(
    "--freeze", is_flag=True, help="compile: the whole transformer with its weights frozen in (inference)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="compile --out: the device the packages are compiled for (cpu, cuda); they run only there.",
)
def export(quiet: bool, **options: Any) -> None:
    """Export the --model folder for another runtime; every export ends with a parity check."""
    from osp.progress import ProgressDisplay

    with ProgressDisplay(enabled=not quiet) as progress:
        _export(progress, **options)


def _export(
    progress: ProgressDisplay,
    model_dir: Path,
    target: str,
    out: Path | None,
    frames: int | None,
    size: tuple[int, int] | None,
    flavour: str | None,
    opset: int | None,
    precision: str | None,
    components: str | None,
    upscaler: str | None,
    interpolator: str | None,
    upscale_denoise: float | None,
    upscale_denoise_model: str | None,
    bundle_for: str | None,
    variants: str | None,
    mode: str,
    dynamic: bool | None,
    freeze: bool,
    device: str,
) -> None:
    from osp.errors import ConfigError
    from osp.pipelines.bundled import resolve_model
    from osp.pipelines.text_to_video import read_spec

    model_dir = resolve_model(model_dir)
    read_spec(model_dir)  # a missing or foreign folder fails here, before any heavy import
    names = None if components is None else [c.strip() for c in components.split(",") if c.strip()]
    named = {"upscaler": upscaler, "interpolator": interpolator}
    finishers: dict[str, str | Path] = {k: v for k, v in named.items() if v is not None}
    finishing = {"finishers": finishers, "upscale_denoise": upscale_denoise,
                 "upscale_denoise_model": upscale_denoise_model}  # fmt: skip
    finishing_options = bool(finishers) or upscale_denoise is not None or upscale_denoise_model is not None

    if (bundle_for or variants) and target != "onnx":
        raise ConfigError(f"--bundle-for: a bundle holds ONNX files; use --target onnx, not {target}")
    if variants and not bundle_for:
        raise ConfigError("--variants: picks the weights of a bundle; add --bundle-for node or web")
    if target == "compile" and out is not None:
        from osp.export.aoti import DEFAULT_COMPONENTS as COMPILED_COMPONENTS
        from osp.export.aoti import export_compiled

        parts = names or COMPILED_COMPONENTS
        with _components_step(progress, "compile packages", len(parts)) as report:
            export_compiled(
                model_dir, out, frames=frames, size=size, precision=precision or "fp32",
                components=parts, dynamic=dynamic is not False, mode=mode, device=device, report=report,
                **finishing,
            )  # fmt: skip
        console.print(f"wrote {out}")
        return
    if device != "cpu":
        raise ConfigError(
            f"--device: only --target compile --out builds for a device (this is --target {target})"
        )
    if target == "compile":
        if finishing_options:
            raise ConfigError(
                "--target compile without --out checks the transformer only; give --out DIR to compile "
                "the finishing models"
            )
        from osp.export.compile import check_compiled

        with progress.step("compile transformer"):
            summary = check_compiled(
                model_dir, frames=frames, size=size, mode=mode, dynamic=dynamic, freeze=freeze
            )
        console.print(summary)
        return
    if freeze:
        raise ConfigError(f"--freeze: only --target compile freezes weights (this is --target {target})")
    if out is None:
        raise ConfigError(f"--out: --target {target} writes a folder; give --out DIR")
    if target == "onnx" and bundle_for:
        if names or precision or flavour not in (None, "ort") or finishing_options:
            raise ConfigError(
                "--bundle-for: a bundle holds the text encoder, transformer and VAE decoder in flavour ort; "
                "choose its weights with --variants, not --components, --precision, --flavour or the "
                "finishing models' options"
            )
        from osp.export.bundle import export_bundle

        kinds = [v.strip() for v in (variants or "fp32").split(",") if v.strip()]
        with _components_step(progress, "export bundle", None) as report:
            export_bundle(
                model_dir, out, target=bundle_for, frames=frames, size=size, opset=opset or 23, report=report,
                variants=kinds,
            )  # fmt: skip
    elif target == "onnx":
        from osp.export.onnx import DEFAULT_COMPONENTS, export_onnx

        parts = names or DEFAULT_COMPONENTS
        with _components_step(progress, "export onnx", len(parts)) as report:
            export_onnx(
                model_dir, out, frames=frames, size=size, flavour=flavour or "ort", opset=opset or 23,
                components=parts, precision=precision or "fp32", report=report, **finishing,
            )  # fmt: skip
    else:
        if flavour == "ort-mha":
            raise ConfigError(
                "--flavour: ort-mha is an ONNX Runtime contrib op that TensorRT cannot parse; "
                "use ort or trt with --target tensorrt"
            )
        from osp.export.tensorrt import export_tensorrt, require_tensorrt

        require_tensorrt()
        parts = names or ("transformer", "vae_decoder")
        with _components_step(progress, "build engines", len(parts)) as report:
            export_tensorrt(
                model_dir, out, frames=frames, size=size, flavour=flavour or "trt", precision=precision or "fp16",
                opset=opset, components=parts, report=report, **finishing,
            )  # fmt: skip
    console.print(f"wrote {out}")


@contextmanager
def _components_step(
    progress: ProgressDisplay, label: str, total: int | None
) -> Iterator[Callable[[str], None]]:
    """A progress bar over the components an exporter writes: it reports each one (exported and checked
    against eager) with one line, which is printed and advances the bar."""
    with progress.step(label, total) as update:
        done = 0

        def report(line: str) -> None:
            nonlocal done
            done += 1
            console.print(line)
            update(done, total if total is not None else done)

        yield report
