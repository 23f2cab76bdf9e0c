"""``osp upscale``: super-resolve a video with an osp upscaler or a released Real-ESRGAN checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from osp.cli.common import DTYPE_CHOICE, console


@click.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Upscaled video (.mp4).")  # fmt: skip
@click.option("--scale", type=click.IntRange(min=1), default=None,
              help="Output size / input size; default the model's own (a x4 model also makes x2).")  # fmt: skip
@click.option("--model", default=None,
              help="osp upscaler weights folder or a name from `osp models`; default the bundled one made "
                   "for --scale (x2 or x4).")  # fmt: skip
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A released Real-ESRGAN compact checkpoint (e.g. realesr-general-x4v3.pth) instead.")  # fmt: skip
@click.option("--tile/--no-tile", default=None,
              help="Tiled upscaling (bounded memory); default: tiled when larger than 33 frames or 256 px.")  # fmt: skip
@click.option("--tile-size", type=click.IntRange(min=8), default=128, show_default=True,
              help="Spatial tile, in input pixels.")  # fmt: skip
@click.option("--tile-overlap", type=click.IntRange(min=0), default=16, show_default=True,
              help="Spatial tile overlap, in input pixels.")  # fmt: skip
@click.option("--ensemble", is_flag=True,
              help="Average each frame's 8 flips and transposes (the SR self-ensemble): 8x the time.")  # fmt: skip
@click.option("--denoise", type=click.FloatRange(0.0, 1.0), default=None,
              help="Denoise strength: blend the model with its denoising partner, 0 (none) to 1 (all), "
                   "as Real-ESRGAN's -dn; for noisy or compressed input.")  # fmt: skip
@click.option("--denoise-model", default=None,
              help="The partner --denoise blends with (folder, name or .pth); default the model's "
                   "'-denoise' twin beside it.")  # fmt: skip
@click.option("--dtype", type=DTYPE_CHOICE, default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def upscale(
    video: Path, out: Path, scale: int | None, model: str | None, weights: Path | None, tile: bool | None,
    tile_size: int, tile_overlap: int, ensemble: bool, denoise: float | None, denoise_model: str | None,
    dtype: str, device: str, quiet: bool,
) -> None:  # fmt: skip
    """Upscale VIDEO by --scale and write OUT."""
    from osp.pipelines.finish import UpscaleConfig, run_upscale
    from osp.progress import ProgressDisplay

    cfg = UpscaleConfig.from_dict(
        dict(video=video, out=out, scale=scale, model=model, weights=weights, tile=tile, dtype=dtype,
             device=device, tiling=dict(size=tile_size, overlap=tile_overlap), ensemble=ensemble,
             denoise=denoise, denoise_model=denoise_model),
        source="options",
    )  # fmt: skip
    with ProgressDisplay(enabled=not quiet) as progress:
        result = run_upscale(cfg, progress)
    console.print(
        f"wrote {result.written}: {result.frames}x{result.height}x{result.width} "
        f"(upscale {result.seconds['upscale']:.1f}s)"
    )
