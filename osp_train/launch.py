"""``--nproc N`` on one machine: N copies of the same command, wired together by torchrun's env vars.

Multi-node runs use ``torchrun`` or the ``deepspeed`` launcher instead; :func:`osp_train.engine.init_distributed`
reads the same RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT they set.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from osp_train.engine import free_port


def _die_with_parent() -> None:
    # Linux: a worker gets SIGTERM when the launcher dies, even by SIGKILL, so no orphan holds the port.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``python -m osp.cli.train *argv`` in ``nproc`` processes; returns the first failure's status."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(nproc),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "osp.cli.train", *argv],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        for rank in range(nproc)
    ]
    status = 0
    try:
        while procs:
            for p in list(procs):
                code = p.poll()
                if code is None:
                    continue
                procs.remove(p)
                if code and not status:
                    status = code
                    for other in procs:  # one rank failed: the collectives of the others would hang
                        other.terminate()
            time.sleep(0.2)
    finally:
        for p in procs:
            p.kill()
    return status
