"""``osp data``: make training data (synthetic moving shapes, clips cut from real videos, merged manifests)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import cast

import click

from osp.cli.common import console


@click.group()
def data() -> None:
    """Make training data: `synth`, `cut`, `merge`."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(min=1), default=2000, show_default=True, help="Clips to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--split",
    type=click.Choice(["train", "heldout", "all"]),
    default="train",
    show_default=True,
    help="train: never a held-out (color, shape, direction); heldout: only those; all: both.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def synth(out: Path, count: int, seed: int, split: str, overwrite: bool, quiet: bool) -> None:
    """Write COUNT captioned 17-frame 64x64 clips of a moving shape to OUT (clips/ + manifest.jsonl)."""
    from osp.progress import ProgressDisplay
    from osp.synth.dataset import Split, write_synth_dataset

    with ProgressDisplay(enabled=not quiet) as progress, progress.step("synth", count) as update:
        result = write_synth_dataset(
            out, count=count, seed=seed, split=cast(Split, split), overwrite=overwrite, progress=update
        )
    console.print(f"wrote {result.count} clips and {result.manifest}")


@data.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--count", type=click.IntRange(min=1), default=200, show_default=True, help="Clips per video.")
@click.option("--frames", type=click.IntRange(min=1), default=17, show_default=True)
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True, help="Square clip side.")
@click.option("--sample-rate", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--min-scale", type=click.FloatRange(0, 1, min_open=True), default=0.3, show_default=True,
              help="Smallest crop, as a fraction of the short side.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def cut(
    videos: tuple[Path, ...], out: Path, count: int, frames: int, size: int, sample_rate: int,
    min_scale: float, seed: int, overwrite: bool, quiet: bool,
) -> None:  # fmt: skip
    """Cut COUNT random clips (time, crop scale, position) from each of VIDEOS into OUT."""
    from osp.progress import ProgressDisplay
    from osp.synth.cut import cut_clips

    with ProgressDisplay(enabled=not quiet) as progress, progress.step("cut", count * len(videos)) as update:
        manifest = cut_clips(
            videos, out, count=count, frames=frames, size=size, sample_rate=sample_rate,
            min_scale=min_scale, seed=seed, overwrite=overwrite, progress=update,
        )  # fmt: skip
    console.print(f"wrote {count * len(videos)} clips and {manifest}")


@data.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True, help="Clips per image.")
@click.option("--frames", type=click.IntRange(min=1), default=17, show_default=True)
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True, help="Square clip side.")
@click.option("--min-scale", type=click.FloatRange(0, 1, min_open=True), default=0.3, show_default=True,
              help="Smallest window, as a fraction of the short side.")  # fmt: skip
@click.option("--zoom", type=click.FloatRange(min=0), default=0.15, show_default=True,
              help="Largest change of the window side over a clip, as a fraction.")  # fmt: skip
@click.option("--travel", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Farthest the window centre moves over a clip, in window sides.")  # fmt: skip
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def pan(
    images: tuple[Path, ...], out: Path, count: int, frames: int, size: int, min_scale: float, zoom: float,
    travel: float, fps: float, seed: int, overwrite: bool, quiet: bool,
) -> None:  # fmt: skip
    """Make COUNT clips from each still of IMAGES by panning and zooming a window across it, into OUT."""
    from osp.progress import ProgressDisplay
    from osp.synth.cut import pan_clips

    with ProgressDisplay(enabled=not quiet) as progress, progress.step("pan", count * len(images)) as update:
        manifest = pan_clips(
            images, out, count=count, frames=frames, size=size, min_scale=min_scale, zoom=zoom,
            travel=travel, fps=fps, seed=seed, overwrite=overwrite, progress=update,
        )  # fmt: skip
    console.print(f"wrote {count * len(images)} clips and {manifest}")


@data.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def merge(manifests: tuple[Path, ...], out: Path) -> None:
    """Concatenate JSONL MANIFESTS into OUT, rewriting relative paths so they still resolve."""
    from osp.errors import ConfigError
    from osp.io.weights import atomic_write_text

    rows = []
    for manifest in manifests:
        if manifest.suffix.lower() != ".jsonl" or not manifest.is_file():
            raise ConfigError(f"{manifest}: not a .jsonl manifest file")
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path = Path(row["path"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{manifest}:{n}: not a manifest row with a path") from None
            if not path.is_absolute():
                path = Path(os.path.relpath(manifest.parent.resolve() / path, out.parent.resolve()))
            rows.append(json.dumps({**row, "path": path.as_posix()}))
    atomic_write_text(out, "\n".join(rows) + "\n")
    console.print(f"wrote {len(rows)} rows to {out}")
