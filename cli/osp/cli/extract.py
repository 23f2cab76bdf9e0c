"""``osp extract``: encode a training config's manifest once into a features folder (VAE latents, text
states), so ``task: dit`` with ``features:`` trains without the VAE in the loop. See osp_train.extract."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from osp.cli.common import UserError, console, err_console
from osp.cli.train import load_config
from osp.errors import OspError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Training run YAML (task dit): its data, vae, conditioning and text_encoder are used.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Features folder to write. Default: the config's features field.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config field, e.g. --set data.num_frames=17 (repeatable).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Samples per safetensors shard.",
)
@click.option("--flip", is_flag=True, help="Bake in epoch 0's random horizontal flips (default: none).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(
    config_path: Path, out: Path | None, sets: tuple[str, ...], shard_size: int, flip: bool, quiet: bool
) -> None:
    """Write frozen-VAE latents and text-encoder states of a training manifest to sharded safetensors."""
    try:
        cfg = load_config(config_path, sets)
        target = out or cfg.features
        if target is None:
            raise UserError("--out: give a features folder, or set features in the config")
        from osp_train.extract import extract as run_extract

        summary = run_extract(
            cfg, target, shard_size=shard_size, flip=flip, progress=not quiet, console=err_console
        )
    except OspError as err:  # also when run as python -m osp.cli.extract, outside the osp group
        raise UserError(str(err)) from None
    console.print(
        f"extracted {summary.samples} samples into {summary.shards} shard(s) in {summary.out}; "
        f"{summary.skipped} of {summary.requests} files were unreadable",
        markup=False,
    )


if __name__ == "__main__":
    sys.exit(extract())
