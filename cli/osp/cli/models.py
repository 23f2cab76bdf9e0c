"""``osp models``: list bundled and local models; assemble a pipeline folder from trained weights."""

from __future__ import annotations

from pathlib import Path

import click

from osp.cli.common import DTYPE_CHOICE, SIZE, console


@click.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List bundled and local models (`osp models`), or `assemble` one from trained weights."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Column, Table

    from osp.pipelines.bundled import DEFAULT_MODEL, bundled_models, local_models, local_models_dir
    from osp.pipelines.finish import finishing_models
    from osp.pipelines.text_to_video import read_spec

    table = Table("where", "kind", "frames", "size", "sampler", "path")
    table.columns[-1].overflow = "fold"
    table.columns.insert(0, Column("name", no_wrap=True))
    for where, found in (("bundled", bundled_models()), ("local", local_models())):
        for name, path in found.items():
            spec = read_spec(path)
            label = f"{name} (default)" if where == "bundled" and name == DEFAULT_MODEL else name
            size = f"{spec.size[0]}x{spec.size[1]}"
            table.add_row(label, where, spec.kind, str(spec.frames), size, spec.sampler, str(path))
    for where, finishers in finishing_models().items():  # upscalers and interpolators: no frames or sampler
        for name, (kind, path) in finishers.items():
            table.add_row(name, where, kind, "-", "-", "-", str(path))
    console.print(table)
    console.print(f"local models: pipeline folders in {local_models_dir()} (set OSP_MODELS to move it)")


@models.command()
@click.option("--transformer", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Trained text-to-video transformer weights folder (e.g. RUN/ema).")  # fmt: skip
@click.option("--vae", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Causal VAE weights folder.")  # fmt: skip
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--objective", type=click.Choice(["iddpm", "flow"]), default="flow", show_default=True)
@click.option("--text-encoder", default="minilm", show_default=True)
@click.option("--frames", type=click.IntRange(min=1), default=17, show_default=True)
@click.option("--size", type=SIZE, default="64", show_default=True)
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True)
@click.option("--sampler", default="flow-euler", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--guidance", type=click.FloatRange(min=0), default=4.0, show_default=True)
@click.option("--dtype", type=DTYPE_CHOICE, default="fp16", show_default=True, help="Stored weights dtype.")
def assemble(
    transformer: Path, vae: Path, out: Path, objective: str, text_encoder: str, frames: int,
    size: tuple[int, int], fps: float, sampler: str, steps: int, guidance: float, dtype: str,
) -> None:  # fmt: skip
    """Write a pipeline folder OUT (pipeline.json + transformer/ + vae/) that `osp generate --model` reads."""
    from osp.pipelines.bundled import assemble_text_to_video
    from osp.pipelines.reconstruct import DTYPES
    from osp.pipelines.text_to_video import PipelineSpec

    spec = PipelineSpec.from_dict(
        dict(kind="text-to-video", objective=objective, text_encoder=text_encoder, fps=fps, frames=frames,
             size=size, sampler=sampler, steps=steps, guidance=guidance),
        source="options",
    )  # fmt: skip
    folder = assemble_text_to_video(transformer, vae, spec, out, dtype=DTYPES[dtype])
    console.print(f"wrote {folder}")
