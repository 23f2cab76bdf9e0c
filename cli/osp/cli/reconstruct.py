"""``osp reconstruct``: encode and decode a video through a causal video VAE, report PSNR and SSIM."""

from __future__ import annotations

import json
from pathlib import Path

import click

from osp.cli.common import DTYPE_CHOICE, SIZE, console


@click.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Reconstruction (.mp4).",
)
@click.option(
    "--vae",
    "vae_path",
    type=click.Path(path_type=Path),
    required=True,
    help="osp weights folder, or a released Open-Sora-Plan v1.0 VAE folder / .ckpt.",
)
@click.option(
    "--frames", type=click.IntRange(min=1), default=17, show_default=True, help="Frames to read (4n+1)."
)
@click.option("--size", type=SIZE, default=None, help="Resize + center crop to S or HxW (multiples of 8).")
@click.option(
    "--sample-rate", type=click.IntRange(min=1), default=1, show_default=True, help="Take every k-th frame."
)
@click.option(
    "--fps",
    "target_fps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Resample the clip to this frame rate instead of --sample-rate.",
)
@click.option(
    "--start", "start_frame", type=click.IntRange(min=0), default=0, show_default=True, help="First frame."
)
@click.option(
    "--tile/--no-tile",
    default=False,
    show_default=True,
    help="Tiled encode/decode (space and time): bounded memory for long or large videos.",
)
@click.option(
    "--tile-size", type=click.IntRange(min=1), default=32, show_default=True, help="Spatial tile, in latents."
)
@click.option(
    "--tile-frames",
    type=click.IntRange(min=1),
    default=9,
    show_default=True,
    help="Temporal tile, in latents.",
)
@click.option("--dtype", type=DTYPE_CHOICE, default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option(
    "--sample/--mode",
    "sample_posterior",
    default=False,
    show_default=True,
    help="Decode a posterior sample instead of its mean.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="Also write OUT_compare.mp4 (input | reconstruction) and OUT_compare.png.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def reconstruct(
    video: Path,
    out: Path,
    vae_path: Path,
    frames: int,
    size: tuple[int, int] | None,
    sample_rate: int,
    target_fps: float | None,
    start_frame: int,
    tile: bool,
    tile_size: int,
    tile_frames: int,
    dtype: str,
    device: str,
    sample_posterior: bool,
    seed: int,
    compare: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Encode VIDEO with a causal video VAE, decode it, write OUT and print PSNR / SSIM."""
    from osp.pipelines.reconstruct import ReconstructConfig
    from osp.pipelines.reconstruct import reconstruct as run
    from osp.progress import ProgressDisplay
    from osp.vae import TilingConfig

    cfg = ReconstructConfig.from_dict(
        dict(
            video=video,
            out=out,
            vae=vae_path,
            frames=frames,
            sample_rate=sample_rate,
            target_fps=target_fps,
            start_frame=start_frame,
            size=size,
            tile=tile,
            dtype=dtype,
            device=device,
            seed=seed,
            sample_posterior=sample_posterior,
            compare=compare,
            tiling=TilingConfig(
                latent_size=tile_size,
                latent_overlap=min(8, tile_size // 4),
                latent_frames=tile_frames,
                latent_frame_overlap=min(2, tile_frames // 4),
            ),
        ),
        source="options",
    )
    with ProgressDisplay(enabled=not quiet and not as_json) as progress:
        result = run(cfg, progress=progress)
    if as_json:
        payload = {
            "psnr": result.psnr,
            "ssim": result.ssim,
            "frames": result.frames,
            "height": result.height,
            "width": result.width,
            "latent_shape": list(result.latent_shape),
            "seconds": result.seconds,
            "written": {k: str(v) for k, v in result.written.items()},
        }
        click.echo(json.dumps(payload, indent=2))
        return
    console.print(
        f"{result.frames}x{result.height}x{result.width} -> latents {tuple(result.latent_shape)}  "
        f"[bold]PSNR {result.psnr:.2f} dB  SSIM {result.ssim:.4f}[/bold]  "
        f"(encode {result.seconds['encode']:.1f}s, decode {result.seconds['decode']:.1f}s)"
    )
    for label, path in result.written.items():
        console.print(f"  {label}: {path}")
