"""``--nproc N`` on one machine: N copies of the same command, wired together by torchrun's env vars.

Multi-node runs use ``torchrun`` or the ``deepspeed`` launcher instead; :func:`osp_train.engine.init_distributed`
reads the same RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT they set.
"""

from __future__ import annotations

from collections.abc import Sequence

from osp.launch import launch as launch_module


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``python -m osp.cli.train *argv`` in ``nproc`` processes; returns the first failure's status."""
    return launch_module("osp.cli.train", argv, nproc)
