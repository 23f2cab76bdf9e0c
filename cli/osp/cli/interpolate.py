"""``osp interpolate``: raise a video's frame rate with an osp interpolator or a released RIFE model."""

from __future__ import annotations

from pathlib import Path

import click

from osp.cli.common import DTYPE_CHOICE, console


@click.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Interpolated video (.mp4), at factor x the frame rate.")  # fmt: skip
@click.option("--factor", type=click.IntRange(min=1), default=2, show_default=True,
              help="New frame rate / old one: factor - 1 new frames between each pair.")  # fmt: skip
@click.option("--model", default=None,
              help="osp interpolator weights folder or a name from `osp models`; default the bundled one.")  # fmt: skip
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="A released RIFE flownet.pkl (Practical-RIFE v4.2x) or its folder, instead.")  # fmt: skip
@click.option("--tile/--no-tile", default=None,
              help="Tiled interpolation (bounded memory); default: tiled when larger than 256 px.")  # fmt: skip
@click.option("--tile-size", type=click.IntRange(min=16), default=512, show_default=True,
              help="Spatial tile, in pixels.")  # fmt: skip
@click.option("--tile-overlap", type=click.IntRange(min=0), default=64, show_default=True,
              help="Spatial tile overlap, in pixels.")  # fmt: skip
@click.option("--final-warp", type=click.Choice(["bilinear", "bicubic"]), default=None,
              help="Resample the frames along the final flows so; default the model's own (released RIFE: "
              "bilinear). Bicubic keeps detail that moved a fraction of a pixel.")  # fmt: skip
@click.option("--ensemble", is_flag=True,
              help="Each new frame the mean over the pair mirrored 4 ways (as is, left-right, upside down, "
              "both): a little closer to the truth, for 4x the time.")  # fmt: skip
@click.option("--dtype", type=DTYPE_CHOICE, default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def interpolate(
    video: Path, out: Path, factor: int, model: str | None, weights: Path | None, tile: bool | None,
    tile_size: int, tile_overlap: int, final_warp: str | None, ensemble: bool, dtype: str, device: str, quiet: bool,
) -> None:  # fmt: skip
    """Interpolate VIDEO to --factor x its frame rate and write OUT."""
    from osp.pipelines.finish import InterpolateConfig, run_interpolate
    from osp.progress import ProgressDisplay

    cfg = InterpolateConfig.from_dict(
        dict(video=video, out=out, factor=factor, model=model, weights=weights, tile=tile, dtype=dtype,
             device=device, tiling=dict(size=tile_size, overlap=tile_overlap), final_warp=final_warp,
             ensemble=ensemble),
        source="options",
    )  # fmt: skip
    with ProgressDisplay(enabled=not quiet) as progress:
        result = run_interpolate(cfg, progress)
    console.print(
        f"wrote {result.written}: {result.frames} frames at {result.fps:g} fps "
        f"(interpolate {result.seconds['interpolate']:.1f}s)"
    )
