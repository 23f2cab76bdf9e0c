"""``osp train``: build a :class:`~osp_train.config.TrainConfig` from a YAML file and call ``train``.

Resume by re-running the same command: the run continues from the newest complete checkpoint in
``out/checkpoints``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from osp.cli.common import UserError, console, err_console
from osp.errors import OspError


def _set(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested mapping."""
    import yaml

    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set: expected KEY.PATH=VALUE, got {assignment!r}")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set: {key}: {part} is not a mapping")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: Path, sets: tuple[str, ...]) -> Any:
    from osp.config import read_mapping
    from osp_train.config import TrainConfig

    data = read_mapping(path)
    for assignment in sets:
        _set(data, assignment)
    return TrainConfig.from_dict(data, source=str(path))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
# -- what to train
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Training run YAML (see configs/train/).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a config field, e.g. --set optim.lr=3e-4 (repeatable).",
)
# -- how to run it
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes on this machine (gloo on CPU, NCCL on GPU). Under torchrun/deepspeed leave it at 1.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--dry-run", is_flag=True, help="Print the resolved config and the DeepSpeed config, then exit."
)
def train(config_path: Path, sets: tuple[str, ...], nproc: int, quiet: bool, dry_run: bool) -> None:
    """Train a video diffusion transformer with DeepSpeed (ZeRO 0/1/2); re-run the same command to resume."""
    try:
        _run(config_path, sets, nproc, quiet, dry_run)
    except OspError as err:  # also when run as python -m osp.cli.train, outside the osp group
        raise UserError(str(err)) from None


def _run(config_path: Path, sets: tuple[str, ...], nproc: int, quiet: bool, dry_run: bool) -> None:
    import json

    import yaml

    cfg = load_config(config_path, sets)
    if dry_run:
        from osp_train.engine import deepspeed_config

        console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="", markup=False)
        console.print("# deepspeed:", json.dumps(deepspeed_config(cfg, nproc)), markup=False)
        return
    if nproc > 1:
        from osp_train.launch import launch

        argv = ["--config", str(config_path), *(f"--set={s}" for s in sets)] + (["--quiet"] if quiet else [])
        code = launch(argv, nproc)
        if code:
            raise SystemExit(code)
        return
    from osp_train.train import train as run_training

    summary = run_training(cfg, progress=not quiet, console=err_console)
    if os.environ.get("RANK", "0") == "0":
        loss = "n/a" if summary.last_loss is None else f"{summary.last_loss:.4f}"
        console.print(
            f"trained {cfg.out} to step {summary.steps} (resumed from {summary.resumed_from}); last loss {loss}; "
            f"{summary.skipped} of {summary.requests} samples came from unreadable files",
            markup=False,
        )


if __name__ == "__main__":
    sys.exit(train())
