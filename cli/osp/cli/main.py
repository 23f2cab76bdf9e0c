"""The ``osp`` command group.

Commands are thin: they turn options into a config and call one function. Any :class:`OspError`
(bad config, bad file, bad shape) is printed as one line and exits with status 2, never a traceback.
Command modules import torch and the models inside their functions, so ``osp --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click

from osp import __version__
from osp.cli.common import UserError, err_console
from osp.cli.data import data
from osp.cli.eval import eval_group
from osp.cli.export import export
from osp.cli.extract import extract
from osp.cli.generate import generate
from osp.cli.interpolate import interpolate
from osp.cli.models import models
from osp.cli.reconstruct import reconstruct
from osp.cli.samples import samples
from osp.cli.train import train
from osp.cli.upscale import upscale
from osp.cli.vae import vae
from osp.errors import OspError


class OspGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OspError as err:
            raise UserError(str(err)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise SystemExit(130) from None


@click.group(cls=OspGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="osp")
def cli() -> None:
    """osp: train, compile and serve Open-Sora-Plan-class video generators."""


cli.add_command(data)
cli.add_command(eval_group)
cli.add_command(export)
cli.add_command(extract)
cli.add_command(generate)
cli.add_command(interpolate)
cli.add_command(models)
cli.add_command(reconstruct)
cli.add_command(vae)
cli.add_command(samples)
cli.add_command(train)
cli.add_command(upscale)


if __name__ == "__main__":  # python -m osp.cli.main, as python -m osp.cli
    cli(prog_name="osp")
